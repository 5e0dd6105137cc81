"""Trackers: sft.report_to and ppo.report_to write TensorBoard events a user can open, bad values stop early."""
from __future__ import annotations

import importlib.util

import _tiny
import pytest
import torch

from looper_utils import config, data, modeling, ppo, sft

CPU = torch.device("cpu")


def _scalars(log_dir, tag):
    """(step, value) pairs of one scalar tag in the event files directly under ``log_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    assert tag in acc.Tags()["scalars"], f"{tag} not logged; scalars: {acc.Tags()['scalars']}"
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_sft_loss_reaches_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    rows = data.synthetic_problems(16, seed=3)
    cfg = _tiny.tiny_cfg(tmp_path, report_to="tensorboard", max_steps=3, logging_steps=1, batch_size=8,
                         save_steps=100, warmup_ratio=0.0, learning_rate=1e-2)
    assert cfg.sft.report_to == "tensorboard"
    model, tok = modeling.build_or_load_base(cfg, rows, device=CPU)
    result = sft.train_sft(cfg, model, tok, rows, device=CPU, progress=False)
    log_dir = tmp_path / "runs" / cfg.run_id / "tb" / "02_sft"
    assert sft.tracking_dir(cfg, "02_sft") == log_dir and list(log_dir.glob("events.out.tfevents.*"))
    logged = _scalars(log_dir, "train/loss")
    assert [s for s, _ in logged] == [1, 2, 3]
    assert [v for _, v in logged] == pytest.approx([h["loss"] for h in result.loss_history], rel=1e-5)
    assert [s for s, _ in _scalars(log_dir, "train/learning_rate")] == [1, 2, 3]
    # nothing inside the Trainer's checkpoint folder, which a changed setting deletes
    assert not list(sft.trainer_dir(cfg).rglob("events.out.tfevents.*"))


@pytest.fixture
def fresh_accelerate():
    """ppo.report_to makes an Accelerator, whose process state outlives the test; later tests start clean."""
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


def test_ppo_metrics_reach_tensorboard(tmp_path, fresh_accelerate):
    pytest.importorskip("tensorboard")
    rows = data.synthetic_problems(40, seed=0)
    cfg = config.build("smoke", root=str(tmp_path), stage="ppo", iterations=2, prompts_per_iter=2, k=2,
                       advantage="gae", max_new_tokens=8, minibatch_size=4, eval_every=0, n_dev=4, ppo_epochs=1,
                       report_to="tensorboard", **{"model.hidden_size": 32, "model.num_layers": 1,
                                                   "model.intermediate_size": 64})
    tok = modeling.build_tokenizer(modeling.tokenizer_corpus(rows), vocab_size=300)
    model = modeling.build_scratch_model(cfg.model, tok, seed=0)
    modeling.save_checkpoint(modeling.sft_dir(cfg), model, tok, cfg, stage="sft", step=0)
    trainer = ppo.PPOTrainer(cfg, rows[:32], rows[32:], progress=False)
    history = trainer.train()
    log_dir = tmp_path / "runs" / cfg.run_id / "tb" / "05_ppo"
    for key in ("reward", "policy_loss", "value_loss", "kl"):
        logged = _scalars(log_dir, key)
        assert [s for s, _ in logged] == [1, 2], key
        assert [v for _, v in logged] == pytest.approx([h[key] for h in history], rel=1e-5, abs=1e-7), key


def test_unknown_tracker_stops_before_training(tmp_path):
    cfg = _tiny.tiny_cfg(tmp_path, report_to="tensorbord")
    with pytest.raises(ValueError, match=r"sft.report_to='tensorbord' is not a supported tracker; use one of "
                                         r"none, tensorboard, wandb, trackio"):
        sft.make_sft_config(cfg, tmp_path / "work", CPU)
    with pytest.raises(ValueError, match=r"ppo.report_to='mlflow'"):
        ppo.Distributed(cfg.override(stage="ppo", report_to="mlflow"))


def test_missing_tracker_package_names_the_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("wandb", "tensorboard")
                        else real(name, *a))
    with pytest.raises(ImportError, match=r"sft.report_to='wandb' needs the wandb package.*pip install wandb"):
        sft.check_report_to("wandb")
    with pytest.raises(ImportError, match=r"pip install -e '.\[track\]'"):
        sft.check_report_to("tensorboard", "ppo.report_to")
    assert sft.check_report_to("none") == "none"
