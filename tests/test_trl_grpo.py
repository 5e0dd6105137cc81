"""ppo.trainer="trl-grpo": TRL's GRPOTrainer on the tiny CPU model, with Regime W, saved where 06 reads PPO."""
import json

import pytest
import torch
from safetensors.torch import load_file

from looper_utils import config, evaluation, generation, modeling, ppo, prompts
from looper_utils.ppo import trainer as ppo_trainer, trl_grpo
from looper_utils.ppo.resume import SIGNATURE_NAME, resume_signature, state_problem
from looper_utils.regime_w.reward import reward
from looper_utils.regime_w.scoring import score

from _tiny import tiny_ppo_project


def _policy_lora_b(model) -> float:
    return sum(float(p.detach().abs().sum()) for n, p in model.named_parameters() if "lora_B" in n and ".default." in n)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Two rounds of GRPO (4 prompts x k=2) with a dev check after each; every call of the reward and of the
    greedy dev check recorded."""
    cfg, train, dev = tiny_ppo_project(tmp_path_factory.mktemp("grpo_root"), 120, 100, iterations=2,
                                       prompts_per_iter=4, k=2, max_new_tokens=16, minibatch_size=4, n_dev=8,
                                       ppo_epochs=1, learning_rate=5e-3, kl_coef=0.05, device="cpu",
                                       trainer="trl-grpo", eval_every=1)
    checks = []
    check = ppo_trainer.greedy_dev_check

    def recording_check(cfg_, model, tok, rows):
        seen = {"training": model.training, "lora_b": _policy_lora_b(model), "model": model}
        acc, records = check(cfg_, model, tok, rows)
        checks.append({**seen, "acc": acc, "texts": [r["completion"] for r in records]})
        return acc, records
    earlier = ppo.ppo_dir(cfg) / "best"
    earlier.mkdir(parents=True)
    (earlier / "looper_state.json").write_text("{}")
    calls = []
    made = trl_grpo.regime_w_reward

    def recording(*args, **kwargs):
        f = made(*args, **kwargs)

        def regime_w(completions, gold, completion_ids, **kw):
            out = f(completions=completions, gold=gold, completion_ids=completion_ids, **kw)
            calls.append({"completions": list(completions), "gold": list(gold),
                          "ids": [list(i) for i in completion_ids], "rewards": list(out),
                          "model_training": checks[-1]["model"].training})
            return out
        return regime_w

    with pytest.MonkeyPatch.context() as mp, pytest.warns(UserWarning, match="trainer='trl-grpo' does not continue"):
        mp.setattr(trl_grpo, "regime_w_reward", recording)
        mp.setattr(ppo_trainer, "greedy_dev_check", recording_check)
        metrics = trl_grpo.train_trl_grpo(cfg, train, dev, progress=False,
                                          on_check=lambda rec: checks[-1].update(reported=rec))
    return cfg, train, dev, metrics, calls, checks


def test_config_refuses_an_unknown_trainer():
    assert config.smoke().ppo.trainer == "ours"
    assert config.build("smoke", stage="ppo", trainer="trl-grpo").ppo.trainer == "trl-grpo"
    with pytest.raises(ValueError, match="ppo.trainer='trl-ppo' is not a trainer: it must be 'ours'"):
        config.build("smoke", stage="ppo", trainer="trl-ppo")


def test_our_resume_signature_is_unchanged_by_the_field(tmp_path):
    cfg, train, _ = tiny_ppo_project(tmp_path, 12, 10)
    assert "trainer" not in resume_signature(cfg, train)["ppo"]  # states saved before the field still resume
    grpo = cfg.override(stage="ppo", trainer="trl-grpo")
    assert resume_signature(grpo, train)["ppo"]["trainer"] == "trl-grpo"


def test_batch_layout_counts_completions(tmp_path):
    cfg = config.build("smoke", stage="ppo", prompts_per_iter=4, k=2, minibatch_size=3, ppo_epochs=2, iterations=5)
    b = trl_grpo.grpo_batch(cfg)
    assert b["generation_batch_size"] == 8 and b["per_device_train_batch_size"] == 2  # the largest divisor <= 3
    assert b["steps_per_generation"] == 4 and b["steps_per_iteration"] == 8 and b["max_steps"] == 40
    args = trl_grpo.make_grpo_config(cfg, tmp_path, torch.device("cpu"), progress=False)
    assert (args.num_generations, args.generation_batch_size, args.steps_per_generation) == (2, 8, 4)
    assert (args.num_iterations, args.beta, args.epsilon, args.max_completion_length) == (
        2, cfg.ppo.kl_coef, cfg.ppo.clip_range, cfg.ppo.max_new_tokens)
    assert args.use_cpu and not args.bf16 and not args.gradient_checkpointing and not args.use_vllm
    assert args.report_to in ([], "none", ["none"])


def test_reward_is_regime_w_on_a_handmade_completion():
    cfg = config.build("smoke", stage="ppo", reward__format=0.5)
    f = trl_grpo.regime_w_reward(cfg, False, [7])
    good = "3*4=<<3*4=12>>12\n#### 12"
    got = f(prompts=["p", "p"], completions=[good, good], gold=["12", "12"], completion_ids=[[3, 7], [3, 4]])
    assert got[0] == pytest.approx(reward(score(good, {"gold": "12"}), cfg.reward))
    assert got[1] == pytest.approx(reward(score(good, {"gold": "12"}, finish_reason="length"), cfg.reward))
    assert got[0] > got[1]  # cut at the token limit: no correctness credit, the truncation penalty


def test_two_steps_run_with_regime_w_on_our_rows(run):
    cfg, train, _, m, calls, _ = run
    assert m["trainer"] == "trl-grpo" and m["iterations"] == 2 and m["completions_sampled"] == 2 * 4 * 2
    assert m["optimizer_steps"] == trl_grpo.grpo_batch(cfg)["max_steps"] == 4
    assert m["seconds"] > 0 and m["n_dev"] == 8 and len(m["reward_curve"]) == 2
    assert 0.0 <= m["dev_accuracy_sft"] <= 1.0 and 0.0 <= m["dev_accuracy_ppo"] <= 1.0
    assert len(calls) == 2 and all(len(c["gold"]) == 8 for c in calls)  # one call per round: 4 prompts x k=2
    golds = {str(r["gold"]) for r in train}
    sft, tok = modeling.load_checkpoint(modeling.sft_dir(cfg), torch.device("cpu"))
    think, stop = prompts.completion_starts_in_think(tok, cfg.model.prompt_style), generation.stop_token_ids(sft, tok)
    for c in calls:
        assert set(c["gold"]) <= golds
        assert all(c["gold"][i] == c["gold"][i + 1] for i in range(0, 8, 2))  # k completions of one prompt
        for text, gold, ids, r in zip(c["completions"], c["gold"], c["ids"], c["rewards"]):
            finish = "eos" if ids[-1] in stop else "length"
            assert finish == "eos" or len(ids) == cfg.ppo.max_new_tokens
            s = score(text, {"gold": gold}, finish_reason=finish, think=think)
            assert r == pytest.approx(reward(s, cfg.reward))


def test_adapter_is_saved_where_06_reads_ppo_and_loads(run):
    cfg, _, _, _, _, _ = run
    out = ppo.ppo_dir(cfg)
    last = out / "last"
    assert not (out / "best").exists() and (out.parent / "ppo.previous" / "best").is_dir()  # an earlier best set aside
    state = json.loads((last / modeling.STATE_FILE).read_text())
    assert state["stage"] == "ppo" and state["trainer"] == "trl-grpo" and state["step"] == 2
    assert json.loads((last / SIGNATURE_NAME).read_text())["ppo"]["trainer"] == "trl-grpo"
    assert (last / modeling.CONFIG_FILE).is_file() and (out / trl_grpo.LOG_NAME).is_file()
    assert state_problem(last) is not None  # no trainer state: our PPO sets it aside rather than resume it
    sd = load_file(str(last / modeling.PPO_ADAPTER_FILE))
    assert sd and all(".default." not in k and ".ref." not in k for k in sd)
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in sd.items()), "the adapter did not move from zero"
    spec = evaluation.resolve_models(cfg, ["ppo"])[0]
    assert spec.available and spec.path == last
    model, tok = ppo.load_ppo_policy(cfg, last, torch.device("cpu"))
    sft, _ = modeling.load_checkpoint(modeling.sft_dir(cfg), torch.device("cpu"))
    ids = torch.tensor([prompts.encode_prompt(tok, prompts.build_prompt("What is 2+3?", tok, cfg.model.prompt_style))])
    with torch.no_grad():
        assert not torch.allclose(model(input_ids=ids).logits, sft(input_ids=ids).logits)


def test_trl_tokenizes_the_prompt_as_our_ppo(run):
    cfg, train, _, _, _, _ = run
    _, tok = modeling.load_checkpoint(modeling.sft_dir(cfg), torch.device("cpu"))
    ds = trl_grpo.grpo_dataset(train[:5], tok, cfg.model.prompt_style)
    assert ds.column_names == ["prompt", "gold", "id"]
    for row, r in zip(ds, train[:5]):
        want = prompts.encode_prompt(tok, prompts.build_prompt(r["question"], tok, cfg.model.prompt_style))
        assert tok(row["prompt"])["input_ids"] == want and row["gold"] == str(r["gold"])


def test_dev_checks_run_at_our_cadence_on_the_training_policy(run):
    cfg, _, dev, m, calls, checks = run
    # before training (SFT), after round 1, after round 2; the last round's check is the final accuracy
    assert len(checks) == 3 and [c["acc"] for c in checks] == [m["dev_accuracy_sft"], *(
        c["dev_accuracy"] for c in m["dev_curve"])] and m["dev_accuracy_ppo"] == checks[-1]["acc"]
    assert [(c["iteration"], c["step"]) for c in m["dev_curve"]] == [(1, 2), (2, 4)]  # 2 optimiser steps a round
    # on_check reported each check right after it ran: the SFT one as iteration 0, then dev_curve's
    assert [c["reported"] for c in checks] == [{"iteration": 0, "step": 0, "dev_accuracy": m["dev_accuracy_sft"],
                                                "train_seconds": 0.0, "dev_seconds": checks[0]["reported"]["dev_seconds"],
                                                "seconds": 0.0}, *m["dev_curve"]]
    assert not any(c["training"] for c in checks)  # greedy checks run in eval mode
    assert checks[0]["lora_b"] == 0 and 0 < checks[1]["lora_b"] != checks[2]["lora_b"]  # the policy as it trains
    assert [c["model_training"] for c in calls] == [True, True]  # each round sampled in train mode after a check
    assert all(len(c["gold"]) == 8 for c in calls)  # still one generation batch per round, not eval batches
    # the last check saw the saved policy: the same greedy completions from the adapter read back from disk
    model, tok = ppo.load_ppo_policy(cfg, ppo.ppo_dir(cfg) / "last", torch.device("cpu"))
    acc, records = ppo_trainer.greedy_dev_check(cfg, model, tok, dev[:cfg.ppo.n_dev])
    assert acc == m["dev_accuracy_ppo"] and [r["completion"] for r in records] == checks[-1]["texts"]


def test_dev_check_time_is_kept_apart_from_training_time(run):
    cfg, _, _, m, _, _ = run
    curve = m["dev_curve"]
    assert all(c["dev_seconds"] > 0 for c in curve)
    assert 0 < curve[0]["train_seconds"] < curve[1]["train_seconds"] < curve[1]["seconds"] <= m["seconds"]
    for i, c in enumerate(curve):  # wall time since training began = training + every check so far
        assert c["seconds"] == pytest.approx(c["train_seconds"] + sum(x["dev_seconds"] for x in curve[:i + 1]))
    assert m["dev_check_seconds"] == pytest.approx(sum(c["dev_seconds"] for c in curve))
    assert m["train_seconds"] == pytest.approx(m["seconds"] - m["dev_check_seconds"])
    log = [json.loads(x) for x in (ppo.ppo_dir(cfg) / trl_grpo.LOG_NAME).read_text().splitlines()]
    assert [h["iteration"] for h in log] == [1, 2]
    assert [(h["dev_accuracy"], h["train_seconds"]) for h in log] == [(c["dev_accuracy"], c["train_seconds"])
                                                                      for c in curve]


def test_dev_checks_generate_as_trl_samples_not_with_the_engine(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(ppo_trainer, "greedy_dev_check",
                        lambda cfg, model, tok, rows: seen.append(cfg.rollouts.backend) or (0.5, [{"correct": True}]))
    cfg = config.build("smoke", stage="rollouts", root=str(tmp_path), backend="engine")
    model = torch.nn.Linear(2, 2).train()
    assert trl_grpo._dev_check(cfg, model, None, []) == (0.5, [True])
    assert seen == ["hf"] and model.training  # the mode TRL left is restored
