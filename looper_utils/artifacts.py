"""Files that stages hand to each other: atomic writes, run folders, metrics.

Every write goes to a temporary file in the same folder and is renamed into
place, so a killed run never leaves half a file where a later stage (or a
rerun) would trust it. A stage that needs another's output calls
``require`` and gets a message naming the notebook to run first.

Outputs are meant to be shared with the group: files get the permissions the
umask gives a new file, also where a library writes them 0600
(``make_shareable``). Run ids are plain folder names (``check_run_id``), a
full disk is reported as such (``explain_disk_full``).

Two neighbours hold the rest of what a run leaves behind: ``progress`` (the
lines a run prints: progress lines, overwrite notices; ``Timer``) and
``lock`` (one run at a time in a project folder, ``project_lock``). Their
public names are re-exported here, the one import the notebooks use for run
files.
"""
from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .lock import LOCK_FILE, ProjectBusyError, project_lock
from .progress import PROGRESS_MARK, Timer, overwrite_notice, progress_line

__all__ = ["STAGES", "MissingInputError", "make_shareable", "atomic_write_bytes", "atomic_dir", "atomic_write_text",
           "atomic_write_json", "read_json", "check_manifest", "check_run_id", "run_paths", "save_metrics",
           "load_metrics", "require", "iter_jsonl_lines", "DiskFullError", "explain_disk_full",
           # re-exported from lock and progress
           "LOCK_FILE", "ProjectBusyError", "project_lock", "PROGRESS_MARK", "Timer", "overwrite_notice",
           "progress_line"]

STAGES = ("01_data", "02_sft", "03_rollouts", "04_regime_w", "05_ppo", "06_eval")


class MissingInputError(FileNotFoundError):
    """A stage's input is missing; the message names the notebook to run first."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_shareable(folder: Path) -> Path:
    """Give every file and folder under ``folder`` the permissions a new one gets under the umask.

    safetensors and ``tempfile`` write 0600; the rest of a checkpoint is
    group-readable, and a checkpoint others cannot read is no use to them.
    """
    mask = _umask()
    for dirpath, _, filenames in os.walk(folder):
        os.chmod(dirpath, 0o777 & ~mask)
        for name in filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode):
                os.chmod(p, (0o777 if st.st_mode & stat.S_IXUSR else 0o666) & ~mask)
    return Path(folder)


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


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``final`` in one rename (checkpoints, exports)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o777 & ~mask)  # mkdtemp makes 0700; checkpoints are shared like any new folder
    try:
        yield tmp
        make_shareable(tmp)  # safetensors and torch write some files 0600; a checkpoint is shared as a whole
        old = None
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


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


_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_run_id(run_id: str) -> str:
    """Return ``run_id`` if it is a plain folder name, else stop: it becomes ``runs/<run_id>/``.

    >>> check_run_id("smoke-20250101-120000")
    'smoke-20250101-120000'
    >>> check_run_id("../../x")
    Traceback (most recent call last):
    ...
    ValueError: run_id '../../x' is not a plain folder name; use 1-64 letters, digits, ...
    """
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
        raise ValueError(f"run_id {run_id!r} is not a plain folder name; use 1-64 letters, digits, '.', '_' "
                         "or '-', starting with a letter or digit (e.g. smoke-r1)")
    return run_id


def run_paths(run_dir: Path) -> dict[str, Path]:
    """The standard sub-folders of ``runs/<run_id>/``, created.

    ``run_dir`` must be ``<root>/runs/<run_id>`` with a plain ``run_id``, so a
    notebook run straight through papermill cannot write outside ``runs/``.
    """
    run_dir = Path(run_dir)
    if run_dir.parent.name != "runs" or ".." in run_dir.parts:
        raise ValueError(f"{run_dir} is not a folder runs/<run_id>: the run_id parameter must be a plain "
                         "folder name (no '/', '..' or absolute path), e.g. run_id='smoke-r1'")
    check_run_id(run_dir.name)
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


def iter_jsonl_lines(path: Path) -> Iterator[tuple[int, str]]:
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if line.strip():
                yield lineno, line


# ---- a full disk -------------------------------------------------------------

class DiskFullError(OSError):
    """Writing failed for lack of space; the message names the place and the fix."""


def _space_error(exc: BaseException, path: Path) -> bool:
    """Whether ``exc`` (or what caused it) is a full disk or quota, in the forms the libraries raise."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(e)
        # safetensors (Rust) and tokenizers report "No space left on device (os error 28)";
        # torch.save reports only "file write failed", so look at the disk itself
        if "No space left on device" in text or "os error 28" in text or "Disk quota exceeded" in text:
            return True
        if "write failed" in text and 0 <= _free_bytes(path) < 64 * 2**20:
            return True
        e = e.__cause__ or e.__context__
    return False


def _free_bytes(path: Path) -> int:
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return -1


@contextlib.contextmanager
def explain_disk_full(path: Path, what: str) -> Iterator[None]:
    """Turn a full disk while ``what`` (e.g. "saving the SFT checkpoint") into one clear error.

    Libraries report it as ``OSError`` errno 28, a ``SafetensorError`` or a
    torch ``RuntimeError``; all become ``DiskFullError("no space left on <path> ...")``.
    """
    try:
        yield
    except DiskFullError:
        raise
    except Exception as exc:
        if not _space_error(exc, Path(path)):
            raise
        where = getattr(exc, "filename", None) or path
        free = _free_bytes(Path(path))
        left = f" ({free / 2**20:.0f} MiB free there)" if free >= 0 else ""
        err = DiskFullError(f"no space left on {where} while {what}{left}; free space on that disk (old "
                            "runs/ and checkpoints/ folders, broken-checkpoint-* folders) or pass a root on a "
                            "larger disk, then rerun")
        err.errno = errno.ENOSPC
        raise err from exc
