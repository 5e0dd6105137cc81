"""What the engine knows of a model: its parts, whether it runs it exactly, what a graph depends on.

The engine calls a model's own submodules layer by layer, so it needs a
Llama-like decoder: ``model.{embed_tokens, layers, norm, rotary_emb}`` and
``lm_head``, each layer with its two norms, an MLP and q/k/v/o projections.

- ``parts``: those submodules and the shapes (heads, head size, attention
  scale), found through a PEFT wrapper with its LoRA layers left in place;
- ``supports``: whether the engine reproduces the model exactly (Llama and
  Qwen2, without dynamic rope or a sliding window);
- ``fusable``: whether the fused decode ops reproduce its norms and MLP;
- ``state_key``: what a captured CUDA graph depends on besides its input
  buffers (parameter storage, PEFT flags).
"""
from __future__ import annotations

from types import SimpleNamespace

__all__ = ["SUPPORTED_TYPES", "parts", "supports", "fusable", "state_key"]

SUPPORTED_TYPES = ("llama", "qwen2")


def _decoder(model):
    """The ``*ForCausalLM`` inside a PEFT wrapper (LoRA layers stay injected)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def parts(model) -> SimpleNamespace:
    """The submodules and shapes the engine reads off a Llama-like decoder; ValueError where one is missing."""
    lm = _decoder(model)
    body = getattr(lm, "model", None)
    cfg = getattr(lm, "config", None)
    need = ("embed_tokens", "layers", "norm", "rotary_emb")
    if body is None or cfg is None or not all(hasattr(body, n) for n in need) or not hasattr(lm, "lm_head"):
        raise ValueError(f"{type(lm).__name__} is not a Llama-like decoder (needs model.{{{','.join(need)}}}, lm_head)")
    layer_need = ("input_layernorm", "post_attention_layernorm", "mlp", "self_attn")
    proj = ("q_proj", "k_proj", "v_proj", "o_proj")
    for i, layer in enumerate(body.layers):
        if not all(hasattr(layer, n) for n in layer_need) or not all(hasattr(layer.self_attn, n) for n in proj):
            raise ValueError(f"layer {i} of {type(lm).__name__} lacks {layer_need} or self_attn.{proj}")
        if hasattr(layer.self_attn, "q_norm"):
            raise ValueError(f"layer {i} has q_norm/k_norm (Qwen3-style); the engine does not apply them")
    hq, hkv = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // hq
    attn0 = body.layers[0].self_attn
    return SimpleNamespace(
        lm=lm, cfg=cfg, embed=body.embed_tokens, layers=list(body.layers), norm=body.norm,
        rotary=body.rotary_emb, lm_head=lm.lm_head, hq=hq, hkv=hkv, groups=hq // hkv, head_dim=head_dim,
        scale=float(getattr(attn0, "scaling", head_dim ** -0.5)),
    )


_NORMS = ("LlamaRMSNorm", "Qwen2RMSNorm")
_MLPS = ("LlamaMLP", "Qwen2MLP")


def fusable(p) -> bool:
    """The fused glue ops reproduce exactly these modules: HF Llama/Qwen2 RMSNorm and SiLU gated MLP."""
    norms = [p.norm] + [n for layer in p.layers for n in (layer.input_layernorm, layer.post_attention_layernorm)]
    return (all(type(n).__name__ in _NORMS and hasattr(n, "variance_epsilon") for n in norms)
            and all(type(layer.mlp).__name__ in _MLPS for layer in p.layers)
            and getattr(p.cfg, "hidden_act", None) == "silu" and p.head_dim & (p.head_dim - 1) == 0)


def supports(model) -> bool:
    """True for Llama-like decoders the engine runs exactly (Llama, Qwen2; plain or PEFT-wrapped)."""
    try:
        p = parts(model)
    except (ValueError, AttributeError, TypeError):
        return False
    cfg = p.cfg
    rope = (getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}).get("rope_type", "default")
    sliding = getattr(cfg, "use_sliding_window", False) and getattr(cfg, "sliding_window", None)
    return cfg.model_type in SUPPORTED_TYPES and rope not in ("dynamic", "longrope") and not sliding


def state_key(model) -> tuple:
    """What a captured graph depends on besides input buffers: parameter storage and PEFT flags."""
    ptrs = tuple(p.data_ptr() for p in model.parameters())
    flags = []
    for name, mod in model.named_modules():
        if hasattr(mod, "merged") and hasattr(mod, "active_adapters"):
            scaling = getattr(mod, "scaling", {})
            flags.append((name, bool(mod.merged), bool(getattr(mod, "disable_adapters", False)),
                          tuple(mod.active_adapters), tuple(sorted(scaling.items())) if isinstance(scaling, dict) else ()))
    return ptrs, tuple(flags)
