"""Stage 05 with TRL's ``GRPOTrainer`` instead of our loop (``ppo.trainer="trl-grpo"``), to compare the two.

Why TRL here: our PPO with ``advantage="group"`` is GRPO-style already, so TRL's GRPO, started from the
same SFT checkpoint, trained on the same Regime W reward and given the same number of sampled
completions, says what our own loop buys (dev accuracy reached, wall time). TRL's GRPO takes a
rule-based reward as it is (``regime_w.reward_fn`` follows its calling convention), so nothing but
the settings has to be translated.

What maps to what (TRL 1.16 ``GRPOConfig``; TRL counts completions, not prompts, in its batches):

- ``ppo.k`` -> ``num_generations``; one round of sampling is one of our iterations:
  ``generation_batch_size = prompts_per_iter * k`` completions of ``prompts_per_iter`` prompts;
- ``ppo.minibatch_size`` -> ``per_device_train_batch_size`` (the largest divisor of ``prompts_per_iter * k``
  not above it) with ``gradient_accumulation_steps=1``: one optimiser step per minibatch, as ours, and
  ``steps_per_generation`` minibatches per round;
- ``ppo.ppo_epochs`` -> ``num_iterations`` (passes over each round's completions);
- ``ppo.iterations`` -> ``max_steps = iterations * steps_per_generation * ppo_epochs`` optimiser steps;
- ``clip_range`` -> ``epsilon``, ``kl_coef`` -> ``beta`` (k3 estimator, as our ``group`` loss),
  ``ent_coef`` -> ``entropy_coef``, ``max_new_tokens`` -> ``max_completion_length``; ``temperature``,
  ``learning_rate`` (with ``lr_schedule`` and ``warmup_iterations``), ``max_grad_norm`` as they are;
- ``loss_type="bnpo"`` (token mean over the minibatch) and ``scale_rewards="group"`` are our
  ``policy_loss`` and ``group_advantages``;
- the policy is the LoRA adapter ours trains (``ppo.model``: ``lora_r``, ``lora_alpha``, all linear layers,
  or the SFT adapter itself over a pretrained base), the reference the SFT weights.

What does not map: the bandit (TRL draws the prompts uniformly, shuffled), the critic (``gae``), the
rollout engine (TRL samples with Hugging Face ``generate``), resume, several processes.

The greedy dev check runs at our cadence: after every ``ppo.eval_every`` rounds of sampling (every
``eval_every * steps_per_iteration`` optimiser steps) and after the last, timed apart from training
(``dev_curve`` in the metrics, ``dev_accuracy`` on the round's line of the log).

The result goes where 06 reads ours: ``checkpoints/ppo/last`` holds the policy adapter, the config, the
state and the resume signature; no trainer state, so our PPO never continues it (it sets it aside).
"""
from __future__ import annotations

import json
import math
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from .. import modeling, prompts
from ..artifacts import atomic_write_text
from ..config import Config
from ..progress import progress_line
from ..regime_w.reward import reward_fn
from .model import load_policy_base, use_bf16
from .resume import move_aside, resume_signature, write_checkpoint

__all__ = ["grpo_batch", "make_grpo_config", "regime_w_reward", "grpo_dataset", "train_trl_grpo", "LOG_NAME"]

LOG_NAME = "trl_grpo_log.jsonl"  # TRL's log history, one line per round of sampling
ADAPTER = "default"  # the adapter name TRL's GRPOTrainer gives its PEFT reference ("ref") a copy of


def grpo_batch(cfg: Config) -> dict[str, int]:
    """How one of our iterations is laid out in TRL's counts (completions and optimiser steps).

    >>> from looper_utils.config import smoke
    >>> cfg = smoke().override(stage="ppo", prompts_per_iter=6, k=4, minibatch_size=10, ppo_epochs=2, iterations=3)
    >>> b = grpo_batch(cfg)
    >>> b["generation_batch_size"], b["per_device_train_batch_size"], b["steps_per_generation"], b["max_steps"]
    (24, 8, 3, 18)
    """
    p = cfg.ppo
    total = p.prompts_per_iter * p.k
    per_device = max(d for d in range(1, min(p.minibatch_size, total) + 1) if total % d == 0)
    per_gen = total // per_device
    return {"generation_batch_size": total, "per_device_train_batch_size": per_device, "steps_per_generation": per_gen,
            "steps_per_iteration": per_gen * p.ppo_epochs, "max_steps": p.iterations * per_gen * p.ppo_epochs}


def make_grpo_config(cfg: Config, output_dir: Path, device: torch.device, progress: bool = True):
    """TRL's ``GRPOConfig`` for ``cfg.ppo`` (the module docstring lists the mapping)."""
    from trl import GRPOConfig

    from ..sft_setup import check_report_to

    p, b = cfg.ppo, grpo_batch(cfg)
    cuda = device.type == "cuda"
    with warnings.catch_warnings():  # newer transformers renamed the flag; the old name works on all 5.x
        warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*", category=FutureWarning)
        return GRPOConfig(
            output_dir=str(output_dir), max_steps=b["max_steps"], num_generations=p.k,
            generation_batch_size=b["generation_batch_size"],
            per_device_train_batch_size=b["per_device_train_batch_size"],
            gradient_accumulation_steps=1, num_iterations=p.ppo_epochs, max_completion_length=p.max_new_tokens,
            temperature=p.temperature, top_p=1.0, top_k=0, learning_rate=p.learning_rate, weight_decay=0.0,
            lr_scheduler_type="linear" if p.lr_schedule == "linear" else "constant_with_warmup",
            warmup_steps=round(b["max_steps"] * p.warmup_iterations / p.iterations), max_grad_norm=p.max_grad_norm,
            beta=p.kl_coef, epsilon=p.clip_range, entropy_coef=p.ent_coef, loss_type="bnpo", scale_rewards="group",
            use_vllm=False, use_cpu=not cuda, bf16=use_bf16(cfg, device),
            gradient_checkpointing=cuda and p.gradient_checkpointing, logging_steps=b["steps_per_iteration"],
            save_strategy="no", report_to=check_report_to(p.report_to, "ppo.report_to"), seed=cfg.seed,
            data_seed=cfg.seed, disable_tqdm=not progress, run_name=f"{cfg.run_id}-05_ppo-trl-grpo", project="looper",
            dataloader_pin_memory=cuda, log_completions=False,
        )


def regime_w_reward(cfg: Config, think: bool, stop_ids: list[int]) -> Callable[..., list[float]]:
    """Regime W as TRL calls a reward (``completions``, ``completion_ids`` and the dataset's ``gold``).

    TRL passes no finish reason: a completion whose last token is not a stop token was cut at
    ``max_completion_length``, the ``length`` of our sampler. ``think`` and the weights W are the run's.

    >>> from looper_utils.config import smoke
    >>> f = regime_w_reward(smoke(), False, [2])
    >>> good = "3*4=<<3*4=12>>12\\n#### 12"
    >>> [round(r, 3) for r in f(completions=[good, good], gold=["12", "12"], completion_ids=[[5, 2], [5, 6]])]
    [1.3, 0.1]
    """
    stop = set(stop_ids)

    def regime_w(completions: list, gold: list, completion_ids: list[list[int]], **_: Any) -> list[float]:
        finish = ["eos" if ids and ids[-1] in stop else "length" for ids in completion_ids]
        return reward_fn(completions, gold, finish_reasons=finish, think=think, weights=cfg.reward)

    return regime_w


def _trl_prompt(tokenizer, prompt: str) -> Callable[[str], str]:
    """The change of prompt text after which TRL's tokenization (``tokenizer(text)``, special tokens added)
    gives our prompt ids (``prompts.encode_prompt``: BOS once)."""
    want, bos = prompts.encode_prompt(tokenizer, prompt), tokenizer.bos_token or ""
    for fix in (lambda t: t, lambda t: t.removeprefix(bos), lambda t: bos + t):
        if list(tokenizer(fix(prompt))["input_ids"]) == want:
            return fix
    raise ValueError(f"{getattr(tokenizer, 'name_or_path', 'the tokenizer')}: TRL would not tokenize the prompt as our "
                     "PPO does (prompts.encode_prompt), with or without the BOS text; use ppo.trainer='ours'")


def grpo_dataset(rows: list[dict], tokenizer, style: str):
    """A ``datasets.Dataset`` of ``prompt`` (what TRL tokenizes into our prompt ids), ``gold`` and ``id``."""
    from datasets import Dataset

    texts = [prompts.build_prompt(r["question"], tokenizer, style) for r in rows]
    fix = _trl_prompt(tokenizer, texts[0])
    return Dataset.from_list([{"prompt": fix(t), "gold": str(r["gold"]), "id": str(r["id"])}
                              for t, r in zip(texts, rows)])


def _progress_lines(total: int, per_iteration: int):
    """A Trainer callback printing one ``progress_line`` per round of sampling (the pipeline streams them)."""
    from transformers import TrainerCallback

    class ProgressLines(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.t0 = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "reward" in logs:
                print(progress_line("grpo iteration", state.global_step // per_iteration, total, self.t0,
                                    f"reward {logs['reward']:.3f}, kl {logs.get('kl', 0.0):.4f}"), flush=True)

    return ProgressLines()


def _dev_check(cfg: Config, model, tokenizer, rows: list[dict]) -> tuple[float, list[bool]]:
    """Greedy dev accuracy and per-problem flags with the check ``PPOTrainer.dev_accuracy`` uses; the model
    is left in the mode it was in (TRL reads ``model.training`` to tell training from evaluation).

    The check generates with Hugging Face ``generate``, as TRL samples, never with the rollout engine: on an
    H200 the engine's CUDA-graph capture failed in TRL's process, and the failed capture left CUDA's random
    generator unusable for the ``torch.multinomial`` of TRL's next sampling round."""
    from .trainer import greedy_dev_check

    training = model.training
    model.eval()
    try:
        acc, records = greedy_dev_check(cfg.override(stage="rollouts", backend="hf"), model, tokenizer, rows)
    finally:
        model.train(training)
    return acc, [bool(r["correct"]) for r in records]


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _dev_checks(cfg: Config, model, tokenizer, rows: list[dict], per_iteration: int, progress: bool,
                on_check: Callable[[dict[str, Any]], None] | None = None):
    """A Trainer callback running ``_dev_check`` where ``PPOTrainer.train`` runs it: after every
    ``ppo.eval_every`` rounds of sampling (``per_iteration`` optimiser steps each) and after the last.

    ``curve`` gets one record per check: ``iteration`` (rounds done), ``step``, ``dev_accuracy``,
    ``train_seconds`` (since training began, less every dev check's time), ``dev_seconds`` (this check's)
    and ``seconds`` (since training began, checks included); ``flags`` are the last check's. ``on_check``
    gets each record as it is made."""
    from transformers import TrainerCallback

    every = cfg.ppo.eval_every * per_iteration

    class DevChecks(TrainerCallback):
        def __init__(self) -> None:
            self.curve, self.flags, self.t0, self.dev_seconds = [], None, time.perf_counter(), 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            _sync()
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            step = state.global_step
            if not every or (step % every and step != state.max_steps):
                return
            _sync()
            start = time.perf_counter()
            acc, self.flags = _dev_check(cfg, kwargs.get("model", model), tokenizer, rows)
            _sync()
            end = time.perf_counter()
            self.curve.append({"iteration": step // per_iteration, "step": step, "dev_accuracy": acc,
                               "train_seconds": start - self.t0 - self.dev_seconds, "dev_seconds": end - start,
                               "seconds": end - self.t0})
            self.dev_seconds += end - start
            if on_check:
                on_check(self.curve[-1])
            if progress:
                print(progress_line("grpo dev check", len(self.curve), -(-state.max_steps // every), self.t0,
                                    f"iteration {step // per_iteration}, dev {acc:.3f}"), flush=True)

    return DevChecks()


def train_trl_grpo(cfg: Config, train_rows: list[dict], dev_rows: list[dict], out_dir: Path | None = None,
                   progress: bool = True, on_check: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train the policy adapter with TRL's ``GRPOTrainer`` on Regime W; save it where 06 reads ours.

    ``on_check`` is called with each dev check's record as it is made: the SFT policy's first (iteration 0),
    then each of ``dev_curve``'s (a caller keeps what a run cut short had measured).

    Returns the metrics 05 saves: dev accuracy before and after (with intervals and the paired test),
    the periodic dev checks (``dev_curve``), wall time with and without them (``seconds``,
    ``train_seconds``), optimiser steps, rounds of sampling, completions sampled, TRL's reward and KL.
    """
    from trl import GRPOTrainer

    from .. import stats
    from ..generation import stop_token_ids
    from .trainer import ppo_dir

    out = Path(out_dir) if out_dir else ppo_dir(cfg)
    if any((out / n).is_dir() for n in ("best", "last")):
        # 06 evaluates best before last: an earlier run's best would stand for this one
        move_aside(out, f"{out} holds an earlier PPO run, and trainer='trl-grpo' does not continue one")
    device = modeling.resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model, tokenizer, _ = load_policy_base(cfg, device, bf16=use_bf16(cfg, device), adapter=ADAPTER)
    model.to(device)
    dev = dev_rows[:cfg.ppo.n_dev] if cfg.ppo.n_dev else dev_rows
    think = prompts.completion_starts_in_think(tokenizer, cfg.model.prompt_style)
    t = time.perf_counter()
    sft_acc, sft_flags = _dev_check(cfg, model, tokenizer, dev)
    if on_check:
        on_check({"iteration": 0, "step": 0, "dev_accuracy": sft_acc, "train_seconds": 0.0,
                  "dev_seconds": time.perf_counter() - t, "seconds": 0.0})

    b = grpo_batch(cfg)
    scored = [0]  # completions the reward saw: every one TRL sampled
    regime_w = regime_w_reward(cfg, think, stop_token_ids(model, tokenizer))

    def counted(completions: list, **kw: Any) -> list[float]:
        scored[0] += len(completions)
        return regime_w(completions=completions, **kw)

    counted.__name__ = regime_w.__name__  # TRL names the reward's metrics after it
    checks = _dev_checks(cfg, model, tokenizer, dev, b["steps_per_iteration"], progress, on_check)
    with tempfile.TemporaryDirectory(prefix="trl-grpo-") as work:
        args = make_grpo_config(cfg, Path(work), device, progress)
        callbacks = [checks] + ([_progress_lines(cfg.ppo.iterations, b["steps_per_iteration"])] if progress else [])
        trainer = GRPOTrainer(model=model, reward_funcs=counted, args=args, processing_class=tokenizer,
                              train_dataset=grpo_dataset(train_rows, tokenizer, cfg.model.prompt_style),
                              callbacks=callbacks)
        if cfg.ppo.report_to == "tensorboard":
            from ..sft import point_tensorboard
            from ..sft_setup import tracking_dir

            point_tensorboard(trainer, tracking_dir(cfg, "05_ppo"))
        t0 = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t0
    model = trainer.model
    model.set_adapter(ADAPTER)  # the reference adapter ("ref") is never the policy
    curve = checks.curve
    if curve and curve[-1]["step"] == trainer.state.global_step:  # the last round's check is the final one
        ppo_acc, ppo_flags = curve[-1]["dev_accuracy"], checks.flags
    else:
        ppo_acc, ppo_flags = _dev_check(cfg, model, tokenizer, dev)
    at_step = {c["step"]: c for c in curve}
    log = [{**h, "iteration": h["step"] // b["steps_per_iteration"],
            **{k: v for k, v in at_step.get(h["step"], {}).items() if k != "step"}}
           for h in trainer.state.log_history if "reward" in h]
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / LOG_NAME, "".join(json.dumps(h) + "\n" for h in log))
    # <out>/last as PPOTrainer.save lays it out, less the trainer state (nothing to resume)
    write_checkpoint(out / "last", cfg, model, resume_signature(cfg, train_rows),
                     {"stage": "ppo", "step": cfg.ppo.iterations, "format": "ppo_adapter", "trainer": "trl-grpo",
                      "best_dev": ppo_acc}, adapter=ADAPTER)
    sft_ci, ppo_ci = stats.accuracy_ci(sft_flags, seed=cfg.seed), stats.accuracy_ci(ppo_flags, seed=cfg.seed)
    rewards = [float(h["reward"]) for h in log]
    return {
        "trainer": "trl-grpo", "dev_accuracy_sft": sft_acc, "dev_accuracy_ppo": ppo_acc,
        "dev_ci95_sft": list(sft_ci[1:]), "dev_ci95_ppo": list(ppo_ci[1:]), "n_dev": len(ppo_flags),
        "paired": stats.paired_comparison(ppo_flags, sft_flags, seed=cfg.seed), "iterations": cfg.ppo.iterations,
        "optimizer_steps": int(trainer.state.global_step), "prompts_per_iter": cfg.ppo.prompts_per_iter,
        "k": cfg.ppo.k, "completions_sampled": scored[0], "seconds": seconds,
        "train_seconds": seconds - checks.dev_seconds, "dev_check_seconds": checks.dev_seconds,
        "seconds_per_iteration": (seconds - checks.dev_seconds) / cfg.ppo.iterations, "dev_curve": curve,
        "reward_first": rewards[0] if rewards else math.nan, "reward_last": rewards[-1] if rewards else math.nan,
        "reward_curve": [round(r, 4) for r in rewards],
        "kl_last": float(log[-1].get("kl", math.nan)) if log else math.nan,
        "response_length_last": float(log[-1].get("completions/mean_length", math.nan)) if log else math.nan,
    }
