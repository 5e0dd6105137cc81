"""Arms: the slices of the training problems a bandit (``regime_w.bandits``) chooses among.

An arm is a named slice of the training problems. The default arms are
difficulty buckets (the number of ``<<...>>`` calculation steps in the gold
solution, ``data.count_steps``); the alternative buckets problems by the
pass rate measured in 03's rollouts.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ..problem_rows import count_steps

__all__ = ["Arm", "difficulty_arms", "arms_from_pass_rate", "build_arms", "arm_of"]


@dataclass(frozen=True)
class Arm:
    """A named slice of the training problems, by row ``id``."""

    name: str
    ids: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.ids)


def difficulty_arms(rows: Sequence[Mapping[str, Any]], max_arms: int = 6, min_size: int = 1) -> list[Arm]:
    r"""One arm per number of gold calculation steps, neighbours merged to fit.

    Buckets smaller than ``min_size`` are merged into their smaller
    neighbour, then the smallest adjacent pair is merged until at most
    ``max_arms`` remain.

    >>> rows = [{"id": f"r{i}", "answer": "<<1+1=2>>" * s} for i, s in enumerate([1, 1, 2, 2, 3, 5])]
    >>> [(a.name, len(a)) for a in difficulty_arms(rows, max_arms=3)]
    [('1 step', 2), ('2 steps', 2), ('3-5 steps', 2)]
    """
    if max_arms < 1 or min_size < 1:
        raise ValueError(f"max_arms ({max_arms}) and min_size ({min_size}) must be >= 1; "
                         "fix bandit.max_arms / bandit.min_arm_size")
    if not rows:
        raise ValueError("no training rows to make arms from; run notebooks/01_data.ipynb first")
    steps = [count_steps(r.get("answer", "")) for r in rows]
    sizes = Counter(steps)
    buckets = [[k] for k in sorted(sizes)]  # each bucket: the step counts it covers

    def size(b: list[int]) -> int:
        return sum(sizes[k] for k in b)

    while len(buckets) > 1:
        small = [i for i, b in enumerate(buckets) if size(b) < min_size]
        if small:
            i = min(small, key=lambda j: size(buckets[j]))
            nbrs = [j for j in (i - 1, i + 1) if 0 <= j < len(buckets)]
            j = min(nbrs, key=lambda j: size(buckets[j]))
        elif len(buckets) > max_arms:
            i = min(range(len(buckets) - 1), key=lambda j: size(buckets[j]) + size(buckets[j + 1]))
            j = i + 1
        else:
            break
        lo, hi = min(i, j), max(i, j)
        buckets[lo:hi + 1] = [buckets[lo] + buckets[hi]]
    arms = []
    for b in buckets:
        keep = set(b)
        name = (f"{b[0]} step" if b[0] == 1 else f"{b[0]} steps") if len(b) == 1 else f"{b[0]}-{b[-1]} steps"
        arms.append(Arm(name, tuple(str(r["id"]) for r, s in zip(rows, steps) if s in keep)))
    return arms


def arms_from_pass_rate(rollout_df: pd.DataFrame, n_bins: int = 3) -> list[Arm]:
    """Arms by measured pass rate: never solved, ``n_bins`` equal bins of 0 < p < 1, always solved.

    The two ends are arms of their own because they carry no learning
    signal at all. Empty arms are left out.

    >>> df = pd.DataFrame({"prompt_id": list("aabbcc"), "correct": [0, 0, 1, 0, 1, 1]})
    >>> [(a.name, a.ids) for a in arms_from_pass_rate(df, n_bins=2)]
    [('p=0', ('a',)), ('0<p<=0.5', ('b',)), ('p=1', ('c',))]
    """
    for col in ("prompt_id", "correct"):
        if col not in rollout_df.columns:
            raise ValueError(f"rollout table lacks column {col!r}; load it with looper_utils.rollouts.load_rollouts")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}; fix bandit.pass_rate_bins")
    rates = rollout_df.groupby("prompt_id", sort=True)["correct"].mean()
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    groups: list[tuple[str, list[str]]] = [("p=0", [])]
    groups += [(_bin_name(edges[i], edges[i + 1]), []) for i in range(n_bins)]
    groups.append(("p=1", []))
    for pid, p in rates.items():
        if p <= 0.0:
            k = 0
        elif p >= 1.0:
            k = n_bins + 1
        else:  # bins are (lo, hi]; the last middle bin stops short of 1
            k = 1 + min(n_bins - 1, int(np.searchsorted(edges, p, side="left")) - 1)
        groups[k][1].append(str(pid))
    return [Arm(name, tuple(ids)) for name, ids in groups if ids]


def _bin_name(lo: float, hi: float) -> str:
    def f(x: float) -> str:
        return f"{x:.2f}".rstrip("0").rstrip(".")
    return f"{f(lo)}<p<{f(hi)}" if hi >= 1.0 else f"{f(lo)}<p<={f(hi)}"


def build_arms(cfg: Any, rows: Sequence[Mapping[str, Any]], rollout_df: pd.DataFrame | None = None) -> list[Arm]:
    """The arms a ``BanditConfig`` asks for: ``cfg.arms`` is ``difficulty`` or ``pass_rate``.

    >>> from looper_utils.config import BanditConfig
    >>> rows = [{"id": str(i), "answer": "<<1+1=2>>" * (1 + i % 2)} for i in range(100)]
    >>> [a.name for a in build_arms(BanditConfig(), rows)]
    ['1 step', '2 steps']
    """
    if cfg.arms == "difficulty":
        return difficulty_arms(rows, max_arms=cfg.max_arms, min_size=cfg.min_arm_size)
    if cfg.arms == "pass_rate":
        if rollout_df is None:
            raise ValueError("bandit.arms='pass_rate' needs 03's rollouts (looper_utils.rollouts.load_rollouts); "
                             "run notebooks/03_rollouts.ipynb first or use bandit.arms='difficulty'")
        return arms_from_pass_rate(rollout_df, n_bins=cfg.pass_rate_bins)
    raise ValueError(f"unknown bandit.arms {cfg.arms!r}; choose difficulty or pass_rate")


def arm_of(arms: Sequence[Arm]) -> dict[str, int]:
    """Row id -> index of its arm (to label a rollout table's ``prompt_id``).

    >>> arm_of([Arm("easy", ("a", "b")), Arm("hard", ("c",))])
    {'a': 0, 'b': 0, 'c': 1}
    """
    return {i: k for k, arm in enumerate(arms) for i in arm.ids}
