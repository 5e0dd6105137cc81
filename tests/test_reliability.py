"""Failures a long run meets: a checkpoint cut short, a full disk, a rerun, permissions, odd arguments,
two runs in one folder. Each test fails on the code before the fix it guards."""
from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import sys

import _tiny
import pytest
import torch

from looper_utils import (artifacts, config, data, evaluation, generation, modeling, pipeline, ppo,
                          rollouts, sft)
from looper_utils.ppo import resume as ppo_resume

CPU = torch.device("cpu")


def tiny_cfg(root, **kw):
    return _tiny.tiny_cfg(root, **{**dict(learning_rate=1e-2, batch_size=8, max_steps=2, logging_steps=1,
                                          save_steps=2, warmup_ratio=0.0), **kw})


@pytest.fixture(scope="module")
def rows():
    return data.synthetic_problems(24, seed=2)


def train(cfg, rows):
    model, tok = modeling.build_or_load_base(cfg, rows, device=CPU)
    return sft.train_sft(cfg, model, tok, rows, device=CPU, progress=False)


def weights(cfg):
    model, _ = modeling.load_policy(cfg, "sft", CPU)
    return {k: v.clone() for k, v in model.state_dict().items()}


# ---- a checkpoint cut short ------------------------------------------------------

def test_partial_checkpoint_is_set_aside_and_the_previous_one_resumed(tmp_path, rows):
    cfg = tiny_cfg(tmp_path)
    train(cfg, rows)
    work = sft.trainer_dir(cfg)
    # a run killed while saving step 4: the weights are there, trainer_state.json (written last) is not
    shutil.copytree(work / "checkpoint-2", work / "checkpoint-4")
    (work / "checkpoint-4" / "trainer_state.json").unlink()
    longer = cfg.override(stage="sft", max_steps=4)
    with pytest.warns(UserWarning, match=r"checkpoint-4 is incomplete \(trainer_state.json is missing\).*"
                                         r"moved it to broken-checkpoint-4.*resuming from checkpoint-2"):
        result = train(longer, rows)
    assert result.resumed_from_step == 2 and result.train_steps == 4
    assert (work / "broken-checkpoint-4").is_dir() and (work / "checkpoint-4" / "trainer_state.json").is_file()
    assert modeling.read_state(modeling.sft_dir(cfg))["step"] == 4


def test_truncated_weights_with_no_earlier_checkpoint_train_from_the_start(tmp_path, rows):
    cfg = tiny_cfg(tmp_path)
    train(cfg, rows)
    work = sft.trainer_dir(cfg)
    f = work / "checkpoint-2" / "model.safetensors"
    os.truncate(f, f.stat().st_size // 2)  # a full disk, or a power cut before the data reached it
    with pytest.warns(UserWarning, match=r"model.safetensors is unreadable.*training from the start"):
        result = train(cfg, rows)
    assert result.resumed_from_step is None and result.train_steps == 2
    assert (work / "broken-checkpoint-2").is_dir() and sft.checkpoint_problem(work / "checkpoint-2") is None


def test_checkpoint_problem_names_the_missing_or_broken_file(tmp_path):
    from safetensors.torch import save_file

    ck = tmp_path / "checkpoint-3"
    ck.mkdir()
    assert sft.checkpoint_problem(ck) == "trainer_state.json is missing"
    (ck / "trainer_state.json").write_text('{"global_st')
    assert "cut short" in sft.checkpoint_problem(ck)
    (ck / "trainer_state.json").write_text(json.dumps({"global_step": 3}))
    assert "no model weights" in sft.checkpoint_problem(ck)
    save_file({"w": torch.zeros(4)}, str(ck / "model.safetensors"))
    assert sft.checkpoint_problem(ck) == "optimizer.pt is missing"
    torch.save({"a": 1}, ck / "optimizer.pt")
    torch.save({"b": 2}, ck / "scheduler.pt")
    assert sft.checkpoint_problem(ck) is None
    (ck / "optimizer.pt").write_bytes((ck / "optimizer.pt").read_bytes()[:100])
    assert sft.checkpoint_problem(ck) == "optimizer.pt is cut short"


# ---- a full disk ------------------------------------------------------------------

def test_disk_full_while_saving_says_so_and_names_the_folder(tmp_path, rows, monkeypatch):
    from transformers import Trainer

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Trainer, "_save_checkpoint", full)
    cfg = tiny_cfg(tmp_path)
    with pytest.raises(artifacts.DiskFullError, match="no space left on .*sft-trainer") as exc:
        train(cfg, rows)
    assert exc.value.errno == errno.ENOSPC


@pytest.mark.parametrize("raised", [
    OSError(errno.ENOSPC, "No space left on device"),
    RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "
                 "\"No space left on device\" })"),
])
def test_explain_disk_full_knows_the_libraries_forms(tmp_path, raised):
    with pytest.raises(artifacts.DiskFullError, match=f"no space left on {tmp_path} while saving x"):
        with artifacts.explain_disk_full(tmp_path, "saving x"):
            raise raised
    with pytest.raises(KeyError):  # anything else passes through untouched
        with artifacts.explain_disk_full(tmp_path, "saving x"):
            raise KeyError("k")


# ---- rerunning a finished SFT ----------------------------------------------------

LORA = dict(use_lora=True, model__lora_r=4, model__lora_alpha=8, lora_dropout=0.0)


@pytest.mark.parametrize("budget", [dict(max_steps=4), dict(max_steps=-1, epochs=1.5), dict(max_steps=4, **LORA)],
                         ids=["steps", "epochs", "lora"])
def test_rerunning_a_finished_sft_keeps_its_step_count_and_weights(tmp_path, rows, budget):
    cfg = tiny_cfg(tmp_path, **budget)  # 24 rows / batch 8: 4 steps, or 1.5 epochs = 5 steps
    first = train(cfg, rows)
    before = weights(cfg)
    again = train(cfg, rows)
    assert again.train_steps == first.train_steps and again.resumed_from_step == first.train_steps
    assert again.loss_history == first.loss_history and again.final_loss == first.final_loss
    assert modeling.read_state(modeling.sft_dir(cfg))["step"] == first.train_steps
    after = weights(cfg)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert sorted(p.name for p in sft.trainer_dir(cfg).glob("checkpoint-*")) == [f"checkpoint-{first.train_steps}"]


def test_a_checkpoint_past_a_lowered_budget_is_not_resumed(tmp_path, rows):
    cfg = tiny_cfg(tmp_path, max_steps=4)
    train(cfg, rows)
    with pytest.warns(UserWarning, match="not resuming from checkpoint-4 because it is past the 2 steps"):
        shorter = train(cfg.override(stage="sft", max_steps=2), rows)
    assert shorter.train_steps == 2 and shorter.resumed_from_step is None


# ---- permissions --------------------------------------------------------------------

def test_saved_checkpoints_follow_the_umask(tmp_path, rows):
    old = os.umask(0o007)  # group members read and write, others nothing
    try:
        cfg = tiny_cfg(tmp_path)
        train(cfg, rows)
    finally:
        os.umask(old)
    folders = [modeling.base_dir(cfg), modeling.sft_dir(cfg), sft.trainer_dir(cfg) / "checkpoint-2"]
    for folder in folders:
        assert stat.S_IMODE(folder.stat().st_mode) == 0o770, folder
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir() if p.is_file()}
        assert "model.safetensors" in modes
        assert set(modes.values()) == {0o660}, (folder, modes)


# ---- run ids, seeds, profiles, roots ----------------------------------------------------

BAD_RUN_IDS = ["../../x", "/tmp/abs", ".", "..", "", "a/b", "-x", ".hidden", "a b", "x" * 65]


@pytest.mark.parametrize("run_id", BAD_RUN_IDS)
def test_unsafe_run_ids_are_refused(tmp_path, run_id, capsys):
    with pytest.raises(ValueError, match="not a plain folder name"):
        artifacts.check_run_id(run_id)
    with pytest.raises(ValueError, match="run_id"):
        artifacts.run_paths(tmp_path / "root" / "runs" / run_id)
    assert pipeline.main([f"--run-id={run_id}", "--root", str(tmp_path / "root"), "--stages", "01"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --run-id:") and err.count("\n") == 1
    assert not (tmp_path / "x").exists() and not (tmp_path / "root" / "runs").exists()


def test_safe_run_ids_pass(tmp_path):
    for run_id in ("smoke-20250101-120000", "r1.8b_v2", "A"):
        assert artifacts.check_run_id(run_id) == run_id
    assert artifacts.run_paths(tmp_path / "runs" / "r1")["metrics"].is_dir()


def test_negative_seed_is_refused_up_front(tmp_path, capsys):
    assert pipeline.main(["--seed", "-1", "--root", str(tmp_path), "--stages", "01"]) == 2
    err = capsys.readouterr().err
    assert "--seed -1" in err and "pass e.g. --seed 1" in err and err.count("\n") == 1
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("content, says", [
    ('{"profile": "full", "overrides": {', "not valid JSON"),
    ('{"profile": "huge"}', "needs a 'profile' key"),
    ('{"profile": "smoke", "overrides": {"sft.no_such_field": 1}}', "no_such_field"),
])
def test_bad_profile_file_gives_one_line_and_status_2(tmp_path, capsys, content, says):
    bad = tmp_path / "mine.json"
    bad.write_text(content)
    assert pipeline.main(["--profile", str(bad), "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --profile {bad}") and says in err and "fix the file" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert pipeline.main(["--profile", str(tmp_path / "absent.json"), "--root", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_root_that_is_a_file_gives_one_line_and_status_2(tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("x")
    assert pipeline.main(["--root", str(f), "--stages", "01"]) == 2
    err = capsys.readouterr().err
    assert f"--root {f} is a file, not a folder; pass the project folder" in err and err.count("\n") == 1
    assert pipeline.main(["--root", str(f / "sub"), "--stages", "01"]) == 2
    assert "cannot create it" in capsys.readouterr().err


# ---- one run at a time -------------------------------------------------------------------

def test_a_second_run_in_the_same_folder_is_refused(tmp_path, capsys):
    with artifacts.project_lock(tmp_path, "first") as lock:
        assert json.loads(lock.read_text())["run_id"] == "first"
        with pytest.raises(artifacts.ProjectBusyError,
                           match=rf"run first \(pid {os.getpid()}\) is using {tmp_path} since .*; wait for it "
                                 rf"or remove {lock} if it is dead"):
            with artifacts.project_lock(tmp_path, "second"):
                pass
        with pytest.raises(artifacts.ProjectBusyError, match="run first"):
            pipeline.run("smoke", stages=["01"], run_id="second", root=tmp_path, log=lambda *_: None)
        assert pipeline.main(["--run-id", "third", "--root", str(tmp_path), "--stages", "01"]) == 1
        assert "run first" in capsys.readouterr().err
        assert not (tmp_path / "runs").exists()
    assert not lock.exists()


def test_a_stale_lock_is_taken_over(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # a pid that is no longer running
    import socket

    lock = tmp_path / artifacts.LOCK_FILE
    lock.write_text(json.dumps({"pid": proc.pid, "host": socket.gethostname(), "run_id": "crashed",
                                "started": "2025-01-01T00:00:00+00:00"}))
    with pytest.warns(UserWarning, match=r"run crashed \(pid \d+\) started .* is no longer running; taking over"):
        with artifacts.project_lock(tmp_path, "next"):
            held = json.loads(lock.read_text())
            assert held["pid"] == os.getpid() and held["run_id"] == "next"
    assert not lock.exists()
    # a lock from another host cannot be checked from here: it is left for a person to judge
    lock.write_text(json.dumps({"pid": proc.pid, "host": "elsewhere", "run_id": "remote", "started": "t"}))
    with pytest.raises(artifacts.ProjectBusyError, match=r"run remote \(pid \d+ on elsewhere\)"):
        with artifacts.project_lock(tmp_path, "next"):
            pass


# ---- the PPO state loads without running code; its log covers it ---------------------------

@pytest.fixture(scope="module")
def ppo_root(tmp_path_factory):
    """A project folder with a tiny base and SFT model, and the rows PPO trains on."""
    return _tiny.tiny_ppo_project(tmp_path_factory.mktemp("ppo_reliability"), 60, 50, device="cpu", iterations=2,
                            prompts_per_iter=2, k=2, advantage="group", max_new_tokens=8, minibatch_size=4,
                            eval_every=0, n_dev=4, ppo_epochs=1, learning_rate=5e-3)


def _project(ppo_root, tmp_path, **over):
    """The module's base and SFT checkpoints copied into ``tmp_path``, and the config rooted there."""
    cfg, train, dev = ppo_root
    for sub in ("base", "sft"):
        shutil.copytree(cfg.checkpoints_dir / sub, tmp_path / "checkpoints" / sub)
    return cfg.override(stage="ppo", root=str(tmp_path), **over), train, dev


def _ppo(cfg, train, dev):
    return ppo.PPOTrainer(cfg, train, dev, progress=False)


def _retrain_sft(cfg):
    """02 run again into the same folder: other weights, same path."""
    model, tok = modeling.load_checkpoint(modeling.sft_dir(cfg), CPU)
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)
    modeling.save_checkpoint(modeling.sft_dir(cfg), model, tok, cfg, stage="sft", step=1)


class _Crafted:
    """Unpickling this runs code: it writes a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('code ran')",)


@pytest.mark.parametrize("name, says", [
    ("trainer_state.pt", r"trainer_state.pt is a pickle \(the format of earlier versions\), which is never loaded"),
    ("trainer_state.safetensors", r"trainer_state.safetensors: unreadable"),
])
def test_a_crafted_pickle_as_the_ppo_state_never_runs(ppo_root, tmp_path, name, says):
    cfg, train, dev = _project(ppo_root, tmp_path)
    _ppo(cfg, train, dev).train(iterations=1)
    last = ppo.ppo_dir(cfg) / "last"
    marker = tmp_path / "marker"
    if name == "trainer_state.pt":  # a folder in the old format, or one made to look like it
        for f in ("trainer_state.safetensors", "trainer_state.json"):
            (last / f).unlink(missing_ok=True)
    torch.save({"iteration": _Crafted(marker), "trainable": {}}, last / name)
    with pytest.warns(UserWarning, match=says + r".*not resuming\. It was moved to .*ppo\.previous"):
        hist = _ppo(cfg, train, dev).train(iterations=1)
    assert not marker.exists(), "loading the PPO state ran code from the project folder"
    assert [h["iteration"] for h in hist] == [1]  # trained afresh
    kept = tmp_path / "checkpoints" / "ppo.previous" / "last" / name
    assert kept.is_file()  # set aside, not deleted
    with pytest.raises(ppo_resume.StateError, match=rf"{kept.parent}"):
        ppo_resume.load_state(kept.parent)
    assert not marker.exists()


def test_the_training_state_round_trips_exactly_without_pickle(tmp_path):
    import random

    import numpy as np

    w = torch.nn.Parameter(torch.randn(3))
    opt = torch.optim.AdamW([w], lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5)
    w.grad = torch.randn(3)
    opt.step()
    sched.step()
    random.seed(3), np.random.seed(4), torch.manual_seed(5)
    state = {"iteration": 7, "best_dev": 0.125, "trainable": {"model.l.policy.weight": w.detach().clone()},
             "opt_pi": opt.state_dict(), "sched_pi": sched.state_dict(),
             "bandit": {"algorithm": "thompson", "rng": np.random.default_rng(1).bit_generator.state,
                        "alpha": [1.5, 2.0]},
             "rng": {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(),
                     "cuda": None}}
    ppo_resume.save_state(tmp_path, state)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trainer_state.json", "trainer_state.safetensors"]
    back = ppo_resume.load_state(tmp_path)
    assert (back["iteration"], back["best_dev"], back["bandit"], back["sched_pi"]) == \
        (7, 0.125, state["bandit"], state["sched_pi"])
    assert torch.equal(back["trainable"]["model.l.policy.weight"], w.detach())
    saved_opt = state["opt_pi"]
    assert back["opt_pi"]["param_groups"] == saved_opt["param_groups"]  # betas stay a tuple
    assert list(back["opt_pi"]["state"]) == [0]  # the parameter index stays an int
    for k, v in saved_opt["state"][0].items():
        assert torch.equal(back["opt_pi"]["state"][0][k], v) and back["opt_pi"]["state"][0][k].dtype == v.dtype
    # the restored generators draw exactly what the saved ones would have
    want = (random.random(), float(np.random.rand()), torch.rand(2))
    random.setstate(back["rng"]["python"])
    np.random.set_state(back["rng"]["numpy"])
    torch.set_rng_state(back["rng"]["torch"])
    assert random.random() == want[0] and float(np.random.rand()) == want[1] and torch.equal(torch.rand(2), want[2])


@pytest.mark.parametrize("stopped_in", ["_write_log", "save"])
def test_a_stop_while_saving_leaves_no_gap_in_the_ppo_log(ppo_root, tmp_path, monkeypatch, stopped_in):
    cfg, train, dev = _project(ppo_root, tmp_path, iterations=3)
    real, calls = getattr(ppo.PPOTrainer, stopped_in), []

    def stopped_at_the_second_save(self, *a):
        calls.append(a)
        if len(calls) == 2:
            raise KeyboardInterrupt(f"stopped in {stopped_in} after iteration 2")
        return real(self, *a)

    monkeypatch.setattr(ppo.PPOTrainer, stopped_in, stopped_at_the_second_save)
    with pytest.raises(KeyboardInterrupt):
        _ppo(cfg, train, dev).train()
    monkeypatch.setattr(ppo.PPOTrainer, stopped_in, real)
    hist = _ppo(cfg, train, dev).train()
    assert [h["iteration"] for h in hist] == [1, 2, 3]
    log = (ppo.ppo_dir(cfg) / ppo.LOG_NAME).read_text().splitlines()
    assert [json.loads(x)["iteration"] for x in log] == [1, 2, 3]


# ---- runs that must not cross ----------------------------------------------------------------

def test_a_fresh_ppo_run_sets_the_old_best_aside_and_06_scores_its_last(ppo_root, tmp_path):
    cfg, train, dev = _project(ppo_root, tmp_path, iterations=1, eval_every=1)
    _ppo(cfg, train, dev).train()
    out = ppo.ppo_dir(cfg)
    old_best = (out / "best" / "policy_adapter.safetensors").read_bytes()
    fresh = cfg.override(stage="ppo", resume=False, eval_every=0)
    with pytest.warns(UserWarning, match=r"holds an earlier PPO run that this one does not continue \(resume=False\)"):
        _ppo(fresh, train, dev).train()
    assert not (out / "best").exists() and (out / "last").is_dir()
    aside = out.with_name("ppo.previous")
    assert (aside / "best" / "policy_adapter.safetensors").read_bytes() == old_best  # kept
    ecfg = cfg.override(stage="eval")
    assert evaluation.resolve_models(ecfg, ["ppo"])[0].path == out / "last"
    # a best that another PPO run wrote (here: put back by hand, its signature another seed's) is not used
    shutil.copytree(aside / "best", out / "best")
    sig_file = out / "best" / ppo_resume.SIGNATURE_NAME
    same = sig_file.read_text()
    sig_file.write_text(json.dumps(dict(json.loads(same), seed=99)))
    spec = evaluation.resolve_models(ecfg, ["ppo"])[0]
    assert spec.path == out / "last" and spec.available
    assert f"{out / 'best'} was not written by the PPO run of {out / 'last'}" in spec.note
    sig_file.write_text(same)
    assert evaluation.resolve_models(ecfg, ["ppo"])[0].path == out / "best"


def test_eval_records_name_the_exact_weights_they_scored(ppo_root, tmp_path):
    cfg, _, dev = _project(ppo_root, tmp_path)
    data.write_jsonl(data.data_files(cfg.data_dir)["platinum"], dev[:4])
    ecfg = cfg.override(stage="eval", run_id="e", models="sft", test_sets="platinum", max_new_tokens=4,
                        shard_size=2, batch_size=4)
    adapter = ppo.ppo_dir(cfg) / "last" / "policy_adapter.safetensors"
    adapter.parent.mkdir(parents=True)
    adapter.write_bytes(b"the same PPO adapter before and after")
    ppo_spec = evaluation.resolve_models(ecfg, ["ppo"])[0]
    ppo_before = evaluation._fingerprint(ppo_spec, ecfg)
    res = evaluation.run(ecfg, progress=False, log=lambda *_: None)
    digest = modeling.weights_digest(modeling.sft_dir(cfg))
    assert set(res.records["sft"]["platinum"]["weights"]) == {digest}
    assert evaluation.summarize(res.records, n_boot=50)["models"]["sft"]["platinum"]["weights"] == digest
    _retrain_sft(cfg)
    with pytest.raises(ValueError, match=r"made with other settings \{'weights': \('" + digest):
        evaluation.run(ecfg, progress=False, log=lambda *_: None)
    # a PPO policy is named together with the SFT weights under its adapter
    assert evaluation._fingerprint(ppo_spec, ecfg) != ppo_before
    assert evaluation._fingerprint(ppo_spec, ecfg) == modeling.weights_digest(modeling.sft_dir(cfg), adapter)


def _fake_sampler(chunk, shard_seed):
    samples = [generation.Sample(i, 0, "#### 1", [1], [2], 1, "eos") for i in range(len(chunk))]
    return generation.GenerationResult(samples=samples, seconds=0.01, n_new_tokens=len(samples))


def test_rollouts_of_a_retrained_sft_model_are_not_added_to_the_old_ones(ppo_root, tmp_path):
    cfg, train, _ = _project(ppo_root, tmp_path)
    cfg = cfg.override(stage="rollouts", k=1)
    out = rollouts.rollout_dir(cfg.run_dir)
    kw = dict(shard_size=2, seed=0, think=False, log=lambda *_: None)
    first = rollouts.manifest(cfg)
    assert first["policy_weights"] == modeling.weights_digest(modeling.sft_dir(cfg))
    rollouts.collect(train[:4], _fake_sampler, out, manifest=first, **kw)
    (out / "shard_00001.parquet").unlink()  # a run stopped after its first shard
    _retrain_sft(cfg)
    second = rollouts.manifest(cfg)
    assert second["policy"] == first["policy"] and second["policy_weights"] != first["policy_weights"]
    with pytest.raises(ValueError, match=r"made with other settings \{'policy_weights'"):
        rollouts.collect(train[:4], _fake_sampler, out, manifest=second, **kw)
    assert [p.name for p in out.glob("shard_*")] == ["shard_00000.parquet"]
    df, _ = rollouts.collect(train[:4], _fake_sampler, out, manifest=first, **kw)  # the same weights resume
    assert len(df) == 4


def test_overwriting_another_runs_outputs_says_which_run_and_what_changes(tmp_path, capsys):
    """data/ and checkpoints/ name the run that wrote them; a different run replacing them says so."""
    from looper_utils import config, data, modeling

    splits = data.build_synthetic_splits(60, 10, 10, 10, seed=0, min_steps=1, max_steps=2, max_value=10,
                                         dev_fraction=0.2, split_seed=1)
    data.write_splits(tmp_path / "data", splits, run_id="first", profile="smoke")
    assert capsys.readouterr().out == ""  # nothing was there before
    data.write_splits(tmp_path / "data", splits, run_id="first", profile="smoke")
    assert capsys.readouterr().out == ""  # the same run rewriting the same splits
    smaller = dict(splits, train=splits["train"][:40])
    data.write_splits(tmp_path / "data", smaller, run_id="second", profile="smoke")
    out = capsys.readouterr().out
    assert "was written by run first (smoke); run second replaces it" in out
    assert f"rows.train {len(splits['train'])} -> 40" in out

    rows = data.synthetic_problems(50, seed=0)
    tok = modeling.build_tokenizer(modeling.tokenizer_corpus(rows), vocab_size=300)
    cfg_a = config.build("smoke", run_id="a", root=str(tmp_path), **{"model.hidden_size": 32, "model.num_layers": 1})
    model = modeling.build_scratch_model(cfg_a.model, tok, seed=0)
    modeling.save_checkpoint(tmp_path / "ck", model, tok, cfg_a, stage="sft", step=1)
    capsys.readouterr()
    cfg_b = cfg_a.override(run_id="b", stage="sft", epochs=2.0)
    modeling.save_checkpoint(tmp_path / "ck", model, tok, cfg_b, stage="sft", step=1)
    out = capsys.readouterr().out
    assert "ck was written by run a (smoke); run b replaces it. What changes: sft.epochs 4.0 -> 2.0" in out
