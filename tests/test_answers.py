import json

import pytest

from looper_utils.answers import extract_answer, is_correct, normalize_number


@pytest.mark.parametrize("raw,want", [
    ("1,234.50", "1234.5"), ("$1,000", "1000"), ("18.", "18"), ("18 dollars.", "18"), ("50%", "50"),
    ("-7", "-7"), ("0.50", "0.5"), ("  42  ", "42"), ("1/4", "0.25"), ("3.0", "3"),
    ("\\$12", "12"), ("12 \\text{ apples}", "12"), ("**18**", "18"),
    ("20 then 18", None), ("5 or 7", None), ("", None), ("abc", None), (None, None), ("1, 2, 3", None),
])
def test_normalize_number(raw, want):
    assert normalize_number(raw) == want


@pytest.mark.parametrize("text,mode,want", [
    ("work\n#### 18", "strict", "18"),
    ("work\n####18", "strict", "18"),
    ("no hashes, the answer is 18", "strict", None),
    ("#### 1\nmore work\n#### 2", "strict", "2"),
    (r"so \boxed{\frac{1}{2}}", "flexible", "0.5"),
    (r"\boxed{18}", "flexible", "18"),
    ("The final answer is 18 apples.", "flexible", "18"),
    ("the answer is: $1,800", "flexible", "1800"),
    ("Answer: 18", "flexible", "18"),
    ("A: 18", "flexible", "18"),
    ("She has 3 apples, then 5, so 8", "flexible", "8"),
    ("The answer is 20 then 18", "flexible", None),
    ("nothing numeric", "flexible", None),
    ("<think>I guess 7</think>\n#### 9", "flexible", "9"),
    ("<think>I guess 7 and #### 7", "flexible", None),
])
def test_extract_answer(text, mode, want):
    assert extract_answer(text, mode) == want


def test_think_prefilled_completion():
    assert extract_answer("reasoning 3+4=7 ... \n#### 7", think=True) is None
    assert extract_answer("reasoning 3+4=7\n</think>\n#### 7", think=True) == "7"


def test_is_correct_numeric_tolerance_and_no_partial_credit():
    assert is_correct("#### 18.00", "18")
    assert is_correct("#### 1,000", "1000")
    assert not is_correct("#### 18.5", "18")
    assert not is_correct("20 then 18", "18", mode="strict")
    assert not is_correct("#### 20 then 18", "18")
    assert not is_correct("", "18")


def test_mode_is_validated():
    with pytest.raises(ValueError, match="strict"):
        extract_answer("#### 1", mode="loose")


def test_every_real_gsm8k_gold_extracts(gsm8k_dir):
    n = 0
    for split in ("train", "test"):
        for line in (gsm8k_dir / f"{split}.jsonl").read_text().splitlines():
            row = json.loads(line)
            final = row["answer"].rsplit("####", 1)[1].strip()
            gold = normalize_number(final)
            assert gold is not None, final
            assert extract_answer(row["answer"], "strict") == gold
            assert is_correct(row["answer"], final)
            n += 1
    assert n == 7473 + 1319


# ---- one grader: format_ok, and 04's verdicts against 06's ------------------------------------

GOLD_ROW = {"id": "q", "question": "Natalia sold 48 clips in April and half as many in May. Altogether?",
            "answer": "48/2 = <<48/2=24>>24\n48+24 = <<48+24=72>>72\n#### 72", "gold": "72"}

# (completion, think, finish_reason, correct, format_ok): handmade, each a case the two stages once read apart
TABLE = [
    ("48/2=24\n48+24=72\n#### 72", False, "eos", True, True),
    ("48+24=72\n#### 72\nThat is all.", False, "eos", True, False),  # the case: answer line not last
    ("48+24=72\n#### 72\n\n", False, "eos", True, True),  # trailing blank lines are no text
    ("48+24=72\n   #### 72", False, "eos", True, True),
    ("48+24=72\n#### 72.00", False, "eos", True, True),
    ("48+24=72\n#### $72", False, "eos", True, True),
    ("48+24=72\n#### 72 clips", False, "eos", True, True),
    ("48+24=72\n#### 70", False, "eos", False, True),
    ("48+24=72\nThe answer is 72.", False, "eos", True, False),
    ("48+24=72\nThe answer is 70.", False, "eos", False, False),
    ("48+24=72\n#### 70 or 72", False, "eos", False, False),
    ("48+24=72\n#### seventy-two", False, "eos", False, False),
    ("#### 72\n#### 72", False, "eos", True, False),  # stuffed
    ("#### 70\n#### 72", False, "eos", True, False),  # the last line is read, two marks break the format
    ("48+24=72 #### 72 #### 72", False, "eos", True, False),
    ("", False, "eos", False, False),
    ("48+24=", False, "length", False, False),
    ("48+24=72\n#### 72", False, "length", True, True),  # cut off after a complete answer
    ("<think>48+24=72</think>\n#### 72", False, "eos", True, True),
    ("<think>draft #### 70</think>48+24=72\n#### 72", False, "eos", True, True),
    ("<think>48+24=72\n#### 72", False, "eos", False, False),  # never closed
    ("48+24=72\n</think>\n\n#### 72", True, "eos", True, True),  # prompt pre-filled <think>
    ("48+24=72\n#### 72", True, "eos", False, False),  # ... and never closed
    ("48+24=72\n</think>\n\\boxed{72}", True, "eos", True, False),
    ("48+24=72\n</think>\n#### 1,000", True, "eos", False, True),
    ("Answer: 72", False, "eos", True, False),
]


@pytest.mark.parametrize("text, think, finish, correct, fmt", TABLE)
def test_regime_w_scoring_and_evaluation_give_the_same_verdicts(text, think, finish, correct, fmt):
    from looper_utils import evaluation, regime_w
    from looper_utils.answers import format_ok, grade

    s = regime_w.score(text, GOLD_ROW, finish_reason=finish, think=think)  # what 04 and 05 reward
    rec = evaluation.grade_question(GOLD_ROW, [text], [finish], [5], think=think)  # what 06 reports
    g = grade(text, GOLD_ROW["gold"], think=think)  # what 02's dev check and PPO's dev eval keep
    assert (s.correct, s.format_ok) == (correct, fmt)
    assert (rec["correct"], rec["format_ok"]) == (correct, fmt)
    assert (g["correct"], g["format_ok"]) == (correct, fmt) and format_ok(text, think=think) is fmt
    assert s.extracted == rec["extracted"] == g["extracted"]
    assert s.correct_strict == rec["correct_strict"] == g["correct_strict"]
    assert (rec["category"] == "correct") is correct
    if not correct and finish == "eos" and rec["extracted"] is not None:
        assert rec["category"] == ("wrong" if fmt else "format")


def test_table_has_enough_cases():
    assert len(TABLE) >= 20 and {c[3:] for c in TABLE} == {(True, True), (True, False), (False, True),
                                                            (False, False)}


def test_every_real_gsm8k_solution_is_well_formed_for_every_stage(gsm8k_dir):
    from looper_utils import evaluation, regime_w
    from looper_utils.answers import format_ok

    n = 0
    for split in ("train", "test"):
        for line in (gsm8k_dir / f"{split}.jsonl").read_text().splitlines():
            row = json.loads(line)
            row["gold"] = normalize_number(row["answer"].rsplit("####", 1)[1])
            assert format_ok(row["answer"]), row["answer"][-80:]
            if n % 25 == 0:  # scoring checks every calculator step: a sample keeps this test quick
                s = regime_w.score(row["answer"], row)
                rec = evaluation.grade_question({**row, "id": n}, [row["answer"]], ["eos"], [1], think=False)
                assert s.format_ok and s.correct and rec["format_ok"] and rec["correct"]
            n += 1
    assert n == 7473 + 1319


def test_normalize_number_caches_short_strings_only():
    from looper_utils import answers

    answers._normalize_cached.cache_clear()
    assert [normalize_number("$1,250.") for _ in range(3)] == ["1250"] * 3
    info = answers._normalize_cached.cache_info()
    assert (info.hits, info.misses) == (2, 1)
    long = "7" + " " * 80  # a long string is parsed each time and never kept
    assert normalize_number(long) == "7"
    assert answers._normalize_cached.cache_info().currsize == 1
    assert normalize_number("5 or 7") is None and normalize_number("5 or 7") is None
