"""Stage 02: supervised fine-tuning on the gold worked solutions, and the quick dev check around it.

TRL's ``SFTTrainer`` does the training (``sft_setup.sft_trainer_class``: TRL's trainer reading its
step metrics back at logging time, not every step): prompt/completion pairs with the loss
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

Two neighbours hold what comes before the loop and what it resumes from:
``sft_setup`` (the training rows, the pre-tokenized dataset, TRL's
``SFTConfig`` from ``make_sft_config``, the trackers) and ``sft_resume``
(which Trainer checkpoint a run resumes from: same settings, complete, not
past the planned steps). Their public names are re-exported here.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import config as config_mod
from .answers import grade
from .artifacts import atomic_write_json, explain_disk_full, make_shareable
from .generation import GenerationResult, generate
from .modeling import count_params, quiet_progress, resolve_device, save_checkpoint, sft_dir
from .pretrained import apply_lora
from .progress import progress_line
from .prompts import build_prompt, completion_starts_in_think
from .sft_resume import (checkpoint_problem, checkpoint_step, last_checkpoint, resume_plan, trainer_dir,
                         trainer_signature)
from .sft_setup import (TRACKERS, build_dataset, check_report_to, make_sft_config, select_train_rows,
                        sft_trainer_class, tracking_dir, training_forwards)

__all__ = ["SFTResult", "build_dataset", "select_train_rows", "make_sft_config", "train_sft", "trainer_dir",
           "dev_check", "TRACKERS", "check_report_to", "tracking_dir", "checkpoint_problem"]


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
    compiled: str = ""  # whether the decoder layers ran compiled, and why (sft.compile)


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


def point_tensorboard(trainer, log_dir: Path) -> None:
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


def _progress_lines():
    """A Trainer callback printing one ``progress.progress_line`` per logging step (the pipeline streams them)."""
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
    signature = trainer_signature(cfg, rows)
    procs = _processes()
    main = procs is None or procs.is_main_process
    with _main_first(procs):  # several processes: rank 0 sets broken or foreign checkpoints aside first
        resume = last_checkpoint(work, signature, cfg.sft.resume)
        if main:
            with explain_disk_full(work, "training SFT and saving its Trainer checkpoints"):
                work.mkdir(parents=True, exist_ok=True)
                atomic_write_json(work / "looper_signature.json", signature)
    args = make_sft_config(cfg, work, device, progress and main)
    with explain_disk_full(work, "training SFT and saving its Trainer checkpoints"):
        with quiet_progress(), warnings.catch_warnings():
            # TRL 1.x asks for hub kernels instead of use_liger_kernel; those need the network (sft_setup.use_liger)
            warnings.filterwarnings("ignore", message=".*use_liger_kernel.*", category=FutureWarning)
            trainer = sft_trainer_class()(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                                 callbacks=[_share_checkpoints(), _progress_lines()])
            point_tensorboard(trainer, tracking_dir(cfg, "02_sft"))
            with _main_first(procs):
                resume, finished = resume_plan(trainer, resume, main)
            with training_forwards(model, cfg, device) as compiled_why:
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
                     resumed_from_step=checkpoint_step(Path(resume)) if resume else None,
                     n_params=n_params, compiled=compiled_why)


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
    from .artifacts import save_metrics
    from .modeling import build_or_load_base, free_memory, load_policy
    from .pipeline import stage_config
    from .progress import Timer

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
            "compiled_layers": result.compiled,
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
