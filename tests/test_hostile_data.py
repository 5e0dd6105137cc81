"""Hostile parameters and data files: a bad value or a corrupt file stops the run, with its key or its
file and line, before anything a user made is overwritten. Each test fails on the code before the fix."""
from __future__ import annotations

import json

import pytest

from looper_utils import config


# ---- parameters out of range ------------------------------------------------------------

@pytest.mark.parametrize("stage, params, says", [
    ("sft", dict(epochs=-1), "sft.epochs=-1.0 with sft.max_steps=-1 trains nothing"),
    ("sft", dict(epochs=0), "sft.epochs=0.0 with sft.max_steps=-1 trains nothing"),
    ("data", dict(n_train=-1000), "data.n_train=-1000 is out of range: it must be >= 1 for synthetic data"),
    ("data", dict(n_platinum=0), "data.n_platinum=0 is out of range: it must be >= 1"),
    ("ppo", dict(iterations=0), "ppo.iterations=0 is out of range: it must be >= 1"),
    ("ppo", dict(prompts_per_iter=0), "ppo.prompts_per_iter=0 is out of range: it must be >= 1"),
    ("ppo", dict(minibatch_size=0), "ppo.minibatch_size=0 is out of range: it must be >= 1"),
    ("ppo", dict(save_every=0), "ppo.save_every=0 is out of range: it must be >= 1"),
    ("ppo", dict(learning_rate=0), "ppo.learning_rate=0.0 is out of range: it must be > 0"),
    ("ppo", dict(temperature=-0.5), "ppo.temperature=-0.5 is out of range: it must be >= 0"),
    ("rollouts", dict(k=0), "rollouts.k=0 is out of range: it must be >= 1"),
    ("rollouts", dict(top_p=1.5), "rollouts.top_p=1.5 is out of range: it must be between 0 and 1"),
    ("rollouts", dict(max_new_tokens=0), "rollouts.max_new_tokens=0 is out of range: it must be >= 1"),
    ("sft", dict(batch_size=0), "sft.batch_size=0 is out of range: it must be >= 1"),
    ("sft", dict(learning_rate=-3e-3), "sft.learning_rate=-0.003 is out of range: it must be > 0"),
    ("eval", dict(batch_size=-4), "eval.batch_size=-4 is out of range: it must be >= 1"),
    ("eval", dict(top_p=-0.1), "eval.top_p=-0.1 is out of range: it must be between 0 and 1"),
    ("eval", dict(seed=-1), "seed=-1 is out of range: it must be a whole number from 0 to 4294967295"),
    ("ppo", dict(seed=2**32), "seed=4294967296 is out of range"),
])
def test_parameters_out_of_range_name_the_key_and_the_range(stage, params, says):
    with pytest.raises(ValueError) as exc:
        config.build("smoke", stage=stage, **params)
    assert says in str(exc.value) and "Fix the parameter" in str(exc.value)


def test_every_problem_is_reported_at_once():
    with pytest.raises(ValueError) as exc:
        config.build("smoke", stage="ppo", iterations=0, k=0, **{"sft.epochs": 0})
    msg = str(exc.value)
    assert "ppo.iterations=0" in msg and "ppo.k=0" in msg and "sft.epochs=0.0" in msg


def test_values_at_the_edge_of_their_range_pass():
    cfg = config.build("smoke", stage="sft", epochs=0, max_steps=5, seed=0,
                       **{"rollouts.temperature": 0.0, "rollouts.top_p": 1.0, "ppo.iterations": 1, "eval.n_eval": 0})
    assert (cfg.sft.epochs, cfg.sft.max_steps, cfg.ppo.iterations) == (0.0, 5, 1)
    # real GSM8K ignores the synthetic sizes, so they are not checked there
    assert config.build("full", **{"data.n_train": 0}).data.n_train == 0


def test_a_profile_file_with_a_bad_value_names_the_file_and_the_key(tmp_path):
    p = tmp_path / "mine.json"
    p.write_text(json.dumps({"profile": "smoke", "overrides": {"ppo.k": 0}}))
    with pytest.raises(ValueError, match=rf"{p}: ppo.k=0 is out of range: it must be >= 1"):
        config.build(str(p))
