"""Files that stages hand to each other: atomic writes, run folders, metrics.

Every write goes to a temporary file in the same folder and is renamed into
place, so a killed run never leaves half a file where a later stage (or a
rerun) would trust it. A stage that needs another's output calls
``require`` and gets a message naming the notebook to run first.

Outputs are meant to be shared with the group: files get the permissions the
umask gives a new file, also where a library writes them 0600
(``make_shareable``). Run ids are plain folder names (``check_run_id``), a
full disk is reported as such (``explain_disk_full``), and one run at a time
uses a project folder (``project_lock``).
"""
from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import shutil
import socket
import stat
import tempfile
import time
import uuid
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

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


PROGRESS_MARK = "» "  # lines that start with it are streamed by the pipeline as they are printed


def progress_line(what: str, done: int, total: int, started: float, note: str = "") -> str:
    """One progress line: what, how far, time elapsed and an estimate of the time left.

    ``started`` is a ``time.perf_counter()`` reading taken when the work began.

    >>> import time
    >>> line = progress_line("ppo iteration", 2, 8, time.perf_counter() - 10.0, "reward 0.81")
    >>> line.startswith(PROGRESS_MARK + "ppo iteration 2/8: 10 s elapsed, about 30 s left"), line.endswith("reward 0.81")
    (True, True)
    """
    import time

    elapsed = time.perf_counter() - started
    left = elapsed / done * (total - done) if done else float("nan")
    eta = "" if left != left else f", about {left:.0f} s left"
    return f"{PROGRESS_MARK}{what} {done}/{total}: {elapsed:.0f} s elapsed{eta}" + (f" · {note}" if note else "")


_NOT_SETTINGS = {"run_id", "root", "device"}


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: list(d) if isinstance(d, tuple) else d}  # a saved JSON config holds lists
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else _flat(v, f"{prefix}{k}"))
    return out


def overwrite_notice(what: str, old: dict[str, Any] | None, new: dict[str, Any], limit: int = 8) -> str | None:
    """The line a stage prints before it replaces outputs another run wrote: which run, and what changes.

    ``old`` and ``new`` hold ``run_id``, ``profile`` and any settings (nested
    dicts are compared leaf by leaf; run id, root and device are not settings).
    ``None`` when there is nothing to replace or the same run rewrites its own
    outputs with the same settings.

    >>> old = {"run_id": "a", "profile": "smoke", "data": {"teacher": "worked:1", "n_train": 4000}}
    >>> new = {"run_id": "b", "profile": "smoke", "data": {"teacher": "worked:0.4,terse:0.6", "n_train": 4000}}
    >>> print(overwrite_notice("checkpoints/sft", old, new).removeprefix(PROGRESS_MARK))
    checkpoints/sft was written by run a (smoke); run b replaces it. What changes: data.teacher worked:1 -> worked:0.4,terse:0.6
    >>> overwrite_notice("checkpoints/sft", old, dict(old)) is None
    True
    """
    if not old:
        return None
    a = {k: v for k, v in _flat(old).items() if k.split(".")[0] not in _NOT_SETTINGS}
    b = {k: v for k, v in _flat(new).items() if k.split(".")[0] not in _NOT_SETTINGS}
    changes = [f"{k} {a.get(k, '(none)')} -> {b.get(k, '(none)')}" for k in sorted(set(a) | set(b))
               if a.get(k) != b.get(k)]
    if old.get("run_id") == new.get("run_id") and not changes:
        return None
    what_changes = ("What changes: " + ", ".join(changes[:limit]) + (f" and {len(changes) - limit} more"
                                                                    if len(changes) > limit else "")
                    if changes else "Same settings")
    return (f"{PROGRESS_MARK}{what} was written by run {old.get('run_id', '?')} ({old.get('profile', '?')}); "
            f"run {new.get('run_id', '?')} replaces it. {what_changes}")


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


# ---- one run at a time in a project folder -------------------------------------

LOCK_FILE = ".looper.lock"


class ProjectBusyError(RuntimeError):
    """Another run holds the project folder's lock; the message names it and the lock file."""


def _process_start(pid: int) -> str | None:
    """When the kernel started ``pid`` (Linux), so that a reused pid is not taken for the old run."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None  # field 22 of proc(5), counted after "(comm)"


def _alive(pid: Any, start: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    now = _process_start(pid)
    return start is None or now is None or now == start


def _read_lock(path: Path) -> tuple[bytes, dict[str, Any] | None]:
    raw = path.read_bytes()
    try:
        info = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return raw, None
    return raw, info if isinstance(info, dict) else None


def _remove_stale(path: Path, raw: bytes) -> None:
    """Remove the lock if it still holds ``raw``; a lock another run took meanwhile stays."""
    aside = path.with_name(f"{path.name}.stale-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    if aside.read_bytes() != raw:
        with contextlib.suppress(FileExistsError):
            os.link(aside, path)  # put the newer lock back, unless yet another one is there
    aside.unlink()


@contextlib.contextmanager
def project_lock(root: Path, run_id: str, stale_after: float = 30.0) -> Iterator[Path]:
    """Hold ``<root>/.looper.lock`` while a run uses the project folder.

    Two runs in one folder would train into the same checkpoints and shards.
    The lock file (created with ``O_EXCL``) holds the pid, host, run id and
    start time; a second run stops with a message naming them. A lock whose
    process is gone (same host) is taken over with a warning; one from
    another host is left for a person to judge.
    """
    root = Path(root)
    path = root / LOCK_FILE
    host = socket.gethostname()
    me = {"pid": os.getpid(), "host": host, "run_id": run_id,
          "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
          "pid_start": _process_start(os.getpid()), "token": uuid.uuid4().hex}
    for _ in range(5):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(json.dumps(me) + "\n")
            break
        try:
            raw, info = _read_lock(path)
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            continue  # released meanwhile
        if info is None:  # empty or cut short: being written right now, or left by a crash
            if age < stale_after:
                raise ProjectBusyError(f"{path} is being written by a run that is starting; wait for it, or "
                                       f"remove {path} if no run is using {root}")
            warnings.warn(f"{path}: unreadable lock left {age:.0f}s ago; taking it over", stacklevel=3)
            _remove_stale(path, raw)
            continue
        other = (f"run {info.get('run_id')} (pid {info.get('pid')}"
                 + (f" on {info.get('host')}" if info.get("host") != host else "") + ")")
        if info.get("host") != host or _alive(info.get("pid"), info.get("pid_start")):
            raise ProjectBusyError(f"{other} is using {root} since {info.get('started')}; wait for it or "
                                   f"remove {path} if it is dead")
        warnings.warn(f"{path}: {other} started {info.get('started')} is no longer running; taking over "
                      "its stale lock", stacklevel=3)
        _remove_stale(path, raw)
    else:
        raise ProjectBusyError(f"{path}: could not take the lock (other runs keep taking it); remove {path} "
                               "if no run is using the folder")
    try:
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            if (_read_lock(path)[1] or {}).get("token") == me["token"]:  # not a lock someone took over
                path.unlink()
