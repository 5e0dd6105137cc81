"""Statistics for the evaluation and the report: intervals, paired tests, pass@k, error categories.

Every accuracy the project reports comes with a 95% interval, and every
"model B beats model A" claim with a paired test on the same questions, so a
few points of difference on a few hundred problems are not over-read.

Written here rather than imported because the project does not depend on
scipy or statsmodels for four short formulas; each is checked against a
closed form or a brute-force enumeration in ``tests/test_stats.py``:

- ``accuracy_ci``: percentile bootstrap over questions (what 06_eval reports),
  ``wilson_ci`` the closed form it should agree with for 0/1 scores;
- ``paired_bootstrap_diff`` and ``mcnemar_exact``: the same questions answered
  by two models, resampled together / tested on the discordant pairs only;
- ``pass_at_k``: the unbiased estimator of Chen et al. (2021, HumanEval);
- ``maj_at_k``: majority vote over normalised answers;
- ``error_category``: why a completion failed, one label per completion.
"""
from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any, Iterable, Sequence

import numpy as np

from .answers import normalize_number, numbers_equal

__all__ = ["accuracy_ci", "wilson_ci", "paired_bootstrap_diff", "mcnemar_exact", "paired_comparison",
           "pass_at_k", "majority_vote", "maj_at_k", "ERROR_CATEGORIES", "TRUNCATED_REASONS",
           "error_category", "error_breakdown"]

# Bootstrap resamples are drawn in blocks so memory stays bounded (n_boot x n int64 otherwise).
_BLOCK_ELEMENTS = 4_000_000


def _isnan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


def _as_scores(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=float).ravel()
    if arr.size == 0:
        raise ValueError(f"{name} is empty: pass one score per question (1 = correct, 0 = wrong)")
    if not np.all(np.isfinite(arr)):
        bad = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise ValueError(f"{name}[{bad}] is {arr[bad]}: scores must be finite numbers (1 = correct, 0 = wrong)")
    return arr


def _bootstrap_means(values: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Means of ``n_boot`` resamples (with replacement, same size) of ``values``."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    n = values.size
    out = np.empty(n_boot)
    block = max(1, _BLOCK_ELEMENTS // n)
    for start in range(0, n_boot, block):
        stop = min(n_boot, start + block)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = values[idx].mean(axis=1)
    return out


def _percentiles(draws: np.ndarray, alpha: float) -> tuple[float, float]:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    lo, hi = np.quantile(draws, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def accuracy_ci(correct: Sequence[float], n_boot: int = 2000, seed: int = 0,
                alpha: float = 0.05) -> tuple[float, float, float]:
    """Accuracy and its percentile-bootstrap ``1 - alpha`` interval, resampling questions.

    >>> acc, lo, hi = accuracy_ci([1] * 70 + [0] * 30)
    >>> acc, lo < 0.7 < hi, round(hi - lo, 2)
    (0.7, True, 0.18)
    >>> accuracy_ci([1, 1, 1])  # every resample is all-correct: use wilson_ci for an honest bound
    (1.0, 1.0, 1.0)
    """
    arr = _as_scores(correct, "correct")
    lo, hi = _percentiles(_bootstrap_means(arr, n_boot, seed), alpha)
    return float(arr.mean()), lo, hi


def wilson_ci(k: int, n: int, alpha: float = 0.05) -> tuple[float, float, float]:
    """Proportion ``k/n`` and its Wilson score interval (closed form, good even at 0 or n).

    >>> tuple(round(v, 4) for v in wilson_ci(70, 100))
    (0.7, 0.6042, 0.7811)
    >>> tuple(round(v, 4) for v in wilson_ci(0, 10))
    (0.0, 0.0, 0.2775)
    """
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"wilson_ci needs 0 <= k <= n and n > 0, got k={k}, n={n}")
    z = NormalDist().inv_cdf(1 - alpha / 2)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At k = 0 or k = n the bound is exactly 0 or 1; the formula leaves float dust (2.8e-17).
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return p, lo, hi


def _paired(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    x, y = _as_scores(a, "a"), _as_scores(b, "b")
    if x.size != y.size:
        raise ValueError(f"paired scores need the same questions: a has {x.size}, b has {y.size}; "
                         "align both on the question id first")
    return x, y


def paired_bootstrap_diff(a: Sequence[float], b: Sequence[float], n_boot: int = 2000, seed: int = 0,
                          alpha: float = 0.05) -> tuple[float, float, float]:
    """``mean(a) - mean(b)`` on the same questions, with a paired percentile-bootstrap interval.

    Questions are resampled once for both models, so the interval is much
    narrower than two independent intervals when the models agree often.

    >>> a = [1] * 60 + [0] * 40
    >>> b = [1] * 50 + [0] * 50
    >>> diff, lo, hi = paired_bootstrap_diff(a, b)
    >>> round(diff, 2), 0 < lo < 0.1 < hi < 0.2
    (0.1, True)
    """
    x, y = _paired(a, b)
    lo, hi = _percentiles(_bootstrap_means(x - y, n_boot, seed), alpha)
    return float(x.mean() - y.mean()), lo, hi


def mcnemar_exact(a_correct: Sequence[int], b_correct: Sequence[int]) -> dict[str, Any]:
    """Exact two-sided McNemar test: a binomial(n=b01+b10, p=1/2) test on the discordant pairs.

    ``b01`` counts questions ``a`` got wrong and ``b`` right; ``b10`` the
    reverse. Questions both got right (or wrong) carry no evidence.

    >>> mcnemar_exact([0, 0, 0, 0, 0, 1], [1, 1, 1, 1, 1, 1])
    {'b01': 5, 'b10': 0, 'p_value': 0.0625}
    >>> mcnemar_exact([1, 0], [1, 0])['p_value']
    1.0
    """
    x, y = _paired(a_correct, b_correct)
    if not (np.isin(x, (0, 1)).all() and np.isin(y, (0, 1)).all()):
        raise ValueError("mcnemar_exact needs 0/1 correctness per question (got other values)")
    b01 = int(np.sum((x == 0) & (y == 1)))
    b10 = int(np.sum((x == 1) & (y == 0)))
    n, m = b01 + b10, min(b01, b10)
    # Exact integers: 2 * P(X <= m) for X ~ Bin(n, 1/2), capped at 1 (the two tails overlap at n/2).
    tail = sum(math.comb(n, i) for i in range(m + 1))
    p = min(1.0, 2 * tail / 2**n)
    return {"b01": b01, "b10": b10, "p_value": p}


def paired_comparison(a: Sequence[int], b: Sequence[int], n_boot: int = 2000, seed: int = 0,
                      alpha: float = 0.05) -> dict[str, Any]:
    """The ``06_eval.json`` "paired" entry for model ``a`` against model ``b`` (diff = a - b).

    >>> r = paired_comparison([1, 1, 1, 1, 0, 1], [0, 0, 0, 0, 0, 1], n_boot=200)
    >>> round(r["diff"], 3), r["b01"], r["b10"], r["mcnemar_p"], r["n"]
    (0.667, 0, 4, 0.125, 6)
    """
    diff, lo, hi = paired_bootstrap_diff(a, b, n_boot=n_boot, seed=seed, alpha=alpha)
    test = mcnemar_exact(a, b)
    return {"diff": diff, "ci95" if alpha == 0.05 else f"ci{round(100 * (1 - alpha))}": [lo, hi],
            "mcnemar_p": test["p_value"], "b01": test["b01"], "b10": test["b10"], "n": len(np.ravel(a))}


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct: ``1 - C(n-c, k) / C(n, k)``.

    Computed as a product so large ``n`` does not overflow (Chen et al. 2021).

    >>> pass_at_k(10, 0, 1), pass_at_k(10, 10, 1), pass_at_k(4, 1, 1)
    (0.0, 1.0, 0.25)
    >>> round(pass_at_k(4, 1, 2), 4)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    0.5
    >>> pass_at_k(4, 3, 2)  # fewer than k wrong samples: every k-subset holds a correct one
    1.0
    """
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def majority_vote(answers: Iterable[str | None]) -> str | None:
    """The most frequent normalised answer; ties go to the one seen first; None if none parse.

    Answers are grouped with the grader's numeric equality, so "1,000" and
    "1000.0" are one vote; unparsable answers (None, "5 or 7") do not vote.

    >>> majority_vote(["12", "1,2", None, "7", "12.0", "7"])
    '12'
    >>> majority_vote(["7", "12", "12", "7"])  # tie: 7 came first
    '7'
    >>> majority_vote([None, "no idea", float("nan")]) is None
    True
    """
    groups: list[list[Any]] = []  # [representative, count], in first-seen order
    for raw in answers:
        if raw is None or _isnan(raw):  # pandas turns a missing answer into NaN
            continue
        norm = normalize_number(str(raw))
        if norm is None:
            continue
        for g in groups:
            if numbers_equal(g[0], norm):
                g[1] += 1
                break
        else:
            groups.append([norm, 1])
    if not groups:
        return None
    best = max(g[1] for g in groups)
    return next(g[0] for g in groups if g[1] == best)


def maj_at_k(answers: Sequence[str | None], gold: str, k: int | None = None) -> bool:
    """Whether the majority vote over the first ``k`` answers (all if None) equals ``gold``.

    >>> maj_at_k(["18", "20", "18", None], "18")
    True
    >>> maj_at_k(["20", "18", "18", "20"], "18")  # tie, 20 seen first
    False
    >>> maj_at_k(["20", "18", "18"], "18", k=1)
    False
    """
    if k is not None and not 1 <= k <= len(answers):
        raise ValueError(f"maj_at_k: k={k} but {len(answers)} answers were given")
    vote = majority_vote(list(answers)[:k] if k else answers)
    return numbers_equal(vote, normalize_number(str(gold)))


ERROR_CATEGORIES = ("correct", "truncated", "no_answer", "format", "wrong")
# Names generation back-ends give a completion that hit the token limit (HF / vLLM / ours).
TRUNCATED_REASONS = frozenset({"length", "max_length", "max_new_tokens", "max_tokens", "truncated"})


def error_category(extracted: str | None, correct: bool, finish_reason: str | None = None,
                   format_ok: bool | None = None) -> str:
    """One label per completion; the first rule that matches wins.

    1. ``correct``   - the grader accepted the answer (even from a truncated completion);
    2. ``truncated`` - stopped by the token limit (``finish_reason`` in ``TRUNCATED_REASONS``):
       the budget, not the maths, ended it, whatever partial answer it held;
    3. ``no_answer`` - finished, but no answer could be extracted;
    4. ``format``    - an answer, wrong, and the completion broke the required format
       (``format_ok`` False, e.g. no ``#### N`` line): the failure may be the format;
    5. ``wrong``     - a well-formed, finished, wrong answer.

    >>> error_category("18", True, "length")
    'correct'
    >>> error_category(None, False, "length")
    'truncated'
    >>> error_category(None, False, "stop", format_ok=False)
    'no_answer'
    >>> error_category("20", False, "eos", format_ok=False)
    'format'
    >>> error_category("20", False, "stop")
    'wrong'
    """
    if bool(correct):
        return "correct"
    if finish_reason is not None and str(finish_reason).lower() in TRUNCATED_REASONS:
        return "truncated"
    if extracted is None or _isnan(extracted):
        return "no_answer"
    if format_ok is not None and not _isnan(format_ok) and not bool(format_ok):
        return "format"
    return "wrong"


def error_breakdown(df: Any, by: str | Sequence[str] | None = None, normalize: bool = False) -> Any:
    """Counts (or shares) of each error category, overall or per group (e.g. model, test set).

    ``df`` is a per-completion table with columns ``extracted``, ``correct``
    and optionally ``finish_reason`` and ``format_ok``; a ``category`` column,
    if present, is used as it is. Columns follow ``ERROR_CATEGORIES``, plus ``n``.

    >>> import pandas as pd
    >>> df = pd.DataFrame({"model": ["sft"] * 3 + ["ppo"] * 2,
    ...                    "extracted": ["1", None, "2", "3", None],
    ...                    "correct": [True, False, False, True, False],
    ...                    "finish_reason": ["stop", "stop", "stop", "stop", "length"]})
    >>> error_breakdown(df, by="model")  # doctest: +NORMALIZE_WHITESPACE
           n  correct  truncated  no_answer  format  wrong
    model
    ppo    2        1          1          0       0      0
    sft    3        1          0          1       0      1
    >>> float(error_breakdown(df, normalize=True).loc["all", "correct"])
    0.4
    """
    import pandas as pd

    if "category" in df.columns:
        cats = df["category"].astype(str)
    else:
        missing = [c for c in ("extracted", "correct") if c not in df.columns]
        if missing:
            raise ValueError(f"error_breakdown needs columns {missing} (or a 'category' column); "
                             f"got {list(df.columns)}")
        fr = df["finish_reason"] if "finish_reason" in df.columns else pd.Series(None, index=df.index)
        fo = df["format_ok"] if "format_ok" in df.columns else pd.Series(None, index=df.index)
        cats = pd.Series([error_category(None if pd.isna(e) else e, bool(c), None if pd.isna(r) else r,
                                         None if pd.isna(f) else bool(f))
                          for e, c, r, f in zip(df["extracted"], df["correct"], fr, fo)],
                         index=df.index)
    unknown = sorted(set(cats) - set(ERROR_CATEGORIES))
    if unknown:
        raise ValueError(f"unknown error categories {unknown}; use one of {', '.join(ERROR_CATEGORIES)}")
    keys = [by] if isinstance(by, str) else list(by or [])
    frame = pd.DataFrame({"category": pd.Categorical(cats, categories=ERROR_CATEGORIES)})
    if keys:
        for k in keys:
            frame[k] = df[k].to_numpy()
        table = frame.groupby(keys, observed=True)["category"].value_counts().unstack(fill_value=0)
    else:
        table = frame["category"].value_counts().to_frame().T
        table.index = pd.Index(["all"])
    table = table.reindex(columns=list(ERROR_CATEGORIES), fill_value=0).astype(int)
    table.columns.name = None
    table.insert(0, "n", table.sum(axis=1))
    if normalize:
        shares = table[list(ERROR_CATEGORIES)].div(table["n"], axis=0)
        table = pd.concat([table[["n"]], shares], axis=1)
    return table


def verdict_sentence(set_name: str, n: int | None, acc_ppo: float, acc_sft: float, paired: dict[str, Any],
                     alpha: float = 0.01) -> str:
    """The headline sentence for one test set: PPO against SFT, the paired difference, its 95% interval, McNemar's p.

    ``paired`` is a ``paired_comparison`` result (``diff``, ``ci95``, ``mcnemar_p``).

    >>> print(verdict_sentence("the dev split", 300, 0.753, 0.37, {"diff": 0.383, "ci95": [0.32, 0.44], "mcnemar_p": 2e-25}))
    On the dev split (300 problems) PPO beats SFT: 75.3% vs 37.0%, +38.3 points (95% CI +32.0 to +44.0), McNemar p < 1e-10.
    """
    diff, p = paired["diff"], paired["mcnemar_p"]
    lo, hi = paired.get("ci95") or (float("nan"), float("nan"))
    if p < alpha and diff > 0:
        how = "beats SFT"
    elif p < alpha and diff < 0:
        how = "is worse than SFT"
    else:
        how = f"is not distinguishable from SFT at p < {alpha:g}"
    p_s = "p < 1e-10" if p < 1e-10 else f"p = {p:.2g}"
    return (f"On {set_name}{f' ({n} problems)' if n else ''} PPO {how}: {100 * acc_ppo:.1f}% vs {100 * acc_sft:.1f}%, "
            f"{100 * diff:+.1f} points (95% CI {100 * lo:+.1f} to {100 * hi:+.1f}), McNemar {p_s}.")

