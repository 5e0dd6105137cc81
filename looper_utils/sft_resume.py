"""Which Trainer checkpoint an SFT run resumes from: the same settings, complete, not past the planned steps.

The Trainer keeps resumable ``checkpoint-N`` folders in ``trainer_dir``
(``checkpoints/sft-trainer/``) next to ``looper_signature.json``
(``trainer_signature``: the settings and training rows that made them); a
checkpoint of another run is never resumed into.

The Trainer writes a checkpoint file by file, so a run killed (or out of
disk) while saving leaves a partial ``checkpoint-N``. Only complete ones are
resumed (``checkpoint_problem`` says what is missing): a partial one is
renamed ``broken-checkpoint-N`` with a warning and the previous complete one
(or the start) is used (``last_checkpoint``). A checkpoint already at the
last step is loaded, not trained on: the Trainer would take one more step
(``resume_plan``).
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import warnings
import zipfile
from pathlib import Path
from typing import Any

from . import config as config_mod
from .artifacts import read_json
from .data import rows_digest

__all__ = ["trainer_dir", "trainer_signature", "checkpoint_step", "checkpoint_problem", "last_checkpoint",
           "resume_plan"]

# Settings whose change makes an old Trainer checkpoint a different run (never resumed into).
_TRAIN_KEYS = ("learning_rate", "batch_size", "grad_accum", "max_length", "packing", "warmup_ratio",
               "weight_decay", "n_train", "lr_scheduler")


def trainer_dir(cfg: config_mod.Config) -> Path:
    """Where the Trainer keeps its resumable checkpoints (``checkpoint-N``)."""
    return cfg.checkpoints_dir / "sft-trainer"


def trainer_signature(cfg: config_mod.Config, rows: list[dict]) -> dict[str, Any]:
    """What must match for an old Trainer checkpoint to be resumed: settings and training rows."""
    return {"seed": cfg.seed, "model": config_mod.model_identity(cfg),
            "sft": {k: getattr(cfg.sft, k) for k in _TRAIN_KEYS}, "rows": rows_digest(rows)}


def checkpoint_step(ckpt: Path) -> int:
    """The step N of a Trainer ``checkpoint-N`` folder."""
    return int(ckpt.name.rsplit("-", 1)[1])


def checkpoint_problem(ckpt: Path) -> str | None:
    """Why a Trainer ``checkpoint-N`` folder cannot be resumed, or None if it is complete.

    The Trainer writes the weights, then the optimizer, scheduler and RNG
    state, and ``trainer_state.json`` last; each file must also be whole (a
    readable safetensors header, a torch zip with its directory at the end).
    """
    from safetensors import safe_open

    state = ckpt / "trainer_state.json"
    if not state.is_file():
        return "trainer_state.json is missing"
    try:
        json.loads(state.read_text(encoding="utf-8"))["global_step"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return "trainer_state.json is cut short or unreadable"
    weights = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors",
               "pytorch_model.bin", "adapter_model.bin")
    if not any((ckpt / w).is_file() for w in weights):
        return "it holds no model weights (model.safetensors or adapter_model.safetensors)"
    for name in ("optimizer.pt", "scheduler.pt"):
        if not (ckpt / name).is_file():
            return f"{name} is missing"
    index = ckpt / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (ValueError, KeyError, TypeError, AttributeError):
            return f"{index.name} is unreadable"
        missing = sorted(x for x in shards if not (ckpt / x).is_file())
        if missing:
            return f"weight shard {missing[0]} is missing"
    for f in sorted(ckpt.glob("*.safetensors")):
        try:
            with safe_open(str(f), framework="pt") as fh:
                fh.keys()
        except Exception as exc:  # SafetensorError: truncated, empty or garbled
            return f"{f.name} is unreadable ({exc})"
    for f in sorted([*ckpt.glob("*.pt"), *ckpt.glob("*.pth"), *ckpt.glob("*.bin")]):
        if not zipfile.is_zipfile(f):  # torch.save writes a zip whose directory comes last
            return f"{f.name} is cut short"
    return None


def last_checkpoint(work: Path, signature: dict[str, Any], resume: bool) -> str | None:
    """The latest complete Trainer checkpoint to resume from, if it belongs to a run with the same settings.

    Partial checkpoints are renamed ``broken-checkpoint-N`` (a name the
    Trainer neither resumes nor rotates) with a warning.
    """
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    if not work.is_dir():
        return None
    found = sorted((p for p in work.iterdir() if p.is_dir() and re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-\d+", p.name)),
                   key=checkpoint_step, reverse=True)
    if not found:
        return None
    sig_file = work / "looper_signature.json"
    if not resume or not sig_file.is_file() or read_json(sig_file) != signature:
        why = "sft.resume is off" if not resume else "it was written with other settings or data"
        warnings.warn(f"{work}: not resuming from {found[0].name} because {why}; training from the start",
                      stacklevel=3)
        shutil.rmtree(work)
        return None
    broken = []
    for ckpt in found:
        why = checkpoint_problem(ckpt)
        if why is None:
            break
        aside = ckpt.with_name(f"broken-{ckpt.name}")
        shutil.rmtree(aside, ignore_errors=True)  # an older broken copy of the same step
        os.replace(ckpt, aside)
        broken.append((ckpt, aside, why))
    else:
        ckpt = None
    then = f"resuming from {ckpt.name}" if ckpt else "training from the start"
    for old, aside, why in broken:
        warnings.warn(f"{old} is incomplete ({why}): a run was killed or ran out of disk while saving it; "
                      f"moved it to {aside.name} (delete it to free the space) and {then}", stacklevel=3)
    return str(ckpt) if ckpt else None


def _planned_steps(trainer) -> int:
    """The optimizer steps ``trainer.train()`` will run to, as the Trainer counts them."""
    args = trainer.args
    if args.max_steps > 0:
        return args.max_steps
    per_epoch = max(math.ceil(len(trainer.get_train_dataloader()) / args.gradient_accumulation_steps), 1)
    return math.ceil(args.num_train_epochs * per_epoch)


def resume_plan(trainer, resume: str | None, main: bool = True) -> tuple[str | None, bool]:
    """(checkpoint to resume, whether it already holds every planned step).

    A finished checkpoint is loaded into the trainer instead of resumed:
    resuming at the last step makes the Trainer take one step more. One past
    the planned steps (``max_steps`` or ``epochs`` lowered since) is a
    different run and is set aside like one with other settings.
    """
    from transformers import TrainerState

    if resume is None:
        return None, False
    state = TrainerState.load_from_json(str(Path(resume) / "trainer_state.json"))
    planned = _planned_steps(trainer)
    if state.global_step < planned:
        return resume, False
    if state.global_step > planned:
        warnings.warn(f"{Path(resume).parent}: not resuming from {Path(resume).name} because it is past the "
                      f"{planned} steps now asked for (sft.max_steps / sft.epochs); training from the start",
                      stacklevel=3)
        for old in Path(resume).parent.glob("checkpoint-*"):
            if main:
                shutil.rmtree(old)
        return None, False
    trainer._load_from_checkpoint(resume)
    trainer.state = state
    return resume, True

