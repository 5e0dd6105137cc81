"""Attention, fused decode ops and samplers for the rollout engine (``looper_utils.engine.sampler``).

Decode attention reads each key/value head once for all the query heads that
share it, and only the filled part of the cache:

- ``sdpa_decode``: the G query heads of one KV head are packed as G rows of
  one SDPA call (``[B, H_kv, G, D]`` against ``[B, H_kv, L, D]``), so any SDPA
  backend (cuDNN, memory-efficient, CPU flash) reads the KV heads without the
  ``repeat_kv`` copy HF makes, over a bucketed cache slice with an additive
  mask for left padding and the unfilled tail;
- ``triton_decode``: split-K flash-decoding over exactly ``[start_b, col]``
  per row, ``col`` read from device memory so one CUDA graph serves every step.

Fused decode ops (Triton, HF's roundings kept): ``add_rmsnorm``,
``rope_cache`` (rotary + K/V written into the cache column), ``silu_mul``.
Written here because torch's SDPA has no per-row lengths and transformers,
vLLM and flash-attn do not ship these kernels for a plain dense cache (vLLM
and flash-attn are not dependencies either).

Sampling follows transformers' warpers in their order (temperature, top-k,
top-p, with HF's tie and boundary rules). ``sample_tokens`` draws with the
exponential race ``argmax(p / E)``, ``E ~ Exp(1)``: exactly categorical(p), as
``torch.multinomial`` does for one sample, minus its host-syncing check.
``gumbel_sample`` does plain temperature sampling in one pass over the logits;
top-p on the fused path is ``engine.top_p.top_p_sample`` (this draw restricted
to the nucleus, whose threshold is found without a sort).
The Triton kernels run on CUDA, or on CPU under ``TRITON_INTERPRET=1``.
"""
from __future__ import annotations

import functools
import os
from types import SimpleNamespace

import torch
import torch.nn.functional as F

try:  # triton is optional: the GPU wheel of torch brings it, the CPU one does not
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None
    tl = None


# --------------------------------------------------------------------- sampling
def sample_tokens(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next token per row from float32 ``logits [B, V]``; ``temperature <= 0`` is greedy.

    >>> x = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 0.0]])
    >>> sample_tokens(x, temperature=0.0).tolist()
    [1, 0]
    >>> sample_tokens(x, temperature=1.0, top_k=1).tolist()
    [1, 0]
    """
    if temperature <= 0.0:
        return logits.argmax(dim=-1)
    scores = logits / temperature if temperature != 1.0 else logits
    neg_inf = float("-inf")
    if top_k > 0 and top_k < scores.shape[-1]:
        # HF TopKLogitsWarper: drop scores below the k-th largest, ties at the k-th kept.
        kth = torch.topk(scores, top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, neg_inf)
    if top_p < 1.0:
        # HF TopPLogitsWarper: ascending sort, drop the low tail whose mass is <= 1 - top_p,
        # always keep the most likely token.
        sorted_logits, sorted_idx = torch.sort(scores, descending=False, dim=-1)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove_sorted = cum <= (1.0 - top_p)
        remove_sorted[..., -1:] = False
        remove = remove_sorted.scatter(-1, sorted_idx, remove_sorted)
        scores = scores.masked_fill(remove, neg_inf)
    probs = torch.softmax(scores, dim=-1)
    race = torch.empty_like(probs).exponential_(generator=generator)
    # CPU exponential_ can return exactly 0 (log1p(-0)); a zero would let any token win.
    race.clamp_min_(torch.finfo(race.dtype).tiny)
    return probs.div_(race).argmax(dim=-1)


# ------------------------------------------------------------- SDPA decode path
def decode_mask(start: torch.Tensor, col: torch.Tensor, length: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive mask ``[B, 1, 1, length]``: 0 on columns ``start_b <= c <= col``, -inf elsewhere."""
    cols = torch.arange(length, device=start.device)
    ok = (cols[None, :] >= start[:, None]) & (cols[None, :] <= col)
    zero = torch.zeros((), dtype=dtype, device=start.device)
    return torch.where(ok, zero, float("-inf")).to(dtype)[:, None, None, :]


def sdpa_decode(q, k_cache, v_cache, length: int, mask, scale: float) -> torch.Tensor:
    """Decode attention through SDPA: ``q [B, Hq, D]`` -> ``[B, Hq, D]``.

    ``k_cache``/``v_cache`` are ``[B, H_kv, T, D]``; only ``[:length]`` is read.
    """
    b, hq, d = q.shape
    hkv = k_cache.shape[1]
    qg = q.reshape(b, hkv, hq // hkv, d)
    out = F.scaled_dot_product_attention(
        qg, k_cache[:, :, :length], v_cache[:, :, :length], attn_mask=mask, scale=scale
    )
    return out.reshape(b, hq, d)


def prefill_mask(attention_mask: torch.Tensor, groups: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive causal + padding mask ``[B, 1, G*P, P]`` for GQA-packed prefill queries.

    A padding query attends to itself only, so no row is fully masked (that
    would make NaN in the pad positions' states and, through 0 * NaN in later
    layers, everywhere).
    """
    b, p = attention_mask.shape
    idx = torch.arange(p, device=attention_mask.device)
    causal = idx[None, :] <= idx[:, None]
    ok = (causal[None] & attention_mask[:, None, :].bool()) | torch.eye(p, dtype=torch.bool, device=idx.device)
    zero = torch.zeros((), dtype=dtype, device=idx.device)
    add = torch.where(ok, zero, float("-inf")).to(dtype)[:, None]  # [B, 1, P, P]
    return add.repeat(1, 1, groups, 1)


def sdpa_prefill(q, k, v, mask, scale: float) -> torch.Tensor:
    """Prefill attention: ``q [B, Hq, P, D]``, ``k/v [B, H_kv, P, D]`` -> ``[B, P, Hq*D]``."""
    b, hq, p, d = q.shape
    hkv = k.shape[1]
    qg = q.reshape(b, hkv, (hq // hkv) * p, d)
    out = F.scaled_dot_product_attention(qg, k, v, attn_mask=mask, scale=scale)
    return out.reshape(b, hq, p, d).transpose(1, 2).reshape(b, p, hq * d)


# ----------------------------------------------------------- Triton decode path
def triton_available() -> bool:
    """True where the Triton kernels can run: triton importable and a CUDA device (or the interpreter)."""
    if triton is None:
        return False
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"


@functools.lru_cache(maxsize=2)
def _kernels(interpret: bool):
    """Build the kernels; ``interpret`` only keys the cache (triton reads TRITON_INTERPRET at jit time)."""

    @triton.jit
    def split_kernel(
        Q, K, V, START, COL, O_PART, LSE_PART, qk_scale,
        s_qb, s_qh, s_kb, s_kh, s_kt, s_vb, s_vh, s_vt, s_ob, s_oh, s_os, s_lb, s_lh,
        HKV: tl.constexpr, G: tl.constexpr, G_PAD: tl.constexpr, D: tl.constexpr,
        BLOCK_N: tl.constexpr, SPLITS: tl.constexpr, IEEE: tl.constexpr,
    ):
        pid = tl.program_id(0)
        split = tl.program_id(1)
        b = (pid // HKV).to(tl.int64)  # int64: row offsets of a large cache pass 2**31
        h = pid % HKV
        start = tl.load(START + b).to(tl.int32)
        end = tl.load(COL).to(tl.int32) + 1
        chunk = tl.cdiv(tl.cdiv(end - start, SPLITS), BLOCK_N) * BLOCK_N
        lo = start + split * chunk
        hi = tl.minimum(lo + chunk, end)

        offs_g = tl.arange(0, G_PAD)
        offs_d = tl.arange(0, D)
        g_ok = offs_g < G
        heads = h * G + offs_g
        q = tl.load(Q + b * s_qb + heads[:, None] * s_qh + offs_d[None, :], mask=g_ok[:, None], other=0.0)
        m_i = tl.full([G_PAD], float("-inf"), tl.float32)
        l_i = tl.zeros([G_PAD], tl.float32)
        acc = tl.zeros([G_PAD, D], tl.float32)
        k_base = K + b * s_kb + h * s_kh
        v_base = V + b * s_vb + h * s_vh
        for n0 in range(lo, hi, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            n_ok = offs_n < hi
            k = tl.load(k_base + offs_n[:, None] * s_kt + offs_d[None, :], mask=n_ok[:, None], other=0.0)
            if IEEE:
                qk = tl.dot(q, tl.trans(k), input_precision="ieee")
            else:
                qk = tl.dot(q, tl.trans(k))
            qk = tl.where(n_ok[None, :], qk * qk_scale, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(qk, 1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(qk - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(v_base + offs_n[:, None] * s_vt + offs_d[None, :], mask=n_ok[:, None], other=0.0)
            if IEEE:
                pv = tl.dot(p, v.to(tl.float32), input_precision="ieee")
            else:
                pv = tl.dot(p.to(v.dtype), v)
            acc = acc * alpha[:, None] + pv
            m_i = m_new
        has = l_i > 0.0
        out = acc / tl.where(has, l_i, 1.0)[:, None]
        lse = tl.where(has, m_i + tl.log2(tl.where(has, l_i, 1.0)), float("-inf"))
        tl.store(O_PART + b * s_ob + heads[:, None] * s_oh + split * s_os + offs_d[None, :], out, mask=g_ok[:, None])
        tl.store(LSE_PART + b * s_lb + heads * s_lh + split, lse, mask=g_ok)

    @triton.jit
    def reduce_kernel(
        O_PART, LSE_PART, OUT, s_ob, s_oh, s_os, s_lb, s_lh, s_outb, s_outh,
        HQ: tl.constexpr, D: tl.constexpr, SPLITS: tl.constexpr, S_PAD: tl.constexpr,
    ):
        pid = tl.program_id(0)
        b = (pid // HQ).to(tl.int64)
        h = pid % HQ
        offs_s = tl.arange(0, S_PAD)
        s_ok = offs_s < SPLITS
        lse = tl.load(LSE_PART + b * s_lb + h * s_lh + offs_s, mask=s_ok, other=float("-inf"))
        w = tl.exp2(lse - tl.max(lse, 0))
        w = w / tl.sum(w, 0)
        offs_d = tl.arange(0, D)
        o = tl.load(O_PART + b * s_ob + h * s_oh + offs_s[:, None] * s_os + offs_d[None, :],
                    mask=s_ok[:, None], other=0.0)
        out = tl.sum(o * w[:, None], 0)
        tl.store(OUT + b * s_outb + h * s_outh + offs_d, out.to(OUT.dtype.element_ty))

    @triton.jit
    def add_rmsnorm_kernel(X, R, W, Y, XO, eps, s_x, s_r, s_y, s_xo,
                           N: tl.constexpr, BLOCK: tl.constexpr, HAS_RES: tl.constexpr):
        # HF LlamaRMSNorm with its roundings: (x + r) in the model dtype, statistics in
        # float32, normalised value cast back to the model dtype, then times the weight.
        row = tl.program_id(0).to(tl.int64)
        offs = tl.arange(0, BLOCK)
        ok = offs < N
        x = tl.load(X + row * s_x + offs, mask=ok, other=0.0)
        if HAS_RES:
            r = tl.load(R + row * s_r + offs, mask=ok, other=0.0)
            x = (x.to(tl.float32) + r.to(tl.float32)).to(XO.dtype.element_ty)
            tl.store(XO + row * s_xo + offs, x, mask=ok)
        xf = x.to(tl.float32)
        var = tl.sum(xf * xf, 0) / N
        y = (xf * tl.math.rsqrt(var + eps)).to(x.dtype)
        w = tl.load(W + offs, mask=ok, other=0.0)
        tl.store(Y + row * s_y + offs, (w.to(tl.float32) * y.to(tl.float32)).to(Y.dtype.element_ty), mask=ok)

    @triton.jit
    def rope_cache_kernel(Q, K, V, COS, SIN, QO, KC, VC, COL,
                          s_qb, s_kb, s_vb, s_cb, s_qob, s_kcb, s_kch, s_kct, s_vcb, s_vch, s_vct,
                          HQ: tl.constexpr, D: tl.constexpr):
        # HF apply_rotary_pos_emb with its roundings (q*cos, rotate_half(q)*sin, their sum), for
        # q into QO and k straight into the cache column COL; v is copied to the cache too.
        b = tl.program_id(0).to(tl.int64)
        h = tl.program_id(1)
        offs = tl.arange(0, D)
        partner = (offs + D // 2) % D
        sign = tl.where(offs < D // 2, -1.0, 1.0)
        cos = tl.load(COS + b * s_cb + offs).to(tl.float32)
        sin = tl.load(SIN + b * s_cb + offs).to(tl.float32)
        col = tl.load(COL)
        if h < HQ:
            src = Q + b * s_qb + h * D
        else:
            src = K + b * s_kb + (h - HQ) * D
        x = tl.load(src + offs)
        xp = tl.load(src + partner).to(tl.float32)
        dt = x.dtype
        t1 = (x.to(tl.float32) * cos).to(dt).to(tl.float32)
        t2 = ((sign * xp) * sin).to(dt).to(tl.float32)
        y = (t1 + t2).to(dt)
        if h < HQ:
            tl.store(QO + b * s_qob + h * D + offs, y)
        else:
            kh = h - HQ
            tl.store(KC + b * s_kcb + kh * s_kch + col * s_kct + offs, y)
            v = tl.load(V + b * s_vb + kh * D + offs)
            tl.store(VC + b * s_vcb + kh * s_vch + col * s_vct + offs, v)

    @triton.jit
    def silu_mul_kernel(G, U, O, n, BLOCK: tl.constexpr):
        # HF LlamaMLP: act_fn(gate) rounded to the model dtype, then times up.
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        ok = offs < n
        g = tl.load(G + offs, mask=ok, other=0.0)
        gf = g.to(tl.float32)
        s = (gf / (1.0 + tl.exp(-gf))).to(g.dtype).to(tl.float32)
        u = tl.load(U + offs, mask=ok, other=0.0).to(tl.float32)
        tl.store(O + offs, (s * u).to(O.dtype.element_ty), mask=ok)

    @triton.jit
    def gumbel_argmax_kernel(LOGITS, OUT_VAL, OUT_IDX, SEED, s_l, V, CHUNK, temperature,
                             SPLITS: tl.constexpr, Q: tl.constexpr):
        # argmax(logits / T + Gumbel) is a draw from softmax(logits / T). Program (row, split)
        # scans CHUNK columns, 4*Q at a time; Philox (keyed by a per-step seed drawn from the
        # caller's generator) gives 4 uniforms per counter, one counter per 4 columns.
        row = tl.program_id(0).to(tl.int64)
        split = tl.program_id(1)
        seed = tl.load(SEED)
        lo = split * CHUNK
        hi = tl.minimum(lo + CHUNK, V)
        c = tl.arange(0, Q)
        best = tl.full([Q], float("-inf"), tl.float32)
        best_idx = tl.zeros([Q], tl.int32)
        for v0 in range(lo, hi, 4 * Q):
            counter = (row * tl.cdiv(V, 4) + v0 // 4 + c).to(tl.int32)
            u0, u1, u2, u3 = tl.rand4x(seed, counter)
            for k in tl.static_range(4):
                u = tl.where(k == 0, u0, tl.where(k == 1, u1, tl.where(k == 2, u2, u3)))
                offs = v0 + k * Q + c
                ok = offs < hi
                s = tl.load(LOGITS + row * s_l + offs, mask=ok, other=0.0).to(tl.float32) / temperature
                # Philox floats can round up to exactly 1.0, whose Gumbel is +inf (that column
                # would win whatever its logit): cap at the largest float32 below 1.
                u = tl.minimum(u, 0.99999994)
                key = tl.where(ok, s - tl.log(-tl.log(u)), float("-inf"))
                better = key > best
                best = tl.where(better, key, best)
                best_idx = tl.where(better, offs, best_idx)
        top = tl.max(best, 0)
        idx = tl.min(tl.where(best == top, best_idx, 2147483647), 0)
        tl.store(OUT_VAL + row * SPLITS + split, top)
        tl.store(OUT_IDX + row * SPLITS + split, idx.to(tl.int64))

    return SimpleNamespace(split=split_kernel, reduce=reduce_kernel, add_rmsnorm=add_rmsnorm_kernel,
                           rope_cache=rope_cache_kernel, silu_mul=silu_mul_kernel, gumbel_argmax=gumbel_argmax_kernel)


def _k():
    return _kernels(os.environ.get("TRITON_INTERPRET") == "1")


def triton_supports(head_dim: int, groups: int) -> bool:
    """Shapes the kernel handles: power-of-two head_dim in [16, 256], up to 64 query heads per KV head."""
    return head_dim >= 16 and head_dim <= 256 and head_dim & (head_dim - 1) == 0 and 1 <= groups <= 64


def default_splits(batch: int, kv_heads: int, capacity: int, n_sm: int = 132) -> int:
    """Key-range splits per (row, KV head): about 4 programs per SM, at least 128 columns per split."""
    want = -(-4 * n_sm // max(1, batch * kv_heads))
    most = max(1, -(-capacity // 128))
    return int(max(1, min(16, want, most)))


def triton_decode(q, k_cache, v_cache, start, col, scale: float, splits: int, block_n: int = 64) -> torch.Tensor:
    """Flash-decoding over ``[start_b, col]``: ``q [B, Hq, D]`` -> ``[B, Hq, D]``.

    ``start`` is ``[B]`` int (first valid column per row), ``col`` a one-element
    int tensor (the column just written); both stay on the device.
    """
    kern = _k()
    b, hq, d = q.shape
    hkv = k_cache.shape[1]
    g = hq // hkv
    if q.stride(-1) != 1:
        q = q.contiguous()
    o_part = torch.empty((b, hq, splits, d), dtype=torch.float32, device=q.device)
    lse = torch.empty((b, hq, splits), dtype=torch.float32, device=q.device)
    out = torch.empty((b, hq, d), dtype=q.dtype, device=q.device)
    kern.split[(b * hkv, splits)](
        q, k_cache, v_cache, start, col, o_part, lse, scale * 1.4426950408889634,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        o_part.stride(0), o_part.stride(1), o_part.stride(2), lse.stride(0), lse.stride(1),
        HKV=hkv, G=g, G_PAD=max(16, triton.next_power_of_2(g)), D=d,
        BLOCK_N=block_n, SPLITS=splits, IEEE=q.dtype == torch.float32,
        num_warps=4, num_stages=2,
    )
    kern.reduce[(b * hq,)](
        o_part, lse, out, o_part.stride(0), o_part.stride(1), o_part.stride(2), lse.stride(0), lse.stride(1),
        out.stride(0), out.stride(1), HQ=hq, D=d, SPLITS=splits, S_PAD=max(2, triton.next_power_of_2(splits)),
        num_warps=4,
    )
    return out


def check_triton_decode(device, dtype, kv_heads: int, groups: int, head_dim: int, seed: int = 0) -> float:
    """Max abs error of ``triton_decode`` against ``sdpa_decode`` on random data (left padding, two splits)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    b, t = 3, 200
    q = torch.randn(b, kv_heads * groups, head_dim, generator=gen).to(device, dtype)
    k = torch.randn(b, kv_heads, t, head_dim, generator=gen).to(device, dtype)
    v = torch.randn(b, kv_heads, t, head_dim, generator=gen).to(device, dtype)
    start = torch.tensor([0, 7, 130], device=device)
    col = torch.tensor([150], device=device)
    scale = head_dim ** -0.5
    got = triton_decode(q, k, v, start, col, scale, splits=3)
    ref = sdpa_decode(q.float(), k.float(), v.float(), 151, decode_mask(start, col, 151, torch.float32), scale)
    return float((got.float() - ref).abs().max())


# ------------------------------------------------------- fused decode glue ops
def add_rmsnorm(x, res, weight, eps: float):
    """``(x + res, rmsnorm(x + res))`` for 2-D ``x``; ``res=None`` gives ``(x, rmsnorm(x))``."""
    kern = _k()
    x = x.contiguous()
    res = res.contiguous() if res is not None else None
    n = x.shape[-1]
    y = torch.empty(x.shape, dtype=torch.result_type(weight, x), device=x.device)
    xo = torch.empty_like(x) if res is not None else x
    r = res if res is not None else x
    block = triton.next_power_of_2(n)
    kern.add_rmsnorm[(x.shape[0],)](x, r, weight, y, xo, eps, x.stride(0), r.stride(0), y.stride(0), xo.stride(0),
                                    N=n, BLOCK=block, HAS_RES=res is not None, num_warps=max(1, min(8, block // 256)))
    return xo, y


def rope_cache(q, k, v, cos, sin, k_cache, v_cache, col, n_heads: int, head_dim: int):
    """Rotary on ``q [B, Hq*D]`` (returned as ``[B, Hq, D]``) and ``k``; k and v written at cache column ``col``."""
    kern = _k()
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    cos, sin = cos.contiguous(), sin.contiguous()
    b = q.shape[0]
    hkv = k_cache.shape[1]
    qo = torch.empty((b, n_heads, head_dim), dtype=q.dtype, device=q.device)
    kern.rope_cache[(b, n_heads + hkv)](
        q, k, v, cos, sin, qo, k_cache, v_cache, col,
        q.stride(0), k.stride(0), v.stride(0), cos.stride(0), qo.stride(0),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        HQ=n_heads, D=head_dim, num_warps=1)
    return qo


def silu_mul(gate, up):
    """``silu(gate) * up`` with HF's rounding; contiguous inputs of one shape."""
    kern = _k()
    gate, up = gate.contiguous(), up.contiguous()
    out = torch.empty_like(gate)
    n = gate.numel()
    kern.silu_mul[(triton.cdiv(n, 1024),)](gate, up, out, n, BLOCK=1024, num_warps=4)
    return out


def check_fused_ops(device, dtype, hidden: int, n_heads: int, kv_heads: int, head_dim: int, seed: int = 0) -> float:
    """Largest error of the fused glue ops against the eager torch ops they replace, relative to the output scale."""
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen).to(device, dtype)

    def rel(got, ref):
        ref = ref.float()
        return float((got.float() - ref).abs().max() / ref.abs().max().clamp_min(1.0))

    b, t, half = 3, 40, head_dim // 2
    x, r, w = rnd(b, hidden), rnd(b, hidden), rnd(hidden)
    xo, y = add_rmsnorm(x, r, w, 1e-5)
    s = x + r
    sf = s.float()
    errs = [rel(xo, s), rel(y, w * (sf * torch.rsqrt(sf.pow(2).mean(-1, keepdim=True) + 1e-5)).to(dtype))]
    q, k, v = rnd(b, n_heads * head_dim), rnd(b, kv_heads * head_dim), rnd(b, kv_heads * head_dim)
    cos, sin = rnd(b, head_dim), rnd(b, head_dim)
    kc = torch.zeros(b, kv_heads, t, head_dim, device=device, dtype=dtype)
    vc = torch.zeros_like(kc)
    qo = rope_cache(q, k, v, cos, sin, kc, vc, torch.tensor([17], device=device), n_heads, head_dim)

    def rot(z):
        z = z.view(b, -1, head_dim)
        return z * cos[:, None] + torch.cat((-z[..., half:], z[..., :half]), -1) * sin[:, None]

    errs += [rel(qo, rot(q)), rel(kc[:, :, 17], rot(k)), rel(vc[:, :, 17], v.view(b, kv_heads, head_dim)),
             float(kc[:, :, 16].abs().max())]  # nothing written outside the column
    g, u = rnd(b, 300), rnd(b, 300)
    errs.append(rel(silu_mul(g, u), F.silu(g) * u))
    # near-zero temperature turns the Gumbel draw into argmax: any indexing slip shows here
    lg = rnd(b, 3001)
    top = torch.tensor([7, 1500, 2999], device=device)
    lg[torch.arange(b, device=device), top] = 8.0  # a unique maximum per row, far above N(0, 1)
    drawn = gumbel_sample(lg, 1e-2, torch.tensor([5], device=device))
    errs.append(float((drawn != top).sum()))
    return max(errs)


def gumbel_sample(logits, temperature: float, seed, splits: int | None = None) -> torch.Tensor:
    """Draw from ``softmax(logits / temperature)`` per row in one pass (no top-k/top-p); ``seed``: 1-element int tensor."""
    kern = _k()
    b, v = logits.shape
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    if b * -(-v // 4) >= 2**31:
        raise ValueError(f"gumbel_sample: batch * vocab / 4 = {b * v // 4} overflows the int32 random counter")
    q = 512
    if splits is None:  # about 2048 programs in all, each at least 4 blocks of 4*Q columns
        splits = max(1, min(-(-2048 // b), v // (16 * q)))
    chunk = -(-v // splits)
    chunk = -(-chunk // (4 * q)) * (4 * q)
    splits = -(-v // chunk)
    vals = torch.empty((b, splits), dtype=torch.float32, device=logits.device)
    idx = torch.empty((b, splits), dtype=torch.long, device=logits.device)
    kern.gumbel_argmax[(b, splits)](logits, vals, idx, seed, logits.stride(0), v, chunk, float(temperature),
                                    SPLITS=splits, Q=q, num_warps=4)
    return idx.gather(1, vals.argmax(dim=1, keepdim=True))[:, 0]
