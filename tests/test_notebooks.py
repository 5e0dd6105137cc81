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
    assert m["teacher"] == "worked:0.4,terse:0.6"
    styles = m["teacher_styles"]
    assert set(styles) == {"worked", "terse"} and sum(styles.values()) == rows["train"]
    assert abs(styles["terse"] / rows["train"] - 0.6) < 0.01


def test_02_sft_learns(pipeline_run):
    m = _metrics(pipeline_run, "02_sft")
    assert m["n_dev"] >= 200 and m["dev_accuracy_before"] <= 0.05
    # the mixed teacher: SFT's greedy answers are mostly terse, so it lands well below the clean teacher's ~0.65
    assert 0.2 <= m["dev_accuracy_after"] <= 0.6, m["dev_accuracy_after"]
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
    st = m["by_style"]
    assert sum(v["share"] for v in st.values()) == pytest.approx(1.0, abs=1e-3)
    assert st["worked"]["share"] > 0.1 and st["terse"]["share"] > 0.3  # SFT samples both styles it was taught
    assert st["worked"]["accuracy"] > st["terse"]["accuracy"] + 0.3  # the headroom RL selects


def test_04_regime_w(pipeline_run):
    m = _metrics(pipeline_run, "04_regime_w")
    r3 = _metrics(pipeline_run, "03_rollouts")
    assert m["n_completions"] == r3["n_completions"]
    assert m["grader_agreement_with_03"] == 1.0 and m["accuracy"] == pytest.approx(r3["accuracy"])
    # correctness credit is the accuracy minus the correct answers a hacking guard blocked (rare)
    assert m["correct_but_blocked"] <= 0.01 * m["n_completions"]
    assert m["components"]["correct"] == pytest.approx(r3["accuracy"] - m["correct_but_blocked"] / m["n_completions"])
    assert 0.0 < m["reward_mean"] < 1.5 and m["reward_std"] > 0
    assert m["bandit"]["share_on_best_arms"] > m["bandit"]["uniform_share_on_best_arms"]
    assert set(m["guard_counts"]) >= {"several_answers", "stuffed", "empty_reasoning", "truncated"}


def test_05_ppo(pipeline_run):
    m = _metrics(pipeline_run, "05_ppo")
    s2 = _metrics(pipeline_run, "02_sft")
    assert m["iterations"] == 10 and m["n_dev"] >= 200
    assert m["dev_accuracy_sft"] == pytest.approx(s2["dev_accuracy_after"], abs=0.02)
    lo, hi = m["dev_ci95_ppo"]
    assert lo <= m["dev_accuracy_ppo"] <= hi
    # the course's claim, with the fixed seed (CPU runs are deterministic): RL beats SFT
    assert m["dev_accuracy_ppo"] - m["dev_accuracy_sft"] >= 0.05, (m["dev_accuracy_sft"], m["dev_accuracy_ppo"])
    assert m["paired"]["mcnemar_p"] < 0.01
    assert len(m["reward_curve"]) == 10 and m["kl_last"] >= 0
    # ... by selecting the worked style the SFT model already knew
    assert sum(m["style_first"].values()) == pytest.approx(1.0) and sum(m["style_last"].values()) == pytest.approx(1.0)
    assert m["style_last"]["terse"] < m["style_first"]["terse"] - 0.2
    assert m["dev_styles_ppo"]["terse"] < m["dev_styles_sft"]["terse"]
    assert m["response_length_last"] > m["response_length_first"]
    log = [json.loads(x) for x in (pipeline_run.parents[1] / "checkpoints" / "ppo" / "ppo_log.jsonl").read_text().splitlines()]
    for row in log:
        shares = [row[f"style_{k}"] for k in ("worked", "terse", "slip", "other")]
        assert sum(shares) == pytest.approx(1.0) and row["response_length"] > 0
    assert (pipeline_run / "figures" / "05_style_share.png").is_file()
    # the reward per arm and the arm mix that explain the mean reward's moves
    assert set(m["reward_by_arm_last"]) <= set(m["arm_share_last"]) | set(m["reward_by_arm_first"])
    assert sum(m["arm_share_last"].values()) == pytest.approx(1.0)
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
    assert models["sft"]["platinum"]["accuracy"] >= 0.2 and models["base"]["platinum"]["accuracy"] <= 0.05
    p = m["paired"]["sft_vs_base"]["platinum"]
    assert p["diff"] > 0.15 and p["mcnemar_p"] < 1e-6
    for ts in ("platinum", "gsm8k_test"):
        q = m["paired"]["ppo_vs_sft"][ts]
        assert q["diff"] >= 0.05 and q["mcnemar_p"] < 0.01, (ts, q)
        assert m["verdicts"][ts].startswith("On the synthetic ") and "PPO beats SFT" in m["verdicts"][ts]
        assert m["by_style"]["ppo"][ts]["worked"]["share"] > m["by_style"]["sft"][ts]["worked"]["share"]
    html = (pipeline_run / "report.html").read_text()
    md = (pipeline_run / "report.md").read_text()
    assert "data:image/png;base64," in html and "http://" not in html and "https://" not in html
    assert f"{models['sft']['platinum']['accuracy'] * 100:.1f}" in md
    assert md.index("## Verdict") < md.index("## Summary") and m["verdicts"]["platinum"] in md
    figures = sorted(p.name for p in (pipeline_run / "figures").glob("*.png"))
    assert html.count("data:image/png;base64,") >= len(figures)
    record = json.loads((pipeline_run / "pipeline.json").read_text())
    assert list(record["stages"]) == ["01_data", "02_sft", "03_rollouts", "04_regime_w", "05_ppo", "06_eval"]
