"""The model's forward pass over the engine's KV cache: prefill and one decode step.

``CachedForward`` holds the part of ``Engine`` that runs the model: the
prompt's prefill (chunked, SDPA over the padded prompt, cache columns
``[0, P)`` written) and one decode step from the static buffers, eager (the
model's own norms and MLP, HF's rotary) or with the glue between the
projections fused (``engine.kernels``). The projections are always the
model's own modules, so LoRA and 4-bit linears work unchanged.

It is a mixin: ``Engine`` (``engine.sampler``) sets what these methods read --
``p`` (``model_parts.parts``), ``attention``, ``fused``, ``prefill_tokens``,
the cache ``_kv`` and the step buffers ``_tok``, ``_pos``, ``_start``,
``_col``, ``_n``, ``_n_sm`` -- and owns the cache's allocation, the CUDA
graphs over ``_step`` and the sampling loop.
"""
from __future__ import annotations

import torch

from . import kernels as ek

__all__ = ["CachedForward"]


class CachedForward:
    """Prefill and decode step of ``Engine`` (see the module docstring for the attributes they read)."""

    def _attn_qkv(self, layer, h, cos, sin):
        p, a = self.p, layer.self_attn
        b, t, _ = h.shape
        q = a.q_proj(h).view(b, t, p.hq, p.head_dim).transpose(1, 2)
        k = a.k_proj(h).view(b, t, p.hkv, p.head_dim).transpose(1, 2)
        v = a.v_proj(h).view(b, t, p.hkv, p.head_dim).transpose(1, 2)
        q, k = _apply_rotary(q, k, cos, sin)
        return q, k, v

    def _prefill(self, ids: torch.Tensor, mask: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        """Fill cache columns ``[0, P)`` for all rows; return the logits of the last column."""
        p = self.p
        b, plen = ids.shape
        step = max(1, self.prefill_tokens // plen)
        logits = []
        for b0 in range(0, b, step):
            b1 = min(b, b0 + step)
            x = p.embed(ids[b0:b1])
            pos = (torch.arange(plen, device=ids.device)[None, :] - start[b0:b1, None]).clamp_min(0)
            cos, sin = p.rotary(x, pos)
            amask = ek.prefill_mask(mask[b0:b1], p.groups, x.dtype)
            for i, layer in enumerate(p.layers):
                h = layer.input_layernorm(x)
                q, k, v = self._attn_qkv(layer, h, cos, sin)
                self._kv[i, 0, b0:b1, :, :plen] = k
                self._kv[i, 1, b0:b1, :, :plen] = v
                o = ek.sdpa_prefill(q, k, v, amask, p.scale)
                x = x + layer.self_attn.o_proj(o)
                x = x + layer.mlp(layer.post_attention_layernorm(x))
            logits.append(p.lm_head(p.norm(x[:, -1:]))[:, 0])
        return torch.cat(logits)

    def _step(self, length: int) -> torch.Tensor:
        """One decode step from the static buffers (token, column, positions); logits ``[B, V]``."""
        if self.fused:
            return self._step_fused(length)
        p, b = self.p, self._n
        tok, pos, start = self._tok[:b], self._pos[:b], self._start[:b]
        x = p.embed(tok)[:, None, :]
        cos, sin = p.rotary(x, pos[:, None])
        mask = ek.decode_mask(start, self._col, length, x.dtype) if self.attention == "sdpa" else None
        for i, layer in enumerate(p.layers):
            h = layer.input_layernorm(x)
            q, k, v = self._attn_qkv(layer, h, cos, sin)
            kc, vc = self._kv[i, 0, :b], self._kv[i, 1, :b]
            kc.index_copy_(2, self._col, k)
            vc.index_copy_(2, self._col, v)
            o = self._attend(q.reshape(b, p.hq, p.head_dim), kc, vc, length, mask)
            x = x + layer.self_attn.o_proj(o.reshape(b, 1, p.hq * p.head_dim))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return p.lm_head(p.norm(x))[:, 0]

    def _attend(self, q, kc, vc, length: int, mask):
        p, b = self.p, self._n
        if self.attention == "triton":
            splits = ek.default_splits(b, p.hkv, kc.shape[2], self._n_sm)
            return ek.triton_decode(q, kc, vc, self._start[:b], self._col, p.scale, splits)
        return ek.sdpa_decode(q, kc, vc, length, mask, p.scale)

    def _step_fused(self, length: int) -> torch.Tensor:
        """``_step`` with the glue ops fused (2-D activations ``[B, hidden]``)."""
        p, b = self.p, self._n
        tok, pos, start = self._tok[:b], self._pos[:b], self._start[:b]
        x = p.embed(tok)
        cos, sin = p.rotary(x[:, None], pos[:, None])
        cos, sin = cos[:, 0], sin[:, 0]
        mask = ek.decode_mask(start, self._col, length, x.dtype) if self.attention == "sdpa" else None
        n0 = p.layers[0].input_layernorm
        _, h = ek.add_rmsnorm(x, None, n0.weight, n0.variance_epsilon)
        for i, layer in enumerate(p.layers):
            a, mlp = layer.self_attn, layer.mlp
            kc, vc = self._kv[i, 0, :b], self._kv[i, 1, :b]
            q = ek.rope_cache(a.q_proj(h), a.k_proj(h), a.v_proj(h), cos, sin, kc, vc, self._col, p.hq, p.head_dim)
            o = self._attend(q, kc, vc, length, mask)
            post = layer.post_attention_layernorm
            x, h = ek.add_rmsnorm(x, a.o_proj(o.reshape(b, p.hq * p.head_dim)), post.weight, post.variance_epsilon)
            m = mlp.down_proj(ek.silu_mul(mlp.gate_proj(h), mlp.up_proj(h)))
            nxt = p.layers[i + 1].input_layernorm if i + 1 < len(p.layers) else p.norm
            x, h = ek.add_rmsnorm(x, m, nxt.weight, nxt.variance_epsilon)
        return p.lm_head(h)


def _apply_rotary(q, k, cos, sin):
    """HF's rotary (``apply_rotary_pos_emb``) on ``[B, H, T, D]`` with ``cos/sin [B, T, D]``."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    half = q.shape[-1] // 2

    def rot(x):
        return torch.cat((-x[..., half:], x[..., :half]), dim=-1)

    return q * cos + rot(q) * sin, k * cos + rot(k) * sin
