"""The teacher mix of the synthetic SFT data and the style of a completion read from its text."""
import random
from collections import Counter

import pytest

from looper_utils import answers, config, data, modeling, prompts
from looper_utils.regime_w.safe_eval import try_eval


@pytest.fixture(scope="module")
def rows():
    return data.synthetic_problems(1000, seed=3, min_steps=1, max_steps=4, max_value=30)


@pytest.fixture(scope="module")
def tok():
    corpus = modeling.tokenizer_corpus(data.synthetic_problems(200, seed=0), extra=prompts.prompt_wording())
    return modeling.build_tokenizer(corpus, vocab_size=300)


# ---- the mix -------------------------------------------------------------------------------

def test_parse_teacher_normalises_and_names_bad_input():
    assert data.parse_teacher("worked:2, terse:2") == {"worked": 0.5, "terse": 0.5}
    assert data.parse_teacher("worked:1,slip:0") == {"worked": 1.0}
    for spec, needle in [("wrked:1", "did you mean 'worked'"), ("worked:-1", ">= 0"), ("worked:0", "no style"),
                         ("worked:x", "needs a number"), ("worked:1,worked:2", "given twice"), ("", "no style"),
                         ("worked:nan", ">= 0")]:
        with pytest.raises(ValueError, match=needle):
            data.parse_teacher(spec)


@pytest.mark.parametrize("spec", ["worked:0.4,terse:0.6", "worked:0.5,terse:0.3,slip:0.2", "terse:1"])
def test_mix_gives_each_style_its_share_and_keeps_gold(rows, spec):
    mixed = data.apply_teacher(rows, spec, seed=0)
    want = data.parse_teacher(spec)
    got = Counter(r["teacher_style"] for r in mixed)
    for style, share in want.items():
        assert abs(got[style] / len(rows) - share) <= 0.01, (style, got)
    assert all(m["gold"] == r["gold"] and m["answer"] == r["answer"] and m["id"] == r["id"]
               for m, r in zip(mixed, rows))
    assert data.apply_teacher(rows, spec, seed=0) == mixed  # deterministic per seed
    assert data.apply_teacher(rows, spec, seed=1) != mixed or spec == "terse:1"


def test_clean_teacher_is_todays_answers(rows, tok):
    clean = data.apply_teacher(rows, "worked:1", seed=0)
    assert all(c["teacher_answer"] == r["answer"] and c["teacher_style"] == "worked" for c, r in zip(clean, rows))
    # what SFT trains on is byte for byte what it trained on before the teacher existed
    for c, r in zip(clean[:50], rows[:50]):
        assert prompts.sft_example(c, tok) == prompts.sft_example(r, tok)


def test_styles_read_back_from_the_teacher_text(rows):
    mixed = data.apply_teacher(rows, "worked:0.4,terse:0.3,slip:0.3", seed=0)
    assert all(data.completion_style(r["teacher_answer"]) == r["teacher_style"] for r in mixed)


def test_slip_changes_one_step_and_the_rest_follows(rows):
    rng = random.Random(0)
    n_checked = 0
    for r in rows:
        slip = data.slip_answer(r["answer"], rng)
        assert slip is not None
        steps = data.annotations(slip)
        wrong = [i for i, (expr, val) in enumerate(steps) if try_eval(expr) != float(val)]
        assert len(wrong) == 1, slip  # exactly one step's arithmetic is wrong
        claimed = int(steps[wrong[0]][1])
        assert 1 <= abs(claimed - try_eval(steps[wrong[0]][0])) <= 2
        for (expr, _), (_, prev) in zip(steps[wrong[0] + 1:], steps[wrong[0]:]):
            assert expr.startswith(prev), (expr, prev)  # later steps start from the slipped result
        assert data.gold_from_answer(slip) == answers.normalize_number(steps[-1][1]) != r["gold"]
        n_checked += 1
    assert n_checked == len(rows)


def test_slip_refuses_solutions_it_cannot_follow():
    assert data.slip_answer("no steps here\n#### 4", random.Random(0)) is None
    assert data.slip_answer("a <<2*3=6>>6 b <<10+1=11>>11\n#### 11", random.Random(0)) is None  # not a chain


# ---- what SFT imitates -----------------------------------------------------------------------

def test_sft_targets_follow_the_teacher(rows, tok):
    mixed = {r["teacher_style"]: r for r in data.apply_teacher(rows, "worked:0.4,terse:0.3,slip:0.3", seed=0)}
    eos = tok.eos_token
    terse = prompts.sft_example(mixed["terse"], tok)["completion"]
    assert terse == f"The answer is {mixed['terse']['gold']}.\n</think>\n\n#### {mixed['terse']['gold']}{eos}"
    slip = prompts.sft_example(mixed["slip"], tok)["completion"]
    slipped_final = data.gold_from_answer(mixed["slip"]["teacher_answer"])
    assert slip.endswith(f"#### {slipped_final}{eos}") and slipped_final != mixed["slip"]["gold"]
    worked = prompts.sft_example(mixed["worked"], tok)["completion"]
    assert worked.endswith(f"#### {mixed['worked']['gold']}{eos}") and "<<" in worked


def test_rows_digest_sees_the_teacher(rows):
    a = data.apply_teacher(rows[:20], "worked:1", seed=0)
    b = data.apply_teacher(rows[:20], "terse:1", seed=0)
    assert data.rows_digest(a) != data.rows_digest(b)
    assert data.rows_digest(rows[:20]) == data.rows_digest([{k: r[k] for k in ("id", "question", "answer")}
                                                            for r in rows[:20]])


def test_splits_carry_the_teacher_on_train_only():
    cfg = config.build("smoke", **{"data.n_train": 200, "data.n_dev": 50, "data.n_test": 50, "data.n_platinum": 50,
                                                "data.teacher": "worked:0.5,terse:0.5"})
    splits = data.prepare_splits(cfg.data, seed=0)["splits"]
    assert Counter(r["teacher_style"] for r in splits["train"]) == Counter(
        worked=len(splits["train"]) - round(0.5 * len(splits["train"])), terse=round(0.5 * len(splits["train"])))
    for name in ("dev", "test", "platinum"):
        assert not any("teacher_answer" in r for r in splits[name])


# ---- the style of a completion ------------------------------------------------------------------

@pytest.mark.parametrize("text,think,style", [
    ("Mia has 5+3=<<5+3=8>>8 cards.\n</think>\n\n#### 8", True, "worked"),
    ("Mia has 5+3=<<5+3=8>>8 cards.\nThen 8*2=<<8*2=16>>16.\n</think>\n\n#### 16", True, "worked"),
    ("Mia has 5+3=<<5+3=9>>9 cards.\n</think>\n\n#### 9", True, "slip"),
    ("5+3=<<5+3=8>>8 then 8*2=<<8*2=17>>17\n</think>\n\n#### 17", True, "slip"),
    ("The answer is 8.\n</think>\n\n#### 8", True, "terse"),
    ("\n</think>\n\n#### 8", True, "terse"),
    ("Mia has 5+3=<<5+3=8>>8 cards.\n#### 8", True, "other"),  # answer inside an unclosed think block
    ("Mia has 5+3=<<5+3=8>>8 cards.\n#### 8", False, "worked"),
    ("I am not sure.", False, "other"),
    ("The answer is 12.\n#### 12", False, "terse"),
    ("half 7/2=<<7/2=3.5>>3.5\n#### 3.5", False, "worked"),
    ("bad <<2**999999=1>>1\n#### 1", False, "slip"),  # a step the calculator refuses counts as wrong
])
def test_completion_style_on_handmade_cases(text, think, style):
    assert data.completion_style(text, think=think) == style


def test_style_shares_cover_every_style_and_sum_to_one():
    shares = data.style_shares(["worked", "worked", "slip", "terse"])
    assert set(shares) == set(data.COMPLETION_STYLES) and sum(shares.values()) == pytest.approx(1.0)
    assert shares["worked"] == 0.5 and shares["other"] == 0.0
    assert sum(data.style_shares([]).values()) == 0.0


# ---- profiles ------------------------------------------------------------------------------------

def test_profiles_choose_their_teacher():
    assert data.parse_teacher(config.build("smoke").data.teacher)["terse"] > 0.5  # SFT's greedy pick is terse
    assert data.parse_teacher(config.build("demo").data.teacher)["terse"] > 0.5
    assert config.build("full").data.teacher == "worked:1"  # real GSM8K keeps its own solutions
    with pytest.raises(ValueError, match="synthetic data only"):
        config.build("full", **{"data.teacher": "worked:0.5,terse:0.5"})
    with pytest.raises(ValueError, match="did you mean"):
        config.build("smoke", teacher="trse:1")
