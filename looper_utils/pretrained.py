"""What loading a hub or local pretrained model decides, and LoRA on top of any base.

* ``precision_for``: that ``model.name_or_path`` (or a saved full
  checkpoint) holds a causal language model -- read from its config, no
  weights -- and the precision it loads in on this device.
* ``choose_quantization``: ``quantization="auto"`` keeps bf16 where the GPU
  holds twice the bf16 weights (8B = 16 GB: a 40-80 GB card) and falls back
  to 4-bit NF4 on smaller cards; on CPU it is fp32.
* ``from_pretrained_kwargs``: the ``from_pretrained`` arguments of that
  precision (bitsandbytes NF4 with bf16 compute and double quantisation).
* ``apply_lora``: LoRA on every linear projection, with k-bit preparation
  for a 4-bit base.

``modeling`` does the loading itself and re-exports these names.
``ModelLoadError``, the error every model module raises, is defined here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from . import config as config_mod

__all__ = ["ModelLoadError", "precision_for", "choose_quantization", "from_pretrained_kwargs", "apply_lora"]


class ModelLoadError(RuntimeError):
    """A model or tokenizer cannot be built or loaded; the message says how to fix it."""


def precision_for(path: str, quantization: str, device: torch.device) -> str:
    """The precision (``none``, ``bf16`` or ``4bit``) the causal LM at ``path`` loads in on ``device``.

    Reads only the config; an error says why ``path`` is not a causal LM.
    """
    return choose_quantization(quantization, _estimate_params(_causal_lm_config(path)), device)


def _causal_lm_config(path: str):
    """The model's config, or an error saying why ``path`` is not a causal LM."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    p = Path(path).expanduser()
    if (p.is_absolute() or path.startswith(".")) and not p.exists():
        raise ModelLoadError(f"model.name_or_path={path!r}: no such folder; point it at a saved model "
                             "folder or a hub id")
    if p.is_dir() and not (p / "config.json").is_file():
        raise ModelLoadError(f"{p}/config.json is missing: {p} is not a saved transformers model; point "
                             "model.name_or_path at a folder written by save_pretrained (or a hub id)")
    try:
        mconf = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read the config of {path!r} ({exc}); check the hub id or local path, "
                             "and network access for hub ids") from exc
    if mconf.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        arch = ", ".join(getattr(mconf, "architectures", None) or [mconf.model_type])
        raise ModelLoadError(f"{path!r} is a {arch} model, not a causal language model; point "
                             "model.name_or_path at a decoder-only LM such as "
                             "deepseek-ai/DeepSeek-R1-Distill-Llama-8B")
    return mconf


def _estimate_params(mconf) -> int:
    """Parameter count of a Llama-like config, without loading weights."""
    h = mconf.hidden_size
    heads = mconf.num_attention_heads
    kv = getattr(mconf, "num_key_value_heads", None) or heads
    head_dim = getattr(mconf, "head_dim", None) or h // heads
    inter = getattr(mconf, "intermediate_size", 4 * h)
    per_layer = h * head_dim * (2 * heads + 2 * kv) + 3 * h * inter
    emb = mconf.vocab_size * h * (1 if getattr(mconf, "tie_word_embeddings", False) else 2)
    return mconf.num_hidden_layers * per_layer + emb


def choose_quantization(quantization: str, n_params: int, device: torch.device) -> str:
    """Resolve ``auto`` and check the choice fits the device.

    ``auto``: bf16 when the GPU holds twice the bf16 weights (room for
    activations, LoRA optimizer state and the KV cache), else 4-bit; on CPU
    ``none`` (fp32).

    >>> choose_quantization("auto", 8_000_000_000, torch.device("cpu"))
    'none'
    >>> choose_quantization("bf16", 10, torch.device("cpu"))
    'bf16'
    """
    if quantization == "4bit" and device.type != "cuda":
        raise ModelLoadError("model.quantization='4bit' needs a CUDA GPU (bitsandbytes NF4 kernels); on this "
                             "machine set model.quantization='bf16' or 'none', or run on a GPU box")
    if quantization != "auto":
        return quantization
    if device.type != "cuda":
        return "none"
    total = torch.cuda.get_device_properties(device.index or 0).total_memory
    return "bf16" if total >= 2 * 2 * n_params else "4bit"


def from_pretrained_kwargs(quant: str, device: torch.device, attn: str) -> dict[str, Any]:
    """``from_pretrained`` arguments for a precision chosen by ``choose_quantization``, on ``device``.

    >>> from_pretrained_kwargs("bf16", torch.device("cpu"), "sdpa")
    {'attn_implementation': 'sdpa', 'dtype': torch.bfloat16}
    """
    kwargs: dict[str, Any] = {"attn_implementation": attn}
    if quant == "4bit":
        try:
            from transformers import BitsAndBytesConfig
            import bitsandbytes  # noqa: F401
        except ImportError as exc:
            raise ModelLoadError("model.quantization='4bit' needs bitsandbytes: pip install -e '.[gpu]'") from exc
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16)
        kwargs["dtype"] = torch.bfloat16
    else:
        kwargs["dtype"] = torch.bfloat16 if quant == "bf16" else torch.float32
    if device.type == "cuda":
        kwargs["device_map"] = {"": device.index or 0}
    return kwargs


def apply_lora(model, mcfg: config_mod.ModelConfig, gradient_checkpointing: bool = False):
    """Wrap ``model`` with trainable LoRA adapters on every linear projection (k-bit prep for 4-bit)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    lora = LoraConfig(r=mcfg.lora_r, lora_alpha=mcfg.lora_alpha, lora_dropout=mcfg.lora_dropout,
                      target_modules="all-linear", task_type="CAUSAL_LM")
    return get_peft_model(model, lora)
