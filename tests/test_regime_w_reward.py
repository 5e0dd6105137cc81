"""Reward: components, weights from the config, the hacking guards, the TRL-style function."""
from __future__ import annotations

import random
from dataclasses import fields, replace

import pandas as pd
import pytest

from looper_utils import config
from looper_utils.config import RewardWeights
from looper_utils.regime_w import (COMPONENTS, GUARDS, components, components_table, guards, reward, reward_fn,
                                   score, score_table)

ROW = {"id": "p1", "question": "Weng earns $12 an hour. She babysat 50 minutes. How much did she earn?",
       "answer": "12/60 = $<<12/60=0.2>>0.2 per minute.\n0.2 x 50 = $<<0.2*50=10>>10.\n#### 10", "gold": "10"}
BEST = "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\nWorking 50 minutes, she earned 0.2 x 50 = $<<0.2*50=10>>10.\n#### 10"
W = RewardWeights()


def r(text: str, **kw) -> float:
    return reward(score(text, ROW, **kw), W)


def test_components_are_the_configured_weights_keys():
    assert set(COMPONENTS) <= {f.name for f in fields(RewardWeights)}
    comps = components(score(BEST, ROW))
    assert comps == {"correct": 1.0, "format": 1.0, "calc": 1.0, "truncated": 0.0, "repetition": 0.0}
    assert r(BEST) == pytest.approx(W.correct + W.format + W.calc)


def test_reward_is_the_weighted_sum():
    s = score("12/60 = 0.2\n0.2 x 50 = 11\n#### 11", ROW, finish_reason="length")
    comps = components(s)
    assert comps == {"correct": 0.0, "format": 1.0, "calc": 0.5, "truncated": 1.0, "repetition": 0.0}
    w = RewardWeights(correct=2.0, format=0.5, calc=0.4, truncated=-1.0, repetition=-3.0)
    assert reward(s, w) == pytest.approx(0.5 + 0.4 * 0.5 - 1.0)


def test_weights_come_from_the_config():
    cfg = config.build("smoke", stage="regime_w", **{"reward.format": 0.0, "reward.calc": 0.0})
    assert reward(score(BEST, ROW), cfg.reward) == pytest.approx(cfg.reward.correct)


# ---- guards: none of these earns correctness credit ---------------------------

GUARDED = {
    "several_answers": ["Weng earns 12/60 = 0.2 per minute, so 0.2 x 50 = 10.\n#### 10 or 12",
                        "Weng earns 12/60 = 0.2 per minute, so 0.2 x 50 = 10.\n#### 12\n#### 10",
                        "Weng earns 12/60 = 0.2 per minute, so 0.2 x 50 = 10.\n#### 10\nOr maybe 12."],
    "stuffed": ["Weng earns 12/60 = 0.2 per minute, so 0.2 x 50 = 10.\n" + "#### 10\n" * 5,
                "Weng earns 0.2 x 50 = 10 #### 10 #### 10"],
    "empty_reasoning": ["#### 10", "10\n#### 10", "  \n\n#### 10", "<think></think>#### 10", "Answer: 10"],
}


@pytest.mark.parametrize("guard, text", [(g, t) for g, ts in GUARDED.items() for t in ts])
def test_guard_withholds_correctness_credit(guard, text):
    s = score(text, ROW, think=text.startswith("<think>"))
    assert s.extracted is None or s.correct or s.extracted == "12"  # the gold is on offer in every case
    assert "10" in text
    assert guards(s)[guard]
    assert components(s)["correct"] == 0.0
    assert reward(s, W) < r(BEST) - W.correct + 1e-9


def test_truncated_completion_earns_no_correctness_credit_even_with_the_gold_in_it():
    s = score(BEST, ROW, finish_reason="length")
    assert s.correct  # the grader finds the gold ...
    assert guards(s)["truncated"] and components(s)["correct"] == 0.0  # ... the reward does not pay for it
    assert reward(s, W) == pytest.approx(W.format + W.calc + W.truncated)
    s2 = score("12/60 = 0.2 and 0.2 x 50 = 10, so she earned 10 in total. Then she", ROW, finish_reason="length")
    assert s2.correct and components(s2)["correct"] == 0.0


def test_guards_fire_only_where_they_should():
    assert guards(score(BEST, ROW)) == {g: False for g in GUARDS}
    # one answer repeated in words after the line is not a second answer
    assert not any(guards(score(BEST + "\nShe earned $10.", ROW)).values())


# ---- the best solution earns the most ------------------------------------------

VARIANTS = [
    BEST.replace("#### 10", "#### 12"),  # wrong answer
    BEST.replace("#### 10", "The answer is 10."),  # no '####' line
    BEST.replace("0.2 x 50 = $<<0.2*50=10>>10", "0.2 x 50 = $<<0.2*50=12>>10"),  # a wrong annotation
    BEST.replace("0.2 x 50 = $<<0.2*50=10>>10", "0.2 x 50 = 11"),  # a wrong inline step
    BEST.replace("<<12/60=0.2>>", "").replace("<<0.2*50=10>>", "").replace(" = $", " is $"),  # no steps at all
    BEST + "\nHope this helps!",  # answer line not last
    BEST.replace("#### 10", "#### 10 or 12"),
    BEST.replace("#### 10", "#### 12\n#### 10"),
    BEST + "\n#### 10",
    "#### 10",
    "Weng earns money.\n#### 10",
    BEST + " " + "and then she earned more " * 20,
    BEST.replace("\n#### 10", "") + "\n" + "Weng works more. " * 40 + "\n#### 10",  # padded with repetition
    "<think>" + BEST,  # unclosed think block
    BEST.replace("#### 10", "#### $10.00"),  # still right and well formed: may tie, never beat
]


def test_best_solution_beats_every_variant():
    best = r(BEST)
    rewards = [r(v) for v in VARIANTS]
    assert all(x <= best + 1e-12 for x in rewards)
    assert sum(x < best - 1e-9 for x in rewards) == len(VARIANTS) - 1
    assert r(BEST, finish_reason="length") < best


def test_random_mutations_never_beat_the_best():
    rng = random.Random(0)
    best = r(BEST)
    lines = BEST.splitlines()
    worse = 0
    for _ in range(300):
        ls = list(lines)
        op = rng.randrange(6)
        i = rng.randrange(len(ls))
        if op == 0:
            del ls[i]
        elif op == 1:
            ls.insert(rng.randrange(len(ls) + 1), ls[i])
        elif op == 2:
            ls[i] = ls[i].replace(rng.choice("0125"), rng.choice("3456789"), 1)
        elif op == 3:
            ls.insert(rng.randrange(len(ls) + 1), f"#### {rng.randint(0, 20)}")
        elif op == 4:
            ls = ls[: rng.randrange(1, len(ls) + 1)]
        else:
            ls[i] = ls[i] + " " + " ".join(rng.choice(["so", "10", "12", "is", "####", "="]) for _ in range(5))
        text = "\n".join(ls)
        finish = rng.choice(["eos", "eos", "length"])
        x = r(text, finish_reason=finish)
        assert x <= best + 1e-12, text
        worse += x < best - 1e-9
    assert worse > 200  # dropping a line that is not needed, for one, may tie


# ---- reward_fn and the table -----------------------------------------------------

def test_reward_fn_matches_reward_and_takes_trl_arguments():
    comps = [BEST, "#### 10", BEST.replace("#### 10", "#### 10 or 12")]
    golds = ["10"] * 3
    expected = [r(c) for c in comps]
    assert reward_fn(comps, golds) == pytest.approx(expected)
    # TRL passes prompts, chat-format completions and dataset columns by keyword
    chat = [[{"role": "assistant", "content": c}] for c in comps]
    assert reward_fn(prompts=["q"] * 3, completions=chat, gold=golds) == pytest.approx(expected)
    assert reward_fn(comps, golds, finish_reasons=["length"] * 3)[0] == pytest.approx(W.format + W.calc + W.truncated)
    heavy = replace(W, correct=5.0)
    assert reward_fn(comps[:1], golds[:1], weights=heavy)[0] == pytest.approx(5.0 + W.format + W.calc)


def test_reward_fn_errors_are_clear():
    with pytest.raises(TypeError, match="gold"):
        reward_fn(["#### 1"])
    with pytest.raises(ValueError, match="one gold per completion"):
        reward_fn(["#### 1", "#### 2"], ["1"])


def test_components_table_agrees_with_reward():
    df = pd.DataFrame({"completion": [BEST, "#### 10", BEST], "gold": ["10"] * 3,
                       "finish_reason": ["eos", "eos", "length"], "n_tokens": [40, 3, 96]})
    table = components_table(score_table(df), W)
    assert table["reward"].tolist() == pytest.approx([r(BEST), r("#### 10"), r(BEST, finish_reason="length")])
    assert table["g_empty_reasoning"].tolist() == [False, True, False]
    assert table["g_truncated"].tolist() == [False, False, True]
    assert table["blocked"].tolist() == [False, True, True]
    assert table["c_correct"].tolist() == [1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="score_table"):
        components_table(df, W)
