"""What a run prints while it works: progress lines, overwrite notices, and wall-clock timers.

A line that starts with ``PROGRESS_MARK`` is streamed by the pipeline as it is
printed (``pipeline`` runs the notebooks headless), so a long stage shows how
far it is (``progress_line``) and a stage about to replace another run's
outputs says so first (``overwrite_notice``). ``Timer`` adds up the wall time
of named sections for a stage's metrics.
"""
from __future__ import annotations

import time
from typing import Any

__all__ = ["PROGRESS_MARK", "progress_line", "overwrite_notice", "Timer"]

PROGRESS_MARK = "» "  # lines that start with it are streamed by the pipeline as they are printed


def progress_line(what: str, done: int, total: int, started: float, note: str = "") -> str:
    """One progress line: what, how far, time elapsed and an estimate of the time left.

    ``started`` is a ``time.perf_counter()`` reading taken when the work began.

    >>> import time
    >>> line = progress_line("ppo iteration", 2, 8, time.perf_counter() - 10.0, "reward 0.81")
    >>> line.startswith(PROGRESS_MARK + "ppo iteration 2/8: 10 s elapsed, about 30 s left"), line.endswith("reward 0.81")
    (True, True)
    """
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
