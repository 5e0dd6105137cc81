r"""The one grader: answer extraction, number normalisation, correctness.

Rewards (04, 05) and evaluation (02, 03, 06) all call these functions, so a
number counted correct in training is counted correct in the report.

GSM8K answers are plain numbers, so the comparison is numeric with a small
relative tolerance. Math-Verify is used only as a fallback to read LaTeX
inside ``\boxed{...}`` that the plain-number reader cannot parse
(``\frac{3}{4}``, ``\dfrac``...); it is never allowed to turn a text that
offers several numbers ("20 then 18") into a single answer, which is why the
extraction itself is ours.

Think blocks: reasoning models write ``<think> ... </think>`` before the
answer. Only text after the last ``</think>`` may hold the answer; a
completion with an unclosed ``<think>`` has no answer. When the prompt
pre-fills ``<think>`` (DeepSeek-R1-Distill's chat template does), the
completion starts inside the block: pass ``think=True`` and a completion
without ``</think>`` has no answer either.
"""
from __future__ import annotations

import math
import re
from fractions import Fraction

__all__ = ["answer_region", "extract_answer", "normalize_number", "numbers_equal", "is_correct",
           "final_answer_candidates"]

_NUM = r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+"
_STRICT_RE = re.compile(r"^[ \t]*####[ \t]*(.*?)[ \t]*$", re.M)
_BOXED_RE = re.compile(r"\\boxed\s*\{")
_PHRASE_RES = [
    re.compile(r"the\s+final\s+answer\s+is\s*:?\s*(.+)", re.I),
    re.compile(r"the\s+answer\s+is\s*:?\s*(.+)", re.I),
    re.compile(r"(?:^|\n)\s*\**\s*answer\s*\**\s*:\s*(.+)", re.I),
    re.compile(r"(?:^|\n)\s*A\s*:\s*(.+)"),
]
_LAST_NUM_RE = re.compile(_NUM)
_UNIT_TAIL = re.compile(r"^(?P<num>-?\d+(?:\.\d+)?|-?\d+/\d+)\s*(?:[A-Za-z][A-Za-z .'\-]*)?$")
_LEAD_WORDS = re.compile(r"^(?:[A-Za-z][A-Za-z ]*?\s(?:is|=|of|was|are)\s+|[=:~≈]\s*)")


def answer_region(text: str, think: bool = False) -> str | None:
    """The part of a completion that may hold the final answer.

    >>> answer_region("<think>2+2=4</think> #### 4")
    ' #### 4'
    >>> answer_region("<think>the answer is 4") is None
    True
    >>> answer_region("still thinking, 4", think=True) is None
    True
    >>> answer_region("#### 4")
    '#### 4'
    """
    if text is None:
        return None
    if "</think>" in text:
        return text.rsplit("</think>", 1)[1]
    if "<think>" in text or think:
        return None
    return text


def normalize_number(s: str | None) -> str | None:
    """Canonical string of the single number in ``s``, or None.

    Removes thousands commas, ``$``, ``%``, trailing units and a trailing
    period; integers lose ``.0``; fractions become decimals.

    >>> normalize_number("1,234.50")
    '1234.5'
    >>> normalize_number("$18.")
    '18'
    >>> normalize_number("18 dollars")
    '18'
    >>> normalize_number("25%")
    '25'
    >>> normalize_number("-3.000")
    '-3'
    >>> normalize_number("3/4")
    '0.75'
    >>> normalize_number("20 then 18") is None
    True
    >>> normalize_number("5 or 7") is None
    True
    >>> normalize_number("") is None
    True
    """
    if s is None:
        return None
    t = s.strip()
    t = re.sub(r"\\text\{([^{}]*)\}", r"\1", t)
    t = re.sub(r"\\[,!;: ]", "", t).replace("\\$", "$").replace("\\%", "%")
    t = t.strip().strip("*").strip()
    t = _LEAD_WORDS.sub("", t)
    t = re.sub(r"(?<=\d),(?=\d{3}\b)", "", t)
    t = t.replace("$", "").replace("€", "").replace("£", "").replace("%", "")
    t = t.strip().rstrip(".").strip()
    m = _UNIT_TAIL.match(t)
    if not m:
        return None
    num = m.group("num")
    try:
        value = Fraction(num) if "/" in num else Fraction(num)
    except (ValueError, ZeroDivisionError):
        return None
    return _canonical(value)


def _canonical(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    f = float(value)
    out = f"{f:.10f}".rstrip("0").rstrip(".")
    return out if out not in ("-0", "") else "0"


def _boxed_contents(text: str) -> list[str]:
    out = []
    for m in _BOXED_RE.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            out.append(text[m.end():i - 1])
    return out


def _latex_number(s: str) -> str | None:
    s2 = re.sub(r"\\[dt]?frac\{([^{}]+)\}\{([^{}]+)\}", r"\1/\2", s)
    got = normalize_number(s2)
    if got is not None:
        return got
    try:  # Math-Verify reads the LaTeX we do not; only a single plain number is accepted
        from math_verify import parse
    except ImportError:
        return None
    try:
        parsed = parse("$" + s + "$", parsing_timeout=None)
    except Exception:  # noqa: BLE001 - any parse failure means "no number"
        return None
    for p in parsed:
        try:
            return _canonical(Fraction(str(float(p))).limit_denominator(10**9))
        except (TypeError, ValueError):
            continue
    return None


def final_answer_candidates(text: str) -> list[str]:
    """Every ``#### ...`` line's content, in order (for the reward's guards).

    >>> final_answer_candidates("a\\n#### 5\\n#### 7")
    ['5', '7']
    """
    return [m.group(1) for m in _STRICT_RE.finditer(text or "")]


def extract_answer(text: str, mode: str = "flexible", think: bool = False) -> str | None:
    r"""The normalised final answer in ``text``, or None.

    ``strict`` reads only the last ``#### N`` line; ``flexible`` falls back to
    ``\boxed{N}``, "The (final) answer is N", "Answer: N", "A: N", then the
    last number of the answer region.

    >>> extract_answer("She pays 3*4=<<3*4=12>>12 dollars.\n#### 12", "strict")
    '12'
    >>> extract_answer("so the total is 12", "strict") is None
    True
    >>> extract_answer("so the total is 12")
    '12'
    >>> extract_answer(r"Thus \boxed{1,000}.")
    '1000'
    >>> extract_answer("The final answer is $42.50.")
    '42.5'
    >>> extract_answer("Answer: 7 apples")
    '7'
    >>> extract_answer("#### 5 or 7") is None
    True
    >>> extract_answer("<think>it is 3</think>The answer is 4")
    '4'
    >>> extract_answer("<think>it is 3") is None
    True
    """
    if mode not in ("strict", "flexible"):
        raise ValueError(f"mode must be 'strict' or 'flexible', got {mode!r}")
    region = answer_region(text, think=think)
    if region is None:
        return None
    strict = final_answer_candidates(region)
    if strict:
        return normalize_number(strict[-1])
    if mode == "strict":
        return None
    boxed = _boxed_contents(region)
    if boxed:
        return _latex_number(boxed[-1])
    for rx in _PHRASE_RES:
        hits = list(rx.finditer(region))
        if hits:
            line = hits[-1].group(1).split("\n", 1)[0]
            got = normalize_number(line)
            if got is not None:
                return got
            m = re.match(r"\s*\$?\s*(" + _NUM + r")\s*(?:[A-Za-z$%][^0-9]*)?\.?\s*$", line)
            if m:
                return normalize_number(m.group(1))
            return None
    nums = _LAST_NUM_RE.findall(region)
    return normalize_number(nums[-1]) if nums else None


def numbers_equal(a: str | None, b: str | None, rel_tol: float = 1e-6, abs_tol: float = 1e-6) -> bool:
    """Numeric equality of two normalised answers with a small tolerance.

    >>> numbers_equal("0.3333333333", "0.333333333333")
    True
    >>> numbers_equal("18", "18.01")
    False
    >>> numbers_equal(None, "1")
    False
    """
    if a is None or b is None:
        return False
    try:
        x, y = float(a), float(b)
    except ValueError:
        return False
    return math.isclose(x, y, rel_tol=rel_tol, abs_tol=abs_tol)


def is_correct(completion: str, gold: str, mode: str = "flexible", think: bool = False) -> bool:
    r"""Whether ``completion`` answers ``gold`` (a GSM8K gold string or number).

    >>> is_correct("3+4=<<3+4=7>>7\n#### 7", "7")
    True
    >>> is_correct("#### 7.0", "7")
    True
    >>> is_correct("I think 20 then 18", "18", mode="strict")
    False
    >>> is_correct("<think>so 18</think>", "18")
    False
    >>> is_correct("<think>so 18</think>#### 18", "18")
    True
    """
    pred = extract_answer(completion, mode=mode, think=think)
    return numbers_equal(pred, normalize_number(str(gold)))
