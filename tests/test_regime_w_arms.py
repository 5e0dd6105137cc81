"""Arms and bandits: difficulty and pass-rate arms, the four bandits, state round trips, simulation."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from looper_utils import data
from looper_utils.config import BanditConfig
from looper_utils.regime_w import (Arm, arm_of, arms_from_pass_rate, best_arms, build_arms, difficulty_arms,
                                   learning_signal, make_bandit, simulate, simulation_summary)

ALGORITHMS = ("thompson", "ucb1", "exp3", "uniform")


def _rows(steps: list[int]) -> list[dict]:
    return [{"id": f"r{i}", "question": "q", "answer": "x <<1+1=2>>2 " * s + "\n#### 2", "gold": "2"}
            for i, s in enumerate(steps)]


# ---- arms ----------------------------------------------------------------------

def test_difficulty_arms_bucket_by_gold_steps():
    rows = _rows([1] * 5 + [2] * 5 + [3] * 5)
    arms = difficulty_arms(rows, max_arms=6)
    assert [a.name for a in arms] == ["1 step", "2 steps", "3 steps"]
    assert arms[0].ids == tuple(f"r{i}" for i in range(5)) and [len(a) for a in arms] == [5, 5, 5]


def test_difficulty_arms_merge_small_and_surplus_buckets():
    rows = _rows([0] + [1] * 10 + [2] * 10 + [3] * 10 + [4] * 10 + [5] * 4 + [8])
    arms = difficulty_arms(rows, max_arms=6, min_size=5)
    assert [a.name for a in arms] == ["0-1 steps", "2 steps", "3 steps", "4 steps", "5-8 steps"]
    assert sum(len(a) for a in arms) == len(rows)
    few = difficulty_arms(rows, max_arms=2, min_size=1)
    assert len(few) == 2 and sum(len(a) for a in few) == len(rows)
    assert {i for a in few for i in a.ids} == {r["id"] for r in rows}


def test_difficulty_arms_use_data_count_steps_on_synthetic_problems():
    rows = data.synthetic_problems(200, seed=0, min_steps=1, max_steps=4, max_value=30)
    arms = difficulty_arms(rows, max_arms=6)
    by_id = {r["id"]: data.count_steps(r["answer"]) for r in rows}
    assert [a.name for a in arms] == ["1 step", "2 steps", "3 steps", "4 steps"]
    for k, arm in enumerate(arms, start=1):
        assert {by_id[i] for i in arm.ids} == {k}


def test_difficulty_arms_errors():
    with pytest.raises(ValueError, match="01_data"):
        difficulty_arms([])
    with pytest.raises(ValueError, match="max_arms"):
        difficulty_arms(_rows([1]), max_arms=0)


def test_arms_from_pass_rate():
    df = pd.DataFrame({"prompt_id": np.repeat(list("abcdef"), 4),
                       "correct": [0, 0, 0, 0, 1, 0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 0, 1, 1, 1, 1, 0, 0, 0, 0]})
    arms = arms_from_pass_rate(df, n_bins=3)
    assert [(a.name, a.ids) for a in arms] == [("p=0", ("a", "f")), ("0<p<=0.33", ("b",)),
                                               ("0.33<p<=0.67", ("c",)), ("0.67<p<1", ("d",)), ("p=1", ("e",))]
    assert arm_of(arms)["e"] == 4
    with pytest.raises(ValueError, match="correct"):
        arms_from_pass_rate(df.drop(columns="correct"))


def test_build_arms_follows_the_config():
    rows = _rows([1] * 40 + [2] * 40 + [3] * 10)
    assert [a.name for a in build_arms(BanditConfig(min_arm_size=32), rows)] == ["1 step", "2-3 steps"]
    assert len(build_arms(BanditConfig(min_arm_size=1, max_arms=2), rows)) == 2
    df = pd.DataFrame({"prompt_id": ["r0", "r0", "r1", "r1"], "correct": [1, 0, 1, 1]})
    assert [a.name for a in build_arms(BanditConfig(arms="pass_rate", pass_rate_bins=2), rows, df)] == \
        ["0<p<=0.5", "p=1"]
    with pytest.raises(ValueError, match="03_rollouts"):
        build_arms(BanditConfig(arms="pass_rate"), rows)


def test_learning_signal():
    assert learning_signal([1, 1, 0, 0]) == 0.25
    assert learning_signal(np.array([True, False, False, False])) == pytest.approx(0.1875)
    assert learning_signal([0] * 8) == learning_signal([1] * 8) == learning_signal([]) == 0.0


# ---- bandits -------------------------------------------------------------------

@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_bandit_interface(algorithm):
    b = make_bandit(replace(BanditConfig(), algorithm=algorithm), n_arms=4, seed=0)
    assert b.algorithm == algorithm
    picks = b.select(16, np.random.default_rng(1))
    assert len(picks) == 16 and all(isinstance(a, int) and 0 <= a < 4 for a in picks)
    assert b.pulls.sum() == 16
    b.update(picks[0], 0.2)
    assert b.updates.sum() == 1 and b.mean_payoff()[picks[0]] == pytest.approx(0.2)
    with pytest.raises(IndexError):
        b.update(4, 0.1)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_state_round_trip_gives_the_same_selections(algorithm):
    cfg = replace(BanditConfig(), algorithm=algorithm)
    rng = np.random.default_rng(3)
    b = make_bandit(cfg, n_arms=5, seed=7)
    for _ in range(10):
        for a in set(b.select(8)):
            b.update(a, float(rng.uniform(0, 0.25)))
    state = json.loads(json.dumps(b.state_dict()))  # JSON-able, as saved with a checkpoint
    restored = make_bandit(cfg, n_arms=5, seed=12345)
    restored.load_state_dict(state)
    assert restored.state_dict() == b.state_dict()
    payoffs = rng.uniform(0, 0.25, size=(10, 5))
    for r in range(10):
        x, y = b.select(8), restored.select(8)
        assert x == y
        for a in set(x):
            b.update(a, payoffs[r, a])
            restored.update(a, payoffs[r, a])
    assert json.dumps(b.state_dict()) == json.dumps(restored.state_dict())


def test_load_state_dict_refuses_another_bandit():
    state = make_bandit(BanditConfig(), 3, 0).state_dict()
    with pytest.raises(ValueError, match="saved bandit"):
        make_bandit(replace(BanditConfig(), algorithm="ucb1"), 3, 0).load_state_dict(state)
    with pytest.raises(ValueError, match="3 arms"):
        make_bandit(BanditConfig(), 4, 0).load_state_dict(state)


def test_make_bandit_rejects_unknown_and_bad_settings():
    with pytest.raises(ValueError, match="unknown bandit"):
        make_bandit(replace(BanditConfig(), algorithm="greedy"), 3, 0)
    with pytest.raises(ValueError, match="thompson_discount"):
        make_bandit(replace(BanditConfig(), thompson_discount=0.0), 3, 0)


def test_ucb1_tries_every_arm_then_spreads_a_batch():
    b = make_bandit(replace(BanditConfig(), algorithm="ucb1"), 3, 0)
    assert b.select(3) == [0, 1, 2]
    for a, pay in zip(range(3), (0.25, 0.0, 0.0)):
        b.update(a, pay)
    picks = b.select(30)
    assert picks.count(0) > 15 and picks.count(1) + picks.count(2) > 0


# ---- simulation ----------------------------------------------------------------

PASS_RATES = [0.05, 0.2, 0.45, 0.55, 0.8, 0.95]


def test_thompson_puts_most_pulls_on_the_arms_nearest_one_half():
    assert best_arms(PASS_RATES) == [2, 3]
    cfg = BanditConfig()
    sim = simulate(make_bandit(cfg, len(PASS_RATES), seed=0), PASS_RATES, rounds=200, batch=32,
                   rng=np.random.default_rng(0), k=4)
    summary = simulation_summary(sim, PASS_RATES)
    assert summary["share_on_best_arms"] >= 0.70
    uniform = simulate(make_bandit(replace(cfg, algorithm="uniform"), len(PASS_RATES), seed=0), PASS_RATES,
                       rounds=200, batch=32, rng=np.random.default_rng(0), k=4)
    u = simulation_summary(uniform, PASS_RATES)
    assert u["share_on_best_arms"] < 0.45
    assert summary["cumulative_payoff"] > 1.3 * u["cumulative_payoff"]


@pytest.mark.parametrize("algorithm", ["ucb1", "exp3"])
def test_other_bandits_also_beat_uniform(algorithm):
    cfg = replace(BanditConfig(), algorithm=algorithm)
    sim = simulate(make_bandit(cfg, len(PASS_RATES), seed=0), PASS_RATES, rounds=200, batch=32,
                   rng=np.random.default_rng(0), k=4)
    assert simulation_summary(sim, PASS_RATES)["share_on_best_arms"] > 0.8


def test_simulation_table():
    sim = simulate(make_bandit(BanditConfig(), 3, seed=0), [0.0, 0.5, 1.0], rounds=5, batch=10,
                   rng=np.random.default_rng(0), k=4)
    assert len(sim) == 15 and list(sim.columns) == ["round", "arm", "pulls", "share", "observed", "expected",
                                                    "cumulative_payoff"]
    assert (sim.groupby("round").pulls.sum() == 10).all()
    assert sim.loc[sim.arm != 1, "expected"].eq(0).all()  # p = 0 and p = 1 carry no signal
    per_round = sim.groupby("round").expected.sum()
    assert sim.groupby("round").cumulative_payoff.first().tolist() == pytest.approx(per_round.cumsum().tolist())
    with pytest.raises(ValueError, match="3 pass rates"):
        simulate(make_bandit(BanditConfig(), 3, 0), [0.5, 0.5], 1, 1, np.random.default_rng(0))


def test_simulation_is_reproducible():
    def run():
        return simulate(make_bandit(BanditConfig(), 4, seed=1), [0.1, 0.4, 0.6, 0.9], 20, 16,
                        np.random.default_rng(5))
    pd.testing.assert_frame_equal(run(), run())


def test_arm_dataclass():
    arm = Arm("easy", ("a", "b"))
    assert len(arm) == 2 and arm == Arm("easy", ("a", "b"))
