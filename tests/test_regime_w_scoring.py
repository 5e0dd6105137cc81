"""Scoring: the safe evaluator, calculator steps, format, guard flags, the table helper, GSM8K's own steps."""
from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest

from looper_utils.regime_w import Score, audit_calculations, calc_steps, safe_eval, score, score_table
from looper_utils.regime_w.safe_eval import MAX_EXPONENT, UnsafeExpression, try_eval
from looper_utils.regime_w.scoring import repetition_ratio

ROW = {"id": "p1", "question": "Natalia sold 48 clips in April and half as many in May. How many in all?",
       "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n48+24 = <<48+24=72>>72\n#### 72",
       "gold": "72"}
GOOD = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nAltogether 48+24 = <<48+24=72>>72 clips.\n#### 72"


# ---- safe_eval -----------------------------------------------------------------

@pytest.mark.parametrize("expr, value", [
    ("48/2", 24.0), ("100-50-30-15", 5.0), ("0.2*50", 10.0), ("(3+4)*2", 14.0), ("2**3**2", 512.0),
    ("-3+ +5", 2.0), (".5*4", 2.0), ("1/3*3", 1.0), ("10**-2", 0.01),
])
def test_safe_eval_computes_arithmetic(expr, value):
    assert safe_eval(expr) == pytest.approx(value)


@pytest.mark.parametrize("expr, reason", [
    ("x", "names"), ("abs(-3)", "calls"), ("__import__('os').system('echo hi')", "calls"),
    ("(1).real", "attributes"), ("().__class__", "attributes"), ("a.b", "attributes"), ("[1][0]", "subscripts"),
    ("1 < 2", "comparisons"), ("'7'", "only numbers"), ("True + 1", "only numbers"), ("3j", "only numbers"),
    ("5 // 2", "FloorDiv"), ("5 % 2", "Mod"), ("1 << 40", "LShift"), ("lambda: 1", "lambdas"),
    ("1e5", "plain decimal"), ("1_000", "plain decimal"), ("9**9**9", "exponent"), ("2**65", "exponent"),
    ("10**40", "too large"), ("1/0", "division by zero"), ("(-8)**0.5", "not real"), ("1 +", "not an arithmetic"),
    ("1" * 201, "longer than"),
])
def test_safe_eval_refuses_everything_else(expr, reason):
    with pytest.raises(UnsafeExpression, match=reason):
        safe_eval(expr)
    assert try_eval(expr) is None


def test_safe_eval_exponent_limit_is_the_documented_one():
    assert safe_eval(f"1**{MAX_EXPONENT}") == 1.0
    with pytest.raises(UnsafeExpression):
        safe_eval(f"1**{MAX_EXPONENT + 1}")


def test_safe_eval_never_runs_code(tmp_path):
    marker = tmp_path / "ran"
    with pytest.raises(UnsafeExpression):
        safe_eval(f"open({str(marker)!r}, 'w')")
    assert not marker.exists()


# ---- calculator steps --------------------------------------------------------

def test_annotations_and_inline_steps_are_found_and_checked():
    steps = calc_steps("He pays 12/60 = $<<12/60=0.2>>0.2 a minute, so 0.2 x 50 = $10 and 10 + 5 = 16 in all.")
    assert [(s.kind, s.expr, s.claimed, s.ok) for s in steps] == [
        ("annotation", "12/60", "0.2", True), ("inline", "0.2*50", "10", True), ("inline", "10+5", "16", False)]
    assert steps[2].value == 15.0


def test_inline_display_of_an_annotation_counts_once():
    steps = calc_steps(GOOD)
    assert [s.kind for s in steps] == ["annotation", "annotation"]
    # but a display that disagrees with its annotation is a step of its own, and wrong
    wrong = calc_steps("48/3 = <<48/2=24>>24")
    assert [(s.kind, s.ok) for s in wrong] == [("annotation", True), ("inline", False)]


def test_annotation_followed_by_another_number_is_wrong():
    assert [s.ok for s in calc_steps("<<48/2=24>>25 clips")] == [False]
    assert [s.ok for s in calc_steps("<<48/2=24>>24 clips")] == [True]


@pytest.mark.parametrize("text, expected", [
    ("<<x*2=10>>", [False]), ("<<open('f')=1>>", [False]), ("<<24>>", [False]), ("<<9**9**9=1>>", [False]),
    ("1,000 + 250 = 1,250", [True]), ("$12 * 3 = $36", [True]), ("10/3 = 3.33", [True]), ("7/2 = 3", [False]),
    ("7 × 8 = 56 and 56 ÷ 7 = 8", [True, True]), ("2^5 = 32", [True]), ("25 / 1/3 = 75", [True]),
    ("50 * 20% = 10", [True]), ("100% - 20% = 80%", [True]), ("1 - 0.2 = 80%", [True]),
    ("2*3 = 6 + 1 = 7", [True]),  # only the last link of a chain is read
    ("20 apples - 5 + 3 = 18", []), ("8 x 1 1/2 = 12", []), ("2(6+12)=36", []), ("10x-5=75", []),
    ("3 / 4 * 2 = 1 1/2", []), ("8/3 = 24/Y", []), ("it is 0900-0130 = 0730", []), ("x = 5", []),
    ("So 3+4=7.\n7*2=15", [True, False]),
])
def test_step_reading_edge_cases(text, expected):
    assert [s.ok for s in calc_steps(text)] == expected


@pytest.mark.parametrize("text", ["9" * 20000 + " = 9", "(" * 3000 + "1" + ")" * 3000 + " = 1", "1 + " * 3000 + "1 = x",
                                  "1=" * 10000, "<<" * 5000 + ">>" * 5000])
def test_pathological_texts_hold_no_steps(text):
    # each of these took seconds to minutes with an unbounded scan; now milliseconds
    assert [s.ok for s in calc_steps(text)] in ([], [False])


# ---- Score ---------------------------------------------------------------------

def test_score_of_a_correct_well_formed_solution():
    s = score(GOOD, ROW, n_tokens=40)
    assert s == Score(extracted="72", extracted_strict="72", correct=True, correct_strict=True, format_ok=True,
                      calc_steps=2, calc_verified=2, calc_errors=(), truncated=False, n_tokens=40,
                      repetition=0.0, n_answer_lines=1, several_answers=False, stuffed=False,
                      empty_reasoning=False)
    assert s.calc_rate == 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.correct = False  # type: ignore[misc]


def test_score_wrong_answer_and_wrong_steps():
    s = score("48/2 = 25\n48+25 = 73\n#### 73", ROW)
    assert (s.correct, s.format_ok, s.calc_steps, s.calc_verified) == (False, True, 2, 1)
    assert s.calc_errors == ("48/2 = 25 (is 24)",)


@pytest.mark.parametrize("text, think, ok", [
    (GOOD, False, True),
    ("48+24=72\n#### 72\nHope this helps!", False, False),  # answer line not last
    ("48+24=72\nThe answer is 72.", False, False),  # no '####' line (still graded correct, flexibly)
    ("48+24=72\n#### seventy-two", False, False),
    ("<think>48+24=72</think>\n#### 72", True, True),
    ("48+24=72 </think>\n#### 72", True, True),  # prompt pre-filled <think>
    ("48+24=72\n#### 72", True, False),  # think block never closed
    ("<think>48+24=72\n#### 72", False, False),
    ("<think>draft #### 70</think>48+24=72\n#### 72", False, True),  # drafts inside the block are not graded
])
def test_format(text, think, ok):
    assert score(text, ROW, think=think).format_ok is ok


def test_flexible_and_strict_extraction_come_from_the_grader():
    s = score("48+24=72\nThe answer is 72.", ROW)
    assert (s.extracted, s.extracted_strict, s.correct, s.correct_strict) == ("72", None, True, False)


@pytest.mark.parametrize("text, flag", [
    ("48+24=72\n#### 70 or 72", "several_answers"),
    ("48+24=72\n#### 70, 72", "several_answers"),
    ("48+24=72\n#### 70\n#### 72", "several_answers"),
    ("48+24=72\n#### 72\nor maybe 70", "several_answers"),
    ("48+24=72\n#### 72\n#### 72\n#### 72", "stuffed"),
    ("48+24=72 #### 72 #### 72", "stuffed"),
    ("#### 72", "empty_reasoning"),
    ("72\n#### 72", "empty_reasoning"),
    ("<think>\n</think>\n#### 72", "empty_reasoning"),
    ("The answer is 72", "empty_reasoning"),
])
def test_guard_flags(text, flag):
    s = score(text, ROW, think="<think>" in text)
    assert getattr(s, flag) is True
    assert getattr(score(GOOD, ROW), flag) is False


def test_no_guard_on_a_fraction_or_the_same_answer_after_the_line():
    assert not score("3/4 of 96 = 72\n#### 144/2", ROW).several_answers
    assert not score("48+24=72\n#### 72\nSo 72 clips.", ROW).several_answers
    assert not score("48+24=72\n#### 72\nBecause 48 + 24 = 72.", ROW).several_answers
    assert score("48+24=72\n#### 72\nThe answer is 70.", ROW).several_answers


def test_truncation_and_tokens():
    s = score(GOOD, ROW, finish_reason="length", n_tokens=96)
    assert s.truncated and s.n_tokens == 96 and s.correct  # measured as is; the reward withholds credit
    assert not score(GOOD, ROW, finish_reason="stop").truncated


def test_repetition_ratio():
    assert repetition_ratio(GOOD) == 0.0
    loop = "so we add 2 and " * 30
    assert repetition_ratio(loop) > 0.9
    assert 0.0 < repetition_ratio("a b c d e a b c d e") < 0.5


def test_missing_gold_is_a_clear_error():
    with pytest.raises(KeyError, match="gold"):
        score(GOOD, {"question": "q"})


# ---- score_table ---------------------------------------------------------------

def _rollouts() -> pd.DataFrame:
    comps = [GOOD, "48+24=72\n#### 70 or 72", GOOD, "so 48 + 24 = 72 and 72 and 72 and"]
    return pd.DataFrame({"prompt_id": ["p1"] * 4, "sample_idx": range(4), "question": ROW["question"],
                         "answer": ROW["answer"], "gold": "72", "steps": 2, "completion": comps,
                         "n_tokens": [30, 12, 96, 96], "finish_reason": ["eos", "eos", "length", "length"],
                         "extracted": ["72", None, "72", "72"], "extracted_strict": ["72", None, "72", None],
                         "correct": [True, False, True, True]})


def test_score_table_adds_one_column_per_field_and_matches_score():
    df = _rollouts()
    out = score_table(df)
    fields = [f.name for f in dataclasses.fields(Score)]
    assert set(fields) <= set(out.columns) and "calc_rate" in out.columns
    assert len(out) == len(df) and list(out["prompt_id"]) == list(df["prompt_id"])
    for i, row in df.iterrows():
        s = score(row["completion"], row, row["finish_reason"], row["n_tokens"])
        assert [out.loc[i, f] for f in fields if f not in ("extracted", "extracted_strict")] == \
               [getattr(s, f) for f in fields if f not in ("extracted", "extracted_strict")]
    assert out["truncated"].tolist() == [False, False, True, True]
    assert out["several_answers"].tolist() == [False, True, False, False]
    assert (out["correct"] == df["correct"]).all()  # the same grader as 03
    assert "calc_rate" not in df.columns  # the input is not modified


def test_score_table_names_missing_columns():
    with pytest.raises(ValueError, match="completion"):
        score_table(pd.DataFrame({"gold": ["1"]}))


def test_score_table_think_mode():
    df = pd.DataFrame({"completion": ["48+24=72</think>\n#### 72", "48+24=72\n#### 72"], "gold": ["72", "72"]})
    assert score_table(df, think=True)["correct"].tolist() == [True, False]


# ---- GSM8K's own worked solutions ----------------------------------------------

# Arithmetic slips written in GSM8K's train solutions (inline text; their <<...>> annotations are right).
KNOWN_WRONG = {"14*20=140", "50-8 = 44", "2*8 = 24", "8*3 = 240", "$4200+$3000 = $8600", "70 + 40 = 100",
               "4+4+6 = 18", "4000 + 2040 = 6120"}


def test_gsm8k_train_calculations_are_checked_and_slips_listed(gsm8k_dir):
    rows = [json.loads(line) for line in open(gsm8k_dir / "train.jsonl", encoding="utf-8") if line.strip()]
    audit = audit_calculations(rows)
    assert len(rows) > 7000 and len(audit) > 3 * len(rows)
    assert audit["ok"].mean() > 0.99
    annotations = audit[audit["kind"] == "annotation"]
    assert annotations["ok"].mean() > 0.999
    wrong = audit[~audit["ok"]]
    assert KNOWN_WRONG <= set(wrong["text"])
    # the only annotations refused use floor division, outside the evaluator's + - * / **
    refused = annotations[~annotations["ok"]]
    assert refused["value"].isna().all() and refused["text"].str.contains("//").all()
    # each reported slip really is false as written
    inline = wrong[wrong["kind"] == "inline"]
    for _, r in inline.iterrows():
        assert abs(r["value"] - float(r["claimed"].replace(",", ""))) > 1e-6


def test_try_eval_caches_short_expressions_only():
    import importlib

    se = importlib.import_module("looper_utils.regime_w.safe_eval")  # the module (the package exports the function)
    se._try_eval_cached.cache_clear()
    assert [try_eval("48/2") for _ in range(3)] == [24.0] * 3
    assert try_eval("x*2") is None and try_eval("x*2") is None  # a refusal is remembered as None, not raised
    info = se._try_eval_cached.cache_info()
    assert (info.hits, info.misses, info.currsize) == (3, 2, 2)
    assert try_eval("+".join(["1"] * 40)) == 40.0  # 79 characters: computed, not kept
    assert se._try_eval_cached.cache_info().currsize == 2
