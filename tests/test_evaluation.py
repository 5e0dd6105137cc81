import json
import random

import pandas as pd
import pytest

from looper_utils import answers, artifacts, config, data, evaluation, generation, modeling, prompts, stats
from looper_utils.artifacts import MissingInputError
from looper_utils.report import build_report


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A project folder with test sets and two tiny random models saved as checkpoints/base and checkpoints/sft."""
    root = tmp_path_factory.mktemp("eval_root")
    files = data.data_files(root / "data")
    data.write_jsonl(files["platinum"], data.synthetic_problems(9, seed=1))
    data.write_jsonl(files["test"], data.synthetic_problems(9, seed=2))
    cfg = config.build("smoke", root=str(root), device="cpu")
    tok = modeling.build_tokenizer(modeling.tokenizer_corpus(data.synthetic_problems(40, seed=0)), vocab_size=300)
    for name, seed in (("base", 0), ("sft", 1)):
        model = modeling.build_scratch_model(cfg.model, tok, seed=seed)
        modeling.save_checkpoint(root / "checkpoints" / name, model, tok, cfg, stage=name, step=0)
    return root


def _cfg(root, **kw):
    params = dict(root=str(root), run_id="r", device="cpu", n_eval=6, max_new_tokens=8, shard_size=3,
                  batch_size=8, n_bootstrap=200)
    return config.build("smoke", stage="eval", **{**params, **kw})


def test_run_records_schema_and_missing_ppo_is_skipped(root):
    cfg = _cfg(root)
    assert cfg.eval.models == ("base", "sft", "ppo")
    logs = []
    res = evaluation.run(cfg, progress=False, log=logs.append)
    assert set(res.records) == {"base", "sft"}
    assert "05_ppo" in res.skipped["ppo"] and any("ppo" in m and "05_ppo" in m for m in logs)
    full = data.read_jsonl(data.data_files(root / "data")["platinum"])
    chosen = evaluation.load_test_set(cfg, "platinum")
    assert len(chosen) == 6 and {r["id"] for r in chosen} < {r["id"] for r in full}
    for name in ("base", "sft"):
        for ts in ("platinum", "gsm8k_test"):
            df = res.records[name][ts]
            assert list(df.columns) == evaluation.COLUMNS and len(df) == 6
            out = cfg.run_dir / "eval" / f"{name}__{ts}"
            assert sorted(p.name for p in out.glob("shard_*")) == ["shard_00000.parquet", "shard_00001.parquet"]
            rows = {r["id"]: r for r in evaluation.load_test_set(cfg, ts)}
            assert list(df["id"]) == list(rows)
            for rec in df.to_dict("records"):
                row = rows[rec["id"]]
                assert rec["gold"] == row["gold"] and rec["steps"] == data.count_steps(row["answer"])
                assert rec["finish_reason"] in ("eos", "length") and 1 <= rec["n_tokens"] <= 8
                want = answers.extract_answer(rec["completion"], "flexible", think=True)
                assert (None if pd.isna(rec["extracted"]) else rec["extracted"]) == want
                assert rec["correct"] == answers.is_correct(rec["completion"], row["gold"], think=True)
                assert rec["format_ok"] == evaluation.format_ok(rec["completion"], think=True)
                assert rec["category"] in stats.ERROR_CATEGORIES
                assert rec["n_samples"] == 1 and json.loads(rec["answers"]) == [want]
    summary = evaluation.summarize(res.records, n_boot=200, skipped=res.skipped)
    assert set(summary["models"]) == {"base", "sft"} and list(summary["paired"]) == ["sft_vs_base"]
    assert "05_ppo" in summary["skipped"]["ppo"]


def test_rerun_loads_no_model_and_reads_the_same_records(root, monkeypatch):
    cfg = _cfg(root, run_id="rerun", models="base,sft", test_sets="platinum")
    first = evaluation.run(cfg, progress=False, log=lambda *_: None)

    def no_loading(*_a, **_k):
        raise AssertionError("a rerun with every shard on disk must not load a model")

    monkeypatch.setattr(evaluation, "_load_model", no_loading)
    again = evaluation.run(cfg, progress=False, log=lambda *_: None)
    assert again.speed["sft"]["platinum"]["shards_skipped"] == 2
    for name in ("base", "sft"):
        pd.testing.assert_frame_equal(first.records[name]["platinum"], again.records[name]["platinum"])
    loaded = evaluation.load_records(cfg.run_dir)
    pd.testing.assert_frame_equal(loaded["sft"]["platinum"], first.records["sft"]["platinum"])


def test_rerun_with_other_settings_refuses_to_mix(root):
    evaluation.run(_cfg(root, run_id="mix", models="sft", test_sets="platinum"), progress=False, log=lambda *_: None)
    with pytest.raises(ValueError, match="other settings"):
        evaluation.run(_cfg(root, run_id="mix", models="sft", test_sets="platinum", max_new_tokens=9),
                       progress=False, log=lambda *_: None)


def test_resume_after_kill_gives_identical_table(root, tmp_path):
    cfg = _cfg(root)
    model, tok = modeling.load_policy(cfg, "sft")
    rows = data.synthetic_problems(7, seed=5)

    def sample_fn(fail_on=None):
        def fn(chunk, shard_seed):
            if shard_seed == fail_on:
                raise KeyboardInterrupt("killed")
            ps = [prompts.build_prompt(r["question"], tok, "chat") for r in chunk]
            return generation.generate(model, tok, ps, n=3, max_new_tokens=6, temperature=1.0, batch_size=9,
                                       seed=shard_seed, progress=False)
        return fn

    kw = dict(shard_size=3, seed=20, think=True, manifest={"maj_k": 3}, log=lambda *_: None)
    straight, _ = evaluation.evaluate_set(rows, sample_fn(), tmp_path / "a", **kw)
    with pytest.raises(KeyboardInterrupt):  # killed while sampling shard 2 (seed 20 + 1)
        evaluation.evaluate_set(rows, sample_fn(fail_on=21), tmp_path / "b", **kw)
    assert [p.name for p in sorted((tmp_path / "b").glob("shard_*"))] == ["shard_00000.parquet"]
    resumed, speed = evaluation.evaluate_set(rows, sample_fn(), tmp_path / "b", **kw)
    assert speed["shards_skipped"] == 1 and speed["shards"] == 3
    pd.testing.assert_frame_equal(straight, resumed)
    assert len(straight) == 7 and (straight["n_samples"] == 3).all()


@pytest.mark.parametrize("models, notebook", [("ppo", "05_ppo"), ("ppo_best", "05_ppo")])
def test_asking_only_for_a_missing_model_names_the_notebook(root, models, notebook):
    with pytest.raises(MissingInputError, match=notebook):
        evaluation.run(_cfg(root, run_id="only", models=models), progress=False, log=lambda *_: None)


def test_checkpoint_folders_and_bad_names(root):
    specs = evaluation.resolve_models(_cfg(root), ["sft", str(root / "checkpoints" / "base"), "no/such/folder"])
    assert [(s.name, s.available) for s in specs] == [("sft", True), ("base", True), ("folder", False)]
    assert "not a checkpoint folder" in specs[2].note
    with pytest.raises(ValueError, match="twice"):
        evaluation.resolve_models(_cfg(root), ["base", str(root / "checkpoints" / "base")])


def test_grade_question_majority_vote():
    row = {"id": "q", "question": "?", "answer": "<<2+3=5>>5\n#### 5", "gold": "5"}
    texts = ["2+3=6\n</think>\n#### 6", "2+3=5\n</think>\n#### 5", "so 5\n</think>\nThe answer is 5"]
    rec = evaluation.grade_question(row, texts, ["eos", "eos", "eos"], [4, 5, 6], think=True)
    assert (rec["extracted"], rec["correct"], rec["n_correct_samples"]) == ("5", True, 2)
    assert rec["completion"] == texts[1] and rec["n_tokens"] == 5 and rec["format_ok"]
    assert rec["extracted_strict"] == "6" and not rec["correct_strict"]  # the strict vote is 6 vs 5: a tie, 6 first
    tie = evaluation.grade_question(row, texts[:2], ["length", "eos"], [8, 5], think=True)
    assert tie["extracted"] == "6" and tie["category"] == "truncated" and tie["finish_reason"] == "length"


def _handmade():
    """10 questions, steps 1-2; ppo right on 7, sft on 5, base on 0; sft listed in another order."""
    flags = {"ppo": [1, 1, 1, 1, 1, 1, 1, 0, 0, 0], "sft": [1, 1, 1, 0, 0, 1, 1, 0, 0, 0],
             "base": [0] * 10}
    out = {}
    for name, f in flags.items():
        recs = []
        for i, c in enumerate(f):
            wrong_kind = ["wrong", "truncated", "format"][i % 3]
            recs.append({"id": f"q{i}", "steps": 1 + i % 2, "correct": bool(c),
                         "correct_strict": bool(c) and i % 2 == 0, "extracted": "5" if c else "4",
                         "category": "correct" if c else wrong_kind, "completion": "", "question": f"q{i}?",
                         "gold": "5"})
        if name == "sft":
            random.Random(0).shuffle(recs)
        out[name] = {"platinum": pd.DataFrame(recs)}
    return out, flags


def test_summarize_exact_numbers():
    records, flags = _handmade()
    s = evaluation.summarize(records, n_boot=500, seed=0)
    assert set(s) == {"models", "paired", "errors", "by_steps", "by_style", "verdicts"}
    assert s["by_style"] == {}  # these records carry no style column
    v = s["verdicts"]["platinum"]  # 7 vs 5 right on 10 questions: no evidence either way
    assert v.startswith("On GSM8K-Platinum (10 problems) PPO is not distinguishable from SFT") and "+20.0 points" in v
    ppo = s["models"]["ppo"]["platinum"]
    assert ppo["accuracy"] == pytest.approx(0.7) and ppo["n"] == 10
    assert ppo["accuracy_strict"] == pytest.approx(0.4)  # q0, q2, q4, q6
    assert ppo["ci95"][0] < 0.7 < ppo["ci95"][1]
    assert s["models"]["sft"]["platinum"]["accuracy"] == pytest.approx(0.5)
    base_ci = s["models"]["base"]["platinum"]["ci95"]
    assert base_ci[0] == 0.0 and base_ci[1] == pytest.approx(stats.wilson_ci(0, 10)[2])  # not a [0, 0] point

    p = s["paired"]["ppo_vs_sft"]["platinum"]
    mc = stats.mcnemar_exact(flags["ppo"], flags["sft"])
    assert (p["b01"], p["b10"], p["mcnemar_p"]) == (mc["b01"], mc["b10"], mc["p_value"]) == (0, 2, 0.5)
    assert p["diff"] == pytest.approx(0.2) and p["ci95"][0] <= 0.2 <= p["ci95"][1]
    q = s["paired"]["sft_vs_base"]["platinum"]
    assert (q["b10"], q["b01"], q["diff"]) == (5, 0, pytest.approx(0.5))
    assert q["mcnemar_p"] == stats.mcnemar_exact(flags["sft"], flags["base"])["p_value"] == 0.0625

    assert s["errors"]["ppo"]["platinum"] == {"correct": 7, "truncated": 1, "no_answer": 0, "format": 1, "wrong": 1}
    assert sum(s["errors"]["base"]["platinum"].values()) == 10
    assert s["by_steps"]["ppo"]["platinum"] == {"1": pytest.approx(0.8), "2": pytest.approx(0.6)}
    assert json.loads(json.dumps(s)) == s  # plain JSON types


def test_ppo_best_stands_in_for_ppo_and_outcomes():
    records, _ = _handmade()
    records["ppo_best"] = records.pop("ppo")
    s = evaluation.summarize(records, n_boot=100)
    assert s["paired"]["ppo_vs_sft"]["platinum"]["b10"] == 2
    t = evaluation.paired_table(records, "ppo_best", "sft", "platinum")
    assert list(t["id"]) == [f"q{i}" for i in range(10)]
    assert evaluation.outcome_counts(t) == {"both right": 5, "only a": 2, "only b": 0, "both wrong": 3}


def test_report_renders_the_summary(tmp_path):
    records, _ = _handmade()
    run = tmp_path / "runs" / "r1"
    artifacts.save_metrics(run, "06_eval", evaluation.summarize(records, n_boot=200, skipped={"ppo_last": "no"}))
    md_path, html_path = build_report(run)
    md = md_path.read_text()
    assert "| model | platinum |" in md
    assert "| ppo | 70.0% [" in md and "| sft | 50.0% [" in md and "| base | 0.0% [0.0, 27.8] (n=10) |" in md
    assert "| ppo vs sft | platinum | +20.0 pp |" in md and "| 0.5 | 2 | 0 |" in md
    assert "| sft vs base | platinum | +50.0 pp |" in md
    assert "| ppo / platinum | 7 | 1 | 0 | 1 | 1 |" in md
    assert "skipped.ppo_last" in md and html_path.is_file()


def test_ppo_means_best_when_it_exists(tmp_path):
    cfg = _cfg(tmp_path)
    for sub in ("best", "last"):
        (tmp_path / "checkpoints" / "ppo" / sub).mkdir(parents=True)
        (tmp_path / "checkpoints" / "ppo" / sub / "policy_adapter.safetensors").write_bytes(b"")
        (tmp_path / "checkpoints" / "ppo" / sub / "resume_signature.json").write_text('{"seed": 0}')  # one run
    specs = evaluation.resolve_models(cfg, ["ppo", "ppo_last", "sft", str(tmp_path / "checkpoints" / "ppo" / "best")])
    assert [(s.name, s.kind, s.available) for s in specs] == [
        ("ppo", "ppo", True), ("ppo_last", "ppo", True), ("sft", "checkpoint", False), ("ppo_best", "ppo", True)]
    assert specs[0].path.name == "best" and specs[1].path.name == "last"
    assert "02_sft" in specs[2].note
