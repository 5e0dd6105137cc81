"""Where the small model's time goes in `demo`: one PPO iteration and one SFT step, variant by variant.

Runs on a project folder that a `demo` pipeline has filled (data splits, the
scratch base, the SFT checkpoint), e.g. right after ``bench/demo_gpu.sh``:

    PYTHONUNBUFFERED=1 python bench/demo_overhead.py --root /tmp/demo/root --out $OUT/overhead.json \
        [--old-code .old]   # a copy of an earlier looper_utils to time as the baseline

- ``ppo``: ``PPOTrainer.iterate`` ``--iterations`` times (3) from the SFT
  checkpoint (the first warms the engine up), timed per phase (generate, score, forward,
  update), for each ``--ppo-variants`` entry (by default each ``ppo.precision``; e.g.
  ``'new:;shared:critic=shared'``) and for the older code if given. Each
  variant runs in its own process so no memory or compiled state carries over.
  ``--profile-ppo`` runs each variant's last iteration under ``torch.profiler`` and times the update's
  parts between GPU synchronisations (policy and critic forwards, each backward, optimiser steps):
  a summary in the JSON (phases, kernel time by category) and the top kernels in
  ``ppo_profile_<variant>.txt`` beside ``--out``; ``--profile-steps N`` profiles only the update's first
  N policy steps (the 8B shape). ``--mismatch`` then draws one more rollout and compares the token
  log-probs of what sampled it (the merged copy, ``ppo.sampling``, and the policy with its adapter
  applied, without autocast) with the trainer's own forward.
- ``sft``: 60 optimiser steps of 02's trainer on the demo data, timed over the
  last 50, with TRL's per-step metrics and with the plain causal-LM loss, with
  and without dataloader workers; then a ``torch.profiler`` table of 10 steps.
  ``--sft-variants liger`` times the default trainer with and without
  liger-kernel's fused kernels (``use_liger_kernel``; needs ``pip install
  liger-kernel``; builds the scratch base when the project has only 01's data);
  ``--sft-variants kernels`` adds length-grouped batches (``group_by_length``) and
  ``torch_compile``; ``--sft-variants compile`` times liger-kernel with batches padded to a multiple of 64
  and a compiled model over those few shapes; ``--sft-variants layers`` times 02's default (compiled decoder
  layers, no padding mask: ``sft_setup.training_forwards``) against liger-kernel and against the same
  without compiled layers; ``--sft-variants sync`` times 02's trainer (``sft_setup.sft_trainer_class``: no
  host sync per step) against TRL's own with the previous release's settings, at 128 and 64 sequences a
  step, synchronising the GPU only at the first timed step and the last; its later positions time 16
  sequences a step (what a step costs regardless of its size), the compiled layers replayed as CUDA graphs
  and Inductor's launches from C++, and the loader's batches handed over through shared-memory files
  (not file descriptors). ``--sft-cprofile`` runs each under cProfile and writes the tables.

The 8B shape: ``bench/ppo_8b.sh`` (a `full` project of local random weights, then the PPO part here).

CPU (proves the script end to end on a smoke project)::

    python bench/demo_overhead.py --root <smoke project root> --profile smoke --steps 6
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def ppo_variant(args) -> dict:
    """One PPO variant in this process: ``--iterations`` of ``iterate``, the phase times of each."""
    import torch

    from looper_utils import config, data, ppo

    sets = _settings(args.set)
    liger = sets.pop("liger", False)  # bench only: liger-kernel's fused RMSNorm, SwiGLU and RoPE in the PPO model
    over = {"iterations": args.iterations, "eval_every": 0, "resume": False, **sets}
    cfg = config.build(args.profile, root=args.root, run_id=args.run_id, stage="ppo", **over)
    files = data.data_files(cfg.data_dir)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        tr = ppo.PPOTrainer(cfg, data.read_jsonl(files["train"]), data.read_jsonl(files["dev"]), out_dir=Path(out),
                            progress=False)
        if liger:
            from liger_kernel.transformers import _apply_liger_kernel_to_instance

            _apply_liger_kernel_to_instance(model=tr.pv.model.get_base_model(), rms_norm=True, swiglu=True, rope=True,
                                            cross_entropy=False, fused_linear_cross_entropy=False)
        load = time.perf_counter() - t0
        its = []
        for it in range(args.iterations):
            t = time.perf_counter()
            if args.profile_ppo and it == args.iterations - 1:  # the last iteration, under torch.profiler
                m, prof = _profiled(tr, it, Path(args.out).parent / f"ppo_profile_{args.variant_name or 'old'}.txt",
                                    args.profile_steps)
            else:
                m = tr.iterate(it)
            tr.iteration += 1
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            its.append({"seconds": round(time.perf_counter() - t, 3),
                        **{k: round(m[k], 3) for k in ("t_generate", "t_score", "t_forward", "t_update")},
                        "response_length": round(m["response_length"], 1), "reward": round(m["reward"], 3)})
        eng = tr._engine  # the rollout engine kept across iterations: how many CUDA graphs it captured
        graphs = {"engine_captures": eng.n_captures, "engine_graphs_held": len(eng._graphs),
                  "sampling": getattr(tr, "sampling", "adapters")} if eng else {}
        if args.mismatch:
            graphs["sampler_mismatch"] = _sampler_mismatch(tr, tr.sample(args.iterations))
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    import torch._dynamo

    graphs.update(compiled=getattr(tr.pv, "compile_why", "(earlier code)"),
                  compiled_graphs=torch._dynamo.utils.counters["stats"]["unique_graphs"])
    return {"load_seconds": round(load, 2), "iterations": its, "peak_gib": peak, **graphs,
            **({"profile": prof} if args.profile_ppo else {})}


def _sampler_mismatch(tr, roll) -> dict:
    """How far the distributions the rollouts come from are from the one PPO trains: on one more rollout's
    completion tokens, log p under the trainer's forward (``_forward_all``: bf16 autocast on a GPU) against
    log p under the merged copy and under the PEFT policy without autocast (what the engine runs with the
    adapter inside). Per sampler: mean |difference|, its 99th percentile, and the mean of (sampler - trainer),
    a first-order estimate of KL(sampler || trainer) per token since the tokens were drawn by the sampler."""
    import torch

    b, temp = roll.batch, tr.p.temperature
    trainer = tr._forward_all(b, ("logp",))["logp"]
    m = b.mask.bool()

    def logp(model):
        out = []
        with torch.no_grad():
            for s in range(0, len(b.input_ids), 128):
                ids, att = b.input_ids[s:s + 128], b.attention_mask[s:s + 128]
                lp = torch.log_softmax(model(input_ids=ids, attention_mask=att).logits[:, :-1].float() / temp, -1)
                out.append(lp.gather(-1, ids[:, 1:, None])[..., 0])
        return torch.cat(out)

    samplers = {}
    if getattr(tr, "_merged", None) is not None:
        samplers["merged copy"] = logp(tr._merged.model)
    with tr.policy() as model:
        samplers["adapters, no autocast"] = logp(model)
    res = {"tokens": int(m.sum())}
    for name, lp in samplers.items():
        d = (lp - trainer)[m]
        res[name] = {"mean_abs": round(float(d.abs().mean()), 6), "p99_abs": round(float(d.abs().quantile(0.99)), 6),
                     "kl_estimate": round(float(d.mean()), 7)}
    return res


# kernel (GPU) or op (CPU) name fragments -> category, first match wins
CATEGORIES = (
    ("attention", ("flash", "fmha", "attention", "sdpa", "cudnn")),
    ("matrix products", ("gemm", "cutlass", "nvjet", "xmma", "cublas", "aten::mm", "aten::addmm", "aten::bmm",
                         "aten::matmul", "aten::linear", "splitk")),
    ("optimiser", ("multi_tensor", "adam", "foreach")),
    ("reductions, softmax", ("reduce", "softmax", "logsumexp", "norm", "aten::sum", "aten::mean")),
    ("copies and casts", ("copy", "cast", "aten::to", "cat", "index", "scatter", "gather", "fill", "memset",
                          "memcpy", "nonzero", "where")),
    ("elementwise", ("elementwise", "vectorized", "aten::mul", "aten::add", "aten::silu", "aten::div",
                     "aten::neg", "aten::exp", "aten::pow", "aten::rsqrt", "aten::sub")),
)


def _category(name: str) -> str:
    low = name.lower()
    return next((cat for cat, keys in CATEGORIES if any(k in low for k in keys)), "other")


class _UpdatePhases:
    """Wall time of each part of PPO's update, each timed between two GPU synchronisations: the forward with
    the policy adapter (log-probs, and values with a shared critic), the critic's own forward, each backward
    (named after the forward before it), the optimiser steps; ``rest`` is the update's time outside them.
    The profiler covers the whole iteration (``profile_steps`` 0) or the update's first ``profile_steps``
    policy steps (a profile of a long 8B update is too large to read back, and the engine's first CUDA-graph
    capture is better left outside it)."""

    def __init__(self, tr, prof, profile_steps: int):
        import torch

        self.tr, self.prof, self.profile_steps, self.torch = tr, prof, profile_steps, torch
        self.totals: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.in_update, self.last_forward, self.steps, self.profiling = False, "policy", 0, False

    def _sync(self) -> None:
        if self.torch.cuda.is_available():
            self.torch.cuda.synchronize()

    def _timed(self, name: str, fn, *a, **k):
        if not self.in_update:
            return fn(*a, **k)
        self._sync()
        t = time.perf_counter()
        out = fn(*a, **k)
        self._sync()
        self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - t
        self.calls[name] = self.calls.get(name, 0) + 1
        return out

    def __enter__(self):
        torch, tr, pv = self.torch, self.tr, self.tr.pv
        self.saved = (pv.forward_roles, pv.values, tr._step, tr._update, torch.Tensor.backward)
        forward_roles, values, step, update, backward = self.saved

        def fwd_policy(*a, **k):
            self.last_forward = "policy"
            return self._timed("policy forward", forward_roles, *a, **k)

        def fwd_value(*a, **k):
            self.last_forward = "critic"
            return self._timed("critic forward", values, *a, **k)

        def bwd(t, *a, **k):
            return self._timed(f"{self.last_forward} backward", backward, t, *a, **k)

        def opt_step(opt, *a, **k):
            out = self._timed("optimiser steps", step, opt, *a, **k)
            if self.in_update and opt is tr.opt_pi:
                self.steps += 1
                if self.profiling and self.profile_steps and self.steps >= self.profile_steps:
                    self._sync()
                    self.prof.stop()
                    self.profiling = False
            return out

        def upd(*a, **k):
            self.in_update = True
            self._sync()
            if self.profile_steps:
                self.prof.start()
                self.profiling = True
            t = time.perf_counter()
            try:
                return update(*a, **k)
            finally:
                self._sync()
                self.update_seconds = time.perf_counter() - t
                self.in_update = False

        pv.forward_roles, pv.values, tr._step, tr._update = fwd_policy, fwd_value, opt_step, upd
        torch.Tensor.backward = bwd
        if not self.profile_steps:
            self.prof.start()
            self.profiling = True
        return self

    def __exit__(self, *exc):
        pv = self.tr.pv
        pv.forward_roles, pv.values, self.tr._step, self.tr._update, self.torch.Tensor.backward = self.saved
        if self.profiling:
            self.prof.stop()

    def table(self) -> dict:
        rows = {k: {"seconds": round(v, 3), "calls": self.calls[k]} for k, v in self.totals.items()}
        rows["rest"] = {"seconds": round(self.update_seconds - sum(self.totals.values()), 3), "calls": 1}
        return {"update_seconds": round(self.update_seconds, 3), "phases": rows}


def _profiled(tr, it: int, out: Path, profile_steps: int = 0) -> tuple[dict, dict]:
    """One ``iterate`` with the update's phases timed (``_UpdatePhases``) under torch.profiler; returns the
    metrics and a summary (phases, GPU kernel time by category, GPU-busy share of the profiled wall time).
    The top kernels and ops go to ``out``."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available()
    prof = profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else []))
    t0 = time.perf_counter()
    with _UpdatePhases(tr, prof, profile_steps) as phases:
        m = tr.iterate(it)
    profiled_wall = time.perf_counter() - t0
    events = prof.key_averages()
    if cuda:
        rows = [(e.key, getattr(e, "self_device_time_total", 0) or e.self_cuda_time_total, e.count)
                for e in events if e.device_type == DeviceType.CUDA]
        sort = "self_cuda_time_total"
    else:  # CPU: the leaf ops' own time
        rows = [(e.key, e.self_cpu_time_total, e.count) for e in events if e.key.startswith("aten::")]
        sort = "self_cpu_time_total"
    by_cat: dict[str, float] = {}
    for key, us, _ in rows:
        by_cat[_category(key)] = by_cat.get(_category(key), 0.0) + us / 1e6
    busy = sum(by_cat.values())
    summary = {**phases.table(), "profiled": f"the update's first {profile_steps} policy steps" if profile_steps
               else f"the whole iteration, {profiled_wall:.3f} s",
               "kernel_seconds_by_category": {k: round(v, 3) for k, v in sorted(by_cat.items(), key=lambda x: -x[1])},
               "kernel_seconds": round(busy, 3), "kernels" if cuda else "ops": sum(c for _, _, c in rows)}
    out.write_text(json.dumps(summary, indent=1) + "\n\n" + events.table(sort_by=sort, row_limit=40))
    return m, summary


def _settings(text: str) -> dict:
    """``"critic=shared,gradient_checkpointing=False"`` -> PPO config overrides (the ``-p`` value rules);
    ``liger=True`` applies liger-kernel's fused RMSNorm, SwiGLU and RoPE to the PPO model (bench only)."""
    from looper_utils.pipeline import parse_params

    return parse_params([item for item in text.split(",") if item])


def run_ppo(args, results: dict) -> None:
    """Each ``--ppo-variants`` entry (``name:key=value,...``, ``;``-separated), then the older code if given."""
    variants = [(name, sets, None) for name, _, sets in (v.partition(":") for v in args.ppo_variants.split(";") if v)]
    if args.old_code:
        variants.append(("old", "", str(Path(args.old_code).resolve())))
    for name, sets, code in variants:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [code or str(ROOT), os.environ.get("PYTHONPATH")])))
        cmd = [sys.executable, __file__, "--root", args.root, "--profile", args.profile, "--run-id", args.run_id,
               "--iterations", str(args.iterations), "--out", args.out, "--only-ppo-variant", "--set", sets,
               "--variant-name", name]
        cmd += ["--profile-ppo", "--profile-steps", str(args.profile_steps)] if args.profile_ppo else []
        cmd += ["--mismatch"] if args.mismatch and not code else []
        log(f"ppo {name} {sets}")
        t = time.perf_counter()
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=str(ROOT))
        line = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
        results["ppo"][name] = json.loads(line[-1]) if p.returncode == 0 and line else {"error": p.stderr[-2000:]}
        safe = "".join(ch if ch.isalnum() else "_" for ch in name)
        (Path(args.out).parent / f"ppo_{safe}.stderr.txt").write_text(p.stderr[-400_000:])  # e.g. TORCH_LOGS
        results["ppo"][name].update(settings=sets, process_seconds=round(time.perf_counter() - t, 1))
        log(json.dumps(results["ppo"][name]))
        Path(args.out).write_text(json.dumps(results, indent=1))  # a timeout keeps the variants done


def run_sft(args, results: dict) -> None:
    import torch
    from transformers import Trainer, TrainerCallback
    from trl import SFTTrainer

    from looper_utils import config, data, modeling, sft, sft_setup

    cfg = config.build(args.profile, root=args.root, run_id=args.run_id, stage="sft", max_steps=args.steps,
                       logging_steps=10_000, save_steps=10_000)
    device = modeling.resolve_device(cfg.device)
    rows = data.read_jsonl(data.data_files(cfg.data_dir)["train"])
    if not modeling.base_dir(cfg).is_dir():
        modeling.build_or_load_base(cfg, rows, device=device)
    tok = modeling.load_checkpoint(modeling.base_dir(cfg), device)[1]
    dataset, _ = sft.build_dataset(rows, tok, cfg.model.prompt_style, cfg.sft.max_length)

    class Clock(TrainerCallback):
        """Step end times. ``sync``: the GPU synchronised at every step (per-step times, a median); otherwise only
        at the first timed step and the last, so that the CPU may run ahead of the GPU as in 02, and only the mean
        over the timed steps is measured."""

        def __init__(self, sync: bool = True, skip: int = args.sft_skip):
            self.t, self.sync, self.skip = [], sync, skip

        def on_step_end(self, a, state, control, **kw):
            if torch.cuda.is_available() and (self.sync or state.global_step in (self.skip + 1, state.max_steps)):
                torch.cuda.synchronize()
            self.t.append(time.perf_counter())

    class PlainLoss(SFTTrainer):
        """The causal-LM loss of transformers' Trainer: no per-step entropy/accuracy metrics (no host syncs)."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)

    @contextlib.contextmanager
    def sharing_strategy(name):
        """How the loader processes hand batches over (``torch.multiprocessing``), ``name`` or as it is; restored."""
        import torch.multiprocessing as tmp

        before = tmp.get_sharing_strategy()
        tmp.set_sharing_strategy(name or before)
        try:
            yield
        finally:
            tmp.set_sharing_strategy(before)

    def one(name, trainer_cls, workers, profile=False, liger=False, forwards=False, over=None, sync=True,
            blocking=False, compile_options=None, inductor=None, sharing=None, **training_args):
        """``liger=None`` keeps 02's choice; ``forwards`` trains inside 02's ``training_forwards`` (compiled
        layers where ``sft.compile`` says, no padding mask on a GPU); ``over``: SFT settings changed; ``sync``:
        ``Clock``'s; ``blocking``: batches copied to the GPU with a host sync (transformers' default);
        ``compile_options``: passed to ``torch.compile`` for the layers (e.g. ``mode``); ``inductor``: Inductor
        settings for this variant (e.g. ``cpp_wrapper``); ``sharing``: how the loader processes hand their
        batches over (``torch.multiprocessing.set_sharing_strategy``)."""
        import functools

        import torch._dynamo
        import torch._inductor.config as inductor_config

        c = cfg.override(stage="sft", **over) if over else cfg
        model = modeling.load_checkpoint(modeling.base_dir(cfg), device)[0]
        model.train()
        with tempfile.TemporaryDirectory() as work, sharing_strategy(sharing):
            a = sft.make_sft_config(c, Path(work), device, progress=False)
            a.dataloader_num_workers = workers
            a.dataloader_persistent_workers = workers > 0
            if liger is not None:
                a.use_liger_kernel = liger  # fused RMSNorm, SwiGLU, RoPE, linear + cross-entropy (liger-kernel)
            for key, value in training_args.items():  # e.g. group_by_length, torch_compile
                setattr(a, key, value)
            if blocking:
                a.accelerator_config.non_blocking = False
            clock = Clock(sync)
            tr = trainer_cls(model=model, args=a, train_dataset=dataset, processing_class=tok, callbacks=[clock])
            if profile:
                from torch.profiler import ProfilerActivity, profile as prof

                acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
                with prof(activities=acts) as p:
                    tr.train()
                key = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
                table = p.key_averages().table(sort_by=key, row_limit=25)
                (Path(args.out).parent / "sft_profile.txt").write_text(table)
                print(table[:6000])
            elif forwards:
                layers_cls = sft_setup.CompiledLayers
                if compile_options:
                    sft_setup.CompiledLayers = functools.partial(layers_cls, **compile_options)
                if compile_options or inductor:  # compile afresh: the layers' code compiled for an earlier
                    torch._dynamo.reset()        # variant would otherwise be reused (guards do not see these)
                saved = {k: getattr(inductor_config, k) for k in (inductor or {})}
                for k, v in (inductor or {}).items():
                    setattr(inductor_config, k, v)
                try:
                    with sft_setup.training_forwards(model, c, device) as why:
                        t = time.perf_counter()
                        if args.sft_cprofile:  # where the training process's CPU time goes, by function
                            import cProfile
                            import pstats

                            pr = cProfile.Profile()
                            pr.runcall(tr.train)
                            stem = Path(args.out).parent / f"sft_cprofile_{len(results['sft'])}"
                            for key in ("tottime", "cumulative"):
                                with open(f"{stem}_{key}.txt", "w") as f:
                                    pstats.Stats(pr, stream=f).sort_stats(key).print_stats(80)
                        else:
                            tr.train()
                        log(f"sft {name}: {why}; {time.perf_counter() - t:.1f} s in all")
                finally:
                    sft_setup.CompiledLayers = layers_cls
                    for k, v in saved.items():
                        setattr(inductor_config, k, v)
            else:
                tr.train()
        steps = clock.t[clock.skip:]
        ms = 1000 * (steps[-1] - steps[0]) / max(1, len(steps) - 1)
        each = sorted(b - a for a, b in zip(steps, steps[1:])) or [0.0]
        results["sft"][name] = {"ms_per_step": round(ms, 1), "steps_timed": len(steps) - 1,
                                "batch_size": c.sft.batch_size, "synchronised_each_step": sync}
        if sync:
            results["sft"][name]["median_ms"] = round(1000 * each[len(each) // 2], 1)
        log(f"sft {name}: {ms:.1f} ms/step")

    if args.sft_variants == "liger":
        one("trl+workers", SFTTrainer, 4)
        one("trl+workers+liger", SFTTrainer, 4, liger=True)
        return
    def each(variants) -> None:
        """``one`` per (name, keywords) (those ``--sft-pick`` names, by position); a variant that fails (an
        optional package missing, a variant the stack refuses) is recorded and the next runs; the results are
        written after each."""
        pick = [int(i) for i in args.sft_pick.split(",")] if args.sft_pick else range(len(variants))
        for name, kw in (variants[i] for i in pick):
            try:
                kw = dict(kw)
                one(name, kw.pop("cls", SFTTrainer), 4, **kw)
            except Exception as exc:
                results["sft"][name] = {"error": repr(exc)[:500]}
                log(f"sft {name}: {exc!r}")
            Path(args.out).write_text(json.dumps(results, indent=1))

    if args.sft_variants == "layers":  # 02's default (compiled layers, no padding mask) against liger-kernel
        # liger-kernel last: it patches the Llama classes of the whole process, so a later variant would run it too
        return each((("02 default", dict(liger=None, forwards=True)),
                     ("02 default, eager layers", dict(liger=False, forwards=True, over={"compile": "off"})),
                     ("+liger (sft.compile=off)", dict(liger=True))))
    if args.sft_variants == "sync":  # 02's trainer (metrics read at logging time, no host sync per step) and before
        ours = sft_setup.sft_trainer_class()
        logs = config.build(args.profile, stage="sft").sft.logging_steps  # 02 logs (and reads metrics) this often
        skip = dict(sync=False, over={"logging_steps": logs})
        return each((("02 default", dict(cls=ours, liger=None, forwards=True, **skip)),
                     ("TRL's compute_loss, NaN check, blocking copies (the previous release)",
                      dict(liger=None, forwards=True, blocking=True, logging_nan_inf_filter=True, **skip)),
                     ("02 default, 64 sequences a step", dict(cls=ours, liger=None, forwards=True, sync=False,
                                                              over={"logging_steps": logs, "batch_size": 64})),
                     ("02 default, eager layers", dict(cls=ours, liger=False, forwards=True, sync=False,
                                                       over={"logging_steps": logs, "compile": "off"})),
                     ("02 default, rows padded to a multiple of 16", dict(cls=ours, liger=None, forwards=True,
                                                                          pad_to_multiple_of=16, **skip)),
                     ("02 default with TRL's fused head (a boolean index, a host sync a step)",
                      dict(cls=type("FusedHead", (ours,), {"full_logits_max": 0}), liger=None, forwards=True,
                           **skip)),
                     ("02 default, 16 sequences a step (the step's fixed cost)",
                      dict(cls=ours, liger=None, forwards=True, sync=False,
                           over={"logging_steps": logs, "batch_size": 16})),
                     ("02 default, layers replayed as CUDA graphs", dict(cls=ours, liger=None, forwards=True,
                                                                      compile_options={"mode": "reduce-overhead"},
                                                                      **skip)),
                     ("02 default, Inductor's launches from C++", dict(cls=ours, liger=None, forwards=True,
                                                                     inductor={"cpp_wrapper": True}, **skip)),
                     ("02 default, batches handed over through shared-memory files",
                      dict(cls=ours, liger=None, forwards=True, sharing="file_system", **skip)),
                     ("02 default, rows padded to a multiple of 64", dict(cls=ours, liger=None, forwards=True,
                                                                          pad_to_multiple_of=64, **skip))))
    if args.sft_variants == "compile":  # a compiled model with few distinct batch shapes
        return each((("+liger", dict(liger=True)), ("+liger+pad64", dict(liger=True, pad_to_multiple_of=64)),
                     ("+compile+pad64", dict(torch_compile=True, pad_to_multiple_of=64)),
                     ("+liger+compile+pad64", dict(liger=True, torch_compile=True, pad_to_multiple_of=64))))
    if args.sft_variants == "kernels":  # fused kernels, less padding, a compiled model
        return each((("trl+workers", {}), ("+liger", dict(liger=True)), ("+group_by_length", dict(group_by_length=True)),
                     ("+liger+group_by_length", dict(liger=True, group_by_length=True)),
                     ("+torch_compile", dict(torch_compile=True))))
    one("trl", SFTTrainer, 0)
    one("trl+workers", SFTTrainer, 4)
    one("plain-loss", PlainLoss, 0)
    one("plain-loss+workers", PlainLoss, 4)
    if args.profile_sft:
        cfg = cfg.override(stage="sft", max_steps=12)
        one("trl-profiled", SFTTrainer, 0, profile=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", required=True)
    ap.add_argument("--profile", default="demo")
    ap.add_argument("--run-id", default="demo")
    ap.add_argument("--out", default="overhead.json")
    ap.add_argument("--old-code", default="", help="a folder holding an older looper_utils, timed as the baseline")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--sft-skip", type=int, default=10, help="SFT steps before the timed ones (compiles happen there)")
    ap.add_argument("--sft-cprofile", action="store_true",
                    help="run each SFT variant under cProfile; the tables go next to --out")
    ap.add_argument("--sft-pick", default="", help="comma-separated positions of the --sft-variants set to run")
    ap.add_argument("--iterations", type=int, default=3, help="PPO iterations per variant (the first warms up)")
    ap.add_argument("--what", default="ppo,sft")
    ap.add_argument("--profile-sft", action="store_true")
    ap.add_argument("--sft-variants", default="all", choices=["all", "liger", "kernels", "compile", "layers", "sync"],
                    help="liger: the default trainer with and without liger-kernel's fused kernels; kernels: "
                         "also length-grouped batches and torch.compile; compile: liger-kernel, batches padded "
                         "to a multiple of 64, torch.compile; layers: 02's default (compiled layers) against "
                         "liger-kernel and eager layers")
    ap.add_argument("--profile-ppo", action="store_true", help="profile each variant's last iteration")
    ap.add_argument("--mismatch", action="store_true",
                    help="after the iterations, compare the samplers' token log-probs with the trainer's")
    ap.add_argument("--profile-steps", type=int, default=0,
                    help="with --profile-ppo: stop the profiler after this many policy steps of the update (0: "
                         "the whole iteration); the update's phase times cover all of it")
    ap.add_argument("--ppo-variants", default="new-auto:precision=auto;new-fp32:precision=fp32",
                    help="';'-separated name:key=value,... PPO settings per variant, e.g. "
                         "'new:;shared:critic=shared;nockpt:gradient_checkpointing=False'")
    ap.add_argument("--set", default="", help=argparse.SUPPRESS)
    ap.add_argument("--variant-name", default="", help=argparse.SUPPRESS)
    ap.add_argument("--only-ppo-variant", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # keep the log to the numbers
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    if args.only_ppo_variant:
        print(json.dumps(ppo_variant(args)))
        return 0
    import torch

    results = {"gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
               "torch": torch.__version__, "ppo": {}, "sft": {}}
    for what in args.what.split(","):
        try:
            {"ppo": run_ppo, "sft": run_sft}[what](args, results)
        except Exception as exc:  # keep what the other part measured
            import traceback

            traceback.print_exc()
            results[f"{what}_error"] = repr(exc)
        Path(args.out).write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
