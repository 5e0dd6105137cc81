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
