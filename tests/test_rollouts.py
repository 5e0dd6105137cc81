import pandas as pd
import pytest

from looper_utils import config, data, generation, modeling, prompts, rollouts
from looper_utils.artifacts import MissingInputError


@pytest.fixture(scope="module")
def tiny():
    rows = data.synthetic_problems(40, seed=0)
    cfg = config.smoke()
    tok = modeling.build_tokenizer(modeling.tokenizer_corpus(rows), vocab_size=300)
    model = modeling.build_scratch_model(cfg.model, tok, seed=0)
    return rows, model, tok


def _sample_fn(model, tok, k, fail_on_shard=None):
    def fn(chunk, shard_seed):
        if fail_on_shard is not None and shard_seed == fail_on_shard:
            raise KeyboardInterrupt("killed")
        ps = [prompts.build_prompt(r["question"], tok, "chat") for r in chunk]
        return generation.generate(model, tok, ps, n=k, max_new_tokens=12, temperature=1.0, batch_size=16,
                                   seed=shard_seed, progress=False)
    return fn


def test_k_samples_per_problem_and_schema(tiny, tmp_path):
    rows, model, tok = tiny
    df, speed = rollouts.collect(rows[:6], _sample_fn(model, tok, 3), tmp_path / "rollouts", shard_size=4,
                                 seed=0, think=True, manifest={"k": 3}, log=lambda *_: None)
    assert list(df.columns) == rollouts.COLUMNS
    assert len(df) == 18 and df.groupby("prompt_id").size().eq(3).all()
    assert sorted(df["sample_idx"].unique()) == [0, 1, 2]
    assert set(df["finish_reason"]) <= {"eos", "length"}
    assert (df.loc[df.finish_reason == "length", "n_tokens"] == 12).all()
    assert speed["shards"] == 2 and speed["tokens_per_second"] > 0
    assert len(list((tmp_path / "rollouts").glob("shard_*.parquet"))) == 2


def test_resume_after_kill_gives_identical_table(tiny, tmp_path):
    rows, model, tok = tiny
    kw = dict(shard_size=3, seed=10, think=True, manifest={"k": 2}, log=lambda *_: None)
    straight, _ = rollouts.collect(rows[:9], _sample_fn(model, tok, 2), tmp_path / "a" / "rollouts", **kw)
    with pytest.raises(KeyboardInterrupt):  # killed while sampling shard 2 (seed 10 + 1)
        rollouts.collect(rows[:9], _sample_fn(model, tok, 2, fail_on_shard=11), tmp_path / "b" / "rollouts", **kw)
    assert [p.name for p in sorted((tmp_path / "b" / "rollouts").glob("shard_*"))] == ["shard_00000.parquet"]
    resumed, speed = rollouts.collect(rows[:9], _sample_fn(model, tok, 2), tmp_path / "b" / "rollouts", **kw)
    assert speed["shards_skipped"] == 1
    pd.testing.assert_frame_equal(straight, resumed)


def test_rerun_with_other_settings_refuses_to_mix(tiny, tmp_path):
    rows, model, tok = tiny
    kw = dict(shard_size=3, seed=0, think=True, log=lambda *_: None)
    rollouts.collect(rows[:3], _sample_fn(model, tok, 1), tmp_path / "rollouts", manifest={"k": 1}, **kw)
    with pytest.raises(ValueError, match="other settings"):
        rollouts.collect(rows[:3], _sample_fn(model, tok, 2), tmp_path / "rollouts", manifest={"k": 2}, **kw)


def test_load_rollouts_names_the_notebook(tmp_path):
    with pytest.raises(MissingInputError, match="03_rollouts"):
        rollouts.load_rollouts(tmp_path)


def test_metrics_on_a_handmade_table():
    recs = []
    for pid, flags, steps in (("a", [1, 1, 1, 1], 1), ("b", [1, 0, 0, 0], 2), ("c", [0, 0, 0, 0], 2)):
        for j, f in enumerate(flags):
            recs.append({"prompt_id": pid, "sample_idx": j, "question": pid, "answer": "", "gold": "5",
                         "steps": steps, "completion": "", "n_tokens": 10 if j else 64,
                         "finish_reason": "length" if (pid == "c" and j == 0) else "eos",
                         "extracted": "5" if f else "4", "extracted_strict": None, "correct": bool(f),
                         "correct_strict": False})
    m = rollouts.metrics(pd.DataFrame(recs), ks=[1, 2, 4])
    assert m["k"] == 4 and m["n_problems"] == 3 and m["n_completions"] == 12
    assert m["pass_at_k"]["1"] == pytest.approx((1 + 0.25 + 0) / 3)
    assert m["pass_at_k"]["2"] == pytest.approx((1 + 0.5 + 0) / 3)  # 1 - C(3,2)/C(4,2) = 0.5
    assert m["pass_at_k"]["4"] == pytest.approx(2 / 3)
    assert m["maj_at_k"] == pytest.approx(1 / 3)
    assert m["accuracy_by_steps"] == {"1": 1.0, "2": 0.125}
    assert m["truncation_rate"] == pytest.approx(1 / 12)
    assert (m["never_solved"], m["always_solved"]) == (1, 1)
