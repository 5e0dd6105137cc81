r"""Hostile text: the grader answers quickly and sensibly whatever a model writes.

Every stage grades raw samples (SFT checks, rollouts, the reward, PPO,
evaluation), so a degenerate sample must neither hang the grader nor be
counted correct by accident. Measured before these fixes (2 slow cores):

- 2,000 newlines after ``</think>``: 10-12 s per call (the answer-phrase
  patterns backtracked in the cube of the length); now under 1 ms;
- ``\boxed{9^{9^{9^{9}}}}``: never returned (Math-Verify evaluated the tower with
  no timeout); now refused before Math-Verify, under 1 ms;
- ``#### 12``, 30,000 spaces and a letter: 2-4.7 s (extraction, then score);
  30,000 characters of ``\boxed{``: 8-9 s; now a few milliseconds;
- ``0x1F``, ``0o7``, ``0b101`` were read by the calculator check;
- ``\boxed{5 \lor 7}``, ``\boxed{5 \cup 7}``, ``\boxed{\max(5, 7)}``... were read as 7.

The property test at the end throws generated 100,000-character texts at the
four entry points and asks each call to return within ``BOUND_S``.
"""
from __future__ import annotations

import math
import signal
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from looper_utils.answers import MAX_ANSWER_CHARS, extract_answer, is_correct, normalize_number
from looper_utils.regime_w.reward import reward_fn
from looper_utils.regime_w.safe_eval import UnsafeExpression, safe_eval, try_eval
from looper_utils.regime_w.scoring import MAX_FINAL_SPELLINGS, MAX_STEPS, Score, calc_steps, score

BOUND_S = 0.05  # per call, on a 100,000-character text; the calls take 0.1-15 ms on 2 slow cores
ROW = {"gold": "12"}


@pytest.fixture(scope="module", autouse=True)
def _warm_math_verify():
    """Import Math-Verify and sympy once, so the bound measures grading and not first imports."""
    for latex in (r"2\frac{1}{2}", r"\sqrt{49}", r"2^{10}", r"3 \times 4", r"12 \div 4", r"3\cdot 4", r"7^\circ",
                  r"\left(\frac{3}{4}\right)", r"1{,}000", "1+1", "(1)", "{1}", "{{1}}", "-1-1", r"\frac12"):
        extract_answer(r"\boxed{%s}" % latex)


def _seconds(call, bound: float = BOUND_S, tries: int = 3) -> float:
    """The fastest of up to ``tries`` runs of ``call`` (stops once one is under ``bound``).

    A slow grader is slow every time; a run slowed by another process on the
    machine is not, so a retry tells the two apart without loosening the bound.
    """
    best = math.inf
    for _ in range(tries):
        t0 = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - t0)
        if best < bound:
            break
    return best


def _all_entry_points(text: str, gold: str = "12") -> dict[str, float]:
    """Seconds taken by each of the four entry points on ``text``."""
    return {
        "extract_answer": _seconds(lambda: extract_answer(text)),
        "is_correct": _seconds(lambda: is_correct(text, gold)),
        "score": _seconds(lambda: score(text, {"gold": gold})),
        "reward_fn": _seconds(lambda: reward_fn([text], [gold])),
    }


def _assert_fast(text: str, bound: float = BOUND_S) -> None:
    slow = {k: round(v, 4) for k, v in _all_entry_points(text).items() if v >= bound}
    assert not slow, f"over {bound}s on a {len(text)}-character text: {slow}"


# ---- 1: newline floods (cubic backtracking in the answer-phrase patterns) -------------------------

@pytest.mark.timeout(60)
@pytest.mark.parametrize("text", [
    "</think>" + "\n" * 2000,  # measured: 10-12 s per call before
    "\n" * 2000,
    "</think>A" + "\n" * 2000,
    "</think>" + "\n" * 100_000,
    "the answer is" + "\n" * 100_000,
    "Answer" + "\n" * 50_000 + "x",
    "\n" + " " * 50_000 + "*" * 50_000,
    "\nA" + " \n" * 50_000 + ":",
], ids=["2k-after-think", "2k", "2k-after-A", "100k-after-think", "100k-after-phrase", "answer-then-100k",
        "blanks-and-stars", "A-then-blank-lines"])
def test_newline_floods_are_fast_and_answer_nothing(text):
    _assert_fast(text)
    assert extract_answer(text) is None
    assert not is_correct(text, "12")
    assert not score(text, ROW).correct


@pytest.mark.parametrize("text, want", [
    ("The answer is\n\n\n42", "42"),
    ("so\n\n  **Answer**:\n\n 42 apples", "42"),
    ("the answer is: 7\nmore text 9", "7"),
    ("The final answer is $1,800.", "1800"),
    ("work\n\nA:   18\n", "18"),
    ("the answer is 5 then the answer is", "5"),  # the last hit on a line runs to its end
    ("3 apples\nthe answer is \n", None),  # the phrase with nothing after it: no answer
    ("3 apples\nthe answer is\n\n", "3"),  # only newlines after it: as if the phrase were absent
])
def test_answer_phrases_read_as_before(text, want):
    assert extract_answer(text) == want


# ---- 2: Math-Verify on towers of powers, with its timeout -----------------------------------------

TOWERS = [r"\boxed{9^{9^{9^{9}}}}", r"\boxed{9^{9^{9}}}", r"\boxed{(9^{99})^{99}}", r"\boxed{10^{10^{10}}}",
          r"\boxed{2^{999999}}", r"\boxed{9^{9^{9^{9}}}} so 12"]


@pytest.mark.timeout(30)  # the first tower never returned before: this makes it fail instead of hang
@pytest.mark.parametrize("text", TOWERS)
def test_towers_of_powers_are_never_evaluated(text):
    t0 = time.perf_counter()
    assert extract_answer(text) is None
    assert time.perf_counter() - t0 < 1.0
    _assert_fast(text)


@pytest.mark.timeout(30)
def test_towers_in_a_thread_where_math_verify_has_no_timeout():
    out: list = []
    worker = threading.Thread(target=lambda: out.extend(extract_answer(t) for t in TOWERS), daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive() and out == [None] * len(TOWERS)


@pytest.mark.parametrize("latex, want", [
    (r"2\frac{1}{2}", "2.5"), (r"\sqrt{49}", "7"), (r"2^{10}", "1024"), (r"3 \times 4", "12"), (r"12 \div 4", "3"),
    (r"\left(\frac{3}{4}\right)", "0.75"), (r"7^\circ", "7"), (r"1{,}000", "1000"), (r"\frac{3}{4}", "0.75"),
    (r"-\dfrac{15}{2}", "-7.5"), (r"\frac12", "0.5"), (r"\$18", "18"), (r"18 \text{ apples}", "18"),
])
def test_single_valued_latex_is_still_read(latex, want):
    assert extract_answer(r"so \boxed{%s}." % latex) == want


def test_math_verify_keeps_the_callers_alarm():
    # Math-Verify's own timeout is a SIGALRM that cancels any pending alarm (pytest-timeout's included)
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        pytest.skip("needs the main thread and setitimer")
    previous, previous_timer = signal.getsignal(signal.SIGALRM), signal.getitimer(signal.ITIMER_REAL)
    signal.signal(signal.SIGALRM, lambda *_: None)
    try:
        signal.setitimer(signal.ITIMER_REAL, 30.0)
        assert extract_answer(r"\boxed{\sqrt{16}}") == "4"
        left, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 25.0 < left <= 30.0
    finally:
        signal.setitimer(signal.ITIMER_REAL, *previous_timer)  # pytest-timeout's, if it set one
        signal.signal(signal.SIGALRM, previous)


# ---- 3: long blank runs after '####', repeated \boxed{ ----------------------------------------------

@pytest.mark.timeout(60)
@pytest.mark.parametrize("text", [
    "#### 12" + " " * 30_000 + "x",  # measured: 2-3 s to extract, 4.7 s to score before
    "#### 12" + " \t" * 15_000 + ".",
    "\\boxed{" * (30_000 // 7),  # measured: 8-9 s per call before
    "\\boxed{" * 1400,  # 9,800 characters: all of it inside the window that is read
    "\\boxed{ " * 12_500,
    "\\boxed{\n" * 12_500,
    "\\boxed{" * 700 + "}" * 700,
    "{" * 50_000 + "}" * 50_000,
], ids=["hash-30k-spaces", "hash-30k-tabs", "boxed-30k", "boxed-9.8k", "boxed-space-100k", "boxed-newline-100k",
        "boxed-nested-closed", "braces-100k"])
def test_blank_runs_and_boxed_repeats_are_fast(text):
    _assert_fast(text)


def test_final_line_with_trailing_blanks_reads_as_before():
    assert extract_answer("#### 12" + " " * 5000 + "x", "strict") == "12"  # "12 ... x" is 12 with a unit
    assert extract_answer("#### 12" + " " * 5000) == "12"
    assert extract_answer("\\boxed{" * 50 + "7" + "}" * 50) == "7"
    assert extract_answer(r"\boxed{\boxed{3} + 4}") == "3"  # the last \boxed to open, as before


# ---- 4: the calculator check reads only plain decimals ----------------------------------------------

@pytest.mark.parametrize("expr", ["0x1F", "0o7", "0b101", "0X1f+1", "2*0B11", "0o17-1"])
def test_hex_octal_binary_literals_are_refused(expr):
    with pytest.raises(UnsafeExpression, match="plain decimal"):
        safe_eval(expr)
    assert try_eval(expr) is None


def test_hex_in_an_annotation_is_not_a_verified_step():
    assert [s.ok for s in calc_steps("<<0x10*2=32>>32 and <<16*2=32>>32")] == [False, True]


# ---- 5: multi-valued LaTeX is not a number -----------------------------------------------------------

@pytest.mark.parametrize("latex, gold", [
    (r"5 \lor 7", "7"), (r"5 \vee 7", "7"), (r"5 \land 7", "7"), (r"5 \wedge 7", "7"), (r"5 \cup 7", "7"),
    (r"5 \cap 7", "7"), (r"\max(5, 7)", "7"), (r"\min(5, 7)", "5"), (r"5 \quad 7", "12"), (r"5 \\ 7", "7"),
    (r"5 \mid 7", "7"), (r"5 \to 7", "7"), (r"\{7\}", "7"), (r"\{5, 7\}", "7"), (r"\{5\} \cup \{7\}", "7"),
    ("5 . 7", "7"), ("1..2", "1"), (r"\pi", "3.1415926536"), ("5!", "120"),
])
def test_multi_valued_latex_is_never_correct(latex, gold):
    text = "48+24=72\nso \\boxed{%s}" % latex
    assert extract_answer(text) is None
    assert not is_correct(text, gold)
    assert not score(text, {"gold": gold}).correct
    assert reward_fn([text], [gold]) == reward_fn([text], ["-1"])


# ---- long real completions: the window that is read -------------------------------------------------

LINE = "Natalia sold 48/2 = <<48/2=24>>24 clips in May, and 48+24 = <<48+24=72>>72 in all.\n"


@pytest.mark.parametrize("ending, think", [
    ("#### 72", False), ("The answer is 72.", False), ("So \\boxed{72}.", False), ("so 72", False),
    ("#### 72", True), ("The final answer is \\boxed{72}", True),
])
def test_long_completion_with_its_answer_at_the_end_grades_right(ending, think):
    body = "13579 " + LINE * (60_000 // len(LINE))  # 60,000 characters of work, a number at every cut
    text = ("<think>" + body + "</think>\n" + body + ending) if think else body + ending
    assert len(text) > 5 * MAX_ANSWER_CHARS
    assert extract_answer(text) == "72"
    assert is_correct(text, "72")
    assert score(text, {"gold": "72"}).correct
    _assert_fast(text)


def test_only_the_documented_window_is_read():
    tail = "no number here\n" * (MAX_ANSWER_CHARS // 15 + 10)
    assert extract_answer("#### 72\n" + tail, "strict") is None
    assert extract_answer("#### 72\n" + tail[:MAX_ANSWER_CHARS - 100], "strict") == "72"
    # the window starts at a line boundary: a cut never leaves the tail of a number behind
    assert extract_answer("1234567\n" * 5000 + "x") == "1234567"
    assert extract_answer("1234567 " * 5000 + "x") == "1234567"  # no line boundary: a word boundary


def test_huge_numbers_do_not_raise():
    big = "1" + "0" * 400 + ".5"  # raised OverflowError before
    assert normalize_number(big) is None
    assert not is_correct("The total is " + big, "5")
    assert normalize_number("9" * 5000) is None
    assert extract_answer("9" * 100_000) is None


def test_calculator_steps_read_per_text_are_capped():
    steps = calc_steps("<<(1)=1>>" * 5000)
    assert len(steps) == MAX_STEPS and all(s.ok for s in steps)
    assert _seconds(lambda: calc_steps("<<(1)=1>>" * 11_000)) < BOUND_S
    assert _seconds(lambda: calc_steps("(1)*2=2 " * 12_500)) < BOUND_S


def test_several_answers_guard_reads_a_bounded_number_of_lines():
    same = "".join(f"#### 12 {unit}\n" for unit in ("apples", "clips", "dollars"))
    assert not score("48+24=72\n" + same, ROW).several_answers  # one value, spelled three ways
    # past MAX_FINAL_SPELLINGS spellings the lines are not all read: that many count as several answers
    lines = [f"#### 12 {chr(97 + i % 26)}{chr(97 + i // 26)}\n" for i in range(MAX_FINAL_SPELLINGS + 1)]
    assert not score("48+24=72\n" + "".join(lines[:-1]), ROW).several_answers
    s = score("48+24=72\n" + "".join(lines), ROW)
    assert s.several_answers and s.stuffed and not s.format_ok
    flood = "".join(f"#### 1 {chr(97 + i % 26)}{chr(97 + i // 26 % 26)}{chr(97 + i // 676 % 26)}\n"
                    for i in range(100_000 // 11))
    _assert_fast(flood)


# ---- property: random and adversarial 100,000-character texts ----------------------------------------

PIECES = ["\n", "\n\n\n", " ", "\t", "  ", "\\boxed{", "\\boxed {", "{", "}", "####", "#### ", "#### 12",
          "the answer is", "The final answer is", "Answer:", "**Answer**:", "A:", "A", ":", "*", "</think>",
          "<think>", "<<", ">>", "=", "+", "-", "*", "/", "^", "^{", "\\frac{", "\\sqrt{", "\\lor", "\\cup",
          "\\left(", "\\right)", "(", ")", ".", ",", "$", "%", "12", "0", "1", "7", "1,000", "3.5", "-4",
          "9" * 50, "x", "or", "ä½ å¥½", "😀", "\u2028", "\x85", "é", "\u00a0", "\\", "\\\\", "\\,", "}{"]
UNITS = st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=6)), min_size=1, max_size=12).map("".join)


@st.composite
def hostile_texts(draw, size: int = 100_000) -> str:
    """A 100,000-character text: one unit repeated, or a flood then a different tail, or random pieces."""
    kind = draw(st.sampled_from(["flood", "flood+tail", "head+flood", "pieces"]))
    unit = draw(UNITS.filter(bool))
    if kind == "pieces":
        parts = draw(st.lists(UNITS, min_size=1, max_size=30))
        text = "".join(parts) or unit
        return (text * (size // len(text) + 1))[:size]
    flood = (unit * (size // len(unit) + 1))[:size]
    other = draw(UNITS)
    if kind == "flood+tail":
        return flood[:size - len(other)] + other
    if kind == "head+flood":
        return other + flood[:size - len(other)]
    return flood


@pytest.mark.timeout(120)
@settings(max_examples=50, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
@given(text=hostile_texts(), gold=st.sampled_from(["12", "7", "0.5"]))
def test_every_entry_point_returns_quickly_on_hostile_text(text, gold):
    assert len(text) >= 99_000
    taken = _all_entry_points(text, gold)
    slow = {k: round(v, 4) for k, v in taken.items() if v >= BOUND_S}
    assert not slow, f"over {BOUND_S}s: {slow} on {text[:80]!r}...{text[-80:]!r}"
    got = extract_answer(text)
    assert got is None or normalize_number(got) == got
    assert isinstance(is_correct(text, gold), bool)
    assert isinstance(score(text, {"gold": gold}), Score)
    (r,) = reward_fn([text], [gold])
    assert math.isfinite(r)
