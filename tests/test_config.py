import json

import pytest

from looper_utils import config


def test_profiles_are_named_constructors_with_distinct_values():
    s, d, f = config.smoke(), config.demo(), config.full()
    assert (s.profile, d.profile, f.profile) == ("smoke", "demo", "full")
    assert s.data.source == "synthetic" and f.data.source == "gsm8k"
    assert f.model.name_or_path == "deepseek-ai/DeepSeek-R1-Distill-Llama-8B"
    assert d.data.max_steps > s.data.max_steps


def test_config_is_frozen():
    cfg = config.smoke()
    with pytest.raises(Exception):
        cfg.seed = 3  # type: ignore[misc]


def test_override_resolves_stage_dotted_and_dunder_keys():
    cfg = config.build("smoke", stage="ppo", k=2, **{"rollouts.k": 5, "eval__maj_k": 3}, seed=9)
    assert (cfg.ppo.k, cfg.rollouts.k, cfg.eval.maj_k, cfg.seed) == (2, 5, 3, 9)


def test_none_keeps_profile_value():
    assert config.build("smoke", stage="ppo", k=None).ppo.k == config.smoke().ppo.k


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ValueError) as exc:
        config.build("smoke", learning_rat=0.1)
    assert "unknown parameter 'learning_rat'" in str(exc.value)
    assert "ppo.learning_rate" in str(exc.value)


def test_ambiguous_bare_key_names_the_choices():
    with pytest.raises(ValueError, match="rollouts.k, ppo.k"):
        config.build("smoke", k=3)


@pytest.mark.parametrize("key,value", [("seed", "three"), ("ppo.k", 2.5), ("ppo.lam", "x"),
                                       ("model.use_lora", "maybe")])
def test_wrong_types_rejected(key, value):
    with pytest.raises(ValueError, match=key.split(".")[-1]):
        config.build("smoke", **{key: value})


def test_invalid_choice_rejected():
    with pytest.raises(ValueError, match="ppo.advantage"):
        config.build("smoke", **{"ppo.advantage": "vtrace"})


def test_int_accepted_for_float_and_tuple_from_string():
    cfg = config.build("smoke", **{"ppo.learning_rate": 1, "eval.models": "sft,ppo"})
    assert cfg.ppo.learning_rate == 1.0 and isinstance(cfg.ppo.learning_rate, float)
    assert cfg.eval.models == ("sft", "ppo")


def test_roundtrip_through_json(tmp_path):
    cfg = config.build("demo", seed=4, **{"eval.models": ["sft"]})
    path = config.save(cfg, tmp_path / "c.json")
    back = config.from_dict(json.loads(path.read_text()))
    assert back == cfg


def test_paths_follow_root(tmp_path):
    cfg = config.build("smoke", root=str(tmp_path), run_id="r")
    assert cfg.data_dir == tmp_path / "data" and cfg.run_dir == tmp_path / "runs" / "r"


def test_profile_file_applies_overrides(tmp_path):
    p = tmp_path / "local.json"
    p.write_text(json.dumps({"profile": "full", "overrides": {"model.name_or_path": "/models/llama",
                                                              "sft.max_steps": 20}}))
    cfg = config.build(str(p), stage="ppo", iterations=2)
    assert (cfg.profile, cfg.model.name_or_path, cfg.sft.max_steps, cfg.ppo.iterations) == \
        ("full", "/models/llama", 20, 2)
    p.write_text(json.dumps({"profile": "full", "overrides": {"model.nope": 1}}))
    with pytest.raises(ValueError, match="local.json.*unknown parameter 'model.nope'"):
        config.build(str(p))
    p.write_text('{"profile": "full",')
    with pytest.raises(ValueError, match="local.json:1: not valid JSON"):
        config.build(str(p))


@pytest.mark.parametrize("key, want", [("reward__corect", "reward__correct"), ("bandit.algoritm", "bandit.algorithm"),
                                       ("learning_rat", "learning_rate"), ("bandit__arm", "bandit__arms")])
def test_unknown_key_suggests_the_nearest(key, want):
    with pytest.raises(ValueError, match=rf"unknown parameter '{key}' \(did you mean '{want}'\?\)"):
        config.build("smoke", stage="ppo", **{key: 1})


def test_malformed_reward_and_bandit_values_say_what_is_wrong():
    with pytest.raises(ValueError, match="reward.correct: expected a number, got 'abc'"):
        config.build("smoke", stage="ppo", reward__correct="abc")
    with pytest.raises(ValueError, match="bandit.arms must be difficulty or pass_rate"):
        config.build("smoke", stage="regime_w", bandit__arms="pass-rate")
    cfg = config.build("smoke", stage="regime_w", reward__correct=0.5, bandit__arms="pass_rate")
    assert (cfg.reward.correct, cfg.bandit.arms) == (0.5, "pass_rate")


def test_lr_schedule_is_checked():
    assert config.smoke().ppo.lr_schedule == "constant" and config.smoke().ppo.warmup_iterations == 0
    assert config.build("smoke", stage="ppo", lr_schedule="linear", warmup_iterations=2).ppo.lr_schedule == "linear"
    with pytest.raises(ValueError, match="ppo.lr_schedule must be 'constant' or 'linear'"):
        config.build("smoke", stage="ppo", lr_schedule="cosine")
    with pytest.raises(ValueError, match="warmup_iterations"):
        config.build("smoke", stage="ppo", iterations=3, warmup_iterations=4)
