"""Stage 02: supervised fine-tuning on the gold worked solutions, and the quick dev check around it.

TRL's ``SFTTrainer`` does the training: prompt/completion pairs with the loss
on the completion only (``completion_only_loss``), full fine-tuning of the
tiny scratch model, LoRA / QLoRA through PEFT for the 8B model, packing as
an option, and resume from the last Trainer checkpoint
(``checkpoints/sft-trainer/checkpoint-N``) when one was written with the same
settings. The finished model (full weights or adapter), its tokenizer,
``looper_config.json`` and ``looper_state.json`` go to ``checkpoints/sft/``.

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

import random
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import config as config_mod
from .answers import extract_answer, is_correct
from .artifacts import atomic_write_json, read_json
from .data import rows_digest
from .generation import GenerationResult, generate
from .modeling import apply_lora, count_params, quiet_progress, resolve_device, save_checkpoint, sft_dir
from .prompts import build_prompt, completion_starts_in_think, encode_completion, encode_prompt, sft_example

__all__ = ["SFTResult", "build_dataset", "select_train_rows", "make_sft_config", "train_sft", "trainer_dir",
           "dev_check"]

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
            dataloader_pin_memory=cuda, report_to="none", seed=cfg.seed, data_seed=cfg.seed,
            disable_tqdm=not progress,
        )


def _signature(cfg: config_mod.Config, rows: list[dict]) -> dict[str, Any]:
    """What must match for an old Trainer checkpoint to be resumed: settings and training rows."""
    return {"seed": cfg.seed, "model": config_mod.model_identity(cfg),
            "sft": {k: getattr(cfg.sft, k) for k in _TRAIN_KEYS}, "rows": rows_digest(rows)}


def _last_checkpoint(work: Path, signature: dict[str, Any], resume: bool) -> str | None:
    """The Trainer checkpoint to resume from, if it belongs to a run with the same settings."""
    from transformers.trainer_utils import get_last_checkpoint

    if not work.is_dir():
        return None
    last = get_last_checkpoint(str(work))
    sig_file = work / "looper_signature.json"
    if last is None:
        return None
    if not resume or not sig_file.is_file() or read_json(sig_file) != signature:
        why = "sft.resume is off" if not resume else "it was written with other settings or data"
        warnings.warn(f"{work}: not resuming from {Path(last).name} because {why}; training from the start",
                      stacklevel=3)
        shutil.rmtree(work)
        return None
    return last


def train_sft(cfg: config_mod.Config, model, tokenizer, train_rows: list[dict], *,
              device: torch.device | None = None, output_dir: Path | None = None,
              progress: bool = True) -> SFTResult:
    """Fine-tune ``model`` on ``train_rows`` and save it to ``checkpoints/sft`` (or ``output_dir``)."""
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
    resume = _last_checkpoint(work, signature, cfg.sft.resume)
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_json(work / "looper_signature.json", signature)
    args = make_sft_config(cfg, work, device, progress)
    with quiet_progress():
        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
        result = trainer.train(resume_from_checkpoint=resume)
    model = trainer.model
    model.eval()
    history = [{"step": int(h["step"]), "loss": float(h["loss"])}
               for h in trainer.state.log_history if "loss" in h]
    step = int(trainer.state.global_step)
    n_params = count_params(model)
    save_checkpoint(out, model, tokenizer, cfg, stage="sft", step=step,
                    extra={"train_loss": history[-1]["loss"] if history else None, "n_examples": len(rows)})
    return SFTResult(output_dir=out, loss_history=history, train_seconds=float(result.metrics["train_runtime"]),
                     train_steps=step, final_loss=history[-1]["loss"] if history else None,
                     n_examples=len(rows), n_truncated=too_long,
                     resumed_from_step=int(Path(resume).name.split("-")[-1]) if resume else None,
                     n_params=n_params)


def dev_check(model, tokenizer, rows: list[dict], *, style: str, max_new_tokens: int, batch_size: int,
              desc: str = "dev", progress: bool = True, backend: str = "hf"
              ) -> tuple[float, list[dict], GenerationResult]:
    """Greedy dev accuracy with the one grader, per-problem records, and the generation result.

    The grader runs in ``flexible`` mode with ``think`` set by the prompt
    convention; each record also says whether the strict ``#### N`` reading
    was correct and how the sequence ended.
    """
    think = completion_starts_in_think(tokenizer, style)
    prompts = [build_prompt(r["question"], tokenizer, style) for r in rows]
    res = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                   temperature=0.0, progress=progress, desc=desc, backend=backend)
    records = []
    for r, s in zip(rows, res.samples):
        records.append({"id": r["id"], "gold": r["gold"],
                        "predicted": extract_answer(s.text, mode="flexible", think=think),
                        "correct": is_correct(s.text, r["gold"], mode="flexible", think=think),
                        "correct_strict": is_correct(s.text, r["gold"], mode="strict", think=think),
                        "finish": s.finish_reason, "n_tokens": s.n_tokens,
                        "question": r["question"], "completion": s.text})
    acc = sum(x["correct"] for x in records) / len(records) if records else 0.0
    return acc, records, res
