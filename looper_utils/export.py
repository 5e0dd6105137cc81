"""The trained PPO policy as a standard Hugging Face model folder, for use outside this project.

A PPO checkpoint (``checkpoints/ppo/best`` or ``last``) holds only the policy
LoRA adapter (``policy_adapter.safetensors``) over the SFT model, so using it
takes this project's loader. ``export_ppo`` loads it exactly as 06's
evaluation does (``ppo.model.load_ppo_policy``: SFT model + policy adapter),
folds the adapter into the weights and writes ``checkpoints/export/``:

- ``config.json``, ``generation_config.json``, ``model.safetensors``
  (``save_pretrained``): ``AutoModelForCausalLM.from_pretrained(folder)``
  loads it with no PEFT and no ``looper_utils``;
- the tokenizer with its chat template: ``apply_chat_template(...,
  add_generation_prompt=True)`` gives the prompts the model was trained on;
- ``looper_export.json``: run id, profile, source checkpoint and its PPO
  step, the SFT and base models, the prompt convention, and how to load it;
- ``looper_config.json``: the Config of the run, as in every checkpoint.

The folder is written next to its final place and renamed into it, so a
killed export never leaves a half-written model where one is expected. An
optional ``push_to_hub`` repo id uploads model and tokenizer afterwards.

One departure from merging the model as PPO ran it: where the base was
loaded in 4-bit (``full`` on a small card), it is loaded in bf16 for the
export, since 4-bit weights cannot absorb the adapter; the adapter itself is
the one PPO trained.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from . import config as config_mod
from .artifacts import MissingInputError, atomic_write_json
from .artifacts import atomic_dir
from .modeling import count_params, quiet_progress, read_state, resolve_device, sft_dir
from .prompts import build_prompt, completion_starts_in_think

__all__ = ["EXPORT_INFO", "ExportResult", "export_dir", "find_source", "export_ppo"]

EXPORT_INFO = "looper_export.json"
_EXAMPLE = "Ann has 3 apples and buys 4 more. How many apples does she have now?"


def export_dir(cfg: config_mod.Config) -> Path:
    """Where ``export_ppo`` writes by default: ``checkpoints/export``."""
    return cfg.checkpoints_dir / "export"


@dataclass
class ExportResult:
    """What the notebook shows about an export."""

    path: Path
    info: dict[str, Any] = field(default_factory=dict)  # the contents of looper_export.json
    pushed_to: str = ""  # the hub repo id, if pushed


def find_source(cfg: config_mod.Config, which: str = "ppo") -> tuple[Path | None, str]:
    """(the PPO checkpoint to export, "") or (None, why there is none).

    ``which`` is ``ppo`` (``best`` if it exists, else ``last``: the choice of
    06's evaluation), ``ppo_best``, ``ppo_last`` or a PPO checkpoint folder.
    """
    from .evaluation import resolve_models

    try:
        (spec,) = resolve_models(cfg, [which])
    except MissingInputError as exc:
        return None, str(exc)
    if spec.kind != "ppo":
        return None, (f"{spec.path} is not a PPO checkpoint (no policy_adapter.safetensors); export takes "
                      "ppo, ppo_best, ppo_last or a folder written by 05_ppo")
    return spec.path, ""


def _export_config(cfg: config_mod.Config) -> config_mod.Config:
    """The run's config, with a hub base loaded in bf16 where it would be 4-bit (a 4-bit base cannot be merged)."""
    if cfg.model.name_or_path != "scratch" and cfg.model.quantization in ("4bit", "auto"):
        return cfg.override(**{"model.quantization": "bf16"})
    return cfg


def export_ppo(cfg: config_mod.Config, source: str | Path = "ppo", out_dir: str | Path | None = None,
               device: torch.device | None = None, push_to_hub: str = "", private: bool = True) -> ExportResult:
    """Write the PPO policy merged into its base as a Hugging Face folder (``checkpoints/export`` by default).

    ``source`` is what ``find_source`` takes. ``push_to_hub`` (a repo id such
    as ``me/looper-math``) also uploads model and tokenizer, as a private
    repo unless ``private=False``; it needs a login (``hf auth login``).
    """
    from .ppo.model import load_ppo_policy

    path, why = find_source(cfg, str(source))
    if path is None:
        raise MissingInputError(why)
    out = Path(out_dir) if out_dir is not None else export_dir(cfg)
    device = device or resolve_device(cfg.device)
    model, tokenizer = load_ppo_policy(_export_config(cfg), path, device)
    if hasattr(model, "peft_config"):  # load_ppo_policy leaves the adapter unmerged on a quantised base
        raise RuntimeError(f"{path}: the policy adapter could not be merged into a quantised base; set "
                           "model.quantization='bf16' (or 'none' on CPU) and export again")
    state = read_state(path)
    info = {
        "run_id": cfg.run_id, "profile": cfg.profile,
        "source_checkpoint": str(Path(path).resolve()), "ppo_step": state.get("step"),
        "best_dev_accuracy": best if (best := state.get("best_dev")) is not None and best >= 0 else None,  # -1: no eval
        "sft_checkpoint": str(sft_dir(cfg).resolve()), "base_model": cfg.model.name_or_path,
        "format": "merged", "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "n_params": count_params(model)["total"],
        "prompt_style": cfg.model.prompt_style,
        # the exact text the model was trained to continue; the template writes BOS, so a user tokenizes
        # it with add_special_tokens=False (prompts.encode_prompt)
        "prompt_example": build_prompt(_EXAMPLE, tokenizer, cfg.model.prompt_style),
        "prompt_tokenize": "add_special_tokens=False",
        "answer_format": "worked steps, then a last line '#### N'" + (
            " after </think>" if completion_starts_in_think(tokenizer, cfg.model.prompt_style) else ""),
        "load": f"AutoModelForCausalLM.from_pretrained('{out}'); AutoTokenizer.from_pretrained('{out}')",
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    with atomic_dir(out) as tmp, quiet_progress():
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        config_mod.save(cfg, tmp / "looper_config.json")
        atomic_write_json(tmp / EXPORT_INFO, info)
    pushed = ""
    if push_to_hub:
        model.push_to_hub(push_to_hub, private=private,
                          commit_message=f"looper PPO policy, run {cfg.run_id} ({cfg.profile})")
        tokenizer.push_to_hub(push_to_hub, private=private)
        pushed = push_to_hub
    return ExportResult(path=out, info=json.loads((out / EXPORT_INFO).read_text(encoding="utf-8")), pushed_to=pushed)
