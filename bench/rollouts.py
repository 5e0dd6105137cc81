"""Rollout throughput: HF ``generate`` (static and dynamic cache) against ``looper_utils.engine``.

One process, one model (random init, built directly on the device), every
method warmed, then timed at each batch size. Prints tokens/s, ms per step,
the fraction of the decode limit (bytes per step = weights + KV read at the
mean filled length, over the GPU's memory bandwidth; FLOPs over its peak),
and peak memory; checks engine greedy against HF greedy on the same model;
writes everything to ``--out`` after each result (a killed run keeps what it
measured). Each method runs in its own try/except; a time budget skips what
would not finish.

GPU (about 5 minutes on one H100)::

    PYTHONUNBUFFERED=1 python bench/rollouts.py --shape 8b --batch-sizes 64,256 \
        --prompt-len 128 --new-tokens 256 --lora 16 --out runs/bench/rollouts_8b.json

CPU (seconds; proves the script end to end)::

    python bench/rollouts.py --device cpu --shape tiny --batch-sizes 4,8 --new-tokens 16
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from looper_utils import engine as eng  # noqa: E402
from looper_utils.engine import kernels as ek  # noqa: E402

SHAPES = {
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256),
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256),
    "tiny": dict(hidden_size=128, intermediate_size=344, num_hidden_layers=4, num_attention_heads=8,
                 num_key_value_heads=2, vocab_size=2048),
}
# (name fragment, HBM bytes/s, dense bf16 FLOP/s); first match wins, so specific names come first
GPU_SPECS = [("H200", 4.8e12, 989e12), ("H100 NVL", 3.9e12, 835e12), ("H100 PCIe", 2.0e12, 756e12),
             ("H100", 3.35e12, 989e12), ("A100-SXM4-80GB", 2.039e12, 312e12), ("A100 80GB", 1.935e12, 312e12),
             ("A100", 1.555e12, 312e12), ("L40S", 0.864e12, 362e12), ("A10", 0.6e12, 125e12)]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="8b", choices=[*SHAPES, "custom"])
    for k in ("hidden", "intermediate", "layers", "heads", "kv-heads", "vocab"):
        ap.add_argument(f"--{k}", type=int, default=None, help="custom shape (with --shape custom)")
    ap.add_argument("--batch-sizes", default="64,256")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--dtype", default="bf16", choices=list(DTYPES))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--methods", default="engine,hf_static,hf_dynamic",
                    help="comma list of engine, hf_static, hf_dynamic")
    ap.add_argument("--engine-variants", default="triton+fused,sdpa+fused,sdpa",
                    help="comma list of attention (triton|sdpa|auto) with optional +fused glue kernels")
    ap.add_argument("--kv-bucket", type=int, default=64)
    ap.add_argument("--lora", type=int, default=0, help="LoRA rank: also time in-engine vs merged adapters")
    ap.add_argument("--4bit", dest="four_bit", action="store_true", help="also time a bitsandbytes nf4 base")
    ap.add_argument("--top-p-row", type=float, default=0.95, help="extra engine row at the largest batch with "
                    "this top_p (0 to skip): the cost of the sort")
    ap.add_argument("--check-tokens", type=int, default=32, help="greedy tokens compared with HF")
    ap.add_argument("--time-budget", type=float, default=420.0, help="seconds; later items are skipped past it")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="JSON results file")
    ap.add_argument("--md", default=None, help="also write the markdown table here")
    return ap.parse_args(argv)


def shape_of(args) -> dict:
    if args.shape != "custom":
        return dict(SHAPES[args.shape])
    vals = dict(hidden_size=args.hidden, intermediate_size=args.intermediate, num_hidden_layers=args.layers,
                num_attention_heads=args.heads, num_key_value_heads=args.kv_heads, vocab_size=args.vocab)
    missing = [k for k, v in vals.items() if v is None]
    if missing:
        raise SystemExit(f"--shape custom needs {missing}")
    return vals


def build_model(dims: dict, dtype, device, seed: int, max_pos: int):
    """Random-init Llama straight on the device: meta construction, to_empty, in-place normal_."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**dims, max_position_embeddings=max(max_pos, 2048), rope_theta=500000.0,
                      tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2, dtype=dtype)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(prev)
    model.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.dim() == 1:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=gen)
    # meta construction left the rotary buffers empty: rebuild them (float32, as from_pretrained does)
    model.model.rotary_emb = type(model.model.rotary_emb)(config=cfg).to(device)
    # no EOS anywhere: every method generates exactly --new-tokens per row
    model.generation_config.eos_token_id = None
    model.generation_config.bos_token_id = None
    return model.eval()


def variant_of(variant: str) -> tuple[str, bool | str]:
    """'triton+fused' -> ('triton', True); 'sdpa' -> ('sdpa', False); 'auto' -> ('auto', 'auto')."""
    attention, _, extra = variant.partition("+")
    if attention not in ("auto", "triton", "sdpa") or extra not in ("", "fused"):
        raise ValueError(f"engine variant {variant!r}: use triton|sdpa|auto, optionally +fused")
    return attention, (True if extra else ("auto" if attention == "auto" else False))


def gpu_spec(device) -> tuple[str, float | None, float | None]:
    if device.type != "cuda":
        return platform.processor() or "cpu", None, None
    name = torch.cuda.get_device_name(device)
    for frag, bw, fl in GPU_SPECS:
        if frag.lower() in name.lower():
            return name, bw, fl
    return name, None, None


def measure_bandwidth(device) -> float | None:
    """Device-to-device copy of 1 GiB: read + write bytes over time."""
    if device.type != "cuda":
        return None
    x = torch.empty(2**29, dtype=torch.float16, device=device)
    y = torch.empty_like(x)
    y.copy_(x)
    torch.cuda.synchronize()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for _ in range(10):
        y.copy_(x)
    e1.record()
    torch.cuda.synchronize()
    bw = 2 * x.numel() * 2 * 10 / (e0.elapsed_time(e1) / 1e3)
    del x, y
    torch.cuda.empty_cache()
    return bw


def model_costs(model, dims: dict) -> dict:
    """Bytes and FLOPs a decode step must touch, from the model itself (embedding table: only B rows)."""
    weight_bytes, matmul_params = 0, 0
    for name, p in model.named_parameters():
        if "embed_tokens" in name:
            continue
        weight_bytes += p.numel() * p.element_size()
        if p.dim() == 2:
            matmul_params += p.numel()
    hq, hkv = dims["num_attention_heads"], dims["num_key_value_heads"]
    head_dim = dims["hidden_size"] // hq
    dt_bytes = next(model.parameters()).element_size()
    kv_per_token = dims["num_hidden_layers"] * 2 * hkv * head_dim * dt_bytes
    return dict(weight_bytes=weight_bytes, matmul_params=matmul_params, kv_bytes_per_token=kv_per_token,
                attn_flops_per_token_col=4 * dims["num_hidden_layers"] * hq * head_dim)


def step_limit(costs: dict, batch: int, mean_len: float, bw, flops) -> dict:
    """The decode floor for one step at this batch: max(bytes / bandwidth, FLOPs / peak)."""
    bytes_step = costs["weight_bytes"] + batch * mean_len * costs["kv_bytes_per_token"]
    flops_step = 2 * costs["matmul_params"] * batch + batch * mean_len * costs["attn_flops_per_token_col"]
    out = dict(batch=batch, mean_len=mean_len, bytes_per_step=bytes_step, flops_per_step=flops_step)
    if bw:
        t_bw = bytes_step / bw
        t_fl = flops_step / flops if flops else 0.0
        out.update(t_bw_ms=t_bw * 1e3, t_flops_ms=t_fl * 1e3, limit_tok_s=batch / max(t_bw, t_fl))
    return out


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device):
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device):
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def free(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


class Bench:
    def __init__(self, args):
        self.args = args
        self.t0 = time.perf_counter()
        self.device = torch.device(args.device)
        self.dtype = DTYPES[args.dtype]
        # largest first: the headline comparison is measured first if the budget runs short
        self.batches = sorted({int(b) for b in args.batch_sizes.split(",") if b}, reverse=True)
        self.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        self.dims = shape_of(args)
        self.report = dict(meta={}, limits={}, attention_microbench=[], results=[], checks={}, skipped=[], errors=[])
        can_triton = self.device.type == "cuda" and ek.triton_available()
        self.variants = [v.strip() for v in args.engine_variants.split(",") if v.strip()]
        dropped = [v for v in self.variants if not can_triton and ("triton" in v or "fused" in v)]
        for v in dropped:
            self.report["skipped"].append(f"engine[{v}]: needs CUDA and triton")
        self.variants = [v for v in self.variants if v not in dropped] or ["sdpa"]
        self.prompts = {}

    # ------------------------------------------------------------ bookkeeping
    def left(self) -> float:
        return self.args.time_budget - (time.perf_counter() - self.t0)

    def afford(self, what: str, need: float) -> bool:
        if self.left() >= need:
            return True
        self.report["skipped"].append(f"{what}: needs ~{need:.0f}s, {self.left():.0f}s left of the budget")
        log(f"SKIP {what} (time budget)")
        return False

    def save(self):
        self.report["meta"]["elapsed_s"] = round(time.perf_counter() - self.t0, 1)
        if self.args.out:
            path = Path(self.args.out)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(path.suffix + ".tmp")
            tmp.write_text(json.dumps(self.report, indent=1, default=str))
            os.replace(tmp, path)

    def guarded(self, what: str, fn, *a, **kw):
        try:
            return fn(*a, **kw)
        except Exception as exc:  # one method failing must not lose the others' numbers
            msg = f"{what}: {type(exc).__name__}: {str(exc)[:600]}"
            self.report["errors"].append(dict(what=what, error=msg, trace=traceback.format_exc()[-3000:]))
            log(f"ERROR {msg}")
            free(self.device)
            return None
        finally:
            self.save()

    def prompt(self, batch: int):
        if batch not in self.prompts:
            g = torch.Generator().manual_seed(self.args.seed + batch)
            ids = torch.randint(3, self.dims["vocab_size"], (batch, self.args.prompt_len), generator=g)
            self.prompts[batch] = (ids.to(self.device), torch.ones_like(ids).to(self.device))
        return self.prompts[batch]

    def add_row(self, method: str, batch: int, seconds: float, extra: dict | None = None):
        a = self.args
        lim = self.report["limits"].get(str(batch), {})
        tok_s = batch * a.new_tokens / seconds
        row = dict(method=method, batch=batch, seconds=round(seconds, 3), tokens_per_s=round(tok_s, 1),
                   ms_per_step=round(seconds / a.new_tokens * 1e3, 3), peak_gib=peak_gib(self.device))
        if lim.get("limit_tok_s"):
            row["frac_of_limit"] = round(tok_s / lim["limit_tok_s"], 4)
        row.update(extra or {})
        if row.get("decode_ms_per_step") and lim.get("limit_tok_s"):
            row["decode_frac_of_limit"] = round(batch / (row["decode_ms_per_step"] / 1e3) / lim["limit_tok_s"], 4)
        self.report["results"].append(row)
        pk = f"{row['peak_gib']:.1f} GiB" if row["peak_gib"] is not None else "-"
        log(f"RESULT {method:<28} B={batch:<4} {tok_s:9.1f} tok/s  {row['ms_per_step']:8.2f} ms/step  "
            f"decode {row.get('decode_ms_per_step', '-')} ms  frac {row.get('frac_of_limit', '-')}  peak {pk}")
        return row

    # ----------------------------------------------------------------- phases
    def setup(self):
        a, dev = self.args, self.device
        name, bw_spec, fl_spec = gpu_spec(dev)
        import transformers

        meta = self.report["meta"]
        meta.update(device=name, torch=torch.__version__, transformers=transformers.__version__,
                    triton=getattr(ek.triton, "__version__", None), python=platform.python_version(),
                    args=vars(a), shape=self.dims, bw_spec=bw_spec, flops_spec=fl_spec)
        log(f"device {name}; torch {torch.__version__}; transformers {transformers.__version__}; "
            f"triton {meta['triton']}")
        t = time.perf_counter()
        torch.manual_seed(a.seed)
        self.model = build_model(self.dims, self.dtype, dev, a.seed, a.prompt_len + a.new_tokens)
        sync(dev)
        meta["build_s"] = round(time.perf_counter() - t, 1)
        costs = model_costs(self.model, self.dims)
        meta["costs"] = costs
        meta["bw_measured"] = measure_bandwidth(dev)
        bw = bw_spec or meta["bw_measured"]
        meta["bw_used"] = bw
        mean_len = a.prompt_len + (a.new_tokens - 1) / 2
        for b in self.batches:
            self.report["limits"][str(b)] = step_limit(costs, b, mean_len, bw, fl_spec)
        log(f"model built in {meta['build_s']}s: weights read per step {costs['weight_bytes'] / 1e9:.2f} GB, "
            f"KV {costs['kv_bytes_per_token'] / 1024:.0f} KiB/token; bandwidth spec "
            f"{(bw_spec or 0) / 1e12:.2f} TB/s, measured {(meta['bw_measured'] or 0) / 1e12:.2f} TB/s")
        for b, lim in self.report["limits"].items():
            if "limit_tok_s" in lim:
                log(f"LIMIT B={b}: {lim['bytes_per_step'] / 1e9:.1f} GB/step -> {lim['t_bw_ms']:.2f} ms; "
                    f"{lim['flops_per_step'] / 1e12:.2f} TFLOP/step -> {lim['t_flops_ms']:.2f} ms; "
                    f"{lim['limit_tok_s']:.0f} tok/s")
        self.save()

    def attention_microbench(self):
        """One layer's decode attention at the mean filled length: HF-style vs the engine's kernels."""
        if self.device.type != "cuda":
            return
        from torch.nn.attention import SDPBackend, sdpa_kernel

        d = self.dims
        hq, hkv = d["num_attention_heads"], d["num_key_value_heads"]
        hd = d["hidden_size"] // hq
        a = self.args
        cap = a.prompt_len + a.new_tokens
        cur = a.prompt_len + a.new_tokens // 2
        for b in self.batches:
            q = torch.randn(b, hq, hd, device=self.device, dtype=self.dtype)
            k = torch.randn(b, hkv, cap, hd, device=self.device, dtype=self.dtype)
            v = torch.randn_like(k)
            start = torch.zeros(b, dtype=torch.long, device=self.device)
            col = torch.tensor([cur - 1], device=self.device)
            L = min(cap, -(-cur // a.kv_bucket) * a.kv_bucket)
            mask = ek.decode_mask(start, col, L, self.dtype)
            full_mask = ek.decode_mask(start, col, cap, self.dtype)
            scale = hd ** -0.5

            def hf_style():  # repeat_kv to all heads, attend the whole static cache
                kk = k[:, :, None].expand(b, hkv, hq // hkv, cap, hd).reshape(b, hq, cap, hd)
                vv = v[:, :, None].expand(b, hkv, hq // hkv, cap, hd).reshape(b, hq, cap, hd)
                return torch.nn.functional.scaled_dot_product_attention(q[:, :, None], kk, vv, attn_mask=full_mask,
                                                                        scale=scale)

            cands = {"hf_style(repeat_kv+full cache)": hf_style,
                     "sdpa_packed(default)": lambda: ek.sdpa_decode(q, k, v, L, mask, scale)}
            for nm, bk in (("efficient", SDPBackend.EFFICIENT_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION),
                           ("math", SDPBackend.MATH)):
                def run(bk=bk):
                    with sdpa_kernel([bk]):
                        return ek.sdpa_decode(q, k, v, L, mask, scale)
                cands[f"sdpa_packed({nm})"] = run
            if ek.triton_available():
                splits = ek.default_splits(b, hkv, cap, torch.cuda.get_device_properties(self.device).multi_processor_count)
                cands[f"triton(splits={splits})"] = lambda: ek.triton_decode(q, k, v, start, col, scale, splits)
            ref = ek.sdpa_decode(q.float(), k.float(), v.float(), L, mask.float(), scale)
            read = b * hkv * cur * hd * 2 * k.element_size()
            for nm, fn in cands.items():
                try:
                    out = fn()
                    err = float((out.reshape(b, hq, hd).float() - ref).abs().max())
                    for _ in range(3):
                        fn()
                    sync(self.device)
                    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    e0.record()
                    for _ in range(20):
                        fn()
                    e1.record()
                    sync(self.device)
                    us = e0.elapsed_time(e1) / 20 * 1e3
                    row = dict(batch=b, kernel=nm, us_per_layer=round(us, 1), max_err=err,
                               eff_tb_s_filled=round(read / (us / 1e6) / 1e12, 3))
                except Exception as exc:
                    row = dict(batch=b, kernel=nm, error=f"{type(exc).__name__}: {str(exc)[:200]}")
                self.report["attention_microbench"].append(row)
                log(f"ATTN B={b} {nm:<34} {row.get('us_per_layer', '-'):>8} us  "
                    f"{row.get('eff_tb_s_filled', '-')} TB/s(filled)  err {row.get('max_err', row.get('error'))}")
            del q, k, v
            free(self.device)

    def run_engine(self, model, batch: int, variant: str, label: str, top_p=None):
        a = self.args
        ids, mask = self.prompt(batch)
        attention, fused = variant_of(variant)
        e = eng.Engine(model, attention=attention, fused=fused, kv_bucket=a.kv_bucket)
        gen = torch.Generator(device=self.device).manual_seed(a.seed)
        kw = dict(max_new_tokens=a.new_tokens, temperature=a.temperature, top_p=a.top_p if top_p is None else top_p,
                  top_k=a.top_k, eos_token_id=None, pad_token_id=0, generator=gen)
        e.sample(ids, mask, **kw)  # warm: captures the CUDA graphs
        reset_peak(self.device)
        out = e.sample(ids, mask, **kw)
        decode_ms = (out.seconds - out.prefill_seconds) / max(1, out.decode_steps) * 1e3
        extra = dict(decode_ms_per_step=round(decode_ms, 3), prefill_ms=round(out.prefill_seconds * 1e3, 1),
                     attention=out.attention, fused=out.fused, cuda_graphs=out.cuda_graphs, graphs=e.n_captures,
                     kv_cache_gib=round(e.cache_bytes / 2**30, 2))
        if top_p is not None:
            extra["top_p"] = top_p
        row = self.add_row(f"{label}[{out.attention}{'+fused' if out.fused else ''}]", batch, out.seconds, extra)
        del e, out
        free(self.device)
        return row

    def profile_engine(self):
        """Kernel time of one decode step at the longest KV length (largest batch, default engine)."""
        if self.device.type != "cuda":
            return
        from torch.profiler import ProfilerActivity, profile

        a, b = self.args, max(self.batches)
        ids, mask = self.prompt(b)
        e = eng.Engine(self.model, kv_bucket=a.kv_bucket)
        e.sample(ids, mask, max_new_tokens=a.new_tokens, temperature=a.temperature, pad_token_id=0)
        out = {}
        for graphs in (True, False):
            e.repeat_last_step(3, graphs=graphs)
            sync(self.device)
            t = time.perf_counter()
            e.repeat_last_step(10, graphs=graphs)
            sync(self.device)
            wall_ms = (time.perf_counter() - t) / 10 * 1e3
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                e.repeat_last_step(5, graphs=graphs)
                sync(self.device)
            rows = []
            for ev in prof.key_averages():
                dev_us = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0)
                if dev_us:
                    rows.append((dev_us / 5, ev.count // 5, ev.key[:90]))
            rows.sort(reverse=True)
            kernels_ms = sum(r[0] for r in rows) / 1e3
            name = "graphs" if graphs else "eager"
            out[name] = dict(wall_ms_per_step=round(wall_ms, 3), kernel_ms_per_step=round(kernels_ms, 3),
                             top=[dict(us=round(u, 1), calls=c, kernel=k) for u, c, k in rows[:25]])
            log(f"PROFILE engine[{e.attention}{'+fused' if e.fused else ''}] B={b} {name}: wall {wall_ms:.2f} ms/step, "
                f"kernels {kernels_ms:.2f} ms/step (KV length {a.prompt_len + a.new_tokens - 1})")
            for u, c, k in rows[:12]:
                log(f"    {u:9.1f} us  x{c:<4} {k}")
        self.report["profile"] = out
        del e
        free(self.device)

    def run_hf(self, model, batch: int, cache: str):
        from transformers import GenerationConfig

        a = self.args
        ids, mask = self.prompt(batch)
        gc_kw = dict(do_sample=a.temperature > 0, pad_token_id=0, eos_token_id=None, bos_token_id=None)
        if a.temperature > 0:
            gc_kw.update(temperature=a.temperature, top_p=a.top_p, top_k=a.top_k)
        if cache == "static":
            gc_kw["cache_implementation"] = "static"
        cfg = GenerationConfig(max_new_tokens=a.new_tokens, **gc_kw)
        warm_cfg = cfg if cache == "static" else GenerationConfig(max_new_tokens=4, **gc_kw)
        t = time.perf_counter()
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=mask, generation_config=warm_cfg)
        sync(self.device)
        warm_s = time.perf_counter() - t
        reset_peak(self.device)
        torch.manual_seed(a.seed)
        t = time.perf_counter()
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=cfg)
        sync(self.device)
        secs = time.perf_counter() - t
        n = out.shape[1] - ids.shape[1]
        if n != a.new_tokens:
            raise RuntimeError(f"HF generated {n} tokens, expected {a.new_tokens}")
        row = self.add_row(f"hf_{cache}", batch, secs, dict(warm_s=round(warm_s, 1)))
        del out
        free(self.device)
        return row

    def greedy_check(self):
        """Engine greedy against HF greedy (dynamic cache) on left-padded prompts of different lengths."""
        from transformers import GenerationConfig

        a = self.args
        n, b = a.check_tokens, 8
        g = torch.Generator().manual_seed(a.seed + 99)
        width = min(64, a.prompt_len)
        lens = [width - 7 * i for i in range(b)]
        lens = [max(1, x) for x in lens]
        ids = torch.zeros(b, width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, ln in enumerate(lens):
            ids[r, width - ln:] = torch.randint(3, self.dims["vocab_size"], (ln,), generator=g)
            mask[r, width - ln:] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        cfg = GenerationConfig(max_new_tokens=n, do_sample=False, pad_token_id=0, eos_token_id=None, bos_token_id=None)
        with torch.no_grad():
            hf = self.model.generate(input_ids=ids, attention_mask=mask, generation_config=cfg)[:, width:]
            hf_logits = self.model(input_ids=ids, attention_mask=mask).logits[:, -1].float()
        checks = self.report["checks"]
        outs = {}
        for att in self.variants:
            try:
                attention, fused = variant_of(att)
                e = eng.Engine(self.model, attention=attention, fused=fused, kv_bucket=a.kv_bucket)
            except RuntimeError as exc:
                checks[f"greedy_{att}"] = dict(error=str(exc))
                continue
            lg = e.prefill_logits(ids, mask)
            res = e.sample(ids, mask, max_new_tokens=n, temperature=0.0, pad_token_id=0)
            outs[att] = res.sequences
            same = (res.sequences == hf)
            first = [int((~row).nonzero()[0, 0]) if (~row).any() else n for row in same]
            rel = float((lg - hf_logits).abs().max() / hf_logits.abs().max())
            checks[f"greedy_{att}"] = dict(
                rows=b, tokens=n, exact_rows=int(same.all(dim=1).sum()), match_fraction=float(same.float().mean()),
                prefix_fraction=sum(first) / (b * n), first_divergence=first,
                prefill_logits_max_rel_diff=rel,
                prefill_argmax_agree=float((lg.argmax(-1) == hf_logits.argmax(-1)).float().mean()))
            log(f"CHECK engine[{att}] greedy vs HF: exact rows {checks[f'greedy_{att}']['exact_rows']}/{b}, "
                f"prefix fraction {checks[f'greedy_{att}']['prefix_fraction']:.3f}, first divergence {first}, "
                f"prefill logits rel diff {rel:.2e}")
            del e
        names = list(outs)
        for other in names[1:]:
            agree = (outs[names[0]] == outs[other]).float().mean().item()
            checks[f"greedy_{names[0]}_vs_{other}_match_fraction"] = agree
            log(f"CHECK engine {names[0]} vs {other} greedy: {agree:.3f} of tokens equal")
        free(self.device)

    def lora_phase(self):
        import peft

        a = self.args
        b = max(self.batches)
        t = time.perf_counter()
        cfg = peft.LoraConfig(r=a.lora, lora_alpha=2 * a.lora, lora_dropout=0.0,
                              target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
        pm = peft.get_peft_model(self.model, cfg)
        with torch.no_grad():
            for name, p in pm.named_parameters():
                if "lora_B" in name:
                    p.normal_(0.0, 1e-3)
        pm.eval()
        log(f"LoRA r={a.lora} attached in {time.perf_counter() - t:.1f}s")
        try:
            self.guarded("engine+lora in-engine", self.run_engine, pm, b, "auto", "engine+lora(in-engine)")
            sync(self.device)
            t = time.perf_counter()
            pm.merge_adapter()
            sync(self.device)
            merge_s = time.perf_counter() - t
            row = self.guarded("engine+lora merged", self.run_engine, pm, b, "auto", "engine+lora(merged)")
            t = time.perf_counter()
            pm.unmerge_adapter()
            sync(self.device)
            if row is not None:
                row.update(merge_s=round(merge_s, 3), unmerge_s=round(time.perf_counter() - t, 3))
            log(f"LoRA merge {merge_s:.2f}s, unmerge {time.perf_counter() - t:.2f}s")
        finally:
            self.model = pm.unload()
            free(self.device)

    def four_bit_phase(self):
        try:
            import bitsandbytes as bnb
        except ImportError:
            self.report["skipped"].append("4bit: bitsandbytes is not installed")
            log("SKIP 4bit: bitsandbytes is not installed")
            return
        t = time.perf_counter()
        for layer in self.model.model.layers:
            for parent in (layer.self_attn, layer.mlp):
                for name, lin in list(parent.named_children()):
                    if not isinstance(lin, torch.nn.Linear):
                        continue
                    q4 = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=lin.bias is not None,
                                           compute_dtype=self.dtype, quant_type="nf4", device="meta")
                    q4.weight = bnb.nn.Params4bit(lin.weight.data, requires_grad=False, quant_type="nf4").to(self.device)
                    setattr(parent, name, q4)
                    del lin
        free(self.device)
        log(f"quantized to nf4 in {time.perf_counter() - t:.1f}s")
        b = max(self.batches)
        self.guarded("engine 4bit", self.run_engine, self.model, b, "auto", "engine+nf4")
        if "hf_dynamic" in self.methods and self.afford("hf_dynamic nf4", 60):
            row = self.guarded("hf_dynamic 4bit", self.run_hf, self.model, b, "dynamic")
            if row:
                row["method"] = "hf_dynamic+nf4"

    def run(self):
        a = self.args
        self.guarded("setup", self.setup)
        if not hasattr(self, "model"):
            return self.finish()
        self.guarded("attention microbench", self.attention_microbench)
        if "engine" in self.methods:
            for b in self.batches:
                for var in self.variants:
                    if self.afford(f"engine[{var}] B={b}", 20):
                        self.guarded(f"engine[{var}] B={b}", self.run_engine, self.model, b, var, "engine")
        if a.check_tokens > 0 and self.afford("greedy check", 15):
            self.guarded("greedy check", self.greedy_check)
        if "hf_static" in self.methods:
            need = 200.0 if self.device.type == "cuda" else 10.0
            for b in self.batches:
                if self.afford(f"hf_static B={b}", need):
                    t = time.perf_counter()
                    self.guarded(f"hf_static B={b}", self.run_hf, self.model, b, "static")
                    need = min(need, (time.perf_counter() - t) * 1.2)
        if "engine" in self.methods and self.afford("engine profile", 30):
            self.guarded("engine profile", self.profile_engine)
        if a.lora and self.afford("lora", 40):
            self.guarded("lora", self.lora_phase)
        if "engine" in self.methods and a.top_p_row and a.top_p_row < 1.0 and self.afford("engine top_p row", 20):
            self.guarded("engine top_p", self.run_engine, self.model, max(self.batches), "auto",
                         f"engine(top_p={a.top_p_row})", top_p=a.top_p_row)
        if "hf_dynamic" in self.methods:
            for b in self.batches:
                if self.afford(f"hf_dynamic B={b}", 40 if self.device.type == "cuda" else 5):
                    self.guarded(f"hf_dynamic B={b}", self.run_hf, self.model, b, "dynamic")
        if a.four_bit and self.afford("4bit", 60):
            self.guarded("4bit", self.four_bit_phase)
        return self.finish()

    def finish(self):
        rows = self.report["results"]
        base = {r["batch"]: r["tokens_per_s"] for r in rows if r["method"] == "hf_static"}
        for r in rows:
            if r["batch"] in base:
                r["speedup_vs_hf_static"] = round(r["tokens_per_s"] / base[r["batch"]], 2)
        md = markdown(self.report)
        print("\n" + md, flush=True)
        if self.args.md:
            Path(self.args.md).write_text(md)
        self.save()
        return self.report


def markdown(report: dict) -> str:
    m = report["meta"]
    a = m.get("args", {})
    lines = [f"### Rollouts, {m.get('device')} ({a.get('shape')} shape, random init, {a.get('dtype')}, "
             f"prompt {a.get('prompt_len')} + {a.get('new_tokens')} new tokens, T={a.get('temperature')}, "
             f"top_p={a.get('top_p')})", "",
             f"torch {m.get('torch')}, transformers {m.get('transformers')}, triton {m.get('triton')}; bandwidth "
             f"spec {(m.get('bw_spec') or 0) / 1e12:.2f} TB/s, measured {(m.get('bw_measured') or 0) / 1e12:.2f} TB/s", "",
             "| method | batch | tokens/s | ms/step (all) | decode ms/step | frac of limit | x HF static | peak GiB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["results"]:
        pk = f"{r['peak_gib']:.1f}" if r.get("peak_gib") is not None else "-"
        lines.append(f"| {r['method']} | {r['batch']} | {r['tokens_per_s']:.0f} | {r['ms_per_step']:.2f} | "
                     f"{r.get('decode_ms_per_step', '-')} | {r.get('frac_of_limit', '-')} | "
                     f"{r.get('speedup_vs_hf_static', '-')} | {pk} |")
    for b, lim in report["limits"].items():
        if "limit_tok_s" in lim:
            lines.append(f"\nLimit at B={b}: {lim['bytes_per_step'] / 1e9:.1f} GB and {lim['flops_per_step'] / 1e12:.2f} "
                         f"TFLOP per step -> {lim['t_bw_ms']:.2f} ms (bandwidth), {lim['t_flops_ms']:.2f} ms (compute), "
                         f"{lim['limit_tok_s']:.0f} tokens/s.")
    for k, v in report["checks"].items():
        lines.append(f"\nCheck {k}: {json.dumps(v) if not isinstance(v, float) else round(v, 4)}")
    for s in report["skipped"]:
        lines.append(f"\nSkipped: {s}")
    for e in report["errors"]:
        lines.append(f"\nError: {e['error']}")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --device cpu --shape tiny")
    Bench(args).run()


if __name__ == "__main__":
    main()
