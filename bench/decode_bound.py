"""How fast can a bf16 decode step of the 8B shape be on this GPU? The projections' floor, measured.

The rollout engine's step is the model's projection GEMMs, attention over the
KV cache, and the glue between them (``docs/benchmarks.md``). This bench times
what no attention or glue kernel can remove: the GEMMs of one step over all
32 layers and the LM head, with random bf16 weights of the Llama-3-8B shape
(distinct weights per layer, so nothing is served from L2), captured in a CUDA
graph so launch gaps do not count. For each batch size it reports:

- ``separate``: q, k, v, o, gate, up, down and the LM head, one GEMM each (what
  the engine runs: the model's own ``nn.Linear`` modules);
- ``fused``: q|k|v and gate|up concatenated into one weight each (what a
  fused-projection engine would run);
- the roofline of each: per GEMM, the larger of its bytes over the measured
  copy bandwidth and its FLOPs over the measured dense bf16 matmul rate;
- ``attention_floor_ms``: the KV cache a step reads at the mean filled length
  (prompt + half the new tokens), over the copy bandwidth;
- ``prefill_ms``: the prompt's projection GEMMs (``batch x prompt_len`` tokens, in
  16,384-token chunks as the engine's prefill) -- attention and glue left out;
- ``best_tokens_per_s``: ``batch x new_tokens`` over prefill + ``new_tokens`` steps
  of (the faster GEMM set + the attention floor): an upper bound for any engine
  that keeps bf16 weights, since sampling, norms, rotary and cache writes are
  not counted.

GPU (about a minute on one H200)::

    python bench/decode_bound.py --out runs/bench/decode_bound.json

CPU (a smaller shape, seconds; proves the script end to end)::

    python bench/decode_bound.py --device cpu --layers 2 --hidden 256 --kv-heads 2 --heads 4 \
        --intermediate 512 --vocab 1024 --batch-sizes 4,8 --prompt-len 16 --new-tokens 8
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch


def timed(fn, device: torch.device, reps: int) -> float:
    """Seconds per call: on CUDA one call captured in a graph and replayed ``reps`` times (events)."""
    fn()
    if device.type != "cuda":
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - t) / reps
    torch.cuda.synchronize(device)
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize(device)
    start.record()
    for _ in range(reps):
        graph.replay()
    end.record()
    torch.cuda.synchronize(device)
    return start.elapsed_time(end) / 1000 / reps


def machine_rates(device: torch.device, dtype, reps: int) -> tuple[float, float]:
    """(copy bandwidth in bytes/s counting read + write, dense matmul FLOP/s) measured on ``device``."""
    n = (1 << 30) if device.type == "cuda" else (1 << 24)
    src = torch.empty(n, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    bw = 2 * n / timed(lambda: dst.copy_(src), device, reps)
    del src, dst
    m = 8192 if device.type == "cuda" else 512
    a = torch.randn(m, m, dtype=dtype, device=device)
    b = torch.randn(m, m, dtype=dtype, device=device)
    c = torch.empty(m, m, dtype=dtype, device=device)
    flops = 2 * m ** 3 / timed(lambda: torch.mm(a, b, out=c), device, max(3, reps // 4))
    return bw, flops


def layer_shapes(a) -> dict[str, list[tuple[int, int]]]:
    """(out, in) of each projection of one layer, separate and fused."""
    q, kv, h, i = a.heads * a.head_dim, a.kv_heads * a.head_dim, a.hidden, a.intermediate
    return {"separate": [(q, h), (kv, h), (kv, h), (h, q), (i, h), (i, h), (h, i)],
            "fused": [(q + 2 * kv, h), (h, q), (2 * i, h), (h, i)]}


def gemm_set(shapes, layers: int, vocab: int, hidden: int, m: int, device, dtype):
    """A closure running every projection of ``layers`` layers (distinct weights) and the LM head at ``m`` rows."""
    weights = [[torch.randn(o, k, dtype=dtype, device=device) * 0.02 for o, k in shapes] for _ in range(layers)]
    head = torch.randn(vocab, hidden, dtype=dtype, device=device) * 0.02
    widest = max(k for _, k in shapes)
    x = torch.randn(m, widest, dtype=dtype, device=device)
    outs = [torch.empty(m, o, dtype=dtype, device=device) for o, _ in shapes]
    logits = torch.empty(m, vocab, dtype=dtype, device=device)

    def run():
        for layer in weights:
            for w, out in zip(layer, outs):
                torch.mm(x[:, : w.shape[1]], w.t(), out=out)
        torch.mm(x[:, :hidden], head.t(), out=logits)

    nbytes = sum(o * k for o, k in shapes) * layers + vocab * hidden
    return run, weights, nbytes * torch.finfo(dtype).bits // 8


def roofline(shapes, layers, vocab, hidden, m, elem, bw, flops) -> float:
    """Seconds: per GEMM max(weight + activation bytes / bw, FLOPs / rate), summed."""
    def one(o, k):
        return max((o * k + m * (o + k)) * elem / bw, 2 * m * o * k / flops)
    return layers * sum(one(o, k) for o, k in shapes) + one(vocab, hidden)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--intermediate", type=int, default=14336)
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--batch-sizes", default="64,256")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--prefill-tokens", type=int, default=16384)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    a.head_dim = a.hidden // a.heads
    device, dtype = torch.device(a.device), torch.bfloat16
    elem = torch.finfo(dtype).bits // 8
    bw, flops = machine_rates(device, dtype, a.reps)
    res = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
           "torch": torch.__version__, "copy_bandwidth_gb_s": round(bw / 1e9, 1),
           "matmul_tflops": round(flops / 1e12, 1), "shape": {k: v for k, v in vars(a).items() if k not in ("out",)},
           "batches": {}}
    print(f"copy bandwidth {bw / 1e9:.0f} GB/s, dense bf16 matmul {flops / 1e12:.0f} TFLOP/s", flush=True)
    shapes = layer_shapes(a)
    for b in (int(s) for s in a.batch_sizes.split(",")):
        row = {}
        for name, sh in shapes.items():
            run, weights, nbytes = gemm_set(sh, a.layers, a.vocab, a.hidden, b, device, dtype)
            row[f"{name}_ms"] = round(1000 * timed(run, device, a.reps), 3)
            row[f"{name}_roofline_ms"] = round(1000 * roofline(sh, a.layers, a.vocab, a.hidden, b, elem, bw, flops), 3)
            row["weight_gb"] = round(nbytes / 1e9, 2)
            if name == "fused":  # the prompt's GEMMs, in the engine's prefill chunks
                tokens, chunk = b * a.prompt_len, max(a.prompt_len, a.prefill_tokens // a.prompt_len * a.prompt_len)
                full, rest = divmod(tokens, chunk)
                pre = 0.0
                for m, times in ((chunk, full), (rest, 1)):
                    if m and times:
                        prun, pw, _ = gemm_set(sh, a.layers, a.vocab, a.hidden, m, device, dtype)
                        pre += times * timed(prun, device, max(2, a.reps // 5))
                        del prun, pw
                row["prefill_ms"] = round(1000 * pre, 1)
            del run, weights
            if device.type == "cuda":
                torch.cuda.empty_cache()
        mean_ctx = a.prompt_len + a.new_tokens / 2
        kv = b * mean_ctx * a.layers * 2 * a.kv_heads * a.head_dim * elem
        row["attention_floor_ms"] = round(1000 * kv / bw, 3)
        step = min(row["separate_ms"], row["fused_ms"]) + row["attention_floor_ms"]
        total = row["prefill_ms"] / 1000 + a.new_tokens * step / 1000
        row["best_step_ms"] = round(step, 3)
        row["best_tokens_per_s"] = round(b * a.new_tokens / total)
        res["batches"][str(b)] = row
        print(f"B={b}: {json.dumps(row)}", flush=True)
        if a.out:
            Path(a.out).parent.mkdir(parents=True, exist_ok=True)
            Path(a.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
