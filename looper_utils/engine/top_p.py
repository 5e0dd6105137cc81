"""Top-p (nucleus) sampling without a sort over the vocabulary, for the rollout engine.

``kernels.sample_tokens`` follows transformers' ``TopPLogitsWarper``: sort the
whole row, softmax, cumsum. At batch 256 and a 128,256-token vocabulary that
sort costs ~3.3 ms per decode step on an H200, a third of the step. Written
here because torch has no sort-free nucleus sampler and flashinfer (which has
one) is not a dependency; a "top-k then sort" prefilter does not help either,
since at temperature 1 a nucleus can hold most of the vocabulary.

The kept set, exactly
---------------------
HF sorts the scores ``s = logits / T`` ascending, takes ``cum_j`` = softmax
mass of the tokens sorted at or below ``j`` and removes ``j`` when
``cum_j <= 1 - top_p``, always keeping the top token. With
``C(t) = sum_{s_i <= t} softmax(s)_i`` that keeps exactly the tokens with
``s_i >= tau``, where

    tau = the smallest score value t in the row with C(t) > 1 - top_p

(``C`` is nondecreasing, so the kept set is an upper set of the scores; the
top token has ``C = 1``, so ``tau <= max``; ``C`` only steps at the row's
scores, so ``tau`` is one of them). This is the complement of "mass of the
tokens at or above t >= top_p", written as HF compares: a sum from below
against ``1 - top_p``. This module finds ``tau`` per row without sorting:

- scores are mapped to order-preserving int32 keys (IEEE bits, negative ones
  with the magnitude bits flipped; -0.0 and +0.0 share key 0), so "the
  smallest t with C(t) > thr" is a search over at most 2**32 integers;
- each pass evaluates ``C`` at ``NT = 16`` evenly spaced keys of the current
  range in one read of the row and keeps the sub-range where ``C`` crosses
  ``1 - top_p``: 4 bits per pass, 8 passes from [key(min finite), key(max)];
- the draw is a Gumbel-max (exponential race) restricted to ``key >= tau``,
  which is exactly a draw from the renormalised nucleus.

Nothing is approximated but the float sums: the search ends on one key, the
exact float32 ``tau``.

Ties: tokens whose score equals ``tau`` are all kept. HF's sort puts equal
scores in an arbitrary order and keeps only those of them whose running sum
passes the boundary, so on a tie at the boundary HF's kept set is itself one
arbitrary choice; away from ties (e.g. float32 logits) the sets are equal.
``-inf`` scores (top-k masks) have zero mass and lie below the search range,
so they are never kept; a row with one finite score keeps that token.
Rounding: ``C`` is a float sum, so when ``C(t)`` is within float rounding of
``1 - top_p`` the two methods can disagree on that one boundary score, as two
HF runs on differently ordered rows can.

Two implementations, same search:

- ``top_p_threshold`` / ``top_p_filter`` / ``top_p_sample_torch``: pure torch,
  vectorised over rows, chunked over the vocabulary (never ``[B, NT, V]``),
  masses summed in float64 from float32 softmax probabilities and compared in
  float32 as HF does: the reference and the CPU path of the tests;
- ``top_p_sample``: Triton (CUDA, or CPU under ``TRITON_INTERPRET=1``), no
  host sync: a stats pass (row max, min finite score, sum of exp per chunk),
  8 mass passes (each program finishes the previous pass's choice from its
  partial sums, so there is no glue between launches), and a Gumbel-max pass
  with ``gumbel_sample``'s seed-tensor and Philox layout. Each launch reads
  the logits once (66 MB of bf16 at 256 x 128k) and a mass pass does NT
  compare-adds per column; from the third pass on, blocks of columns with
  no key inside the (by then narrow) range take one masked sum instead.

Scores in the kernels are ``logits * fl32(1 / T)``, which is what torch
computes for ``logits / T`` on CUDA (a CPU-scalar divisor is applied as a
reciprocal multiply there); ``scale_scores`` gives the same values in torch.
"""
from __future__ import annotations

import functools
import os
import struct
import warnings
from types import SimpleNamespace

import torch

try:  # triton is optional: the GPU wheel of torch brings it, the CPU one does not
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None
    tl = None

NT = 16  # thresholds per pass: 4 bits of the 32-bit key per read of the row
_Q = 512  # Philox block of the sampling pass, as in kernels.gumbel_sample
_BLOCK = 256  # columns per step of the mass passes: [NT, _BLOCK] accumulators stay in registers
_SKIP_FROM = 2  # first pass (0-based) that skips blocks with no key inside the range


def _f32(x: float) -> float:
    """``x`` rounded to float32 (as a Python float), on the host."""
    return struct.unpack("f", struct.pack("f", x))[0]


def n_passes(n_thresholds: int = NT) -> int:
    """Passes that narrow a range of 2**32 keys to one: smallest P with n_thresholds**P >= 2**32."""
    if n_thresholds < 2:
        raise ValueError(f"n_thresholds must be >= 2, got {n_thresholds}")
    p, reach = 0, 1
    while reach < 2**32:
        p, reach = p + 1, reach * n_thresholds
    return p


# ------------------------------------------------------------------ torch reference
def scale_scores(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Float32 scores as the kernels compute them: ``logits * fl32(1 / T)`` (torch's ``logits / T`` on CUDA)."""
    x = logits.float()
    return x if temperature == 1.0 else x * (1.0 / temperature)


def order_keys(scores: torch.Tensor) -> torch.Tensor:
    """Float32 -> int32 keys with ``a < b  <=>  key(a) < key(b)`` (NaN aside); -0.0 and +0.0 both map to 0."""
    bits = scores.contiguous().view(torch.int32)
    # negative floats order backwards in their magnitude bits: flip those, keep the sign bit
    key = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return torch.where(scores == 0, torch.zeros_like(key), key)


def key_floats(keys: torch.Tensor) -> torch.Tensor:
    """Inverse of ``order_keys`` (int32 or int64 keys in the int32 range) -> float32."""
    k = keys.to(torch.int32)
    return torch.where(k < 0, k ^ 0x7FFFFFFF, k).view(torch.float32)


def _narrow(lo: torch.Tensor, hi: torch.Tensor, mass: torch.Tensor, thr: torch.Tensor):
    """One search step: ``mass[:, c]`` is C at candidate ``c`` of ``[lo, hi]``; return the sub-range holding tau.

    Candidates are ``lo + c * step`` with ``step = ceil((hi - lo + 1) / n)``. One fails when ``C <= thr``;
    fails form a prefix (C is nondecreasing and each sum is monotone in its terms), and a candidate at or
    past ``hi`` never fails (``hi`` is the row max, whose C is the whole mass). The kernels do the same.
    """
    n = mass.shape[1]
    step = (hi - lo + n) // n
    cand = lo[:, None] + torch.arange(n, device=lo.device) * step[:, None]
    fails = ((mass <= thr) & (cand < hi[:, None])).sum(dim=1)
    new_lo = torch.where(fails == 0, lo, lo + (fails - 1) * step + 1)
    new_hi = torch.where(fails == 0, lo, torch.minimum(lo + fails * step, hi))
    return new_lo, new_hi


def top_p_threshold(scores: torch.Tensor, top_p: float, n_thresholds: int = NT,
                    chunk: int | None = None) -> torch.Tensor:
    """Per-row nucleus threshold ``tau [B]`` (float32) of float32 ``scores [B, V]``: HF keeps ``scores >= tau``.

    Pure torch, vectorised over rows; each pass reads the row in chunks of ``chunk`` columns
    (default 8192), so the temporaries are ``[B, chunk]``: each column's bucket among the candidates
    (``searchsorted``), its probability added to that bucket, ``C`` a cumsum over the buckets.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be [batch, vocab], got {tuple(scores.shape)}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    s = scores.float()
    b, v = s.shape
    chunk = chunk or 8192
    # HF's comparison: float32 cumsum (CPU: accumulated in double) against float32(1 - top_p)
    thr = torch.tensor(1.0 - top_p, dtype=torch.float32, device=s.device)
    probs = torch.softmax(s, dim=-1).double()  # HF's float32 probabilities, summed in float64
    keys = order_keys(s)
    hi = keys.amax(dim=1).long()  # key of the max
    finite_min = torch.where(s > float("-inf"), s, float("inf")).amin(dim=1)
    lo = torch.minimum(order_keys(finite_min).long(), hi)  # an all -inf row gets lo == hi
    steps = torch.arange(n_thresholds, device=s.device)
    for _ in range(n_passes(n_thresholds)):
        step = (hi - lo + n_thresholds) // n_thresholds
        cand = torch.minimum(lo[:, None] + steps * step[:, None], hi[:, None])  # [B, n]
        # bucket j of a column = the first candidate >= its key; C at candidate c = mass of buckets <= c
        bucket = torch.zeros((b, n_thresholds + 1), dtype=torch.float64, device=s.device)
        cand = cand.int()  # clamped to [lo, hi]: int32, as the keys
        for v0 in range(0, v, chunk):
            j = torch.searchsorted(cand, keys[:, v0:v0 + chunk].contiguous())
            bucket.scatter_add_(1, j, probs[:, v0:v0 + chunk])
        mass = bucket[:, :n_thresholds].cumsum(dim=1)
        lo, hi = _narrow(lo, hi, mass.float(), thr)
    return key_floats(lo)


def top_p_filter(scores: torch.Tensor, top_p: float, n_thresholds: int = NT) -> torch.Tensor:
    """``TopPLogitsWarper(top_p)`` without the sort: scores outside the nucleus set to -inf (ties at tau kept)."""
    tau = top_p_threshold(scores, top_p, n_thresholds)
    s = scores.float()
    return s.masked_fill(s < tau[:, None], float("-inf"))


def top_p_sample_torch(scores: torch.Tensor, top_p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw per row from the renormalised nucleus of float32 ``scores`` (exponential race, as sample_tokens)."""
    probs = torch.softmax(top_p_filter(scores, top_p), dim=-1)
    race = torch.empty_like(probs).exponential_(generator=generator)
    race.clamp_min_(torch.finfo(race.dtype).tiny)  # CPU exponential_ can return 0, which would let any token win
    return probs.div_(race).argmax(dim=-1)


# --------------------------------------------------------------------- Triton kernels
@functools.lru_cache(maxsize=2)
def _kernels(interpret: bool):
    """Build the kernels; ``interpret`` only keys the cache (triton reads TRITON_INTERPRET at jit time).

    No jit helper functions: the interpreter runs a kernel's source in its module's globals, where a
    helper defined next to it here (a closure) is not found. So the search kernel has three modes
    (first pass, later pass, draw) sharing the per-row steps, and only the score load and key
    (five lines) are written more than once.
    """

    @triton.jit
    def stats_kernel(LOGITS, STATS, s_l, V, CHUNK, inv_t,
                     SPLITS: tl.constexpr, BLOCK: tl.constexpr, SCALE: tl.constexpr):
        # per (row, chunk): max, smallest finite score, sum exp(s - max) (online, per lane)
        row = tl.program_id(0).to(tl.int64)
        split = tl.program_id(1)
        lo = split * CHUNK
        hi = tl.minimum(lo + CHUNK, V)
        m = tl.full([BLOCK], float("-inf"), tl.float32)
        mn = tl.full([BLOCK], float("inf"), tl.float32)
        acc = tl.zeros([BLOCK], tl.float32)
        for v0 in range(lo, hi, BLOCK):
            offs = v0 + tl.arange(0, BLOCK)
            # columns past the end read as -inf: zero mass, below every candidate key, never drawn
            x = tl.load(LOGITS + row * s_l + offs, mask=offs < hi, other=float("-inf")).to(tl.float32)
            if SCALE:
                x = x * inv_t  # what torch's logits / T computes on CUDA
            m_new = tl.maximum(m, x)
            safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # no NaN from -inf - -inf
            acc = acc * tl.exp(m - safe) + tl.exp(x - safe)
            m = m_new
            mn = tl.minimum(mn, tl.where(x > float("-inf"), x, float("inf")))
        top = tl.max(m, 0)
        top_safe = tl.where(top == float("-inf"), 0.0, top)
        out = STATS + (row * SPLITS + split) * 3
        tl.store(out, top)
        tl.store(out + 1, tl.min(mn, 0))
        tl.store(out + 2, tl.sum(acc * tl.exp(m - top_safe), 0))

    @triton.jit
    def search_kernel(LOGITS, STATS, PART_IN, LOHI_IN, PART_OUT, LOHI_OUT, OUT_VAL, OUT_IDX, TAU, SEED,
                      s_l, V, CHUNK, inv_t, thr,
                      SPLITS: tl.constexpr, S_PAD: tl.constexpr, NT: tl.constexpr, BLOCK: tl.constexpr,
                      Q: tl.constexpr, SCALE: tl.constexpr, FIRST: tl.constexpr, SAMPLE: tl.constexpr,
                      SKIP: tl.constexpr):
        # One program per (row, chunk). Every mode first settles the row's key range [lo, hi]: from the
        # stats (FIRST), or by finishing the previous pass's choice from its partial masses (every
        # program of the row does this same small reduction, so nothing runs between launches).
        # Then a search pass (sum exp(s - max) below each of NT candidate keys over the chunk), or,
        # with SAMPLE, the draw: the range is one key, tau.
        row = tl.program_id(0).to(tl.int64)
        split = tl.program_id(1)
        sp = tl.arange(0, S_PAD)
        sok = sp < SPLITS
        st = STATS + (row * SPLITS + sp) * 3
        ms = tl.load(st, mask=sok, other=float("-inf"))
        m = tl.max(ms, 0)
        m_safe = tl.where(m == float("-inf"), 0.0, m)  # an all -inf row: no NaN from -inf - -inf
        z = tl.sum(tl.load(st + 2, mask=sok, other=0.0) * tl.exp(ms - m_safe), 0)
        c = tl.arange(0, NT)
        if FIRST:
            minf = tl.min(tl.load(st + 1, mask=sok, other=float("inf")), 0)
            mbits = m.to(tl.int32, bitcast=True)
            fbits = minf.to(tl.int32, bitcast=True)
            # order-preserving keys (see order_keys): flip the magnitude bits of negatives, 0 for +-0
            hi = tl.where(m == 0.0, 0, tl.where(mbits < 0, mbits ^ 0x7FFFFFFF, mbits)).to(tl.int64)
            lo = tl.where(minf == 0.0, 0, tl.where(fbits < 0, fbits ^ 0x7FFFFFFF, fbits)).to(tl.int64)
            lo = tl.minimum(lo, hi)  # an all -inf row (min finite = +inf): one key
        else:
            # the torch reference's _narrow on the previous pass's masses, summed over the chunks
            lo = tl.load(LOHI_IN + row * 2)
            hi = tl.load(LOHI_IN + row * 2 + 1)
            part = tl.load(PART_IN + (row * SPLITS + sp[:, None]) * NT + c[None, :], mask=sok[:, None], other=0.0)
            mass = tl.sum(part, 0)
            step = (hi - lo + NT) // NT
            cand = lo + c.to(tl.int64) * step
            fails = tl.sum(((mass <= thr * z) & (cand < hi)).to(tl.int64), 0)
            new_lo = tl.where(fails == 0, lo, lo + (fails - 1) * step + 1)
            hi = tl.where(fails == 0, lo, tl.minimum(lo + fails * step, hi))
            lo = new_lo
        if SAMPLE:
            # kernels.gumbel_argmax restricted to key >= tau, with its Philox counters (one per 4
            # columns): a row whose nucleus is every finite score draws what gumbel_sample draws.
            tau = lo.to(tl.int32)
            tau_bits = tl.where(tau < 0, tau ^ 0x7FFFFFFF, tau)
            tl.store(TAU + row, tau_bits.to(tl.float32, bitcast=True), mask=split == 0)
            seed = tl.load(SEED)
            start = split * CHUNK
            end = tl.minimum(start + CHUNK, V)
            cq = tl.arange(0, Q)
            best = tl.full([Q], float("-inf"), tl.float32)
            best_idx = tl.zeros([Q], tl.int32)
            for v0 in range(start, end, 4 * Q):
                counter = (row * tl.cdiv(V, 4) + v0 // 4 + cq).to(tl.int32)
                u0, u1, u2, u3 = tl.rand4x(seed, counter)
                for k in tl.static_range(4):
                    u = tl.where(k == 0, u0, tl.where(k == 1, u1, tl.where(k == 2, u2, u3)))
                    offs = v0 + k * Q + cq
                    ok = offs < end
                    x = tl.load(LOGITS + row * s_l + offs, mask=ok, other=float("-inf")).to(tl.float32)
                    if SCALE:
                        x = x * inv_t
                    bits = x.to(tl.int32, bitcast=True)
                    key = tl.where(x == 0.0, 0, tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits))
                    u = tl.minimum(u, 0.99999994)  # u == 1.0 would give a +inf Gumbel (see gumbel_argmax)
                    g = tl.where(ok & (key >= tau), x - tl.log(-tl.log(u)), float("-inf"))
                    better = g > best
                    best = tl.where(better, g, best)
                    best_idx = tl.where(better, offs, best_idx)
            top = tl.max(best, 0)
            idx = tl.min(tl.where(best == top, best_idx, 2147483647), 0)
            tl.store(OUT_VAL + row * SPLITS + split, top)
            tl.store(OUT_IDX + row * SPLITS + split, idx.to(tl.int64))
        else:
            tl.store(LOHI_OUT + row * 2, lo, mask=split == 0)
            tl.store(LOHI_OUT + row * 2 + 1, hi, mask=split == 0)
            step = (hi - lo + NT) // NT
            cand = tl.minimum(lo + c.to(tl.int64) * step, hi).to(tl.int32)  # int32 keys after the clamp
            first = lo.to(tl.int32)
            last = tl.max(cand, 0)
            start = split * CHUNK
            end = tl.minimum(start + CHUNK, V)
            end = tl.where(hi > lo, end, start)  # range already one key: the masses go unused, skip the read
            acc = tl.zeros([NT, BLOCK], tl.float32)
            below = tl.zeros([BLOCK], tl.float32)
            for v0 in range(start, end, BLOCK):
                offs = v0 + tl.arange(0, BLOCK)
                x = tl.load(LOGITS + row * s_l + offs, mask=offs < end, other=float("-inf")).to(tl.float32)
                if SCALE:
                    x = x * inv_t
                bits = x.to(tl.int32, bitcast=True)
                key = tl.where(x == 0.0, 0, tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits))
                e = tl.exp(x - m_safe)
                if SKIP:
                    # later passes: the range is narrow and most blocks have no key inside it, so one
                    # masked sum serves all NT candidates (the block-wide test is not worth it early on)
                    inside = (key > first) & (key <= last)
                    if tl.max(inside.to(tl.int32), 0) > 0:
                        acc += tl.where(key[None, :] <= cand[:, None], e[None, :], 0.0)
                    else:
                        below += tl.where(key <= first, e, 0.0)
                else:
                    acc += tl.where(key[None, :] <= cand[:, None], e[None, :], 0.0)
            mass = tl.sum(acc, 1) + tl.sum(below, 0)
            tl.store(PART_OUT + (row * SPLITS + split) * NT + c, mass)

    return SimpleNamespace(stats=stats_kernel, search=search_kernel)


def _k():
    return _kernels(os.environ.get("TRITON_INTERPRET") == "1")


def top_p_sample(logits: torch.Tensor, temperature: float, top_p: float, seed: torch.Tensor,
                 splits: int | None = None, return_tau: bool = False):
    """Draw from the top-p nucleus of ``softmax(logits / temperature)`` per row, on the device, no host sync.

    ``logits [B, V]`` (any float dtype), ``seed``: 1-element int tensor as for ``kernels.gumbel_sample``.
    With ``return_tau`` also returns the per-row threshold (float32 scores ``>= tau`` are kept).
    """
    kern = _k()
    b, v = logits.shape
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    if b * -(-v // 4) >= 2**31:
        raise ValueError(f"top_p_sample: batch * vocab / 4 = {b * v // 4} overflows the int32 random counter")
    if not 0.0 < top_p <= 1.0 or temperature <= 0.0:
        raise ValueError(f"top_p must be in (0, 1] and temperature > 0, got {top_p}, {temperature}")
    if splits is None:  # about 2048 programs in all, as gumbel_sample
        splits = max(1, min(-(-2048 // b), v // (16 * _Q)))
    chunk = -(-v // splits)
    chunk = -(-chunk // (4 * _Q)) * (4 * _Q)  # whole Philox blocks: gumbel_sample's counter layout
    splits = -(-v // chunk)
    s_pad = max(2, triton.next_power_of_2(splits))
    n_pass = n_passes(NT)
    dev = logits.device
    stats = torch.empty((b, splits, 3), dtype=torch.float32, device=dev)
    part = torch.empty((n_pass, b, splits, NT), dtype=torch.float32, device=dev)
    lohi = torch.empty((n_pass, b, 2), dtype=torch.long, device=dev)
    vals = torch.empty((b, splits), dtype=torch.float32, device=dev)
    idx = torch.empty((b, splits), dtype=torch.long, device=dev)
    tau = torch.empty(b, dtype=torch.float32, device=dev)
    scale = temperature != 1.0
    inv_t = _f32(1.0 / temperature)  # the float32 torch multiplies by for logits / T on CUDA
    thr = _f32(1.0 - top_p)  # HF compares against float32(1 - top_p)
    grid = (b, splits)
    kern.stats[grid](logits, stats, logits.stride(0), v, chunk, inv_t,
                     SPLITS=splits, BLOCK=_BLOCK, SCALE=scale, num_warps=4)
    consts = dict(SPLITS=splits, S_PAD=s_pad, NT=NT, BLOCK=_BLOCK, Q=_Q, SCALE=scale, num_warps=4)
    for i in range(n_pass + 1):
        prev = max(i - 1, 0)  # the first pass reads no previous pass (FIRST): any buffer will do
        out = min(i, n_pass - 1)  # the sampling pass writes no masses (SAMPLE)
        kern.search[grid](logits, stats, part[prev], lohi[prev], part[out], lohi[out], vals, idx, tau, seed,
                          logits.stride(0), v, chunk, inv_t, thr, FIRST=i == 0, SAMPLE=i == n_pass,
                          SKIP=i >= _SKIP_FROM, **consts)
    tokens = idx.gather(1, vals.argmax(dim=1, keepdim=True))[:, 0]
    return (tokens, tau) if return_tau else tokens


def check_top_p(device, dtype=torch.bfloat16, seed: int = 0) -> float:
    """Errors of ``top_p_sample`` on rows whose nucleus is known with wide margins (0 when all is well).

    Rows of four score levels (1 token at 6, 5 at 4, 50 at 2, the rest at 0; shuffled): at T=1 and
    top_p=0.2 the nucleus is the 56 tokens >= 2 (masses above 4 and 2: 0.17 and 0.26), at T=2 and
    top_p=0.05 the 106 tokens >= 1 after scaling (0.025 and 0.086). Counts wrong thresholds, draws
    outside the nucleus, and misses of a planted maximum at near-zero temperature.
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    b, v = 4, 3001
    level = torch.zeros(v)
    level[0], level[1:6], level[6:56] = 6.0, 4.0, 2.0
    rows = torch.stack([level[torch.randperm(v, generator=gen)] for _ in range(b)]).to(device, dtype)
    errs = 0.0
    for temp, p, want in ((1.0, 0.2, 2.0), (2.0, 0.05, 1.0)):
        for s in range(3):
            tok, tau = top_p_sample(rows, temp, p, torch.tensor([s + 1], device=device), return_tau=True)
            errs += float((tau != want).sum())
            errs += float((rows.float().gather(1, tok[:, None])[:, 0] / temp < want).sum())
    lg = torch.randn(3, v, generator=gen).to(device, dtype)
    top = torch.tensor([7, 1500, 2999], device=device)
    lg[torch.arange(3, device=device), top] = 8.0
    errs += float((top_p_sample(lg, 1e-2, 0.9, torch.tensor([5], device=device)) != top).sum())
    return errs


@functools.lru_cache(maxsize=None)
def _ready(device: str, interpret: bool) -> bool:
    try:
        err = check_top_p(torch.device(device))
    except Exception as exc:  # compile or launch failure on this machine: keep the sort path, say why
        warnings.warn(f"Top-p kernel off: {type(exc).__name__}: {exc}")
        return False
    if err != 0:
        warnings.warn(f"Top-p kernel off: {err:.0f} errors on rows with a known nucleus")
    return err == 0


def top_p_ready(device) -> bool:
    """Whether ``top_p_sample`` passed ``check_top_p`` on ``device`` (checked once per device, one host sync)."""
    if triton is None:
        return False
    return _ready(str(torch.device(device)), os.environ.get("TRITON_INTERPRET") == "1")
