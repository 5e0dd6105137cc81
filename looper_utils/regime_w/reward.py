r"""The Regime W reward: ``reward = sum_k W_k * component_k``, with hacking guards.

Each component is a number read off a ``Score`` (``scoring.py``); the
weights W live in the config (``RewardWeights``), so a run's reward is
reproducible from its saved config and every component can be logged on its
own. Components:

- ``correct``    1 if the answer equals gold and no guard fired, else 0;
- ``format``     1 for exactly one final ``#### N`` line (after a closed think block);
- ``calc``       share of the calculator steps that recompute right (0 without steps);
- ``truncated``  1 if generation hit the token limit (its weight is negative);
- ``repetition`` share of repeated word 4-grams (its weight is negative).

Guards: a completion that offers several different final answers (or a
final line like ``#### 5 or 7``), one stuffed with ``####`` lines, one with
an empty reasoning, or one cut off at the token limit earns no correctness
credit, even when the gold number is in it. A policy should not be able to
buy correctness by hedging, spamming answer lines, skipping the work or
rambling until it is cut off.

Every completion is scored, degenerate samples included (a flood of
newlines, ``\boxed{`` repeated, a 100,000-digit number): ``scoring`` and
``looper_utils.answers`` bound their work per completion, so ``reward_fn``
takes milliseconds per sample whatever the policy writes
(``tests/test_hostile.py``).

TRL's reward functions (``trl.rewards``) return one float per completion
and keep no breakdown or guards; ``reward_fn`` follows their calling
convention so this reward can be handed to a TRL trainer as it is.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Sequence

import pandas as pd

from ..config import RewardWeights
from .scoring import SCORE_FIELDS, Score, score

__all__ = ["COMPONENTS", "GUARDS", "guards", "components", "reward", "reward_fn", "components_table"]

COMPONENTS = ("correct", "format", "calc", "truncated", "repetition")
GUARDS = ("several_answers", "stuffed", "empty_reasoning", "truncated")


def guards(s: Score) -> dict[str, bool]:
    r"""Which hacking guards fired for this completion.

    >>> from looper_utils.regime_w.scoring import score
    >>> guards(score("#### 5\n#### 7", {"gold": "7"}))
    {'several_answers': True, 'stuffed': True, 'empty_reasoning': True, 'truncated': False}
    """
    return {g: bool(getattr(s, g)) for g in GUARDS}


def components(s: Score) -> dict[str, float]:
    r"""The reward's components for one Score, each in [0, 1].

    >>> from looper_utils.regime_w.scoring import score
    >>> components(score("3*4=<<3*4=12>>12\n#### 12", {"gold": "12"}))
    {'correct': 1.0, 'format': 1.0, 'calc': 1.0, 'truncated': 0.0, 'repetition': 0.0}
    >>> components(score("3*4=<<3*4=12>>12\n#### 12", {"gold": "12"}, finish_reason="length"))["correct"]
    0.0
    """
    blocked = any(guards(s).values())
    return {
        "correct": float(bool(s.correct) and not blocked),
        "format": float(bool(s.format_ok)),
        "calc": float(s.calc_rate),
        "truncated": float(bool(s.truncated)),
        "repetition": float(s.repetition),
    }


def reward(s: Score, weights: RewardWeights) -> float:
    r"""``sum_k W_k * component_k`` with W from the config.

    >>> from looper_utils.regime_w.scoring import score
    >>> round(reward(score("3*4=<<3*4=12>>12\n#### 12", {"gold": "12"}), RewardWeights()), 3)
    1.3
    """
    return float(sum(_weight(weights, k) * v for k, v in components(s).items()))


def reward_fn(completions: Sequence[Any], golds: Sequence[Any] | None = None,
              finish_reasons: Sequence[str] | None = None, think: bool = False,
              weights: RewardWeights | None = None, **kwargs: Any) -> list[float]:
    r"""One reward per completion, TRL style (completions and golds in, floats out).

    ``completions`` are strings or chat messages (``[{"role": "assistant",
    "content": ...}]``); ``golds`` may also arrive as the ``gold`` dataset
    column that TRL passes by keyword. Without ``finish_reasons`` nothing
    counts as truncated.

    >>> good = "48/2 = <<48/2=24>>24\n48+24 = <<48+24=72>>72\n#### 72"
    >>> [round(r, 3) for r in reward_fn([good, "48+24=72\n#### 70 or 72", "#### 72"], ["72"] * 3)]
    [1.3, 0.1, 0.2]
    >>> [round(r, 3) for r in reward_fn([good], ["72"], finish_reasons=["length"])]
    [0.1]
    >>> reward_fn([[{"role": "assistant", "content": good}]], gold=["72"]) == reward_fn([good], ["72"])
    True
    """
    if golds is None:
        golds = kwargs.get("gold")
    if golds is None:
        raise TypeError("reward_fn needs the gold answers: pass golds=[...] (or a dataset column named 'gold')")
    if len(golds) != len(completions):
        raise ValueError(f"{len(completions)} completions but {len(golds)} golds; pass one gold per completion "
                         "(repeat each gold k times for k samples per prompt)")
    weights = weights or RewardWeights()
    finish = list(finish_reasons) if finish_reasons is not None else ["eos"] * len(completions)
    return [reward(score(_text(c), {"gold": g}, finish_reason=f, think=think), weights)
            for c, g, f in zip(completions, golds, finish)]


def components_table(scored: pd.DataFrame, weights: RewardWeights) -> pd.DataFrame:
    """Per-row components, the guards that fired and the reward, from ``score_table`` output.

    Columns: one per component (``correct`` ... as ``c_correct`` ...), one per
    guard (``g_several_answers`` ...), ``blocked`` (any guard) and ``reward``.
    """
    missing = [f for f in SCORE_FIELDS if f not in scored.columns]
    if missing:
        raise ValueError(f"table lacks Score column(s) {', '.join(missing)}; run regime_w.score_table on it first")
    records = scored[list(SCORE_FIELDS)].to_dict("records")
    rows = []
    for rec in records:
        s = Score(**{k: (None if _missing(v) else v) for k, v in rec.items()})
        comps, fired = components(s), guards(s)
        row = {f"c_{k}": v for k, v in comps.items()}
        row.update({f"g_{k}": v for k, v in fired.items()})
        row["blocked"] = any(fired.values())
        row["reward"] = float(sum(_weight(weights, k) * v for k, v in comps.items()))
        rows.append(row)
    return pd.DataFrame(rows, index=scored.index)


def _weight(weights: RewardWeights, name: str) -> float:
    try:
        return float(getattr(weights, name))
    except AttributeError:
        have = ", ".join(f.name for f in dataclasses.fields(weights))
        raise AttributeError(f"RewardWeights has no weight {name!r} (it has {have}); add the field to "
                             "looper_utils/config.py:RewardWeights") from None


def _text(completion: Any) -> str:
    """A completion as text: TRL passes chat completions as a list of messages."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    if isinstance(completion, Iterable):
        return "".join(str(c) for c in completion)
    return str(completion)


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and v != v)
