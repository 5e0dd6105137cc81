"""Typed, frozen configuration for every stage, and the three profiles.

A frozen dataclass per stage section, ``Config`` holding them (and the run's
paths), the profiles, and the config on disk (``save``, ``from_dict``,
``profile_file``). A notebook builds its config with ``build(profile,
stage=..., **params)``: the profile (``smoke``, ``demo`` or ``full``) is a
named constructor that fills every field, then notebook parameters override
single fields (``None`` keeps the profile's value). ``config_params``
resolves, coerces and checks them, so a typo in a papermill ``-p`` stops the
run with the valid keys instead of silently doing nothing.
"""
from __future__ import annotations

import dataclasses
import json
import os
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .config_params import PROFILES, apply_overrides, keys_of, section_parameters

__all__ = ["PROFILES", "DataConfig", "ModelConfig", "SFTStageConfig", "RolloutConfig", "RewardWeights", "BanditConfig",
           "PPOConfig", "EvalConfig", "Config", "smoke", "demo", "full", "build", "profile_file", "save", "from_dict",
           "find_project_root", "model_identity", "valid_keys", "section_parameters"]


@dataclass(frozen=True)
class DataConfig:
    """Where the problems come from and how they are split."""

    source: str = "synthetic"  # "synthetic" or "gsm8k" (hub id or local folder below)
    gsm8k_path: str = "openai/gsm8k"  # hub id, local folder with {train,test}.jsonl, or a JSONL file
    platinum_path: str = "madrylab/gsm8k-platinum"  # hub id or local folder/JSONL
    dev_fraction: float = 0.2
    split_seed: int = 1234
    # synthetic generator
    n_train: int = 4000
    n_dev: int = 300
    n_test: int = 300
    n_platinum: int = 300
    min_steps: int = 1
    max_steps: int = 2
    max_value: int = 20
    # SFT answers of the synthetic training rows: styles and shares (data.parse_teacher);
    # "worked:1" is the clean teacher. Mixed teachers leave RL a better style to select.
    teacher: str = "worked:1"


@dataclass(frozen=True)
class ModelConfig:
    """The base model: built from scratch (smoke/demo) or loaded (full)."""

    name_or_path: str = "scratch"  # "scratch" builds tokenizer + tiny Llama locally
    tokenizer_vocab: int = 640  # upper bound: merges stop when no pair repeats (~550 on smoke data)
    hidden_size: int = 96
    num_layers: int = 3
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 256
    max_position: int = 512
    quantization: str = "none"  # "none" | "bf16" | "4bit" | "auto"
    use_lora: bool = False  # SFT with LoRA adapters instead of full fine-tuning
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    prompt_style: str = "chat"  # "chat" (tokenizer template) or "plain"
    chat_think: bool = True  # scratch tokenizer's template pre-fills <think> like R1-Distill's
    init_std: float = 0.0  # scratch weights' init std; 0 = sqrt(2 / (5 * hidden_size)) ("small init")
    cpu_threads: int = 1  # torch threads when the model runs on CPU (0 = torch's default)
    attn_implementation: str = "sdpa"


@dataclass(frozen=True)
class SFTStageConfig:
    """Supervised fine-tuning on the gold worked solutions."""

    epochs: float = 4.0
    max_steps: int = -1  # > 0 caps the number of optimizer steps
    learning_rate: float = 3e-3
    batch_size: int = 32
    grad_accum: int = 1
    max_length: int = 256
    packing: bool = False
    # liger-kernel's fused RMSNorm, SwiGLU, RoPE and linear + cross-entropy, on a GPU where the package is
    # installed (the `gpu` extra) and the model is trained in full precision; measured in docs/benchmarks.md
    liger: bool = True
    # the decoder layers compiled with torch.compile (looper_utils.compiled): "auto" (on a GPU, without
    # activation recompute or a 4-bit base: demo), "on" or "off"; liger-kernel is left out when they are
    compile: str = "auto"
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    n_train: int = 0  # 0 = every training row
    n_dev_eval: int = 300  # dev problems scored before and after
    max_new_tokens: int = 80
    eval_batch_size: int = 128
    logging_steps: int = 10
    lr_scheduler: str = "linear"  # transformers scheduler name: "linear", "cosine", "constant", ...
    save_steps: int = 100  # Trainer checkpoint every N optimizer steps (the resume points)
    resume: bool = True  # continue from checkpoints/sft-trainer when it holds a run with the same settings
    # "none" | "tensorboard" | "wandb" | "trackio": where the Trainer also logs loss and learning rate
    # (tensorboard: runs/<run_id>/tb/02_sft); checked with the install command in sft.check_report_to
    report_to: str = "none"


@dataclass(frozen=True)
class RolloutConfig:
    """Sampled completions from the SFT policy (03) and the engine settings."""

    k: int = 8
    n_problems: int = 200
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 96
    batch_size: int = 256  # sequences per generate call
    shard_size: int = 50  # problems per Parquet shard
    backend: str = "hf"  # "hf" | "engine": the sampler of rollouts, PPO and evaluation


@dataclass(frozen=True)
class RewardWeights:
    """W: the weights that turn the measured signals into one reward."""

    correct: float = 1.0
    format: float = 0.2
    calc: float = 0.1
    truncated: float = -0.2
    repetition: float = -0.1


@dataclass(frozen=True)
class BanditConfig:
    """Which arm each PPO prompt comes from."""

    algorithm: str = "thompson"  # "thompson" | "ucb1" | "exp3" | "uniform"
    arms: str = "difficulty"  # "difficulty" | "pass_rate"
    window: int = 64  # rollouts per arm that define its current pass rate
    exp3_gamma: float = 0.1
    ucb_c: float = 1.0
    sim_rounds: int = 200
    thompson_discount: float = 0.95  # < 1 forgets old payoffs: pass rates drift as the policy learns
    max_arms: int = 6  # difficulty arms: neighbouring step counts are merged down to this many
    min_arm_size: int = 32  # difficulty arms: smaller buckets are merged into a neighbour
    pass_rate_bins: int = 3  # pass-rate arms: bins over 0 < p < 1 (p = 0 and p = 1 are arms of their own)


@dataclass(frozen=True)
class PPOConfig:
    """PPO with the Regime W reward."""

    advantage: str = "gae"  # "gae" | "group"
    iterations: int = 30
    prompts_per_iter: int = 32
    k: int = 4
    learning_rate: float = 1e-4
    value_learning_rate: float = 1e-3
    kl_coef: float = 0.02
    clip_range: float = 0.2
    value_clip: float = 0.2
    # gae's critic: "separate" (its own LoRA adapter: a second pass over the base in the forward and the
    # update) or "shared" (a value head on the policy's hidden states: one pass for both; the value loss,
    # times value_coef, also trains the policy adapter)
    critic: str = "separate"
    value_coef: float = 0.1
    gamma: float = 1.0
    lam: float = 0.95
    ppo_epochs: int = 2
    minibatch_size: int = 32
    # sequences per forward without gradients (old log-probs, reference, values), longest first so each
    # chunk is cut to similar lengths; 0 = 4 x minibatch_size (no activations are kept for a backward)
    forward_batch_size: int = 0
    ent_coef: float = 0.0
    max_grad_norm: float = 1.0
    temperature: float = 1.0
    max_new_tokens: int = 96
    lora_r: int = 16
    lora_alpha: int = 32
    eval_every: int = 10
    n_dev: int = 300
    save_every: int = 1
    resume: bool = True
    report_to: str = "none"  # "none" | "tensorboard" | "wandb" | "trackio"
    gradient_checkpointing: bool = False  # recompute activations in the update (large models)
    # policy learning rate over the optimiser steps (ppo.optimizer_steps): "constant", or "linear" decay
    # to 0 at the last step; both ramp up linearly over the first warmup_iterations' steps
    lr_schedule: str = "constant"
    warmup_iterations: int = 0
    # "auto": on a GPU with bf16, a full-precision frozen base is kept in bf16 and the forwards run under
    # bf16 autocast (adapters, optimiser and log-prob arithmetic in fp32); "fp32": fp32 throughout
    precision: str = "auto"
    trainer: str = "ours"  # "ours" (looper_utils.ppo) | "trl-grpo" (TRL's GRPOTrainer, ppo.trl_grpo)
    # what the rollouts are sampled from: "adapters" (the policy adapter applied inside the sampler),
    # "merged" (a copy with the adapter merged into each weight, remade from the adapter every iteration:
    # fewer kernels per token) or "auto" (merged with the rollout engine on a GPU where the copy is small:
    # at most a twentieth of the GPU, as in demo; the 8B copy, 13 GiB, only with "merged")
    sampling: str = "auto"
    # the update's forwards through decoder layers compiled with torch.compile (looper_utils.compiled): "off",
    # "on", or "auto" (on a GPU, without gradient checkpointing or a 4-bit base). Off by default: in demo the
    # compiler took about two minutes of the first iterations and saved well under that (docs/benchmarks.md)
    compile: str = "off"


@dataclass(frozen=True)
class EvalConfig:
    """GSM8K-Platinum / GSM8K test evaluation and the report."""

    models: tuple[str, ...] = ("base", "sft", "ppo")
    test_sets: tuple[str, ...] = ("platinum", "gsm8k_test")
    n_eval: int = 0  # 0 = every problem
    maj_k: int = 1
    temperature: float = 0.7  # used only when maj_k > 1
    top_p: float = 1.0  # nucleus sampling, used only when maj_k > 1
    max_new_tokens: int = 96
    batch_size: int = 128
    shard_size: int = 100  # problems per Parquet shard of per-question records (the resume unit)
    n_bootstrap: int = 2000


@dataclass(frozen=True)
class Config:
    """Everything a run needs; one section per stage."""

    profile: str = "smoke"
    run_id: str = "latest"
    seed: int = 0
    root: str = ""  # project folder holding data/, checkpoints/, runs/ ("" = the repo root)
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sft: SFTStageConfig = field(default_factory=SFTStageConfig)
    rollouts: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardWeights = field(default_factory=RewardWeights)
    bandit: BanditConfig = field(default_factory=BanditConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    # ---- paths -------------------------------------------------------
    @property
    def root_dir(self) -> Path:
        return Path(self.root).resolve() if self.root else find_project_root()

    @property
    def data_dir(self) -> Path:
        return self.root_dir / "data"

    @property
    def checkpoints_dir(self) -> Path:
        return self.root_dir / "checkpoints"

    @property
    def run_dir(self) -> Path:
        return self.root_dir / "runs" / self.run_id

    def override(self, stage: str | None = None, **params: Any) -> "Config":
        """Return a copy with single fields replaced (``None`` values are ignored).

        >>> smoke().override(seed=3, stage="ppo", lr=None, k=2).ppo.k
        2
        >>> smoke().override(stage="ppo", k=2).rollouts.k == smoke().rollouts.k
        True
        """
        return apply_overrides(self, stage, params)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)


# ---- profiles: named constructors --------------------------------------

def smoke() -> Config:
    """CPU, offline, minutes: synthetic 1-2 step problems, a tiny Llama, a mixed teacher.

    Numbers up to 10 keep each worked step a small addition or multiplication
    fact the 0.36 M-parameter model learns from 1,600 worked examples, while
    the terse answers' one jump over two steps stays hard: the gap RL selects
    (docs/benchmarks.md).
    """
    return Config(profile="smoke", data=DataConfig(max_value=10, teacher="worked:0.4,terse:0.6"),
                  ppo=PPOConfig(advantage="group", learning_rate=5e-4, iterations=10, eval_every=5))


def demo() -> Config:
    """One GPU, offline: harder synthetic problems, a Llama of tens of M params."""
    return Config(
        profile="demo",
        data=DataConfig(n_train=40000, n_dev=1000, n_test=1000, n_platinum=1000,
                        min_steps=3, max_steps=6, max_value=100, teacher="worked:0.4,terse:0.6"),
        model=ModelConfig(tokenizer_vocab=512, hidden_size=512, num_layers=8, num_heads=8,
                          num_kv_heads=4, intermediate_size=1408, max_position=1024),
        sft=SFTStageConfig(epochs=5.0, learning_rate=1e-3, batch_size=128, max_length=512,
                           n_dev_eval=1000, max_new_tokens=256, eval_batch_size=512),
        rollouts=RolloutConfig(k=8, n_problems=512, max_new_tokens=256, batch_size=1024, backend="engine",
                               shard_size=128),
        ppo=PPOConfig(iterations=10, prompts_per_iter=128, k=8, learning_rate=2e-4,
                      max_new_tokens=256, minibatch_size=128, eval_every=5, n_dev=1000,
                      advantage="group"),
        eval=EvalConfig(max_new_tokens=256, batch_size=512),
    )


def full() -> Config:
    """GPU box with hub access: GSM8K + GSM8K-Platinum, R1-Distill-Llama-8B with LoRA."""
    return Config(
        profile="full",
        data=DataConfig(source="gsm8k"),
        model=ModelConfig(name_or_path="deepseek-ai/DeepSeek-R1-Distill-Llama-8B",
                          quantization="auto", use_lora=True, lora_r=16, lora_alpha=32,
                          prompt_style="chat", max_position=4096),
        sft=SFTStageConfig(epochs=1.0, learning_rate=1e-4, batch_size=4, grad_accum=8,
                           max_length=1024, n_dev_eval=200, max_new_tokens=1024,
                           eval_batch_size=64, logging_steps=5),
        rollouts=RolloutConfig(k=8, n_problems=256, temperature=0.6, top_p=0.95, backend="engine",
                               max_new_tokens=1024, batch_size=256, shard_size=32),
        ppo=PPOConfig(iterations=100, prompts_per_iter=64, k=4, learning_rate=1e-5,
                      value_learning_rate=5e-5, temperature=0.6, max_new_tokens=1024,
                      minibatch_size=8, eval_every=20, n_dev=200, gradient_checkpointing=True),
        eval=EvalConfig(max_new_tokens=2048, batch_size=64),
    )


_PROFILE_BUILDERS = {"smoke": smoke, "demo": demo, "full": full}


def model_identity(cfg: Config) -> dict[str, Any]:
    """The model settings that change what a run computes (not its threads or attention kernel):
    what a saved training state must share with the run that resumes it."""
    return {k: v for k, v in dataclasses.asdict(cfg.model).items() if k not in ("cpu_threads", "attn_implementation")}


def build(profile: str = "smoke", stage: str | None = None, **params: Any) -> Config:
    """The profile's config with the notebook's parameters applied.

    >>> build("smoke", stage="rollouts", k=4, run_id="r1").rollouts.k
    4
    >>> build("nope")
    Traceback (most recent call last):
    ...
    ValueError: unknown profile 'nope'; choose one of smoke, demo, full or a .json profile file
    """
    if str(profile).endswith(".json"):
        base = profile_file(profile)
        return base.override(stage=stage, **params)
    if profile not in _PROFILE_BUILDERS:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)} "
                         "or a .json profile file")
    return _PROFILE_BUILDERS[profile]().override(stage=stage, **params)


def profile_file(path: str | Path) -> Config:
    """A profile kept in a JSON file: ``{"profile": "full", "overrides": {"model.name_or_path": ...}}``.

    For runs that change fields no notebook exposes as a parameter (a local
    model path, budgets for a benchmark), pass the file as ``profile``.
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"profile file {p} does not exist")
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{p}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(d, dict) or d.get("profile") not in _PROFILE_BUILDERS:
        raise ValueError(f"{p}: needs a 'profile' key naming one of {', '.join(PROFILES)}")
    unknown = set(d) - {"profile", "overrides", "description"}
    if unknown:
        raise ValueError(f"{p}: unknown top-level keys {sorted(unknown)}; use profile, overrides, description")
    try:
        return _PROFILE_BUILDERS[d["profile"]]().override(**d.get("overrides", {}))
    except ValueError as exc:
        raise ValueError(f"{p}: {exc}") from None


def save(cfg: Config, path: Path) -> Path:
    """Write the config as JSON (atomically)."""
    from .artifacts import atomic_write_text

    return atomic_write_text(Path(path), cfg.to_json() + "\n")


def from_dict(d: dict[str, Any]) -> Config:
    """Rebuild a Config from ``to_dict()`` output (e.g. a checkpoint's config.json)."""
    kwargs: dict[str, Any] = {}
    hints = typing.get_type_hints(Config)
    for f in fields(Config):
        if f.name not in d:
            continue
        if dataclasses.is_dataclass(hints[f.name]):
            cls = hints[f.name]
            sub_hints = typing.get_type_hints(cls)
            sub = {}
            for sf in fields(cls):
                if sf.name in d[f.name]:
                    v = d[f.name][sf.name]
                    sub[sf.name] = tuple(v) if _is_tuple(sub_hints[sf.name]) and v is not None else v
            kwargs[f.name] = cls(**sub)
        else:
            kwargs[f.name] = d[f.name]
    return Config(**kwargs)


def find_project_root(start: Path | None = None) -> Path:
    """The folder holding pyproject.toml above ``start`` (or cwd); cwd if none."""
    env = os.environ.get("LOOPER_ROOT")
    if env:
        return Path(env).resolve()
    here = (start or Path.cwd()).resolve()
    for p in (here, *here.parents):
        if (p / "pyproject.toml").is_file() and (p / "looper_utils").is_dir():
            return p
    return here


def valid_keys() -> list[str]:
    """Every key ``override`` accepts, qualified (``seed``, ``ppo.k``, ...)."""
    return keys_of(Config)


def _is_tuple(tp: Any) -> bool:
    return typing.get_origin(tp) is tuple
