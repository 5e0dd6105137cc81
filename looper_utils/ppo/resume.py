"""Whether ``checkpoints/ppo/last`` belongs to the run being started, and its state on disk.

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
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import modeling
from ..artifacts import atomic_dir, atomic_write_text
from ..config import Config, model_identity
from ..data import rows_digest

SIGNATURE_NAME = "resume_signature.json"
STATE_TENSORS = "trainer_state.safetensors"
STATE_JSON = "trainer_state.json"
LEGACY_STATE = "trainer_state.pt"  # the pickle earlier versions wrote: never loaded
STATE_FORMAT = 1

# PPO settings that may differ between a run and its continuation: how long it runs, how often it
# evaluates and saves, where it logs, and whether activations are recomputed (same numbers).
# how a run computes, not what it trains: a state continues under other values (sampling: a merged copy or
# the adapter inside the sampler draw from the same policy up to bf16 rounding, engine.merged; compile: the
# same layers, compiled or not)
RESUME_FREE = ("iterations", "eval_every", "n_dev", "save_every", "resume", "report_to", "gradient_checkpointing",
               "sampling", "compile")


def resume_signature(cfg: Config, train_rows: list[dict]) -> dict[str, Any]:
    """What must match for a saved PPO state to be continued."""
    # the defaults of later fields (trainer="ours", critic="separate" and its unused value_coef) are left
    # out, so the states written before those fields existed still resume
    defaults = {("trainer", "ours"), ("critic", "separate")}
    ppo = {k: v for k, v in dataclasses.asdict(cfg.ppo).items()
           if k not in RESUME_FREE and (k, v) not in defaults
           and not (k == "value_coef" and cfg.ppo.critic == "separate")}
    return {"seed": cfg.seed, "model": model_identity(cfg), "ppo": ppo, "reward": dataclasses.asdict(cfg.reward),
            "bandit": dataclasses.asdict(cfg.bandit), "rows": rows_digest(train_rows, ("id", "question")),
            "sft": modeling.weights_digest(modeling.sft_dir(cfg))}


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


def move_aside(out: Path, why: str) -> Path:
    """Move the whole ``out`` folder to ``<out>.previous`` (replacing an older one) with a warning that says
    ``why``; nothing trained is deleted, and the run starts from iteration 0."""
    out = Path(out)
    aside = out.with_name(out.name + ".previous")
    if aside.exists():
        shutil.rmtree(aside)
    os.replace(out, aside)
    warnings.warn(f"{why}; not resuming. It was moved to {aside} and PPO starts from iteration 0.", stacklevel=3)
    return aside


def can_resume(out: Path, signature: dict[str, Any], last: Path, set_aside: bool = True) -> bool:
    """True when ``last`` was written by this run's settings. Otherwise (with ``set_aside``, the main
    process) the whole ``out`` folder is moved to ``<out>.previous`` (replacing an older one) with a
    warning, and False is returned."""
    sig_file = Path(last) / SIGNATURE_NAME
    saved = json.loads(sig_file.read_text()) if sig_file.is_file() else {}
    diff = differences(saved, signature) if saved else ["(no signature saved)"]
    if not diff:
        return True
    if set_aside:
        shown = ", ".join(diff[:6]) + (" ..." if len(diff) > 6 else "")
        move_aside(out, f"{last} was written by a run with other settings ({shown})")
    return False


def same_run(a: Path, b: Path) -> bool:
    """Whether checkpoint folders ``a`` and ``b`` hold the same resume signature (one PPO run wrote both)."""
    fa, fb = Path(a) / SIGNATURE_NAME, Path(b) / SIGNATURE_NAME
    if not (fa.is_file() and fb.is_file()):
        return False
    try:
        return json.loads(fa.read_text()) == json.loads(fb.read_text())
    except (OSError, ValueError):
        return False


# ---- the training state, without pickle ---------------------------------------------------

class StateError(ValueError):
    """A saved training state cannot be read back; the message names the file."""


def _encode(obj: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    """A JSON-able copy of ``obj`` whose tensors are replaced by references into ``tensors``.

    Tuples, non-string dict keys (optimiser states are keyed by parameter
    index) and numpy values are tagged so ``_decode`` gives back the same
    types: ``random.setstate`` takes only tuples.
    """
    if isinstance(obj, torch.Tensor):
        tensors[key] = obj.detach().cpu().clone().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return {"__npscalar__": obj.item(), "dtype": str(obj.dtype)}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, f"{key}/{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{key}/{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, f"{key}/{k}", tensors) for k, v in obj.items()}
        return {"__items__": [[_encode(k, f"{key}/k{i}", tensors), _encode(v, f"{key}/{i}", tensors)]
                              for i, (k, v) in enumerate(obj.items())]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"{key}: a {type(obj).__name__} cannot be saved in a training state without pickle")


def _decode(obj: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors, where) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        if obj["__tensor__"] not in tensors:
            raise StateError(f"{where}: the tensor {obj['__tensor__']!r} is missing from {STATE_TENSORS}")
        return tensors[obj["__tensor__"]]
    if "__ndarray__" in obj:
        return np.asarray(obj["__ndarray__"], dtype=np.dtype(obj["dtype"]))
    if "__npscalar__" in obj:
        return np.dtype(obj["dtype"]).type(obj["__npscalar__"])
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors, where) for v in obj["__tuple__"])
    if "__items__" in obj:
        return {_decode(k, tensors, where): _decode(v, tensors, where) for k, v in obj["__items__"]}
    return {k: _decode(v, tensors, where) for k, v in obj.items()}


def write_checkpoint(final: Path, cfg: Config, policy: Any, signature: dict[str, Any], looper_state: dict[str, Any],
                     trainer_state: dict[str, Any] | None = None, adapter: str | None = None) -> Path:
    """Write a PPO checkpoint folder ``final`` atomically: the policy adapter (what 06 loads), the config,
    the resume signature, ``looper_state.json`` and, when given, the trainer state (what ``resume`` needs).

    ``policy`` is a ``PolicyValue`` or a PEFT model whose adapter ``adapter`` is the policy (TRL's GRPO).
    """
    from ..config import save as save_cfg
    from .model import POLICY, save_policy_adapter

    with atomic_dir(final) as tmp:
        if trainer_state is not None:
            save_state(tmp, trainer_state)
        save_policy_adapter(policy, tmp, adapter=adapter or POLICY)
        save_cfg(cfg, tmp / modeling.CONFIG_FILE)
        write_signature(tmp, signature)
        atomic_write_text(tmp / modeling.STATE_FILE, json.dumps(looper_state) + "\n")
    return final


def save_state(folder: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (nested dicts, lists, tuples, tensors, numpy values, numbers, strings) as
    ``trainer_state.safetensors`` + ``trainer_state.json`` in ``folder``."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    skeleton = {"format": STATE_FORMAT, "state": _encode(state, "", tensors)}
    save_file(tensors, str(Path(folder) / STATE_TENSORS))
    atomic_write_text(Path(folder) / STATE_JSON, json.dumps(skeleton) + "\n")


def state_problem(folder: Path) -> str | None:
    """Why ``folder`` holds no state ``load_state`` may read, or None when both files are there."""
    folder = Path(folder)
    if (folder / STATE_TENSORS).is_file() and (folder / STATE_JSON).is_file():
        return None
    if (folder / LEGACY_STATE).is_file():
        return (f"{folder / LEGACY_STATE} is a pickle (the format of earlier versions), which is never loaded: "
                "unpickling runs whatever code the file holds")
    missing = [n for n in (STATE_TENSORS, STATE_JSON) if not (folder / n).is_file()]
    return f"{folder} holds no complete training state ({', '.join(missing)} missing)"


def load_state(folder: Path) -> dict[str, Any]:
    """The state ``save_state`` wrote; nothing in the files is executed. ``StateError`` names the bad file."""
    from safetensors.torch import load_file

    folder = Path(folder)
    why = state_problem(folder)
    if why:
        raise StateError(why)
    js, st = folder / STATE_JSON, folder / STATE_TENSORS
    try:
        skeleton = json.loads(js.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise StateError(f"{js}: not a training state ({exc})") from None
    if not isinstance(skeleton, dict) or skeleton.get("format") != STATE_FORMAT:
        raise StateError(f"{js}: not a training state of format {STATE_FORMAT}")
    try:
        tensors = load_file(str(st))
    except Exception as exc:  # safetensors raises its own error types for a bad header or a cut file
        raise StateError(f"{st}: unreadable ({type(exc).__name__}: {exc})") from None
    return _decode(skeleton["state"], tensors, str(js))
