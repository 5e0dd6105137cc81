"""The model layer every stage uses: devices, checkpoint folders, loading and saving the policy.

Two kinds of base model, one loading path:

* ``smoke`` / ``demo`` (``model.name_or_path == "scratch"``): the tokenizer and
  tiny Llama that ``scratch`` builds are saved once to ``checkpoints/base/``
  (``build_or_load_base``), so every later stage loads them with
  ``from_pretrained`` exactly like a hub model.
* ``full``: a hub id or local folder (``deepseek-ai/DeepSeek-R1-Distill-Llama-8B``)
  in the precision ``pretrained`` chooses for the device (bf16, or 4-bit NF4
  on smaller cards), with LoRA on every linear projection.

Checkpoint folders (``checkpoints/base``, ``checkpoints/sft``) hold the
Hugging Face files plus ``looper_config.json`` (the Config that wrote them)
and ``looper_state.json`` (stage, step, format = ``full`` or ``adapter``).
They are written into a temporary sibling folder and renamed into place, so
a killed run never leaves a half-written checkpoint that a later stage trusts.
``weights_digest`` and ``checkpoint_digest`` name exact weights for the
manifests and PPO's resume signature.

The names of ``scratch`` (tokenizer and model builders, special tokens) and
of ``pretrained`` (``ModelLoadError``, ``choose_quantization``,
``apply_lora``) are importable from here as well.
"""
from __future__ import annotations

import contextlib
import hashlib
import sys
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch

from . import config as config_mod
from .artifacts import atomic_dir, atomic_write_json, read_json
from .progress import overwrite_notice
from .pretrained import ModelLoadError, apply_lora, choose_quantization, from_pretrained_kwargs, precision_for
from .prompts import THINK_CLOSE, THINK_OPEN, prompt_wording
from .scratch import (ASSISTANT, BOS, EOS, PAD, USER, build_scratch_model, build_tokenizer, chat_template,
                      tokenizer_corpus)

__all__ = ["BOS", "EOS", "PAD", "USER", "ASSISTANT", "THINK_OPEN", "THINK_CLOSE", "ModelLoadError",
           "resolve_device", "chat_template", "build_tokenizer", "build_scratch_model", "tokenizer_corpus",
           "build_or_load_base", "load_base", "load_adapter_base", "load_policy", "load_checkpoint", "apply_lora",
           "choose_quantization", "save_checkpoint", "read_state", "ensure_pad_token", "count_params",
           "base_dir", "sft_dir", "describe", "set_cpu_threads", "free_memory", "weights_digest",
           "checkpoint_digest", "quiet_progress"]

CONFIG_FILE, STATE_FILE = "looper_config.json", "looper_state.json"
PPO_ADAPTER_FILE = "policy_adapter.safetensors"  # the PPO policy adapter in checkpoints/ppo/{last,best}


# ---- devices ----------------------------------------------------------------

def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> the first CUDA GPU if there is one, else the CPU.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device={name!r} but no CUDA GPU is visible; pass device='cpu' or 'auto'")
    return torch.device(name)


def set_cpu_threads(n: int, device: torch.device) -> None:
    """Use ``n`` torch threads when running on CPU (``0`` keeps torch's default).

    A tiny model's operations are too small to split across cores: on a
    shared 2-core machine two threads made training 3x and generation up to
    20x slower than one (threads spin-waiting on a busy neighbour).
    """
    if device.type == "cpu" and n > 0:
        torch.set_num_threads(n)


def base_dir(cfg: config_mod.Config) -> Path:
    return cfg.checkpoints_dir / "base"


def sft_dir(cfg: config_mod.Config) -> Path:
    return cfg.checkpoints_dir / "sft"


# ---- checkpoints ---------------------------------------------------------------

@contextlib.contextmanager
def quiet_progress() -> Iterator[None]:
    """Hide the libraries' per-file and per-map bars ("Loading weights", "Writing model shards",
    dataset maps) for the duration; the Trainer's own step bar and ours stay."""
    from transformers.utils import logging as hf_logging

    ds = sys.modules.get("datasets")  # only if something already uses it; not worth an import
    hf_was = hf_logging.is_progress_bar_enabled()
    ds_was = ds is not None and not ds.utils.are_progress_bars_disabled()
    hf_logging.disable_progress_bar()
    if ds_was:
        ds.utils.disable_progress_bars()
    try:
        yield
    finally:
        if hf_was:
            hf_logging.enable_progress_bar()
        if ds_was:
            ds.utils.enable_progress_bars()


def save_checkpoint(out_dir: Path, model, tokenizer, cfg: config_mod.Config, stage: str, step: int,
                    extra: dict[str, Any] | None = None) -> Path:
    """Save model (full weights or PEFT adapter), tokenizer, config and step, atomically."""
    fmt = "adapter" if _is_peft(model) else "full"
    previous = Path(out_dir) / CONFIG_FILE
    if previous.is_file():
        try:
            notice = overwrite_notice(str(out_dir), read_json(previous), cfg.to_dict())
        except ValueError:  # an unreadable config of an old checkpoint is no reason to stop saving
            notice = None
        if notice:
            print(notice, flush=True)
    with atomic_dir(Path(out_dir)) as tmp, quiet_progress():
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        config_mod.save(cfg, tmp / CONFIG_FILE)
        state = {"stage": stage, "step": int(step), "format": fmt, "n_params": count_params(model)["total"],
                 **(extra or {})}
        atomic_write_json(tmp / STATE_FILE, state)
    return Path(out_dir)


def weights_digest(*paths: Path) -> str:
    """SHA-256 of weight files, what identifies a model's exact weights wherever its folder is.

    A folder stands for its ``*.safetensors`` then its ``*.bin`` files (each
    set sorted by name; tokenizer, config and training-state files are not
    weights); a file stands for itself. Names and contents are hashed in that
    order, so ``weights_digest(sft, ppo / "policy_adapter.safetensors")`` names
    a PPO policy together with the SFT weights under it. PPO's resume
    signature, the rollout manifest and the evaluation records all use it.
    """
    h = hashlib.sha256()
    for path in map(Path, paths):
        files = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")) if path.is_dir() else [path]
        for f in files:
            if f.name.startswith("trainer_state."):  # PPO's optimiser and RNG state, not weights
                continue
            h.update(f.name.encode())
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 24), b""):
                    h.update(chunk)
    return h.hexdigest()


def checkpoint_digest(cfg: config_mod.Config, folder: Path, *files: Path) -> str:
    """``weights_digest`` of a checkpoint folder (and ``files`` loaded over it, such as a PPO policy adapter),
    with what an adapter sits on: the scratch base's weights, or the pretrained model's id or path.

    That is everything ``load_checkpoint`` puts together, so two equal
    digests mean the same weights generate.
    """
    digest = weights_digest(folder, *files)
    if not (Path(folder) / "adapter_config.json").is_file():
        return digest
    # a hub model's weights are not read here (16 GB for the 8B); its id or local path stands for them
    under = weights_digest(base_dir(cfg)) if cfg.model.name_or_path == "scratch" else cfg.model.name_or_path
    return f"{digest} over {under}"


def read_state(ckpt_dir: Path) -> dict[str, Any]:
    """The ``looper_state.json`` of a checkpoint folder (stage, step, format...)."""
    p = Path(ckpt_dir) / STATE_FILE
    if not p.is_file():
        raise ModelLoadError(f"{p} is missing: {ckpt_dir} is not a finished checkpoint; rerun the stage "
                             "that writes it (02_sft for checkpoints/base and checkpoints/sft)")
    return read_json(p)


_ARCH_FIELDS = ("name_or_path", "tokenizer_vocab", "hidden_size", "num_layers", "num_heads", "num_kv_heads",
                "intermediate_size", "max_position", "chat_think", "init_std")


def build_or_load_base(cfg: config_mod.Config, train_rows: list[dict] | None = None,
                       device: torch.device | None = None):
    """(model, tokenizer) of the base policy; for ``scratch`` builds ``checkpoints/base`` once.

    A scratch base that exists is reused only if it was built with the same
    architecture; otherwise the error says which folder to delete.
    """
    device = device or resolve_device(cfg.device)
    set_cpu_threads(cfg.model.cpu_threads, device)
    if cfg.model.name_or_path != "scratch":
        return load_base(cfg, device)
    out = base_dir(cfg)
    if (out / STATE_FILE).is_file():
        saved = read_json(out / CONFIG_FILE).get("model", {}) if (out / CONFIG_FILE).is_file() else {}
        diff = {k: (saved.get(k), getattr(cfg.model, k)) for k in _ARCH_FIELDS if saved.get(k) != getattr(cfg.model, k)}
        if diff:
            raise ModelLoadError(f"{out} was built with other model settings {diff} (saved, wanted); delete "
                                 f"{out} and {sft_dir(cfg)} to rebuild, or use another root")
        return load_checkpoint(out, device)
    if not train_rows:
        raise ModelLoadError(f"{out} does not exist and no training rows were given to build it; "
                             "pass the train split (run notebooks/01_data.ipynb first)")
    tokenizer = build_tokenizer(tokenizer_corpus(train_rows, extra=prompt_wording() * len(train_rows)),
                                cfg.model.tokenizer_vocab, think=cfg.model.chat_think,
                                model_max_length=cfg.model.max_position)
    model = build_scratch_model(cfg.model, tokenizer, seed=cfg.seed)
    save_checkpoint(out, model, tokenizer, cfg, stage="base", step=0)
    return load_checkpoint(out, device)


# ---- hub / local models (precision and LoRA: ``pretrained``) -----------------------

def load_base(cfg: config_mod.Config, device: torch.device):
    """(model, tokenizer) of a hub id or local model folder, in the configured precision."""
    path = cfg.model.name_or_path
    quant = precision_for(path, cfg.model.quantization, device)
    return _load_pretrained(path, quant, device, cfg.model.attn_implementation)


def load_adapter_base(cfg: config_mod.Config, device: torch.device):
    """The base model a LoRA adapter of this run sits on: ``checkpoints/base`` for a scratch model, else
    the hub id or local folder of ``model.name_or_path`` (``load_base``), unmerged and without its tokenizer
    (the adapter's folder has the one to use)."""
    if cfg.model.name_or_path == "scratch":
        return load_checkpoint(base_dir(cfg), device, merge=False)[0]
    return load_base(cfg, device)[0]


def _load_pretrained(path: str, quant: str, device: torch.device, attn: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with quiet_progress():
        model = AutoModelForCausalLM.from_pretrained(path, **from_pretrained_kwargs(quant, device, attn))
    if device.type != "cuda":
        model.to(device)
    tokenizer = AutoTokenizer.from_pretrained(path)
    ensure_pad_token(tokenizer, model, source=path)
    return model, tokenizer


def ensure_pad_token(tokenizer, model=None, source: str = "the tokenizer") -> None:
    """Give a tokenizer without a pad token one (EOS), with a note, and mirror it onto the model.

    Padding is masked out everywhere (attention mask, labels), so reusing EOS
    is safe; generation stops on EOS ids, not on the pad id.
    """
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise ModelLoadError(f"{source}: tokenizer has neither a pad nor an EOS token; add one with "
                                 "tokenizer.add_special_tokens({'pad_token': ...}) and resize the embeddings")
        warnings.warn(f"{source}: tokenizer has no pad token; using {fallback!r} for padding", stacklevel=2)
        tokenizer.pad_token = fallback
    if model is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id


# ---- policies for later stages ---------------------------------------------------

def _is_peft(model) -> bool:
    return hasattr(model, "peft_config")


def count_params(model) -> dict[str, int]:
    """Total and trainable parameter counts (4-bit weights counted as stored elements)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable}


def load_checkpoint(ckpt_dir: Path, device: torch.device, cfg: config_mod.Config | None = None,
                    merge: bool = True):
    """(model, tokenizer) from a folder holding a full model or a PEFT adapter.

    An adapter is put on the base of ``cfg`` (the current run's, or the
    one saved in the folder): ``checkpoints/base`` for scratch models, the hub
    id or path otherwise. ``merge`` folds it into the weights for faster
    generation where the base is not quantised.
    """
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        raise ModelLoadError(f"{ckpt_dir} does not exist; run notebooks/02_sft.ipynb first")
    saved_cfg = config_mod.from_dict(read_json(ckpt_dir / CONFIG_FILE)) if (ckpt_dir / CONFIG_FILE).is_file() else None
    run_cfg = cfg or saved_cfg
    if (ckpt_dir / "adapter_config.json").is_file():
        from peft import PeftModel
        from transformers import AutoTokenizer

        if run_cfg is None:
            raise ModelLoadError(f"{ckpt_dir} holds a LoRA adapter but no {CONFIG_FILE}; pass cfg so the "
                                 "base model can be found")
        base = load_adapter_base(run_cfg, device)
        model = PeftModel.from_pretrained(base, ckpt_dir)
        if merge and not getattr(base, "is_loaded_in_4bit", False):
            model = model.merge_and_unload()
        tokenizer = AutoTokenizer.from_pretrained(ckpt_dir)
        ensure_pad_token(tokenizer, model, source=str(ckpt_dir))
    else:
        if not (ckpt_dir / "config.json").is_file():
            raise ModelLoadError(f"{ckpt_dir} holds neither config.json nor adapter_config.json; it is not a "
                                 "checkpoint -- rerun the stage that writes it")
        quant = "none" if run_cfg is None or run_cfg.model.name_or_path == "scratch" else \
            precision_for(str(ckpt_dir), run_cfg.model.quantization, device)
        attn = run_cfg.model.attn_implementation if run_cfg else "sdpa"
        model, tokenizer = _load_pretrained(str(ckpt_dir), quant, device, attn)
    model.eval()
    return model, tokenizer


def load_policy(cfg: config_mod.Config, which: str, device: torch.device | None = None, merge: bool = True):
    """(model, tokenizer) ready for generation: ``which`` is ``base``, ``sft`` or a checkpoint folder.

    On CPU this also sets torch's thread count to ``model.cpu_threads``.
    """
    device = device or resolve_device(cfg.device)
    set_cpu_threads(cfg.model.cpu_threads, device)
    if which == "base":
        if cfg.model.name_or_path == "scratch":
            return load_checkpoint(base_dir(cfg), device, cfg, merge)
        model, tokenizer = load_base(cfg, device)
        model.eval()
        return model, tokenizer
    if which == "sft":
        return load_checkpoint(sft_dir(cfg), device, cfg, merge)
    p = Path(which)
    if not p.is_dir():
        raise ModelLoadError(f"which={which!r}: expected 'base', 'sft' or an existing checkpoint folder")
    return load_checkpoint(p, device, cfg, merge)


def free_memory() -> None:
    """Return memory of models that are no longer referenced (call after ``del model``)."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def describe(model) -> dict[str, Any]:
    """A few facts about a model for the notebooks (parameters, dtype, device, layers)."""
    conf = model.config
    return {"n_params": count_params(model)["total"], "dtype": str(next(model.parameters()).dtype),
            "device": str(next(model.parameters()).device), "layers": conf.num_hidden_layers,
            "hidden": conf.hidden_size, "vocab": conf.vocab_size}
