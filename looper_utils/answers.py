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

Hostile text: every stage (SFT checks, rollouts, the reward, PPO, evaluation)
grades raw model samples, so no input may make the grader hang or raise.

- Only the last ``MAX_ANSWER_CHARS`` = 10,000 characters of the answer region
  (the text after ``</think>``, or the whole completion without a think
  block) are read, from the first line boundary in them (a last line longer
  than that is read from a word boundary). Completions end with their answer,
  and the longest generation budget in ``config`` (2,048 tokens, about 8,000
  characters) is under that, so a real completion grades as if nothing were
  cut; an answer followed by more than 10,000 characters of text is not read.
- Every pattern is linear in the text: no nested or adjacent unbounded
  quantifiers that can backtrack into each other (possessive quantifiers where
  two could), and ``\boxed{...}`` is matched in one pass over the braces.
- Math-Verify only sees the content of the last ``\boxed{}`` when the
  plain-number reader cannot read it and that content is short plain
  arithmetic, and it runs within a time budget of ``TIME_BUDGET_S`` = 1
  second per call: ``math_verify_guard`` holds those guards.
"""
from __future__ import annotations

import functools
import math
import re
import time
from fractions import Fraction

from .math_verify_guard import TIME_BUDGET_S, math_verify_value, plain_arithmetic

__all__ = ["answer_region", "extract_answer", "normalize_number", "numbers_equal", "is_correct", "format_ok",
           "grade", "final_answer_candidates", "cache_short_strings", "MAX_ANSWER_CHARS", "TIME_BUDGET_S"]

MAX_ANSWER_CHARS = 10_000  # only this many characters at the end of the answer region are read

_NUM = r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+"
# the rest of the line after '####', trailing blanks removed by final_answer_candidates
_STRICT_RE = re.compile(r"^[ \t]*+####[ \t]*+(.*)", re.M)
_BOXED_OR_BRACE = re.compile(r"\\boxed\s*+\{|[{}]")
# Each phrase, then a gap of blanks (and a colon), then the rest of the line (``val``). ``val`` is empty
# only at the end of the text; such a hit counts only if the gap holds something other than newlines.
_PHRASE_RES = [
    re.compile(r"the\s++final\s++answer\s++is(?P<gap>\s*+:?+\s*+)(?P<val>.*)", re.I),
    re.compile(r"the\s++answer\s++is(?P<gap>\s*+:?+\s*+)(?P<val>.*)", re.I),
    re.compile(r"^[^\S\n]*+\**+[^\S\n]*+answer\s*+\**+\s*+:(?P<gap>\s*+)(?P<val>.*)", re.I | re.M),
    re.compile(r"^[^\S\n]*+A\s*+:(?P<gap>\s*+)(?P<val>.*)", re.M),
]
_PHRASE_NUMBER = re.compile(r"\s*+\$?+\s*+(" + _NUM + r")\s*+(?:[A-Za-z$%][^0-9]*+)?\.?\s*$")
_LAST_NUM_RE = re.compile(_NUM)
_UNIT_TAIL = re.compile(r"^(?P<num>-?\d+(?:\.\d+)?|-?\d+/\d+)\s*(?:[A-Za-z][A-Za-z .'\-]*)?$")
_LEAD_WORDS = re.compile(r"^(?:[A-Za-z][A-Za-z ]*?\s(?:is|=|of|was|are)\s+|[=:~≈]\s*)")
_BLANK = re.compile(r"\s")
# a fraction standing alone: not the "1/2" of a mixed number "2\frac{1}{2}" (left to Math-Verify)
_SIMPLE_FRAC = re.compile(r"(?<![\d.])\\[dt]?frac\{([^{}]+)\}\{([^{}]+)\}(?![\d.])")


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


def _read_window(region: str) -> str:
    """The last ``MAX_ANSWER_CHARS`` characters of ``region``, from a line (else word) boundary.

    >>> _read_window("12\\n#### 7")
    '12\\n#### 7'
    >>> _read_window("#### 5\\n" + "x" * MAX_ANSWER_CHARS + "\\n#### 7")
    '#### 7'
    """
    if len(region) <= MAX_ANSWER_CHARS:
        return region
    start = len(region) - MAX_ANSWER_CHARS
    if region[start - 1] == "\n":
        return region[start:]
    nl = region.find("\n", start)
    if nl >= 0:
        return region[nl + 1:]
    blank = _BLANK.search(region, start)
    return region[blank.end():] if blank else ""


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
    return None if s is None else _normalize_cached(s)


def cache_short_strings(fn):
    """``fn``, a pure function of one string with an immutable result, with its results kept for strings of up to
    64 characters (an LRU cache of 65,536); longer strings are computed each time and never kept. PPO scores 8 or
    more samples of each problem, whose numbers and calculator steps repeat: parsing them again was over half
    the scoring time. ``cache_info`` and ``cache_clear`` are the cache's."""
    cached = functools.lru_cache(maxsize=1 << 16)(fn)

    @functools.wraps(fn)
    def short_cached(s: str):
        return cached(s) if len(s) <= 64 else fn(s)

    short_cached.cache_info, short_cached.cache_clear = cached.cache_info, cached.cache_clear
    return short_cached


@cache_short_strings
def _normalize_cached(s: str) -> str | None:
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
        return _canonical(Fraction(num))
    except (ValueError, ZeroDivisionError, OverflowError):  # "1/0", 5,000 digits, beyond a float
        return None


def _canonical(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    f = float(value)
    out = f"{f:.10f}".rstrip("0").rstrip(".")
    return out if out not in ("-0", "") else "0"


def _last_boxed(text: str) -> str | None:
    r"""The content of the last ``\boxed{...}`` that closes, found in one pass over the braces.

    >>> _last_boxed(r"\boxed{1} and \boxed{\frac{2}{3}} and \boxed{4")
    '\\frac{2}{3}'
    """
    opened: list[int] = []  # per open brace: where its content starts if it opens a \boxed, else -1
    best: tuple[int, int] | None = None
    for m in _BOXED_OR_BRACE.finditer(text):
        if m.group() == "}":
            if opened:
                start = opened.pop()
                if start >= 0 and (best is None or start > best[0]):
                    best = (start, m.start())
        else:
            opened.append(-1 if m.group() == "{" else m.end())
    return None if best is None else text[best[0]:best[1]]


def _latex_number(s: str, deadline: float) -> str | None:
    got = normalize_number(_SIMPLE_FRAC.sub(r"\1/\2", s))
    if got is not None:
        return got
    t = s.replace("\\$", "").replace("\\%", "").replace("$", "").replace("%", "").strip()
    if not plain_arithmetic(t):
        return None  # several values, unknown LaTeX, or too big to evaluate: no answer
    value = math_verify_value(t, deadline)
    return None if value is None else _canonical(value)


def final_answer_candidates(text: str) -> list[str]:
    """Every ``#### ...`` line's content, in order (for the reward's guards).

    >>> final_answer_candidates("a\\n#### 5\\n#### 7")
    ['5', '7']
    """
    return [m.group(1).rstrip(" \t") for m in _STRICT_RE.finditer(text or "")]


def _last_phrase(rx: re.Pattern, text: str) -> re.Match | None:
    last = None
    for m in rx.finditer(text):
        if m.group("val") or m.group("gap").strip("\n"):
            last = m
    return last


def extract_answer(text: str, mode: str = "flexible", think: bool = False) -> str | None:
    r"""The normalised final answer in ``text``, or None.

    ``strict`` reads only the last ``#### N`` line; ``flexible`` falls back to
    ``\boxed{N}``, "The (final) answer is N", "Answer: N", "A: N", then the
    last number of the answer region. Only the last ``MAX_ANSWER_CHARS``
    characters of the answer region are read (see the module docstring).

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
    >>> extract_answer(r"\boxed{5 \lor 7}") is None
    True
    """
    if mode not in ("strict", "flexible"):
        raise ValueError(f"mode must be 'strict' or 'flexible', got {mode!r}")
    deadline = time.perf_counter() + TIME_BUDGET_S
    region = answer_region(text, think=think)
    if region is None:
        return None
    region = _read_window(region)
    last_final = None
    for last_final in _STRICT_RE.finditer(region):
        pass
    if last_final is not None:
        return normalize_number(last_final.group(1))
    if mode == "strict":
        return None
    boxed = _last_boxed(region)
    if boxed is not None:
        return _latex_number(boxed, deadline)
    for rx in _PHRASE_RES:
        hit = _last_phrase(rx, region)
        if hit is not None:
            line = hit.group("val")
            got = normalize_number(line)
            if got is not None:
                return got
            m = _PHRASE_NUMBER.match(line)
            if m:
                return normalize_number(m.group(1))
            return None
    last_num = None
    for last_num in _LAST_NUM_RE.finditer(region):
        pass
    return normalize_number(last_num.group()) if last_num is not None else None


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


def format_ok(text: str, think: bool = False) -> bool:
    r"""Whether ``text`` ends the GSM8K way: its answer region's last line is its one ``#### N`` line.

    The rule, the same for the reward (04, 05), the SFT check (02) and the
    evaluation (06):

    1. there is an answer region (``answer_region``: a think block is closed,
       or there is none);
    2. the region holds exactly one ``####`` mark (drafts inside the think
       block do not count: they are not in the region);
    3. that mark starts the region's last non-blank line: nothing follows the
       final answer (GSM8K's own solutions end there; text after it is where
       a second answer hides);
    4. the line holds one number, as the strict reader reads it.

    Correctness does not depend on it: "The answer is 72." can be correct
    (flexible reading) without being well formed.

    >>> format_ok("48+24=72\n#### 72"), format_ok("48+24=72\n#### 72\n\n")
    (True, True)
    >>> format_ok("48+24=72\n#### 72\nThat is all.")  # the answer line is not last
    False
    >>> format_ok("#### 5\n#### 6"), format_ok("#### 72 #### 72"), format_ok("the answer is 5")
    (False, False, False)
    >>> format_ok("#### 70 or 72"), format_ok("#### seventy-two"), format_ok("  #### $1,000.")
    (False, False, True)
    >>> format_ok("<think>draft #### 70</think>48+24=72\n#### 72")  # drafts in the block are not read
    True
    >>> format_ok("<think>48+24=72\n#### 72"), format_ok("48+24=72\n#### 72", think=True)  # never closed
    (False, False)
    >>> format_ok("48+24=72\n</think>\n#### 72", think=True)
    True
    """
    region = answer_region(text if isinstance(text, str) else "", think=think)
    if region is None or region.count("####") != 1:
        return False
    body = region.rstrip()
    last_line = body[body.rfind("\n") + 1:]
    return last_line.lstrip().startswith("####") and extract_answer(text, "strict", think=think) is not None


def grade(text: str, gold: str | None, think: bool = False) -> dict[str, object]:
    r"""Every verdict the stages keep about one completion: both readings, both verdicts, the format.

    >>> grade("48+24=72\n#### 72\nThat is all.", "72")
    {'extracted': '72', 'extracted_strict': '72', 'correct': True, 'correct_strict': True, 'format_ok': False}
    >>> grade("so 72", "72")
    {'extracted': '72', 'extracted_strict': None, 'correct': True, 'correct_strict': False, 'format_ok': False}
    """
    gold_n = normalize_number(str(gold)) if gold is not None else None
    flexible = extract_answer(text, "flexible", think=think)
    strict = extract_answer(text, "strict", think=think)
    return {"extracted": flexible, "extracted_strict": strict, "correct": numbers_equal(flexible, gold_n),
            "correct_strict": numbers_equal(strict, gold_n), "format_ok": format_ok(text, think=think)}
