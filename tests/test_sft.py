"""SFT on a handful of synthetic problems: masking, loss, checkpoints, resume, LoRA, the dev check."""
from __future__ import annotations

import _tiny
import pytest
import torch

from looper_utils import answers, data, modeling, prompts, sft

CPU = torch.device("cpu")


def tiny_cfg(root, **kw):
    return _tiny.tiny_cfg(root, **{**dict(learning_rate=1e-2, batch_size=8, max_steps=12, logging_steps=1,
                                          save_steps=6, warmup_ratio=0.0), **kw})


@pytest.fixture(scope="module")
def rows():
    return data.synthetic_problems(24, seed=2)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, rows):
    cfg = tiny_cfg(tmp_path_factory.mktemp("sft"))
    model, tok = modeling.build_or_load_base(cfg, rows, device=CPU)
    result = sft.train_sft(cfg, model, tok, rows, device=CPU, progress=False)
    return cfg, result, tok


def test_dataset_trains_on_the_completion_only(trained, rows):
    _, _, tok = trained
    ds, too_long = sft.build_dataset(rows[:3], tok, "chat", max_length=256)
    assert too_long == 0 and len(ds) == 3
    for row, ex in zip(rows[:3], ds):
        pair = prompts.sft_example(row, tok, "chat")
        prompt_ids = [i for i, m in zip(ex["input_ids"], ex["completion_mask"]) if not m]
        completion_ids = [i for i, m in zip(ex["input_ids"], ex["completion_mask"]) if m]
        assert prompt_ids == prompts.encode_prompt(tok, pair["prompt"])
        assert tok.decode(completion_ids) == pair["completion"] and completion_ids[-1] == tok.eos_token_id
    assert sft.build_dataset(rows[:3], tok, "chat", max_length=10)[1] == 3


def test_training_lowers_the_loss(trained):
    _, result, _ = trained
    losses = [h["loss"] for h in result.loss_history]
    assert [h["step"] for h in result.loss_history] == list(range(1, 13))
    assert losses[-1] < 0.7 * losses[0]
    assert result.final_loss == losses[-1] and result.train_steps == 12 and result.train_seconds > 0
    assert result.n_examples == 24 and result.resumed_from_step is None


def test_checkpoint_is_saved_and_reloads(trained):
    cfg, result, tok = trained
    out = modeling.sft_dir(cfg)
    assert result.output_dir == out
    state = modeling.read_state(out)
    assert state["stage"] == "sft" and state["step"] == 12 and state["format"] == "full"
    assert (out / "looper_config.json").is_file() and (out / "tokenizer.json").is_file()
    model, tok2 = modeling.load_policy(cfg, "sft", CPU)
    base, _ = modeling.load_policy(cfg, "base", CPU)
    x = torch.tensor([prompts.encode_prompt(tok, "Mia has 3 apples.")])
    assert not torch.allclose(model(x).logits, base(x).logits)  # the saved weights are the trained ones
    assert (sft.trainer_dir(cfg) / "checkpoint-12").is_dir()


def test_resume_continues_and_changed_settings_start_over(tmp_path, rows):
    cfg = tiny_cfg(tmp_path, max_steps=4, save_steps=2)
    model, tok = modeling.build_or_load_base(cfg, rows, device=CPU)
    first = sft.train_sft(cfg, model, tok, rows, device=CPU, progress=False)
    assert first.train_steps == 4 and first.resumed_from_step is None

    longer = cfg.override(stage="sft", max_steps=6)
    model, tok = modeling.load_policy(longer, "base", CPU)
    resumed = sft.train_sft(longer, model, tok, rows, device=CPU, progress=False)
    assert resumed.resumed_from_step == 4 and resumed.train_steps == 6
    assert [h["step"] for h in resumed.loss_history] == list(range(1, 7))  # history carried over
    assert modeling.read_state(modeling.sft_dir(cfg))["step"] == 6

    other = longer.override(stage="sft", learning_rate=5e-3)
    model, tok = modeling.load_policy(other, "base", CPU)
    with pytest.warns(UserWarning, match="not resuming from checkpoint-6"):
        fresh = sft.train_sft(other, model, tok, rows, device=CPU, progress=False)
    assert fresh.resumed_from_step is None and fresh.train_steps == 6


def test_lora_sft_saves_an_adapter_that_reloads(tmp_path, rows):
    cfg = tiny_cfg(tmp_path, use_lora=True, model__lora_r=4, model__lora_alpha=8, lora_dropout=0.0,
                   max_steps=3, learning_rate=5e-2)
    model, tok = modeling.build_or_load_base(cfg, rows, device=CPU)
    result = sft.train_sft(cfg, model, tok, rows, device=CPU, progress=False)
    out = modeling.sft_dir(cfg)
    assert (out / "adapter_config.json").is_file() and modeling.read_state(out)["format"] == "adapter"
    assert result.n_params["trainable"] < result.n_params["total"]
    merged, _ = modeling.load_policy(cfg, "sft", CPU)
    base, _ = modeling.load_policy(cfg, "base", CPU)
    x = torch.tensor([prompts.encode_prompt(tok, "Ben has 4 cards.")])
    assert not hasattr(merged, "peft_config")
    assert not torch.allclose(merged(x).logits, base(x).logits, atol=1e-4)


def test_dev_check_grades_with_the_think_convention(trained, rows):
    cfg, _, _ = trained
    model, tok = modeling.load_policy(cfg, "sft", CPU)
    acc, records, res = sft.dev_check(model, tok, rows[:6], style="chat", max_new_tokens=12, batch_size=4,
                                      progress=False)
    assert len(records) == 6 and len(res.samples) == 6
    think = prompts.completion_starts_in_think(tok, "chat")
    assert think
    for r, rec in zip(rows[:6], records):
        assert rec["correct"] == answers.is_correct(rec["completion"], r["gold"], think=True)
        assert rec["finish"] in ("eos", "length")
    assert acc == sum(r["correct"] for r in records) / 6


def test_select_train_rows_is_seeded(rows):
    a = sft.select_train_rows(rows, 5, seed=1)
    assert a == sft.select_train_rows(rows, 5, seed=1) and len(a) == 5
    assert sft.select_train_rows(rows, 0, seed=1) == rows


def test_data_loader_workers_only_on_a_gpu(tmp_path, monkeypatch):
    from looper_utils import sft_setup

    cfg = _tiny.tiny_cfg(tmp_path)
    args = sft.make_sft_config(cfg, tmp_path / "work", torch.device("cpu"))
    assert args.dataloader_num_workers == 0 and not args.dataloader_persistent_workers
    monkeypatch.setattr(sft_setup.os, "cpu_count", lambda: 16)
    assert sft_setup.loader_workers(torch.device("cuda")) == 4
    monkeypatch.setattr(sft_setup.os, "cpu_count", lambda: 2)
    assert sft_setup.loader_workers(torch.device("cuda")) == 1


def test_liger_kernels_only_on_a_gpu_for_a_full_precision_model(tmp_path, monkeypatch):
    import importlib.util

    from looper_utils import config, sft_setup

    cfg = _tiny.tiny_cfg(tmp_path)
    assert not sft.make_sft_config(cfg, tmp_path / "work", torch.device("cpu")).use_liger_kernel
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "liger_kernel" else real(name, *a))
    gpu = torch.device("cuda")
    demo = config.build("demo", stage="sft", compile="off")
    assert sft_setup.use_liger(demo, gpu) and not sft_setup.use_liger(demo, torch.device("cpu"))
    assert not sft_setup.use_liger(config.build("demo", stage="sft", liger=False, compile="off"), gpu)
    assert not sft_setup.use_liger(config.build("demo", stage="sft"), gpu)  # compiled layers instead (auto)
    assert not sft_setup.use_liger(config.build("full", stage="sft"), gpu)  # LoRA over a pretrained base
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "liger_kernel" else real(name, *a))
    assert not sft_setup.use_liger(demo, gpu)  # not installed: the stock kernels


def test_sft_compiles_the_layers_where_auto_says():
    from looper_utils import config, sft_setup

    gpu, cpu = torch.device("cuda"), torch.device("cpu")
    assert sft_setup.compile_sft(config.build("demo", stage="sft"), gpu)[0]
    on, why = sft_setup.compile_sft(config.build("demo", stage="sft"), cpu)
    assert not on and "CPU" in why
    on, why = sft_setup.compile_sft(config.build("full", stage="sft"), gpu)  # LoRA + recompute
    assert not on and "recomputed" in why
    assert not sft_setup.compile_sft(config.build("demo", stage="sft", compile="off"), gpu)[0]
    assert sft_setup.compile_sft(config.build("smoke", stage="sft", compile="on"), cpu) == (True, "sft.compile='on'")
    with pytest.raises(ValueError, match="sft.compile='fast'"):
        config.build("demo", stage="sft", compile="fast")


def _logged(trainer_cls, cfg, rows, work, **arg_changes):
    """The log history of 6 SFT steps of the tiny model, logged every 2 steps, with ``trainer_cls``."""
    import dataclasses

    torch.manual_seed(0)
    model, tok = modeling.build_or_load_base(cfg, rows, device=CPU)
    dataset, _ = sft.build_dataset(rows, tok, cfg.model.prompt_style, cfg.sft.max_length)
    args = dataclasses.replace(sft.make_sft_config(cfg, work, CPU, progress=False), **arg_changes)
    trainer = trainer_cls(model=model, args=args, train_dataset=dataset, processing_class=tok)
    trainer.train()
    return trainer, [h for h in trainer.state.log_history if "loss" in h]


@pytest.mark.parametrize("variant", ["own logits", "fused head", "dft"])
def test_deferred_metrics_trainer_logs_what_trl_logs(tmp_path, rows, variant):
    """02's trainer reads the step metrics back at logging time; the loss, gradients and every logged number are
    TRL's own, from the model's logits (a small vocabulary) or TRL's fused head (a large one); a DFT loss goes
    through TRL's code unchanged."""
    from trl import SFTTrainer

    from looper_utils import sft_setup

    ours_cls = sft_setup.sft_trainer_class()
    # the own-logits path runs on a GPU only (02 on the CPU keeps TRL's head); here it is let onto the CPU
    ours_cls = type("OwnLogits", (ours_cls,), {"full_logits_devices": ("cpu", "cuda")})
    if variant == "fused head":
        ours_cls = type("FusedHead", (ours_cls,), {"full_logits_max": 0})
    changes = {"loss_type": "dft"} if variant == "dft" else {}
    calls = []
    real_stats = sft_setup._token_stats
    cfg = tiny_cfg(tmp_path, max_steps=6, logging_steps=2, save_steps=100)
    rows = rows[:18]  # 3 steps an epoch, the last of 2 rows: TRL gathers its metrics specially there
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sft_setup, "_token_stats", lambda *a: calls.append(1) or real_stats(*a))
        ours, ours_log = _logged(ours_cls, cfg, rows, tmp_path / "a", **changes)
    _, trl_log = _logged(SFTTrainer, cfg, rows, tmp_path / "b", **changes)
    assert [h["step"] for h in ours_log] == [1, 2, 4, 6] == [h["step"] for h in trl_log]
    for a, b in zip(ours_log, trl_log):
        for key in ("loss", "grad_norm", "entropy", "mean_token_accuracy", "num_tokens"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), (key, a, b)
    assert ours_log[-1]["num_tokens"] > ours_log[0]["num_tokens"] > 0
    assert 0 < ours_log[-1]["mean_token_accuracy"] <= 1 and ours_log[-1]["entropy"] > 0
    assert ours._pending_counts == []  # everything read back by the last log
    assert ours._deferred(ours.model, {"attention_mask": None}, False) == (variant != "dft")
    assert len(calls) == (6 if variant == "own logits" else 0)
    plain = sft_setup.sft_trainer_class()
    assert plain.full_logits_devices == ("cuda",) and plain.full_logits_max == 1 << 26


def test_sft_config_copies_batches_without_a_host_sync(tmp_path):
    cfg = _tiny.tiny_cfg(tmp_path)
    cpu = sft.make_sft_config(cfg, tmp_path / "work", CPU)
    assert not cpu.logging_nan_inf_filter and not cpu.accelerator_config.non_blocking
