"""The smoke pipeline, run once per session through papermill; each stage's metrics checked."""
import json

import pytest

pytestmark = pytest.mark.notebooks


def _metrics(run_dir, stage):
    path = run_dir / "metrics" / f"{stage}.json"
    assert path.is_file(), f"{stage} wrote no metrics"
    return json.loads(path.read_text())


def test_01_data(pipeline_run):
    m = _metrics(pipeline_run, "01_data")
    rows = m["rows"]
    assert rows["test"] == 300 and rows["platinum"] == 300
    assert rows["train"] + rows["dev"] == 4300 and 200 <= rows["dev"] <= 400
    assert all(1.0 <= v <= 2.0 for v in m["steps_mean"].values())
    assert m["overlap"]["test"]["exact"] == 0 and m["unparseable_rows"] == 0
    root = pipeline_run.parents[1]
    for name in ("gsm8k_train", "gsm8k_dev", "gsm8k_test", "gsm8k_platinum_test"):
        lines = (root / "data" / f"{name}.jsonl").read_text().splitlines()
        assert set(json.loads(lines[0])) >= {"id", "question", "answer", "gold"}
    assert (pipeline_run / "01_data.ipynb").is_file()
    assert {p.name for p in (pipeline_run / "figures").glob("01_*.png")} == {"01_steps.png", "01_gold_magnitude.png"}
    assert json.loads((pipeline_run / "configs" / "01_data.json").read_text())["profile"] == "smoke"


def test_02_sft_learns(pipeline_run):
    m = _metrics(pipeline_run, "02_sft")
    assert m["n_dev"] >= 200 and m["dev_accuracy_before"] <= 0.05
    assert m["dev_accuracy_after"] >= 0.5, m["dev_accuracy_after"]
    assert m["train_steps"] > 0 and 0 < m["final_loss"] < 0.5 and m["train_seconds"] > 0
    assert (pipeline_run / "figures" / "02_loss.png").is_file()
    root = pipeline_run.parents[1]
    state = json.loads((root / "checkpoints" / "sft" / "looper_state.json").read_text())
    assert state["stage"] == "sft" and state["step"] == m["train_steps"]


def test_03_rollouts(pipeline_run):
    m = _metrics(pipeline_run, "03_rollouts")
    assert m["n_completions"] == m["n_problems"] * m["k"] == 1600
    pk = [m["pass_at_k"][k] for k in sorted(m["pass_at_k"], key=int)]
    assert pk == sorted(pk) and pk[0] == pytest.approx(m["accuracy"])  # pass@k grows with k; pass@1 = accuracy
    assert 0.3 <= m["accuracy"] <= 0.95 and 0.0 <= m["truncation_rate"] <= 0.2
    assert m["tokens_per_second"] > 0
    assert len(list((pipeline_run / "rollouts").glob("shard_*.parquet"))) == m["shards"]


def test_04_regime_w(pipeline_run):
    m = _metrics(pipeline_run, "04_regime_w")
    r3 = _metrics(pipeline_run, "03_rollouts")
    assert m["n_completions"] == r3["n_completions"]
    assert m["grader_agreement_with_03"] == 1.0 and m["accuracy"] == pytest.approx(r3["accuracy"])
    assert m["components"]["correct"] == pytest.approx(r3["accuracy"])
    assert 0.0 < m["reward_mean"] < 1.5 and m["reward_std"] > 0
    assert m["bandit"]["share_on_best_arms"] > m["bandit"]["uniform_share_on_best_arms"]
    assert set(m["guard_counts"]) >= {"several_answers", "stuffed", "empty_reasoning", "truncated"}


def test_05_ppo(pipeline_run):
    m = _metrics(pipeline_run, "05_ppo")
    s2 = _metrics(pipeline_run, "02_sft")
    assert m["iterations"] == 30 and m["n_dev"] >= 200
    assert m["dev_accuracy_sft"] == pytest.approx(s2["dev_accuracy_after"], abs=0.02)
    lo, hi = m["dev_ci95_ppo"]
    assert lo <= m["dev_accuracy_ppo"] <= hi
    assert m["dev_accuracy_ppo"] >= m["dev_accuracy_sft"] - 0.05  # PPO must not wreck the policy
    assert len(m["reward_curve"]) == 30 and m["kl_last"] >= 0
    assert set(m["time_split"]) == {"generate", "score", "forward", "update"}
    root = pipeline_run.parents[1]
    assert (root / "checkpoints" / "ppo" / "last" / "policy_adapter.safetensors").is_file()


def test_06_eval_and_report(pipeline_run):
    m = _metrics(pipeline_run, "06_eval")
    models = m["models"]
    assert set(models) == {"base", "sft", "ppo"}
    for name in models:
        for ts in ("platinum", "gsm8k_test"):
            e = models[name][ts]
            assert e["n"] == 300 and e["ci95"][0] <= e["accuracy"] <= e["ci95"][1]
    assert models["sft"]["platinum"]["accuracy"] >= 0.5 and models["base"]["platinum"]["accuracy"] <= 0.05
    p = m["paired"]["sft_vs_base"]["platinum"]
    assert p["diff"] > 0.4 and p["mcnemar_p"] < 1e-6
    html = (pipeline_run / "report.html").read_text()
    md = (pipeline_run / "report.md").read_text()
    assert "data:image/png;base64," in html and "http://" not in html and "https://" not in html
    assert f"{models['sft']['platinum']['accuracy'] * 100:.1f}" in md
    figures = sorted(p.name for p in (pipeline_run / "figures").glob("*.png"))
    assert html.count("data:image/png;base64,") >= len(figures)
    record = json.loads((pipeline_run / "pipeline.json").read_text())
    assert list(record["stages"]) == ["01_data", "02_sft", "03_rollouts", "04_regime_w", "05_ppo", "06_eval"]
