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
  ``--profile-ppo`` runs each variant's last iteration under ``torch.profiler``
  (``ppo_profile_<variant>.txt`` beside ``--out``).
- ``sft``: 60 optimiser steps of 02's trainer on the demo data, timed over the
  last 50, with TRL's per-step metrics and with the plain causal-LM loss, with
  and without dataloader workers; then a ``torch.profiler`` table of 10 steps.
  ``--sft-variants liger`` times the default trainer with and without
  liger-kernel's fused kernels (``use_liger_kernel``; needs ``pip install
  liger-kernel``; builds the scratch base when the project has only 01's data);
  ``--sft-variants kernels`` adds length-grouped batches (``group_by_length``) and
  ``torch_compile``.

The 8B shape: ``bench/ppo_8b.sh`` (a `full` project of local random weights, then the PPO part here).

CPU (proves the script end to end on a smoke project)::

    python bench/demo_overhead.py --root <smoke project root> --profile smoke --steps 6
"""
from __future__ import annotations

import argparse
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
                m = _profiled(tr, it, Path(args.out).parent / f"ppo_profile_{args.variant_name or 'old'}.txt")
            else:
                m = tr.iterate(it)
            tr.iteration += 1
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            its.append({"seconds": round(time.perf_counter() - t, 3),
                        **{k: round(m[k], 3) for k in ("t_generate", "t_score", "t_forward", "t_update")},
                        "response_length": round(m["response_length"], 1), "reward": round(m["reward"], 3)})
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    return {"load_seconds": round(load, 2), "iterations": its, "peak_gib": peak}


def _profiled(tr, it: int, out: Path) -> dict:
    """One ``iterate`` under torch.profiler; the table of the top kernels and ops goes to ``out``."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=acts) as p:
        m = tr.iterate(it)
    key = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    out.write_text(p.key_averages().table(sort_by=key, row_limit=30))
    return m


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
        cmd += ["--profile-ppo"] if args.profile_ppo else []
        log(f"ppo {name} {sets}")
        t = time.perf_counter()
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=str(ROOT))
        line = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
        results["ppo"][name] = json.loads(line[-1]) if p.returncode == 0 and line else {"error": p.stderr[-2000:]}
        results["ppo"][name].update(settings=sets, process_seconds=round(time.perf_counter() - t, 1))
        log(json.dumps(results["ppo"][name]))
        Path(args.out).write_text(json.dumps(results, indent=1))  # a timeout keeps the variants done


def run_sft(args, results: dict) -> None:
    import torch
    from transformers import Trainer, TrainerCallback
    from trl import SFTTrainer

    from looper_utils import config, data, modeling, sft

    cfg = config.build(args.profile, root=args.root, run_id=args.run_id, stage="sft", max_steps=args.steps,
                       logging_steps=10_000, save_steps=10_000)
    device = modeling.resolve_device(cfg.device)
    rows = data.read_jsonl(data.data_files(cfg.data_dir)["train"])
    if not modeling.base_dir(cfg).is_dir():
        modeling.build_or_load_base(cfg, rows, device=device)
    tok = modeling.load_checkpoint(modeling.base_dir(cfg), device)[1]
    dataset, _ = sft.build_dataset(rows, tok, cfg.model.prompt_style, cfg.sft.max_length)

    class Clock(TrainerCallback):
        def __init__(self):
            self.t = []

        def on_step_end(self, a, state, control, **kw):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.t.append(time.perf_counter())

    class PlainLoss(SFTTrainer):
        """The causal-LM loss of transformers' Trainer: no per-step entropy/accuracy metrics (no host syncs)."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)

    def one(name, trainer_cls, workers, profile=False, liger=False, **training_args):
        model = modeling.load_checkpoint(modeling.base_dir(cfg), device)[0]
        model.train()
        with tempfile.TemporaryDirectory() as work:
            a = sft.make_sft_config(cfg, Path(work), device, progress=False)
            a.dataloader_num_workers = workers
            a.dataloader_persistent_workers = workers > 0
            a.use_liger_kernel = liger  # fused RMSNorm, SwiGLU, RoPE, linear + cross-entropy (liger-kernel)
            for key, value in training_args.items():  # e.g. group_by_length, torch_compile
                setattr(a, key, value)
            clock = Clock()
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
            else:
                tr.train()
        steps = clock.t[10:]
        ms = 1000 * (steps[-1] - steps[0]) / max(1, len(steps) - 1)
        each = sorted(b - a for a, b in zip(steps, steps[1:])) or [0.0]
        results["sft"][name] = {"ms_per_step": round(ms, 1), "median_ms": round(1000 * each[len(each) // 2], 1),
                                "steps_timed": len(steps) - 1, "batch_size": cfg.sft.batch_size}
        log(f"sft {name}: {ms:.1f} ms/step")

    if args.sft_variants == "liger":
        one("trl+workers", SFTTrainer, 4)
        one("trl+workers+liger", SFTTrainer, 4, liger=True)
        return
    if args.sft_variants == "kernels":  # fused kernels, less padding, a compiled model
        for name, kw in (("trl+workers", {}), ("+liger", dict(liger=True)), ("+group_by_length", dict(group_by_length=True)),
                         ("+liger+group_by_length", dict(liger=True, group_by_length=True)),
                         ("+torch_compile", dict(torch_compile=True))):
            try:
                one(name, SFTTrainer, 4, **kw)
            except Exception as exc:  # an optional package missing, or a variant the stack refuses
                results["sft"][name] = {"error": repr(exc)[:500]}
                log(f"sft {name}: {exc!r}")
            Path(args.out).write_text(json.dumps(results, indent=1))
        return
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
    ap.add_argument("--iterations", type=int, default=3, help="PPO iterations per variant (the first warms up)")
    ap.add_argument("--what", default="ppo,sft")
    ap.add_argument("--profile-sft", action="store_true")
    ap.add_argument("--sft-variants", default="all", choices=["all", "liger", "kernels"],
                    help="liger: the default trainer with and without liger-kernel's fused kernels; kernels: "
                         "also length-grouped batches and torch.compile")
    ap.add_argument("--profile-ppo", action="store_true", help="profile each variant's last iteration")
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
