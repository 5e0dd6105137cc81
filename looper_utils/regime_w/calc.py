r"""Calculator steps: find the arithmetic a text writes out and recompute it.

A solution's arithmetic comes in two spellings and both are recomputed with
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
characters back, so the work grows linearly with the text whatever the
policy writes.

Hostile text: the reward scores every sample, degenerate ones included, so
at most ``MAX_STEPS`` calculator steps are read per text (annotations first,
then inline steps) and at most ``MAX_EQUALS`` '=' signs are looked at for
inline steps (a GSM8K solution has fewer than 20 of either).

``scoring.score`` counts a completion's steps and lists the wrong ones;
``audit_calculations`` lists every step of a data set's own solutions.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import pandas as pd

from .safe_eval import MAX_LENGTH, try_eval

__all__ = ["CalcStep", "calc_steps", "audit_calculations", "NUMBER_PATTERN", "MAX_STEPS", "MAX_EQUALS"]

MAX_STEPS = 256  # calculator steps read per text; the rest of a longer text's steps are not checked
MAX_EQUALS = 2048  # '=' signs looked at for inline steps per text

# a number as the steps write it ("1,250", "12.5", ".5"); scoring reads '####' lines with the same pattern
NUMBER_PATTERN = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+"
_OPERAND = rf"(?:\([ \t]*)*-?\$?(?:{NUMBER_PATTERN})%?(?:[ \t]*\))*"
_OP = r"[ \t]*(?:\*\*|[-+*/×÷^–−]|(?<=[ \t])[xX](?=[ \t]))[ \t]*"
# The left side of an inline step, searched for only in the MAX_LENGTH characters before each '=' and
# anchored there: bounded work per '=' whatever the text (a 20,000-digit number, 3,000 nested brackets).
_LHS = re.compile(
    r"(?=[-\d(.$])(?<![\d.,$])"  # fails fast where no number can start, never inside a number
    rf"{_OPERAND}(?:{_OP}{_OPERAND})+[ \t]*$")
_RHS = re.compile(
    rf"[ \t]*(-?\$?(?:{NUMBER_PATTERN})%?)"
    # the value must end the arithmetic: not "= 6 + 1", "= 24/Y", "= 2" of "= 2.5", "= 1 1/2",
    # "= 16 and (2/3)", "= 18 000", "= 6:48", "= 5A/5"
    r"(?![\d.,]*\d|\s*(?:\*\*|[-+*/×÷^–−]|[xX]\s)|[A-Za-z:]|\s+\d+/\d|\s+and\s+(?:\d+/\d|\()|\s\d{3}(?!\d))")
_ANNOTATION = re.compile(r"<<([^<>]*)>>(?P<after>\$?-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)?")
_STRIP_ANNOTATION = re.compile(r"<<[^<>]*>>")
_PERCENT = re.compile(rf"({NUMBER_PATTERN})%")
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
