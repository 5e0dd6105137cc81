"""Stage 02: supervised fine-tuning on the gold worked solutions, and the quick dev check around it.

TRL's ``SFTTrainer`` does the training: prompt/completion pairs with the loss
on the completion only (``completion_only_loss``), full fine-tuning of the
tiny scratch model, LoRA / QLoRA through PEFT for the 8B model, packing as
an option, and resume from the last Trainer checkpoint
(``checkpoints/sft-trainer/checkpoint-N``) when one was written with the same
settings. The finished model (full weights or adapter), its tokenizer,
``looper_config.json`` and ``looper_state.json`` go to ``checkpoints/sft/``.
``sft.report_to`` sends the loss and learning rate to a tracker as well
(``tensorboard``: ``runs/<run_id>/tb/02_sft``, see ``check_report_to``).

Several processes: ``accelerate launch -m looper_utils.sft --profile ...``
(``main``). The Trainer splits each global batch across the processes and
averages the gradients; rank 0 alone sets old checkpoints aside, writes them,
saves ``checkpoints/sft`` and runs the dev check. The notebook's one process
starts no process group.

The Trainer writes a checkpoint file by file, so a run killed (or out of
disk) while saving leaves a partial ``checkpoint-N``. Only complete ones are
resumed: a partial one is renamed ``broken-checkpoint-N`` with a warning and
the previous complete one (or the start) is used. A checkpoint already at the
last step is loaded, not trained on: the Trainer would take one more step.

One departure from handing TRL the text pairs: the examples are tokenized
here with ``prompts.encode_prompt`` + ``prompts.encode_completion`` and passed
as ``input_ids`` + ``completion_mask``. TRL would tokenize ``prompt`` and
``prompt + completion`` with the tokenizer's automatic special tokens, which
doubles the BOS that a chat template already writes and may merge tokens
across the prompt/completion boundary; pre-tokenizing guarantees that SFT
trains on exactly the ids that ``generation.generate`` later feeds and that
PPO scores.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import random
import re
import shutil
import sys
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import config as config_mod
from .answers import grade
from .artifacts import atomic_write_json, explain_disk_full, make_shareable, progress_line, read_json
from .data import rows_digest
from .generation import GenerationResult, generate
from .modeling import count_params, quiet_progress, resolve_device, save_checkpoint, sft_dir
from .pretrained import apply_lora
from .prompts import build_prompt, completion_starts_in_think, encode_completion, encode_prompt, sft_example

__all__ = ["SFTResult", "build_dataset", "select_train_rows", "make_sft_config", "train_sft", "trainer_dir",
           "dev_check", "TRACKERS", "check_report_to", "tracking_dir"]

# Settings whose change makes an old Trainer checkpoint a different run (never resumed into).
_TRAIN_KEYS = ("learning_rate", "batch_size", "grad_accum", "max_length", "packing", "warmup_ratio",
               "weight_decay", "n_train", "lr_scheduler")


@dataclass
class SFTResult:
    """What the notebook reports about a training run."""

    output_dir: Path
    loss_history: list[dict[str, float]] = field(default_factory=list)  # {step, loss}
    train_seconds: float = 0.0
    train_steps: int = 0
    final_loss: float | None = None
    n_examples: int = 0
    n_truncated: int = 0
    resumed_from_step: int | None = None
    n_params: dict[str, int] = field(default_factory=dict)


# report_to value -> (the package it imports, how to install it)
TRACKERS = {"none": (None, ""),
            "tensorboard": ("tensorboard", "pip install -e '.[track]' (or pip install tensorboard)"),
            "wandb": ("wandb", "pip install wandb"), "trackio": ("trackio", "pip install trackio")}


def check_report_to(value: str, key: str = "sft.report_to") -> str:
    """``value`` if it names a tracker this project supports and whose package is installed.

    Checked before training starts: the Trainer and accelerate would fail
    later, or silently log nowhere.

    >>> check_report_to("none")
    'none'
    >>> check_report_to("mlflow", "ppo.report_to")
    Traceback (most recent call last):
    ...
    ValueError: ppo.report_to='mlflow' is not a supported tracker; use one of none, tensorboard, wandb, trackio
    """
    if value not in TRACKERS:
        raise ValueError(f"{key}={value!r} is not a supported tracker; use one of {', '.join(TRACKERS)}")
    module, install = TRACKERS[value]
    if module is not None and importlib.util.find_spec(module) is None:
        raise ImportError(f"{key}={value!r} needs the {module} package, which is not installed: {install}; "
                          f"or set {key}='none'")
    return value


def tracking_dir(cfg: config_mod.Config, stage: str) -> Path:
    """The TensorBoard folder of a stage (``02_sft``, ``05_ppo``); ``tensorboard --logdir runs/<run_id>`` shows all."""
    return cfg.run_dir / "tb" / stage


def trainer_dir(cfg: config_mod.Config) -> Path:
    """Where the Trainer keeps its resumable checkpoints (``checkpoint-N``)."""
    return cfg.checkpoints_dir / "sft-trainer"


def select_train_rows(rows: list[dict], n_train: int, seed: int) -> list[dict]:
    """All rows (``n_train=0``) or a seeded sample of ``n_train``."""
    if n_train <= 0 or n_train >= len(rows):
        return list(rows)
    return random.Random(f"sft:{seed}").sample(list(rows), n_train)


def build_dataset(rows: list[dict], tokenizer, style: str, max_length: int):
    """A ``datasets.Dataset`` of ``input_ids`` + ``completion_mask`` and the number of over-long rows."""
    from datasets import Dataset

    ids, masks, too_long = [], [], 0
    for row in rows:
        ex = sft_example(row, tokenizer, style)
        p = encode_prompt(tokenizer, ex["prompt"])
        c = encode_completion(tokenizer, ex["completion"])
        too_long += len(p) + len(c) > max_length
        ids.append(p + c)
        masks.append([0] * len(p) + [1] * len(c))
    return Dataset.from_dict({"input_ids": ids, "completion_mask": masks}), too_long


def make_sft_config(cfg: config_mod.Config, output_dir: Path, device: torch.device, progress: bool = True):
    """TRL ``SFTConfig`` from the stage config; CPU runs get fp32, no gradient checkpointing."""
    from trl import SFTConfig

    s = cfg.sft
    cuda = device.type == "cuda"
    # checkpointing trades compute for memory: worth it only for the 8B (LoRA/quantised) model on a GPU
    checkpointing = cuda and (cfg.model.use_lora or cfg.model.quantization != "none")
    with warnings.catch_warnings():  # newer transformers renamed the flag; the old name works on all 5.x
        warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*", category=FutureWarning)
        return SFTConfig(
            output_dir=str(output_dir), num_train_epochs=s.epochs, max_steps=s.max_steps,
            per_device_train_batch_size=s.batch_size, gradient_accumulation_steps=s.grad_accum,
            learning_rate=s.learning_rate, warmup_steps=s.warmup_ratio, weight_decay=s.weight_decay,
            lr_scheduler_type=s.lr_scheduler, logging_steps=s.logging_steps, logging_first_step=True,
            save_strategy="steps", save_steps=s.save_steps, save_total_limit=1,
            max_length=s.max_length, packing=s.packing, completion_only_loss=True,
            use_cpu=not cuda, bf16=cuda and torch.cuda.is_bf16_supported(),
            gradient_checkpointing=checkpointing, optim="adamw_torch_fused" if cuda else "adamw_torch",
            dataloader_pin_memory=cuda, report_to=check_report_to(s.report_to), seed=cfg.seed,
            data_seed=cfg.seed, disable_tqdm=not progress, run_name=f"{cfg.run_id}-02_sft", project="looper",
        )


def _signature(cfg: config_mod.Config, rows: list[dict]) -> dict[str, Any]:
    """What must match for an old Trainer checkpoint to be resumed: settings and training rows."""
    return {"seed": cfg.seed, "model": config_mod.model_identity(cfg),
            "sft": {k: getattr(cfg.sft, k) for k in _TRAIN_KEYS}, "rows": rows_digest(rows)}


def _step(ckpt: Path) -> int:
    return int(ckpt.name.rsplit("-", 1)[1])


def checkpoint_problem(ckpt: Path) -> str | None:
    """Why a Trainer ``checkpoint-N`` folder cannot be resumed, or None if it is complete.

    The Trainer writes the weights, then the optimizer, scheduler and RNG
    state, and ``trainer_state.json`` last; each file must also be whole (a
    readable safetensors header, a torch zip with its directory at the end).
    """
    from safetensors import safe_open

    state = ckpt / "trainer_state.json"
    if not state.is_file():
        return "trainer_state.json is missing"
    try:
        json.loads(state.read_text(encoding="utf-8"))["global_step"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return "trainer_state.json is cut short or unreadable"
    weights = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors",
               "pytorch_model.bin", "adapter_model.bin")
    if not any((ckpt / w).is_file() for w in weights):
        return "it holds no model weights (model.safetensors or adapter_model.safetensors)"
    for name in ("optimizer.pt", "scheduler.pt"):
        if not (ckpt / name).is_file():
            return f"{name} is missing"
    index = ckpt / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (ValueError, KeyError, TypeError, AttributeError):
            return f"{index.name} is unreadable"
        missing = sorted(x for x in shards if not (ckpt / x).is_file())
        if missing:
            return f"weight shard {missing[0]} is missing"
    for f in sorted(ckpt.glob("*.safetensors")):
        try:
            with safe_open(str(f), framework="pt") as fh:
                fh.keys()
        except Exception as exc:  # SafetensorError: truncated, empty or garbled
            return f"{f.name} is unreadable ({exc})"
    for f in sorted([*ckpt.glob("*.pt"), *ckpt.glob("*.pth"), *ckpt.glob("*.bin")]):
        if not zipfile.is_zipfile(f):  # torch.save writes a zip whose directory comes last
            return f"{f.name} is cut short"
    return None


def _last_checkpoint(work: Path, signature: dict[str, Any], resume: bool) -> str | None:
    """The latest complete Trainer checkpoint to resume from, if it belongs to a run with the same settings.

    Partial checkpoints are renamed ``broken-checkpoint-N`` (a name the
    Trainer neither resumes nor rotates) with a warning.
    """
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    if not work.is_dir():
        return None
    found = sorted((p for p in work.iterdir() if p.is_dir() and re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-\d+", p.name)),
                   key=_step, reverse=True)
    if not found:
        return None
    sig_file = work / "looper_signature.json"
    if not resume or not sig_file.is_file() or read_json(sig_file) != signature:
        why = "sft.resume is off" if not resume else "it was written with other settings or data"
        warnings.warn(f"{work}: not resuming from {found[0].name} because {why}; training from the start",
                      stacklevel=3)
        shutil.rmtree(work)
        return None
    broken = []
    for ckpt in found:
        why = checkpoint_problem(ckpt)
        if why is None:
            break
        aside = ckpt.with_name(f"broken-{ckpt.name}")
        shutil.rmtree(aside, ignore_errors=True)  # an older broken copy of the same step
        os.replace(ckpt, aside)
        broken.append((ckpt, aside, why))
    else:
        ckpt = None
    then = f"resuming from {ckpt.name}" if ckpt else "training from the start"
    for old, aside, why in broken:
        warnings.warn(f"{old} is incomplete ({why}): a run was killed or ran out of disk while saving it; "
                      f"moved it to {aside.name} (delete it to free the space) and {then}", stacklevel=3)
    return str(ckpt) if ckpt else None


def _planned_steps(trainer) -> int:
    """The optimizer steps ``trainer.train()`` will run to, as the Trainer counts them."""
    args = trainer.args
    if args.max_steps > 0:
        return args.max_steps
    per_epoch = max(math.ceil(len(trainer.get_train_dataloader()) / args.gradient_accumulation_steps), 1)
    return math.ceil(args.num_train_epochs * per_epoch)


def _share_checkpoints():
    """A Trainer callback giving each saved ``checkpoint-N`` the umask's permissions (safetensors writes 0600)."""
    from transformers import TrainerCallback

    class ShareCheckpoints(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if not state.is_world_process_zero:  # rank 0 alone writes (and owns) the checkpoint
                return
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                make_shareable(folder)

    return ShareCheckpoints()


def _point_tensorboard(trainer, log_dir: Path) -> None:
    """Send the Trainer's TensorBoard events to ``log_dir``.

    Its default, ``<output_dir>/runs/<date>_<host>``, would put them among
    the resumable checkpoints, which a changed setting deletes.
    """
    from transformers.integrations import TensorBoardCallback

    for cb in trainer.callback_handler.callbacks:
        if isinstance(cb, TensorBoardCallback):
            cb.logging_dir = str(log_dir)


def _processes():
    """accelerate's ``PartialState`` when this is one of several launched processes, else None (one process:
    the notebook path, which never starts a process group)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import PartialState

    return PartialState()


def _main_first(state):
    """A block rank 0 runs first and alone (it renames and deletes checkpoint folders), the others after it."""
    return state.main_process_first() if state is not None else contextlib.nullcontext()


def _resume_plan(trainer, resume: str | None, main: bool = True) -> tuple[str | None, bool]:
    """(checkpoint to resume, whether it already holds every planned step).

    A finished checkpoint is loaded into the trainer instead of resumed:
    resuming at the last step makes the Trainer take one step more. One past
    the planned steps (``max_steps`` or ``epochs`` lowered since) is a
    different run and is set aside like one with other settings.
    """
    from transformers import TrainerState

    if resume is None:
        return None, False
    state = TrainerState.load_from_json(str(Path(resume) / "trainer_state.json"))
    planned = _planned_steps(trainer)
    if state.global_step < planned:
        return resume, False
    if state.global_step > planned:
        warnings.warn(f"{Path(resume).parent}: not resuming from {Path(resume).name} because it is past the "
                      f"{planned} steps now asked for (sft.max_steps / sft.epochs); training from the start",
                      stacklevel=3)
        for old in Path(resume).parent.glob("checkpoint-*"):
            if main:
                shutil.rmtree(old)
        return None, False
    trainer._load_from_checkpoint(resume)
    trainer.state = state
    return resume, True


def _progress_lines():
    """A Trainer callback printing one ``artifacts.progress_line`` per logging step (the pipeline streams them)."""
    import time

    from transformers import TrainerCallback

    class ProgressLines(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.t0, self.step0 = time.perf_counter(), state.global_step

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and state.is_world_process_zero and "loss" in logs and state.max_steps:
                note = f"loss {logs['loss']:.4f}" + (f", resumed at step {self.step0}" if self.step0 else "")
                print(progress_line("sft step", state.global_step - self.step0, state.max_steps - self.step0,
                                    self.t0, note), flush=True)

    return ProgressLines()


def train_sft(cfg: config_mod.Config, model, tokenizer, train_rows: list[dict], *,
              device: torch.device | None = None, output_dir: Path | None = None,
              progress: bool = True) -> SFTResult:
    """Fine-tune ``model`` on ``train_rows`` and save it to ``checkpoints/sft`` (or ``output_dir``).

    A disk that fills up while saving raises ``artifacts.DiskFullError``
    ("no space left on <path> ...").
    """
    from trl import SFTTrainer

    device = device or resolve_device(cfg.device)
    out = Path(output_dir) if output_dir is not None else sft_dir(cfg)
    work = trainer_dir(cfg) if output_dir is None else out.with_name(out.name + "-trainer")
    rows = select_train_rows(train_rows, cfg.sft.n_train, cfg.seed)
    dataset, too_long = build_dataset(rows, tokenizer, cfg.model.prompt_style, cfg.sft.max_length)
    if too_long:
        warnings.warn(f"{too_long} of {len(rows)} SFT examples are longer than sft.max_length="
                      f"{cfg.sft.max_length} tokens and lose their end (the final answer); raise "
                      "sft.max_length", stacklevel=2)
    if cfg.model.use_lora and not hasattr(model, "peft_config"):
        checkpointing = device.type == "cuda"
        model = apply_lora(model, cfg.model, gradient_checkpointing=checkpointing)
    model.train()
    signature = _signature(cfg, rows)
    procs = _processes()
    main = procs is None or procs.is_main_process
    with _main_first(procs):  # several processes: rank 0 sets broken or foreign checkpoints aside first
        resume = _last_checkpoint(work, signature, cfg.sft.resume)
        if main:
            with explain_disk_full(work, "training SFT and saving its Trainer checkpoints"):
                work.mkdir(parents=True, exist_ok=True)
                atomic_write_json(work / "looper_signature.json", signature)
    args = make_sft_config(cfg, work, device, progress and main)
    with explain_disk_full(work, "training SFT and saving its Trainer checkpoints"):
        with quiet_progress():
            trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                                 callbacks=[_share_checkpoints(), _progress_lines()])
            _point_tensorboard(trainer, tracking_dir(cfg, "02_sft"))
            with _main_first(procs):
                resume, finished = _resume_plan(trainer, resume, main)
            seconds = 0.0 if finished else \
                float(trainer.train(resume_from_checkpoint=resume).metrics["train_runtime"])
    model = trainer.model
    model.eval()
    history = [{"step": int(h["step"]), "loss": float(h["loss"])}
               for h in trainer.state.log_history if "loss" in h]
    step = int(trainer.state.global_step)
    n_params = count_params(model)
    if main:  # the weights are the same on every rank (gradients are averaged); one copy is written
        with explain_disk_full(out.parent, f"saving the SFT model to {out}"):
            save_checkpoint(out, model, tokenizer, cfg, stage="sft", step=step,
                            extra={"train_loss": history[-1]["loss"] if history else None, "n_examples": len(rows)})
    if procs is not None:
        procs.wait_for_everyone()  # no rank reads checkpoints/sft before rank 0 has written it
    return SFTResult(output_dir=out, loss_history=history, train_seconds=seconds,
                     train_steps=step, final_loss=history[-1]["loss"] if history else None,
                     n_examples=len(rows), n_truncated=too_long,
                     resumed_from_step=_step(Path(resume)) if resume else None,
                     n_params=n_params)


def dev_check(model, tokenizer, rows: list[dict], *, style: str, max_new_tokens: int, batch_size: int,
              desc: str = "dev", progress: bool = True, backend: str = "hf"
              ) -> tuple[float, list[dict], GenerationResult]:
    """Greedy dev accuracy with the one grader, per-problem records, and the generation result.

    The grader runs in ``flexible`` mode with ``think`` set by the prompt
    convention (``answers.grade``); each record also says whether the strict
    ``#### N`` reading was correct, whether the format was (``answers.format_ok``,
    the rule the reward pays for) and how the sequence ended.
    """
    think = completion_starts_in_think(tokenizer, style)
    prompts = [build_prompt(r["question"], tokenizer, style) for r in rows]
    res = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                   temperature=0.0, progress=progress, desc=desc, backend=backend)
    records = []
    for r, s in zip(rows, res.samples):
        g = grade(s.text, r["gold"], think=think)
        records.append({"id": r["id"], "gold": r["gold"], "predicted": g["extracted"], "correct": g["correct"],
                        "correct_strict": g["correct_strict"], "format_ok": g["format_ok"],
                        "finish": s.finish_reason, "n_tokens": s.n_tokens,
                        "question": r["question"], "completion": s.text})
    acc = sum(x["correct"] for x in records) / len(records) if records else 0.0
    return acc, records, res


def main(argv: list[str] | None = None) -> int:
    """``python -m looper_utils.sft`` / ``accelerate launch -m looper_utils.sft``: 02's training without the notebook.

    Builds the config, reads ``data/`` train rows, builds (rank 0, once) or loads the base, trains with
    ``train_sft`` and saves ``checkpoints/sft`` from rank 0. With several processes each takes
    ``sft.batch_size`` sequences per step (the global batch is ``batch_size x processes x grad_accum``).
    Rank 0 alone then runs the dev check on ``sft.n_dev_eval`` problems (0 skips it) and writes
    ``runs/<run_id>/metrics/02_sft.json``.
    """
    from . import data
    from .artifacts import Timer, save_metrics
    from .modeling import build_or_load_base, free_memory, load_policy
    from .pipeline import stage_config

    cfg = stage_config("looper_utils.sft", "SFT on the gold worked solutions", "sft", argv)
    check_report_to(cfg.sft.report_to)
    files = data.data_files(cfg.data_dir)
    train_rows = data.read_jsonl(files["train"])
    procs = None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        procs = PartialState(cpu=cfg.device == "cpu" or not torch.cuda.is_available())
    main_rank = procs is None or procs.is_main_process
    device = procs.device if procs is not None else resolve_device(cfg.device)
    timer = Timer()
    with _main_first(procs), timer.section("base"):  # a scratch base is built once, by rank 0
        model, tokenizer = build_or_load_base(cfg, train_rows, device)
    with timer.section("train"):
        result = train_sft(cfg, model, tokenizer, train_rows, device=device, progress=main_rank)
    world = procs.num_processes if procs is not None else 1
    if main_rank:
        metrics: dict[str, Any] = {
            "train_seconds": result.train_seconds, "train_steps": result.train_steps,
            "final_loss": result.final_loss, "n_params": result.n_params["total"],
            "n_trainable_params": result.n_params["trainable"], "n_train_examples": result.n_examples,
            "truncated_examples": result.n_truncated, "resumed_from_step": result.resumed_from_step,
            "device": str(device), "n_processes": world, "global_batch": cfg.sft.batch_size * world * cfg.sft.grad_accum,
        }
        if cfg.sft.n_dev_eval:
            dev_rows = data.read_jsonl(files["dev"])[:cfg.sft.n_dev_eval]
            del model
            free_memory()
            model, tokenizer = load_policy(cfg, "sft", device)
            with timer.section("eval_after"):
                acc, records, _ = dev_check(model, tokenizer, dev_rows, style=cfg.model.prompt_style,
                                            max_new_tokens=cfg.sft.max_new_tokens, batch_size=cfg.sft.eval_batch_size,
                                            desc="dev (sft)", progress=False, backend=cfg.rollouts.backend)
            metrics.update(dev_accuracy_after=acc, n_dev=len(records),
                           dev_accuracy_after_strict=sum(r["correct_strict"] for r in records) / max(1, len(records)))
        metrics["stage_seconds"] = timer.totals
        save_metrics(cfg.run_dir, "02_sft", metrics)
        print(json.dumps(metrics, default=str), flush=True)
        print(f"done: {result.train_steps} steps on {world} process(es), model in {result.output_dir}", flush=True)
    if procs is not None:
        procs.wait_for_everyone()
        procs.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
