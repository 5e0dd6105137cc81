"""What an SFT run trains on and with: the training rows, the tokenized dataset, TRL's ``SFTConfig``, the tracker.

``make_sft_config`` is the one place where the stage config becomes the
Trainer's arguments (batch, learning rate, schedule, saving, precision); tune
SFT there. ``check_report_to`` and ``tracking_dir`` serve PPO's tracker too.

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
import os
import random
import warnings
from pathlib import Path

import torch

from . import config as config_mod
from .compiled import CompiledLayers, compile_choice, decoder_layers
from .prompts import encode_completion, encode_prompt, sft_example

__all__ = ["TRACKERS", "check_report_to", "tracking_dir", "select_train_rows", "build_dataset", "make_sft_config",
           "loader_workers", "sft_trainer_class"]

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


def loader_workers(device: torch.device) -> int:
    """Data-loader processes for SFT: up to 4 on a GPU (leaving a core to the training loop), none on the CPU,
    where the cores are the ones training.

    >>> loader_workers(torch.device("cpu"))
    0
    """
    return min(4, max(0, (os.cpu_count() or 1) - 1)) if device.type == "cuda" else 0


def use_liger(cfg: config_mod.Config, device: torch.device) -> bool:
    """Whether SFT runs with liger-kernel's fused kernels (TRL's ``use_liger_kernel``): ``sft.liger``, a GPU,
    the package importable, a full-precision model trained in full (the `demo` case, where it was measured:
    76 -> 51 ms a step on one H200), and the layers not compiled (``sft.compile``, which fuses the same
    passes). LoRA and 4-bit bases keep the stock kernels: not measured.

    >>> from looper_utils.config import build
    >>> use_liger(build("demo", stage="sft"), torch.device("cpu"))
    False
    """
    import importlib.util

    return (cfg.sft.liger and device.type == "cuda" and not cfg.model.use_lora
            and cfg.model.quantization == "none" and not compile_sft(cfg, device)[0]
            and importlib.util.find_spec("liger_kernel") is not None)


def recompute(cfg: config_mod.Config, device: torch.device) -> bool:
    """Whether SFT recomputes activations (gradient checkpointing): on a GPU, for a LoRA or 4-bit base (the 8B)."""
    return device.type == "cuda" and (cfg.model.use_lora or cfg.model.quantization != "none")


def compile_sft(cfg: config_mod.Config, device: torch.device) -> tuple[bool, str]:
    """(compile the decoder layers?, why) for ``sft.compile`` (``compiled.compile_choice``): ``auto`` compiles on
    a GPU for a full-precision model trained in full (`demo`: 02's 1,565 steps in 82 s, 53 ms a step, against
    73 ms before; docs/benchmarks.md), where it replaces liger-kernel's fused RMSNorm, SwiGLU and RoPE (the
    compiler fuses the same passes).

    >>> from looper_utils.config import build
    >>> compile_sft(build("demo", stage="sft"), torch.device("cpu"))[0]
    False
    """
    return compile_choice(cfg.sft.compile, "sft.compile", device, checkpointing=recompute(cfg, device),
                          quantized=cfg.model.quantization != "none")


def _drop_padding_mask(module, args, kwargs):
    """Forward pre-hook: the decoder called without TRL's padding mask (see ``training_forwards``)."""
    if kwargs.get("attention_mask") is not None:
        kwargs["attention_mask"] = None
    return args, kwargs


@contextlib.contextmanager
def training_forwards(model, cfg: config_mod.Config, device: torch.device):
    """The forwards of 02's training steps, for the ``with`` block around ``trainer.train()``; yields why the
    layers are compiled or not (``compile_sft``).

    - the decoder layers compiled where ``compile_sft`` says (``compiled.CompiledLayers``);
    - on a GPU, the decoder called without the padding mask: TRL's collator pads every row on the right, so the
      causal mask alone keeps each real token from the padding after it (positions are 0, 1, 2, ... either way,
      and the padding's labels are -100), the decoder builds no [batch, 1, L, L] mask, and scaled-dot-product
      attention may take FlashAttention. The trainer still sees the mask (TRL counts tokens from it). On the CPU
      the masked path stays, which keeps `smoke`'s numbers those of earlier releases.

    Both are undone on exit: generation after training runs the model as it was.
    """
    on, why = compile_sft(cfg, device)
    compiled = CompiledLayers(decoder_layers(model)) if on else None
    hooks = []
    if device.type == "cuda":
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        hooks.append(base.get_decoder().register_forward_pre_hook(_drop_padding_mask, with_kwargs=True, prepend=True))
    try:
        with compiled.active() if compiled else contextlib.nullcontext():
            yield why
    finally:
        for h in hooks:
            h.remove()


_TRAINER_CLASS = None
# 2**26 logits (256 MiB in fp32): `demo` (128 rows x up to 512 tokens x 512 ids) is under it, the 8B's 128k
# vocabulary is far over it
_FULL_LOGITS_MAX = 1 << 26


def _token_stats(model, inputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log-prob of each label, entropy, label is the top token, label mask), [B, L-1] each, 0 where the label is
    -100: what TRL's fused head returns, from the model's own logits over every position. On a GPU TRL's head
    picks the labelled positions with a boolean index, whose size the CPU must wait for; for a small
    vocabulary the logits of every position cost less than that wait."""
    out = model(**{k: v for k, v in inputs.items() if k != "labels"})
    logits = out.logits[:, :-1].float()
    labels = inputs["labels"][:, 1:]
    mask = labels != -100
    logp = torch.log_softmax(logits, dim=-1)
    log_probs = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1).masked_fill(~mask, 0.0)
    with torch.no_grad():
        entropy = -(logp.exp() * logp).sum(-1).masked_fill(~mask, 0.0)
        is_top1 = (logits.argmax(-1) == labels) & mask
    return log_probs, entropy, is_top1, mask


def sft_trainer_class():
    """TRL's ``SFTTrainer`` with its per-step metrics read back from the GPU when they are logged, not every step.

    TRL's ``compute_loss`` turns the step's token entropy, token accuracy and token count into Python numbers
    between the forward and the backward pass: four host synchronisations a step, after which the GPU waits
    for the CPU to launch the backward; and on a GPU its fused head selects the labelled positions with a
    boolean index, one more. For `demo`'s small model, whose step is mostly launch-bound, that gap is a large
    part of the step (docs/benchmarks.md). This subclass computes the same loss, from the model's own logits
    on a GPU where the vocabulary is small (``_token_stats``; the 8B and the CPU keep TRL's fused head), and
    keeps the four counts on the device; ``log`` turns them into TRL's metrics (the same values, averaged over
    the same steps) just before TRL averages them. Any step that is not the plain causal-LM loss (a custom
    loss, label smoothing, DFT, a mixture-of-experts auxiliary loss, sequence parallelism, padding-free
    batches, evaluation) and a TRL without the fused head goes through TRL's own ``compute_loss``.

    Subclassing rather than writing a trainer: TRL keeps the data collation, completion-only labels, schedule,
    checkpoints and resume that 02 relies on.
    """
    global _TRAINER_CLASS
    if _TRAINER_CLASS is not None:
        return _TRAINER_CLASS
    import trl.trainer.sft_trainer as trl_sft

    fused_head = hasattr(trl_sft, "add_fused_lm_head")

    class DeferredMetricsSFTTrainer(trl_sft.SFTTrainer):
        # batch positions x vocabulary up to which a step takes the model's own logits instead of TRL's fused head,
        # on these devices (on the CPU TRL's head has no boolean index, and `smoke` keeps its earlier numbers)
        full_logits_max = _FULL_LOGITS_MAX
        full_logits_devices = ("cuda",)

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._pending_counts: list[torch.Tensor] = []  # one [processes, 4] row per step since the last log

        def _deferred(self, model, inputs, return_outputs) -> bool:
            return (fused_head and model.training and not return_outputs and self.compute_loss_func is None
                    and self.label_smoother is None and getattr(self.args, "loss_type", "nll") == "nll"
                    and not getattr(self, "aux_loss_enabled", False) and "attention_mask" in inputs
                    and getattr(self.accelerator, "parallelism_config", None) is None
                    and hasattr(self, "_total_train_tokens") and hasattr(self, "_tp_size"))

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if not self._deferred(model, inputs, return_outputs):
                return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                            num_items_in_batch=num_items_in_batch)
            inputs["use_cache"] = False
            vocab = self.model.get_output_embeddings().weight.shape[0]
            if (inputs["input_ids"].device.type in self.full_logits_devices
                    and inputs["input_ids"].numel() * vocab <= self.full_logits_max):
                log_probs, entropy, is_top1, label_mask = _token_stats(model, inputs)
            else:
                out = model(**inputs, fused_lm_head=True)
                log_probs, entropy, is_top1, label_mask = out.log_probs, out.entropy, out.is_top1, out.label_mask
            num_tokens = label_mask.sum() if num_items_in_batch is None else num_items_in_batch
            loss = -log_probs.sum() / torch.as_tensor(num_tokens).clamp(min=1)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * (self.accelerator.num_processes // self.get_tp_size())
            counts = torch.stack([label_mask.sum().double(), entropy.detach().sum().double(),
                                  is_top1.sum().double(), inputs["attention_mask"].sum().double()])
            # one row per process, gathered as TRL gathers its four numbers (the last batch of an epoch included)
            self._pending_counts.append(self.accelerator.gather_for_metrics(counts[None]))
            return loss

        def _flush_counts(self) -> None:
            pending = self._pending_counts
            if not pending:
                return
            rows = torch.stack([c.sum(0) for c in pending]).tolist()  # one read for all the steps
            pending.clear()
            metrics = self._metrics["train"]
            for valid, entropy, correct, tokens in rows:
                metrics["entropy"].append(entropy / valid if valid > 0 else 0.0)
                metrics["mean_token_accuracy"].append(correct / valid if valid > 0 else 0.0)
                self._total_train_tokens += int(tokens) // self._tp_size
            metrics["num_tokens"] = [self._total_train_tokens]

        def log(self, logs, *args, **kwargs):
            self._flush_counts()
            return super().log(logs, *args, **kwargs)

    _TRAINER_CLASS = DeferredMetricsSFTTrainer
    return _TRAINER_CLASS


def make_sft_config(cfg: config_mod.Config, output_dir: Path, device: torch.device, progress: bool = True):
    """TRL ``SFTConfig`` from the stage config; CPU runs get fp32, no gradient checkpointing.

    On a GPU, batches are collated by ``loader_workers`` background processes: for the demo's small
    model, padding 128 sequences in the training process was a third of each step (docs/benchmarks.md);
    they are copied to the GPU without a host sync; and liger-kernel's fused kernels run where ``use_liger``
    says.
    """
    from trl import SFTConfig

    s = cfg.sft
    cuda = device.type == "cuda"
    workers = loader_workers(device)
    # checkpointing trades compute for memory: worth it only for the 8B (LoRA/quantised) model on a GPU
    checkpointing = recompute(cfg, device)
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
            dataloader_pin_memory=cuda, dataloader_num_workers=workers, dataloader_persistent_workers=workers > 0,
            # batches copied to the GPU without waiting (from pinned memory), and no per-step NaN check of the
            # loss (a host sync; a NaN loss then shows in the logged loss rather than being averaged away)
            accelerator_config={"non_blocking": cuda}, logging_nan_inf_filter=False,
            use_liger_kernel=use_liger(cfg, device),
            report_to=check_report_to(s.report_to), seed=cfg.seed,
            data_seed=cfg.seed, disable_tqdm=not progress, run_name=f"{cfg.run_id}-02_sft", project="looper",
        )
