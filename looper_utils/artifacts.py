"""Files that stages hand to each other: atomic writes, run folders, metrics.

Every write goes to a temporary file in the same folder and is renamed into
place, so a killed run never leaves half a file where a later stage (or a
rerun) would trust it. A stage that needs another's output calls
``require`` and gets a message naming the notebook to run first.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

STAGES = ("01_data", "02_sft", "03_rollouts", "04_regime_w", "05_ppo", "06_eval")


class MissingInputError(FileNotFoundError):
    """A stage's input is missing; the message names the notebook to run first."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file renamed into place (readable like any new file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def _jsonable(obj: Any) -> Any:
    """Numbers from numpy/torch become plain floats; NaN/inf become None (valid JSON)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 0) == 0:
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def atomic_write_json(path: Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(_jsonable(obj), indent=2) + "\n")


def read_json(path: Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); delete the file and rerun "
                         "the stage that wrote it") from None


def check_manifest(out: Path, manifest: dict[str, Any], what: str = "files") -> None:
    """Record what a folder of shards is made with, or stop if it was made with other settings.

    A rerun that resumes into the same folder must not mix two kinds of
    records (another k, other weights, another prompt) in one table.
    """
    path = Path(out) / "manifest.json"
    if path.is_file():
        old = read_json(path)
        diff = {k: (old.get(k), v) for k, v in manifest.items() if old.get(k) != v}
        if diff:
            raise ValueError(f"{path}: these {what} were made with other settings {diff} (old, new); "
                             f"use another run_id or delete {out} to start over")
    else:
        atomic_write_json(path, manifest)


def run_paths(run_dir: Path) -> dict[str, Path]:
    """The standard sub-folders of ``runs/<run_id>/``, created."""
    run_dir = Path(run_dir)
    out = {"run": run_dir, "metrics": run_dir / "metrics", "figures": run_dir / "figures",
           "configs": run_dir / "configs"}
    for p in out.values():
        p.mkdir(parents=True, exist_ok=True)
    return out


def save_metrics(run_dir: Path, stage: str, metrics: dict[str, Any]) -> Path:
    """Write ``runs/<id>/metrics/<stage>.json`` (stage like ``02_sft``)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
    return atomic_write_json(Path(run_dir) / "metrics" / f"{stage}.json", metrics)


def load_metrics(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Every stage's metrics that exist, keyed by stage."""
    out = {}
    for stage in STAGES:
        p = Path(run_dir) / "metrics" / f"{stage}.json"
        if p.is_file():
            out[stage] = read_json(p)
    return out


def require(path: Path, notebook: str) -> Path:
    """Return ``path`` if it exists, else stop naming the notebook that writes it."""
    path = Path(path)
    if not path.exists():
        raise MissingInputError(f"{path} is missing: run notebooks/{notebook}.ipynb first "
                                f"(or `python -m looper_utils.pipeline --stages {notebook[:2]}`)")
    return path


class Timer:
    """Wall-clock sections: ``with t.section('generate'): ...``; ``t.totals``."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}

    def section(self, name: str) -> "_Section":
        return _Section(self, name)


class _Section:
    def __init__(self, timer: Timer, name: str) -> None:
        self.timer, self.name = timer, name

    def __enter__(self) -> "_Section":
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.timer.totals[self.name] = self.timer.totals.get(self.name, 0.0) + time.perf_counter() - self.t0


def iter_jsonl_lines(path: Path) -> Iterator[tuple[int, str]]:
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if line.strip():
                yield lineno, line
