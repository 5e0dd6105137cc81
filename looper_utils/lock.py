"""One run at a time in a project folder: the ``.looper.lock`` file and how a stale one is taken over.

Two runs in one folder would train into the same checkpoints and shards, so
the pipeline holds ``project_lock`` for the whole run. The lock records who
holds it (pid, host, run id, start time); a second run stops with a message
naming them, and a lock left by a process that is gone is taken over with a
warning.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

__all__ = ["LOCK_FILE", "ProjectBusyError", "project_lock"]

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
