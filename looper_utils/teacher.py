"""The teacher mix of the synthetic SFT data, and the style of a completion read from its text.

The teacher mix (``data.teacher``, e.g. ``"worked:0.4,terse:0.6"``). SFT
imitates everything in its data, good habits and bad, so the offline
profiles draw each training row's SFT answer from a documented mix of
solution styles, the way distilled traces mix the habits of their teacher:

* ``worked``: the reference solution, every step with its calculator
  annotation (``Mia has 5+3=<<5+3=8>>8 cards.``), then ``#### N``;
* ``terse``: the final number with no worked steps (``The answer is 8.``):
  the model must do all the arithmetic in one jump;
* ``slip``: worked, but one step's arithmetic is wrong and every later step
  and the final line follow it, like an unfiltered distilled trace.

A training row keeps ``answer`` (the reference worked solution, from which
``gold`` and the difficulty are read) and gains ``teacher_style`` and
``teacher_answer`` (what SFT imitates). ``gold`` stays the true answer
whatever the style, and dev, test and Platinum are graded on it.
``completion_style`` tells a model completion's style from its text, so
rollouts, PPO and evaluation can report accuracy and share per style.
``teacher="worked:1"`` is the clean control (every ``teacher_answer`` equals
``answer``); the ``full`` profile keeps GSM8K's real solutions.
"""
from __future__ import annotations

import random
import re
from collections import Counter
from typing import Iterable

from .answers import normalize_number
from .problem_rows import ANNOTATION_RE, FINAL_RE, annotations

__all__ = ["TEACHER_STYLES", "COMPLETION_STYLES", "parse_teacher", "terse_answer", "slip_answer", "apply_teacher",
           "completion_style", "style_shares"]

TEACHER_STYLES = ("worked", "terse", "slip")
COMPLETION_STYLES = TEACHER_STYLES + ("other",)  # "other": no answer at all
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
_STEP_RE = re.compile(r"^\s*(\d+)\s*([-+*/])\s*(\d+)\s*$")


def parse_teacher(spec: str) -> dict[str, float]:
    """``"worked:0.5,terse:0.5"`` -> shares per style that sum to 1 (a bare style name means all of it).

    >>> parse_teacher("worked:1,terse:3")
    {'worked': 0.25, 'terse': 0.75}
    >>> parse_teacher("worked")
    {'worked': 1.0}
    >>> parse_teacher("workd:1")
    Traceback (most recent call last):
    ...
    ValueError: data.teacher: unknown style 'workd' (did you mean 'worked'?); styles are worked, terse, slip
    """
    import difflib

    shares: dict[str, float] = {}
    for part in [p.strip() for p in str(spec).split(",") if p.strip()]:
        name, _, value = part.partition(":")
        name = name.strip()
        if name not in TEACHER_STYLES:
            close = difflib.get_close_matches(name, TEACHER_STYLES, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"data.teacher: unknown style {name!r}{hint}; styles are {', '.join(TEACHER_STYLES)}")
        try:
            share = float(value) if value.strip() else 1.0
        except ValueError:
            raise ValueError(f"data.teacher: {part!r} needs a number after ':', as in 'worked:0.5'") from None
        if not share >= 0 or share == float("inf"):
            raise ValueError(f"data.teacher: the share of {name!r} must be a number >= 0, got {value!r}")
        if name in shares:
            raise ValueError(f"data.teacher: style {name!r} is given twice in {spec!r}")
        shares[name] = share
    total = sum(shares.values())
    if not shares or total <= 0:
        raise ValueError(f"data.teacher: {spec!r} gives no style a positive share; write e.g. 'worked:0.5,terse:0.5'")
    return {k: v / total for k, v in shares.items() if v > 0}


def terse_answer(gold: str) -> str:
    """The ``terse`` teacher: the final number and nothing else.

    >>> print(terse_answer("12"))
    The answer is 12.
    #### 12
    """
    return f"The answer is {gold}.\n#### {gold}"


def slip_answer(answer: str, rng: random.Random) -> str | None:
    """The ``slip`` teacher: one step's result off by 1 or 2, later steps and ``#### N`` following it.

    Works on chained solutions (each step starts from the previous result, as
    the synthetic ones do); ``None`` when the solution has no step it can
    change that way.

    >>> a = "Mia starts with 5 cards.\\nThen Mia has 5+3=<<5+3=8>>8 cards.\\nThen Mia has 8*2=<<8*2=16>>16 cards.\\n#### 16"
    >>> out = slip_answer(a, random.Random(0))
    >>> out.splitlines()[-1] != "#### 16", len(out.splitlines()) == len(a.splitlines())
    (True, True)
    """
    steps = []
    for m in ANNOTATION_RE.finditer(answer or ""):
        sm = _STEP_RE.match(m.group(1))
        if not sm or not m.group(2).strip().isdigit():
            return None
        steps.append((int(sm.group(1)), sm.group(2), int(sm.group(3)), int(m.group(2))))
    step_text = re.compile(r"(\d+)\s*([-+*/])\s*(\d+)\s*=\s*<<[^<>=]*=[^<>]*>>\s*(\d+)")
    if (not steps or len(step_text.findall(answer)) != len(steps)
            or any(steps[j][0] != steps[j - 1][3] for j in range(1, len(steps)))):
        return None
    for first in (rng.randrange(len(steps)), len(steps) - 1):  # a random step; the last one always works
        deltas = [d for d in (-2, -1, 1, 2) if steps[first][3] + d >= 0]
        new = steps[first][3] + rng.choice(deltas)
        results, ok = [s[3] for s in steps], True
        results[first] = new
        for j in range(first + 1, len(steps)):
            a, op, b = results[j - 1], steps[j][1], steps[j][2]
            if op == "/":
                if b == 0 or a % b:
                    ok = False
                    break
                results[j] = a // b
            else:
                results[j] = _OPS[op](a, b)
            if results[j] < 0:
                ok = False
                break
        if ok:
            break
    out, it = answer, iter(range(len(steps)))

    def fix(m: re.Match) -> str:
        j = next(it)
        a = steps[j][0] if j <= first else results[j - 1]
        expr = f"{a}{steps[j][1]}{steps[j][2]}"
        return f"{expr}=<<{expr}={results[j]}>>{results[j]}"

    out = step_text.sub(fix, out)
    return FINAL_RE.sub(f"#### {results[-1]}", out)


def apply_teacher(rows: list[dict], spec: str, seed: int) -> list[dict]:
    """Copies of ``rows`` with ``teacher_style`` and ``teacher_answer`` drawn from the mix ``spec``.

    Each style gets its exact share of the rows (rounded), assigned in a
    seeded random order; ``answer`` and ``gold`` are left as they are. A row
    the ``slip`` teacher cannot change keeps a worked answer (and says so).

    >>> from looper_utils.synthetic import synthetic_problems
    >>> rows = synthetic_problems(100, seed=1)
    >>> mixed = apply_teacher(rows, "worked:0.5,terse:0.3,slip:0.2", seed=1)
    >>> Counter(r["teacher_style"] for r in mixed) == Counter(worked=50, terse=30, slip=20)
    True
    >>> all(r["gold"] == o["gold"] and r["answer"] == o["answer"] for r, o in zip(mixed, rows))
    True
    >>> all(r["teacher_answer"] == r["answer"] for r in apply_teacher(rows, "worked:1", seed=1))
    True
    """
    shares = parse_teacher(spec)
    rng = random.Random(f"teacher:{seed}:{spec}")
    order = list(range(len(rows)))
    rng.shuffle(order)
    counts = {k: int(round(v * len(rows))) for k, v in shares.items()}
    names = list(shares)
    counts[names[0]] += len(rows) - sum(counts.values())  # rounding remainder to the first style
    style_of: dict[int, str] = {}
    pos = 0
    for name in names:
        for i in order[pos:pos + counts[name]]:
            style_of[i] = name
        pos += counts[name]
    out = []
    for i, r in enumerate(rows):
        style = style_of[i]
        if style == "terse":
            text = terse_answer(r["gold"])
        elif style == "slip":
            text = slip_answer(r["answer"], rng)
            if text is None:
                style, text = "worked", r["answer"]
        else:
            text = r["answer"]
        out.append(dict(r, teacher_style=style, teacher_answer=text))
    return out


def completion_style(text: str, think: bool = False) -> str:
    """The style of a model completion (or a teacher answer), read from its text alone.

    ``worked``: calculator steps (``<<a+b=c>>``), every one right; ``slip``:
    at least one step whose result is wrong; ``terse``: an answer with no
    calculator step; ``other``: no answer the grader can read. With
    ``think=True`` an answer counts only after ``</think>`` (the prompt
    convention of ``looper_utils.prompts``).

    >>> completion_style("Mia has 5+3=<<5+3=8>>8 cards.\\n</think>\\n\\n#### 8", think=True)
    'worked'
    >>> completion_style("Mia has 5+3=<<5+3=9>>9 cards.\\n</think>\\n\\n#### 9", think=True)
    'slip'
    >>> completion_style("The answer is 8.\\n</think>\\n\\n#### 8", think=True)
    'terse'
    >>> completion_style("Mia has 5+3=<<5+3=8>>8 cards. Then", think=True)
    'other'
    """
    from .answers import extract_answer
    from .regime_w.safe_eval import try_eval

    if extract_answer(text, think=think) is None:
        return "other"
    steps = annotations(text)
    if not steps:
        return "terse"
    for expr, claimed in steps:
        value, want = try_eval(expr), normalize_number(claimed)
        if value is None or want is None or abs(value - float(want)) > 1e-6 * max(1.0, abs(value)):
            return "slip"
    return "worked"


def style_shares(styles: Iterable[str]) -> dict[str, float]:
    """Share of each completion style (all four keys, summing to 1; zeros when there is none).

    >>> style_shares(["worked", "terse", "terse", "other"])
    {'worked': 0.25, 'terse': 0.5, 'slip': 0.0, 'other': 0.25}
    """
    c = Counter(styles)
    n = sum(c.values())
    return {k: (c[k] / n if n else 0.0) for k in COMPLETION_STYLES}
