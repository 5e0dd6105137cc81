"""Top-p sampling cost per decode step: HF's sort (``kernels.sample_tokens``) against the sort-free kernel.

Times, with CUDA events, one draw per row from ``[batch, vocab]`` bf16 logits:

- ``sort_ms``: ``sample_tokens`` on a float32 copy (what the engine ran for top_p < 1);
- ``top_p_ms``: ``engine.top_p.top_p_sample`` (threshold search, no sort, no host sync);
- ``plain_ms``: ``gumbel_sample``, plain temperature sampling: the floor top-p is measured against.

Flat rows (``N(0, 1)`` logits at T=1, the nucleus holds most of the vocabulary, like the random-init
bench model) and, with ``--peaked``, ``N(0, 8^2)`` (a few tokens hold the mass). One JSON line per
configuration. The engine's whole step is timed by ``bench/rollouts.py`` (``--top-p-row``).

GPU::

    python bench/top_p.py --batch 256 --vocab 128256 --top-p 0.95
    python bench/top_p.py --batch 256 --vocab 128256 --top-p 0.95 --peaked
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from looper_utils.engine.kernels import gumbel_sample, sample_tokens  # noqa: E402
from looper_utils.engine.top_p import top_p_sample  # noqa: E402


def _time_ms(fn, iters: int) -> float:
    for _ in range(3):  # compiles, allocator warm-up
        fn()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(iters):
        fn()
    stop.record()
    torch.cuda.synchronize()
    return start.elapsed_time(stop) / iters


def bench_top_p(batch: int = 256, vocab: int = 128256, top_p: float = 0.95, temperature: float = 1.0,
                peaked: bool = False, iters: int = 20) -> dict:
    """Milliseconds per call of the sort path, the sort-free path and plain sampling; printed as one JSON line."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    logits = (torch.randn(batch, vocab, device="cuda", generator=gen) * (8.0 if peaked else 1.0)).bfloat16()
    seed = torch.tensor([1], device="cuda")
    out: dict = dict(batch=batch, vocab=vocab, top_p=top_p, temperature=temperature, peaked=peaked,
                     gpu=torch.cuda.get_device_name())
    out["sort_ms"] = _time_ms(lambda: sample_tokens(logits.float(), temperature, top_p, 0, gen), iters)
    out["top_p_ms"] = _time_ms(lambda: top_p_sample(logits, temperature, top_p, seed), iters)
    out["plain_ms"] = _time_ms(lambda: gumbel_sample(logits, temperature, seed), iters)
    out = {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}
    print(json.dumps(out), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--peaked", action="store_true")
    ap.add_argument("--iters", type=int, default=20)
    a = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/top_p.py times CUDA kernels: no CUDA device here")
    bench_top_p(a.batch, a.vocab, a.top_p, a.temperature, a.peaked, a.iters)


if __name__ == "__main__":
    main()
