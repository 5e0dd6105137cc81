r"""Measure one completion: a frozen ``Score`` the reward and the reports read.

A ``Score`` holds what was measured, never a reward: the extracted answer
(strict ``#### N`` and flexible, both from ``looper_utils.answers``, the one
grader), correctness, format, the calculator steps found and how many are
arithmetically right, truncation, length, repetition, and the flags the
reward's hacking guards need. ``reward.py`` turns a Score into numbers.

Calculator steps come in two spellings and both are recomputed with
``safe_eval`` (never ``eval``):

- GSM8K annotations ``<<48/2=24>>`` (the value must match, and so must the
  number written right after the annotation, if any);
- inline arithmetic ``48 / 2 = 24`` (also ``0.2 x 50 = $10``, ``1,000 - 250 = 750``),
  read from the text with the annotations removed. An inline step that just
  displays an annotation (same expression, same value) is counted once.

Reading inline arithmetic out of prose is heuristic, so it leans towards
finding fewer steps rather than false errors: a chain ``2*3 = 6 + 1 = 7``
yields only its last link, an expression preceded by a dangling operator
("20 apples - 5 + 3 = 18") is skipped, a value shown with d decimals may be
the true value rounded to d decimals (``10/3 = 3.33``), and ``N%`` is read
as N or as N/100, whichever makes the step true. The left side of a step is
looked for only in the line before each '=', at most ``MAX_LENGTH``
characters back, so scoring time grows linearly with the text whatever the
policy writes.

Hostile text: the reward scores every sample, degenerate ones included, so
the work per completion is also capped: at most ``MAX_STEPS`` calculator
steps are read (annotations first, then inline steps) and at most
``MAX_EQUALS`` '=' signs are looked at for inline steps (a GSM8K solution has
fewer than 20 of either), and at most ``MAX_FINAL_SPELLINGS`` different
``####`` lines are read for the several-answers guard. The answer itself is
read by ``looper_utils.answers``, which reads only the end of a long answer
region (``answers.MAX_ANSWER_CHARS``). A 100,000-character sample scores in
milliseconds.

TRL and the Math-Verify reward score only the final answer; the step check,
the guards and the per-component breakdown are why this module exists.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import pandas as pd

from ..answers import answer_region, extract_answer, final_answer_candidates, grade, normalize_number, numbers_equal
from .safe_eval import MAX_LENGTH, try_eval

__all__ = ["Score", "CalcStep", "score", "score_table", "calc_steps", "repetition_ratio",
           "audit_calculations", "MIN_REASONING_CHARS", "MAX_STEPS", "MAX_EQUALS", "MAX_FINAL_SPELLINGS"]

MIN_REASONING_CHARS = 5  # fewer non-blank characters before the answer = "empty reasoning"
REPETITION_N = 4  # word n-grams for the repetition ratio
MAX_STEPS = 256  # calculator steps read per text; the rest of a longer text's steps are not checked
MAX_EQUALS = 2048  # '=' signs looked at for inline steps per text
MAX_FINAL_SPELLINGS = 64  # more different '####' lines than this count as several answers unread

_NUM = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+"
_OPERAND = rf"(?:\([ \t]*)*-?\$?(?:{_NUM})%?(?:[ \t]*\))*"
_OP = r"[ \t]*(?:\*\*|[-+*/×÷^–−]|(?<=[ \t])[xX](?=[ \t]))[ \t]*"
# The left side of an inline step, searched for only in the MAX_LENGTH characters before each '=' and
# anchored there: bounded work per '=' whatever the text (a 20,000-digit number, 3,000 nested brackets).
_LHS = re.compile(
    r"(?=[-\d(.$])(?<![\d.,$])"  # fails fast where no number can start, never inside a number
    rf"{_OPERAND}(?:{_OP}{_OPERAND})+[ \t]*$")
_RHS = re.compile(
    rf"[ \t]*(-?\$?(?:{_NUM})%?)"
    # the value must end the arithmetic: not "= 6 + 1", "= 24/Y", "= 2" of "= 2.5", "= 1 1/2",
    # "= 16 and (2/3)", "= 18 000", "= 6:48", "= 5A/5"
    r"(?![\d.,]*\d|\s*(?:\*\*|[-+*/×÷^–−]|[xX]\s)|[A-Za-z:]|\s+\d+/\d|\s+and\s+(?:\d+/\d|\()|\s\d{3}(?!\d))")
_ANNOTATION = re.compile(r"<<([^<>]*)>>(?P<after>\$?-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)?")
_STRIP_ANNOTATION = re.compile(r"<<[^<>]*>>")
_NUMBER_IN = re.compile(_NUM)
_PERCENT = re.compile(rf"({_NUM})%")
_PLAIN_EXPR = re.compile(r"[\d.+\-*/() ]*")
_OPERATORS = "-+*/×÷^–−"
_THREE_DIGITS = re.compile(r"\d{3}(?![\d.])")
_MIXED_AND = re.compile(r"\d\s+and$")
_FRACTION_START = re.compile(r"\(?\d+/\d+(?![\d.])")
_SPACED_FRACTION = re.compile(r"(?<=/)(\s+)(\d+(?:\.\d+)?/\d+(?:\.\d+)?)(?![\d.])")


@dataclass(frozen=True)
class CalcStep:
    """One calculator step found in a text."""

    kind: str  # "annotation" | "inline"
    text: str  # as written
    expr: str  # the expression, normalised for the evaluator
    claimed: str  # the value the text claims
    value: float | None  # the recomputed value (None: not plain arithmetic)
    ok: bool


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


# ---- calculator steps ------------------------------------------------------

def calc_steps(text: str) -> list[CalcStep]:
    r"""Every calculator step in ``text``, recomputed: annotations first, then inline steps.

    >>> [(s.kind, s.expr, s.claimed, s.ok) for s in calc_steps("12/60 = $<<12/60=0.2>>0.2 and 0.2 x 50 = $11")]
    [('annotation', '12/60', '0.2', True), ('inline', '0.2*50', '11', False)]
    >>> [s.ok for s in calc_steps("10/3 = 3.33, 7/2 = 3, <<__import__('os')=1>>")]
    [False, True, False]
    """
    steps: list[CalcStep] = []
    seen: dict[str, set[float | None]] = {}  # annotation expression -> values it claimed
    for m in _ANNOTATION.finditer(text):
        if len(steps) >= MAX_STEPS:
            return steps
        body = m.group(1)
        expr, _, claimed = body.rpartition("=")
        expr, claimed = _normalise_expr(expr), claimed.strip()
        value = try_eval(expr) if expr else None
        ok = value is not None and _matches(value, expr, claimed)
        after = m.group("after")
        if ok and after is not None and not _same_number(after, claimed):
            ok = False  # "<<48/2=24>>25": the text does not say what the calculator said
        steps.append(CalcStep("annotation", m.group(0), expr, claimed, value, ok))
        seen.setdefault(expr, set()).add(_plain_float(claimed))
    plain = _STRIP_ANNOTATION.sub("", text) if "<<" in text else text
    if "=" not in plain:
        return steps
    eq, prev = plain.find("="), -1
    for _ in range(MAX_EQUALS):
        if eq < 0 or len(steps) >= MAX_STEPS:
            break
        # the left side lies between the previous '=' (or the line start) and this one
        lo = max(prev + 1, eq - MAX_LENGTH)
        lo = max(lo, plain.rfind("\n", lo, eq) + 1)
        lhs_m = _LHS.search(plain, lo, eq)
        rhs_m = _RHS.match(plain, eq + 1) if lhs_m else None
        step = _inline_step(plain, lhs_m, rhs_m, seen) if rhs_m else None
        if step is not None:
            steps.append(step)
        eq, prev = plain.find("=", eq + 1), eq
    return steps


def _inline_step(plain: str, lhs_m: re.Match, rhs_m: re.Match, seen: dict[str, set[float | None]]
                 ) -> CalcStep | None:
    """The inline step ``lhs = rhs`` found around one '=', or None where it is not one."""
    if _starts_mid_expression(plain, lhs_m.start()):
        return None
    lhs = lhs_m.group(0)
    expr = _normalise_expr(lhs)
    if expr.count("(") != expr.count(")"):
        return None  # the arithmetic goes on outside what the pattern read: "(1 and 1/3) = 28"
    claimed = rhs_m.group(1).replace("$", "")
    if expr in seen and _plain_float(claimed) in seen[expr]:
        return None  # the display of an annotation already counted
    value = try_eval(_PERCENT.sub(r"\1", expr) if "%" in expr else expr)
    if value is None:
        return None  # not arithmetic after all ("0900-0130 = 0730")
    ok = _matches(value, expr, claimed)
    if not ok and _SPACED_FRACTION.search(lhs):
        # "25 / 1/3 = 75": the spacing groups the fraction, as people mean it
        regrouped = _normalise_expr(_SPACED_FRACTION.sub(r"\1(\2)", lhs))
        alt = try_eval(_PERCENT.sub(r"\1", regrouped))
        ok = alt is not None and _matches(alt, regrouped, claimed)
    return CalcStep("inline", plain[lhs_m.start():rhs_m.end()].strip(), expr, claimed, value, ok)


def _normalise_expr(expr: str) -> str:
    if _PLAIN_EXPR.fullmatch(expr):
        return expr.replace(" ", "")
    e = expr.replace("×", "*").replace("÷", "/").replace("^", "**").replace("$", "")
    e = e.replace("–", "-").replace("−", "-")
    e = re.sub(r"(?<=\s)[xX](?=\s)", "*", e)
    e = re.sub(r"(?<=\d),(?=\d{3})", "", e)
    return re.sub(r"\s+", "", e)


def _matches(value: float, expr: str, claimed: str) -> bool:
    """Does ``value`` (of ``expr``) equal the ``claimed`` number, allowing shown rounding and %?"""
    c = claimed.replace("$", "").replace(",", "").strip()
    is_percent = c.endswith("%")
    try:
        target = float(c.rstrip("%"))
    except ValueError:
        return False
    decimals = len(c.rstrip("%").split(".", 1)[1]) if "." in c else 0
    # shown with d decimals: the true value rounded to d decimals is fine ("10/3 = 3.33")
    slack = 0.5 * 10 ** -decimals if decimals else 0.0
    lhs = [value]
    if "%" in expr:  # "20% * 50 = 10": N% read as N/100
        pv = try_eval(_PERCENT.sub(r"(\1/100)", expr))
        if pv is not None:
            lhs.append(pv)
    rhs = [(target, slack)] + ([(target / 100, slack / 100)] if is_percent else [])
    return any(math.isclose(v, t, rel_tol=1e-6, abs_tol=1e-9) or abs(v - t) <= s + 1e-12
               for v in lhs for t, s in rhs)


def _same_number(a: str, b: str) -> bool:
    x, y = _plain_float(a), _plain_float(b)
    return x is not None and y is not None and math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-9)


def _plain_float(s: str) -> float | None:
    """A number as the calculator steps write it ("$1,250", "80%"); the hot path, so no Fraction."""
    try:
        return float(s.replace("$", "").replace(",", "").strip().rstrip("%"))
    except ValueError:
        return None


def _starts_mid_expression(text: str, start: int) -> bool:
    """True where the arithmetic began before what the pattern could read.

    "20 apples - 5 + 3 = 18" (a dangling operator), "8 x 1 1/2 = 12" and
    "1 and 1/4" (mixed numbers), "2(6+12)=36" (implicit product), "10x-5=75"
    (algebra), "16,0000/10", ".8 + . 84", "6:00+48".
    """
    prev = text[start - 1] if start else ""
    if prev and (prev.isalpha() or prev in ",:"):
        return True
    before = text[max(0, start - 8):start].rstrip(" \t")  # a new line starts afresh
    if not before or before[-1] == "\n":
        return False
    last = before[-1]
    if last == "," and before[-2:-1].isdigit() and _THREE_DIGITS.match(text, start):
        return True  # "14, 400 / 80": a thousands comma followed by a space
    if last.isdigit() or last in _OPERATORS + "()":
        return True
    if last == "." and before[:-1].rstrip()[-1:] in tuple(_OPERATORS):  # ".8 + . 84"
        return True
    if last in "xX" and (len(before) == 1 or before[-2].isspace()):
        return True
    return bool(_MIXED_AND.search(before)) and bool(_FRACTION_START.match(text, start))


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


# ---- data audit --------------------------------------------------------------

def audit_calculations(rows: Iterable[Mapping[str, Any]], field: str = "answer") -> pd.DataFrame:
    """One row per calculator step of every solution: where, what, and whether it is right.

    Used on GSM8K's own worked solutions: the gold data is not free of
    arithmetic slips, and the reward should not be blamed for them.

    >>> audit_calculations([{"id": "a", "answer": "2+2=<<2+2=4>>4, 3*3 = 10\\n#### 14"}])[["id", "kind", "ok"]]
      id        kind     ok
    0  a  annotation   True
    1  a      inline  False
    """
    out = []
    for i, row in enumerate(rows):
        for s in calc_steps(str(row.get(field, ""))):
            out.append({"row": i, "id": row.get("id", str(i)), "kind": s.kind, "text": s.text, "expr": s.expr,
                        "claimed": s.claimed, "value": s.value, "ok": s.ok})
    return pd.DataFrame(out, columns=["row", "id", "kind", "text", "expr", "claimed", "value", "ok"])
