r"""Measure one completion: a frozen ``Score`` the reward and the reports read.

A ``Score`` holds what was measured, never a reward: the extracted answer
(strict ``#### N`` and flexible, both from ``looper_utils.answers``, the one
grader), correctness, format, the calculator steps found and how many are
arithmetically right, truncation, length, repetition, and the flags the
reward's hacking guards need. ``reward.py`` turns a Score into numbers.

The calculator steps (GSM8K annotations ``<<48/2=24>>`` and inline
arithmetic ``48 / 2 = 24``) are found and recomputed by ``calc``, with
``safe_eval`` (never ``eval``); a Score keeps their count and the wrong ones.

Hostile text: the reward scores every sample, degenerate ones included, so
the work per completion is also capped: ``calc`` reads at most
``MAX_STEPS`` steps and ``MAX_EQUALS`` '=' signs per text, and at most
``MAX_FINAL_SPELLINGS`` different ``####`` lines are read for the
several-answers guard. The answer itself is read by ``looper_utils.answers``,
which reads only the end of a long answer region
(``answers.MAX_ANSWER_CHARS``). A 100,000-character sample scores in
milliseconds.

TRL and the Math-Verify reward score only the final answer; the step check,
the guards and the per-component breakdown are why this module exists.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

import pandas as pd

from ..answers import answer_region, extract_answer, final_answer_candidates, grade, normalize_number, numbers_equal
# CalcStep, audit_calculations and the caps live in calc; they are also importable from here, as before
from .calc import MAX_EQUALS, MAX_STEPS, NUMBER_PATTERN, CalcStep, audit_calculations, calc_steps

__all__ = ["Score", "CalcStep", "score", "score_table", "calc_steps", "repetition_ratio",
           "audit_calculations", "MIN_REASONING_CHARS", "MAX_STEPS", "MAX_EQUALS", "MAX_FINAL_SPELLINGS"]

MIN_REASONING_CHARS = 5  # fewer non-blank characters before the answer = "empty reasoning"
REPETITION_N = 4  # word n-grams for the repetition ratio
MAX_FINAL_SPELLINGS = 64  # more different '####' lines than this count as several answers unread

_NUMBER_IN = re.compile(NUMBER_PATTERN)


@dataclass(frozen=True)
class Score:
    """Everything measured about one completion (no weights, no reward)."""

    extracted: str | None  # flexible extraction (what evaluation reads)
    extracted_strict: str | None  # the last '#### N' line only
    correct: bool  # flexible answer equals gold
    correct_strict: bool
    format_ok: bool  # answers.format_ok: one '#### N' line, the last, after a closed think block
    calc_steps: int  # calculator steps found
    calc_verified: int  # ... of which arithmetically right
    calc_errors: tuple[str, ...]  # the wrong ones, "48/2=25 (is 24)"
    truncated: bool  # finish_reason == "length"
    n_tokens: int | None
    repetition: float  # share of repeated word 4-grams, 0..1
    n_answer_lines: int  # '####' marks in the answer region
    several_answers: bool  # guard: different '####' values, '#### 5 or 7', another answer after it
    stuffed: bool  # guard: more than one '####' in the answer region
    empty_reasoning: bool  # guard: (almost) nothing before the answer

    @property
    def calc_rate(self) -> float:
        """Share of the calculator steps that are right (0 when there are none)."""
        return self.calc_verified / self.calc_steps if self.calc_steps else 0.0


SCORE_FIELDS = tuple(f.name for f in dataclasses.fields(Score))


def score(completion: str, problem: Mapping[str, Any], finish_reason: str = "eos",
          n_tokens: int | None = None, think: bool = False) -> Score:
    r"""Score one completion against a data row (``question``, ``answer``, ``gold``).

    ``think=True`` means the prompt pre-filled ``<think>``: the completion
    starts inside the block and only text after ``</think>`` may answer.

    >>> row = {"question": "...", "answer": "...", "gold": "72"}
    >>> s = score("48/2 = <<48/2=24>>24\n48+24 = <<48+24=72>>72\n#### 72", row)
    >>> s.correct, s.format_ok, s.calc_steps, s.calc_verified, s.several_answers
    (True, True, 2, 2, False)
    >>> score("48/2 = 25\n48+25 = 73\n#### 73", row).calc_errors
    ('48/2 = 25 (is 24)',)
    >>> s = score("48+24=72\n#### 70 or 72", row)
    >>> s.correct, s.format_ok, s.several_answers
    (False, False, True)
    >>> score("<think>48+24=72</think>\n#### 72", row, think=True).format_ok
    True
    >>> score("48+24=72\n#### 72", row, finish_reason="length").truncated
    True
    """
    if "gold" not in problem:
        raise KeyError("problem row has no 'gold' field; rows come from looper_utils.data.read_jsonl "
                       "(fields id, question, answer, gold)")
    text = completion if isinstance(completion, str) else ""
    region = answer_region(text, think=think)
    finals = final_answer_candidates(region) if region is not None else []
    verdict = grade(text, problem["gold"], think=think)  # the one grader: both readings and the format
    extracted, extracted_strict = verdict["extracted"], verdict["extracted_strict"]
    n_marks = region.count("####") if region is not None else 0

    steps = calc_steps(text)
    verified = sum(s.ok for s in steps)
    errors = tuple(f"{s.expr}={s.claimed} (is {_show(s.value)})" if s.kind == "annotation"
                   else f"{s.text} (is {_show(s.value)})" for s in steps if not s.ok)

    return Score(
        extracted=extracted,
        extracted_strict=extracted_strict,
        correct=verdict["correct"],
        correct_strict=verdict["correct_strict"],
        format_ok=verdict["format_ok"],
        calc_steps=len(steps),
        calc_verified=verified,
        calc_errors=errors,
        truncated=finish_reason == "length",
        n_tokens=None if n_tokens is None or _isnan(n_tokens) else int(n_tokens),
        repetition=repetition_ratio(text),
        n_answer_lines=n_marks,
        several_answers=_several_answers(region, finals, extracted_strict),
        stuffed=n_marks > 1,
        empty_reasoning=_reasoning_chars(text, region) < MIN_REASONING_CHARS,
    )


def score_table(df: pd.DataFrame, think: bool = False) -> pd.DataFrame:
    """A copy of a rollout table with one column per ``Score`` field (and ``calc_rate``).

    Needs ``completion`` and ``gold``; ``finish_reason`` and ``n_tokens`` are
    used when present. Columns that share a Score field's name (03 writes
    ``extracted``, ``extracted_strict``, ``correct``) are replaced by the
    scorer's values: compare with the input to check both graded alike.

    >>> t = pd.DataFrame({"completion": ["2+3=5\\n#### 5", "#### 5 or 6"], "gold": ["5", "5"],
    ...                   "finish_reason": ["eos", "eos"]})
    >>> score_table(t)[["correct", "format_ok", "calc_verified", "several_answers"]].values.tolist()
    [[True, True, 1, False], [False, False, 0, True]]
    """
    missing = [c for c in ("completion", "gold") if c not in df.columns]
    if missing:
        raise ValueError(f"rollout table lacks column(s) {', '.join(missing)}; it has {list(df.columns)}. "
                         "Load it with looper_utils.rollouts.load_rollouts")
    n = len(df)
    finish = df["finish_reason"].tolist() if "finish_reason" in df.columns else ["eos"] * n
    tokens = df["n_tokens"].tolist() if "n_tokens" in df.columns else [None] * n
    scores = [score(c, {"gold": g}, f, t, think)
              for c, g, f, t in zip(df["completion"].tolist(), df["gold"].tolist(), finish, tokens)]
    cols = {name: [getattr(s, name) for s in scores] for name in SCORE_FIELDS}
    cols["calc_rate"] = [s.calc_rate for s in scores]
    out = df.copy()
    for name, values in cols.items():
        out[name] = pd.Series(values, index=df.index)
    return out


def _show(v: float | None) -> str:
    if v is None:
        return "not arithmetic"
    return str(int(v)) if float(v).is_integer() else f"{v:.6g}"


# ---- format and guards ---------------------------------------------------------

def _several_answers(region: str | None, finals: list[str], final_value: str | None) -> bool:
    """Different '####' values, a final line offering several numbers, or another answer after it.

    ``final_value`` is the last line's number as the grader reads it. More than
    ``MAX_FINAL_SPELLINGS`` differently written '####' lines count as several
    answers without each being read (that many lines also trip ``stuffed``).
    """
    if region is None or not finals:
        return False
    if len(finals) > 1:
        values = set()
        for i, f in enumerate(dict.fromkeys(finals)):  # each different spelling once
            if i >= MAX_FINAL_SPELLINGS:
                return True
            values.add(normalize_number(f) or f.strip())
            if len(values) > 1:
                return True
    last = finals[-1]
    if final_value is None and len(_NUMBER_IN.findall(last)) >= 2:
        return True  # "#### 5 or 7", "#### 5, 7"
    tail = region[region.rfind("####"):].split("\n", 1)
    if len(tail) == 2 and tail[1].strip():
        # text after the final line from which the grader itself would read another answer
        other = extract_answer(tail[1], mode="flexible")
        return other is not None and not numbers_equal(other, final_value)
    return False


def _reasoning_chars(text: str, region: str | None) -> int:
    """Non-blank characters before the final answer, think tags removed."""
    cut = region.find("####") if region is not None else -1
    if cut >= 0:
        before = text[:len(text) - len(region) + cut]
    else:  # no '####': the answer is on the last non-empty line
        lines = text.rstrip().splitlines()
        before = "\n".join(lines[:-1])
    before = before.replace("<think>", "").replace("</think>", "")
    return len("".join(before.split()))


def repetition_ratio(text: str, n: int = REPETITION_N) -> float:
    """Share of word n-grams that repeat an earlier one (0: none; near 1: a loop).

    >>> repetition_ratio("one two three four five six")
    0.0
    >>> round(repetition_ratio("so so so so so so so so so so"), 2)
    0.86
    """
    words = text.split()
    if len(words) <= n:
        return 0.0
    return 1.0 - len(set(zip(*(words[i:] for i in range(n))))) / (len(words) - n + 1)


def _isnan(x: Any) -> bool:
    return isinstance(x, float) and math.isnan(x)
