"""A merged copy of a LoRA model to sample from: one plain ``nn.Linear`` holding ``W + dW`` per adapter.

With the adapters applied inside the engine, each adapted projection of a
decode step runs the base GEMM and then PEFT's adapter path (input cast, A,
B, scale, add): five more small kernels per projection. At `demo`'s size those
are most of a step; at the 8B shape, LoRA r=16 inside the engine samples at
10.4k tokens/s against 18.2k merged (docs/benchmarks.md). PEFT's own merge
(``merge_adapter`` / ``unmerge_adapter``) adds ``dW`` into the base weights in
place and takes it out again; in bf16 that round trip does not give the base
back exactly, so merging before every rollout would drift the frozen base that
PPO's reference and KL penalty rest on.

``MergedCopy(peft_model)`` leaves the model alone: it makes a second
``*ForCausalLM`` that shares every tensor the adapters do not touch
(embedding, norms, LM head when not adapted, rotary buffers) and holds, for
each adapted linear, a new weight ``W + sum(dW)`` over the active adapters
(PEFT's ``get_delta_weight``, added in fp32, rounded once to the base's
dtype). ``refresh()`` recomputes those weights in place after the adapters
changed (an optimiser step), so an engine's CUDA graphs over the copy stay
valid. The copy costs the adapted weights' bytes (``nbytes``): 48 MB for
`demo`'s model, about 13 GiB for the 8B one in bf16 (``ppo.sampling``
decides where it is used).

The copy samples the same policy up to one rounding of the merged weight to
the base's dtype: exact in fp32 (tests), within bf16's rounding in bf16, where
PPO's ratios are computed by the trainer's own forward in any case.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["MergedCopy", "merged_bytes", "why_not_merged"]


def _lora_layers(model) -> list[tuple[str, nn.Module]]:
    from peft.tuners.lora import LoraLayer

    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]


def why_not_merged(model) -> str | None:
    """None when ``MergedCopy(model)`` can be made, else the reason in words."""
    if not hasattr(model, "get_base_model"):
        return f"{type(model).__name__} is not a PEFT model"
    layers = _lora_layers(model.get_base_model())
    if not layers:
        return "the model has no LoRA layers"
    for name, mod in layers:
        base = mod.get_base_layer()
        if type(base) is not nn.Linear:  # e.g. a bitsandbytes 4-bit linear: merging needs a dequantised copy
            return f"{name} wraps a {type(base).__name__}, not a plain nn.Linear (a quantised base)"
        for a in mod.active_adapters:
            if getattr(mod, "use_dora", {}).get(a) or getattr(mod, "lora_variant", {}).get(a) is not None:
                return f"{name}: adapter {a!r} is a LoRA variant (e.g. DoRA); only plain LoRA is merged"
            if getattr(mod, "lora_bias", {}).get(a):  # get_delta_weight leaves lora_B's bias out
                return f"{name}: adapter {a!r} has a bias (lora_bias); only plain LoRA is merged"
    return None


def merged_bytes(model) -> int:
    """Bytes a ``MergedCopy`` of ``model`` would hold: one weight per LoRA layer, in its base's dtype."""
    layers = _lora_layers(model.get_base_model()) if hasattr(model, "get_base_model") else []
    return sum(m.get_base_layer().weight.numel() * m.get_base_layer().weight.element_size() for _, m in layers)


class MergedCopy:
    """A ``*ForCausalLM`` equal to ``peft_model`` with its active adapters merged; the model is not changed."""

    def __init__(self, peft_model):
        reason = why_not_merged(peft_model)
        if reason:
            raise ValueError(f"no merged copy: {reason}")
        base = peft_model.get_base_model()
        self.peft_model = peft_model
        self._pairs: list[tuple[nn.Module, nn.Linear]] = []
        memo: dict[int, object] = {}
        for _, mod in _lora_layers(base):
            src = mod.get_base_layer()
            lin = nn.Linear(src.in_features, src.out_features, bias=src.bias is not None, device="meta")
            lin.weight = nn.Parameter(torch.empty_like(src.weight, device=src.weight.device), requires_grad=False)
            if src.bias is not None:
                lin.bias = src.bias  # LoRA leaves the bias alone: shared
            memo[id(mod)] = lin  # deepcopy puts the plain linear where the LoRA layer was
            self._pairs.append((mod, lin))
        for t in list(base.parameters()) + list(base.buffers()):
            memo.setdefault(id(t), t)  # every other tensor is shared, not copied
        self.model = copy.deepcopy(base, memo)
        self.model.requires_grad_(False)
        self.model.eval()
        self.refresh()

    @property
    def nbytes(self) -> int:
        """Bytes of the merged weights (what the copy adds to the model's memory)."""
        return sum(lin.weight.numel() * lin.weight.element_size() for _, lin in self._pairs)

    @torch.no_grad()
    def refresh(self) -> None:
        """Recompute every merged weight from the model's base weight and active adapters, in place."""
        for mod, lin in self._pairs:
            w = mod.get_base_layer().weight.float()
            if not mod.disable_adapters and not mod.merged:  # PEFT-merged: the base weight holds dW already
                for a in mod.active_adapters:
                    if a in mod.lora_A:
                        w = w + mod.get_delta_weight(a).float()
            lin.weight.copy_(w)
