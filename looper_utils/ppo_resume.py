"""Whether ``checkpoints/ppo/last`` belongs to the run being started.

``checkpoints/`` is shared by every run of a project folder, so a PPO state
found there may come from another run: another model, quantisation, SFT
checkpoint, reward or PPO setting. Resuming into it would silently skip
training (its iterations are already done) or mix two runs. A checkpoint is
therefore written with a *signature* of what an iteration computes, and is
resumed only when the signature matches; otherwise the old folder is moved to
``checkpoints/ppo.previous`` (nothing trained is deleted) and training starts
from the first iteration. This mirrors the SFT stage's Trainer-checkpoint check.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

from . import modeling
from .artifacts import atomic_write_text
from .config import Config, model_identity
from .data import rows_digest

SIGNATURE_NAME = "resume_signature.json"

# PPO settings that may differ between a run and its continuation: how long it runs, how often it
# evaluates and saves, where it logs, and whether activations are recomputed (same numbers).
RESUME_FREE = ("iterations", "eval_every", "n_dev", "save_every", "resume", "report_to", "gradient_checkpointing")


def _sft_digest(cfg: Config) -> str:
    """A digest of the SFT checkpoint's weight files: a retrained SFT model is another starting point."""
    h = hashlib.sha256()
    folder = modeling.sft_dir(cfg)
    for path in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        h.update(path.name.encode())
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 24), b""):
                h.update(chunk)
    return h.hexdigest()


def resume_signature(cfg: Config, train_rows: list[dict]) -> dict[str, Any]:
    """What must match for a saved PPO state to be continued."""
    ppo = {k: v for k, v in dataclasses.asdict(cfg.ppo).items() if k not in RESUME_FREE}
    return {"seed": cfg.seed, "model": model_identity(cfg), "ppo": ppo, "reward": dataclasses.asdict(cfg.reward),
            "bandit": dataclasses.asdict(cfg.bandit), "rows": rows_digest(train_rows, ("id", "question")),
            "sft": _sft_digest(cfg)}


def write_signature(folder: Path, signature: dict[str, Any]) -> None:
    atomic_write_text(Path(folder) / SIGNATURE_NAME, json.dumps(signature, indent=1, sort_keys=True) + "\n")


def differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """Dotted names of the entries that differ, e.g. ``['model.quantization', 'sft']``.

    >>> differences({"seed": 0, "ppo": {"k": 4, "lr": 1}}, {"seed": 0, "ppo": {"k": 8, "lr": 1}})
    ['ppo.k']
    """
    out = []
    for key in sorted(set(saved) | set(now)):
        a, b = saved.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{key}.{k}" for k in differences(a, b)]
        elif a != b:
            out.append(key)
    return out


def can_resume(out: Path, signature: dict[str, Any], last: Path, set_aside: bool = True) -> bool:
    """True when ``last`` was written by this run's settings. Otherwise (with ``set_aside``, the main
    process) the whole ``out`` folder is moved to ``<out>.previous`` (replacing an older one) with a
    warning, and False is returned."""
    sig_file = Path(last) / SIGNATURE_NAME
    saved = json.loads(sig_file.read_text()) if sig_file.is_file() else {}
    diff = differences(saved, signature) if saved else ["(no signature saved)"]
    if not diff:
        return True
    if not set_aside:
        return False
    out = Path(out)
    aside = out.with_name(out.name + ".previous")
    if aside.exists():
        shutil.rmtree(aside)
    os.replace(out, aside)
    shown = ", ".join(diff[:6]) + (" ..." if len(diff) > 6 else "")
    warnings.warn(f"{last} was written by a run with other settings ({shown}); not resuming. It was moved to "
                  f"{aside} and PPO starts from iteration 0.", stacklevel=3)
    return False
