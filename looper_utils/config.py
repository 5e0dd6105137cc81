"""Typed, frozen configuration for every stage, and the three profiles.

A notebook builds its config with ``build(profile, stage=..., **params)``:
the profile (``smoke``, ``demo`` or ``full``) is a named constructor that
fills every field, then notebook parameters override single fields. A
parameter left at ``None`` keeps the profile's value. Unknown keys and
ill-typed values stop the run with a message listing the valid keys, so a
typo in a papermill ``-p`` never silently does nothing.

Keys are resolved in this order: a top-level field (``seed``, ``run_id``),
a dotted ``section.field`` (``ppo.lr``), a ``section__field`` spelling of the
same (papermill parameters must be identifiers), then a bare field name in
the notebook's own ``stage`` section, then a bare name that exists in exactly
one section.
"""
from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

PROFILES = ("smoke", "demo", "full")


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
    gamma: float = 1.0
    lam: float = 0.95
    ppo_epochs: int = 2
    minibatch_size: int = 32
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
        return _override(self, stage, params)

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


# ---- override machinery --------------------------------------------------

_SECTIONS = ("data", "model", "sft", "rollouts", "reward", "bandit", "ppo", "eval")
_STAGE_SECTION = {
    "01_data": "data", "data": "data",
    "02_sft": "sft", "sft": "sft",
    "03_rollouts": "rollouts", "rollouts": "rollouts",
    "04_regime_w": "reward", "regime_w": "reward", "reward": "reward", "bandit": "bandit",
    "05_ppo": "ppo", "ppo": "ppo",
    "06_eval": "eval", "eval": "eval",
}


def _is_tuple(tp: Any) -> bool:
    return typing.get_origin(tp) is tuple


def valid_keys() -> list[str]:
    """Every key ``override`` accepts, qualified."""
    top = [f.name for f in fields(Config) if f.name not in _SECTIONS]
    hints = typing.get_type_hints(Config)
    out = list(top)
    for s in _SECTIONS:
        out += [f"{s}.{f.name}" for f in fields(hints[s])]
    return out


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, key)
            except TypeError as exc:
                errors.append(str(exc))
        raise TypeError(errors[-1])
    if tp is type(None):
        if value is None:
            return None
        raise TypeError(f"{key}: expected None, got {value!r}")
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{key}: expected a list or comma-separated string, got {value!r}")
        (item_tp, *_rest) = typing.get_args(tp) or (str,)
        return tuple(_coerce(v, item_tp, key) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise TypeError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise TypeError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise TypeError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def _resolve(key: str, stage: str | None) -> tuple[str | None, str]:
    hints = typing.get_type_hints(Config)
    top = {f.name for f in fields(Config)} - set(_SECTIONS)
    if key in top:
        return None, key
    for sep in (".", "__"):
        if sep in key:
            sec, name = key.split(sep, 1)
            if sec in _SECTIONS and name in {f.name for f in fields(hints[sec])}:
                return sec, name
            raise KeyError(key)
    if stage is not None:
        sec = _STAGE_SECTION.get(stage, stage)
        if sec not in _SECTIONS:
            raise ValueError(f"unknown stage {stage!r}; choose one of {', '.join(sorted(_STAGE_SECTION))}")
        if key in {f.name for f in fields(hints[sec])}:
            return sec, key
    owners = [s for s in _SECTIONS if key in {f.name for f in fields(hints[s])}]
    if len(owners) == 1:
        return owners[0], key
    if len(owners) > 1:
        raise KeyError(f"{key!r} is ambiguous: write one of " + ", ".join(f"{s}.{key}" for s in owners))
    raise KeyError(key)


def _suggest(key: str) -> str:
    """A "did you mean" for an unknown key, written the way the key was (dotted, ``__`` or bare).

    >>> _suggest("reward__corect"), _suggest("bandit.algoritm"), _suggest("iteratons"), _suggest("zzz")
    (" (did you mean 'reward__correct'?)", " (did you mean 'bandit.algorithm'?)", " (did you mean 'iterations'?)", '')
    """
    import difflib

    keys = valid_keys()
    if "__" in key:
        pool = [k.replace(".", "__") for k in keys]
    elif "." in key:
        pool = keys
    else:
        pool = list(dict.fromkeys(k.rsplit(".", 1)[-1] for k in keys))
    close = difflib.get_close_matches(key, pool, n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


def section_parameters(namespace: dict[str, Any]) -> dict[str, Any]:
    """The ``section__field`` parameters in a notebook's namespace (``globals()``), for ``build``.

    04 and 05 declare the same ``reward__*`` and ``bandit__*`` parameters and
    pass them all with ``**config.section_parameters(globals())``, so one
    ``-p reward__correct=0.5`` reaches both, and a misspelt ``-p`` that
    papermill injects anyway stops ``build`` with a "did you mean".

    >>> section_parameters({"reward__correct": 0.5, "bandit__arms": None, "k": 2, "__name__": "x", "tmp__x": 1})
    {'reward__correct': 0.5, 'bandit__arms': None}
    """
    return {k: v for k, v in namespace.items()
            if "__" in k and not k.startswith("_") and k.split("__", 1)[0] in _SECTIONS}


def _override(cfg: Config, stage: str | None, params: dict[str, Any]) -> Config:
    hints = typing.get_type_hints(Config)
    top_changes: dict[str, Any] = {}
    sec_changes: dict[str, dict[str, Any]] = {}
    for key, value in params.items():
        if value is None:
            continue
        try:
            sec, name = _resolve(key, stage)
        except KeyError as exc:
            msg = exc.args[0] if exc.args and exc.args[0] != key else f"unknown parameter {key!r}{_suggest(key)}"
            raise ValueError(f"{msg}. Valid keys: {', '.join(valid_keys())}") from None
        try:
            if sec is None:
                top_changes[name] = _coerce(value, hints[name], key)
            else:
                sub_hints = typing.get_type_hints(hints[sec])
                sec_changes.setdefault(sec, {})[name] = _coerce(value, sub_hints[name], f"{sec}.{name}")
        except TypeError as exc:
            raise ValueError(f"{exc}. Fix the parameter's value or type") from None
    for sec, changes in sec_changes.items():
        top_changes[sec] = replace(getattr(cfg, sec), **changes)
    out = replace(cfg, **top_changes)
    _validate(out)
    return out


def _parse_teacher(spec: str) -> dict[str, float]:
    from .data import parse_teacher  # raises a ValueError that names the bad style

    return parse_teacher(spec)


MAX_SEED = 2**32 - 1  # what every generator the stages seed accepts (numpy takes no negative seed)

# (key, allowed range in words, test). Checked before a stage writes anything: a bad value must stop the
# run before it overwrites data/ or a checkpoint (epochs=0 used to replace a trained SFT model with the
# untrained base, n_train=-1000 to write an empty data/).
_RANGES: list[tuple[str, str, Any]] = [
    ("seed", f"a whole number from 0 to {MAX_SEED}", lambda v: 0 <= v <= MAX_SEED),
    ("data.dev_fraction", "between 0 and 1, both excluded", lambda v: 0.0 < v < 1.0),
    ("data.split_seed", f"a whole number from 0 to {MAX_SEED}", lambda v: 0 <= v <= MAX_SEED),
    ("data.max_value", ">= 2", lambda v: v >= 2),
    ("model.tokenizer_vocab", ">= 1", lambda v: v >= 1),
    ("model.hidden_size", ">= 1", lambda v: v >= 1),
    ("model.num_layers", ">= 1", lambda v: v >= 1),
    ("model.num_heads", ">= 1", lambda v: v >= 1),
    ("model.num_kv_heads", ">= 1", lambda v: v >= 1),
    ("model.intermediate_size", ">= 1", lambda v: v >= 1),
    ("model.max_position", ">= 1", lambda v: v >= 1),
    ("model.lora_r", ">= 1", lambda v: v >= 1),
    ("model.lora_alpha", "> 0", lambda v: v > 0),
    ("model.lora_dropout", "from 0 up to, not including, 1", lambda v: 0.0 <= v < 1.0),
    ("model.init_std", ">= 0 (0 picks the small init)", lambda v: v >= 0),
    ("model.cpu_threads", ">= 0 (0 keeps torch's default)", lambda v: v >= 0),
    ("sft.learning_rate", "> 0", lambda v: v > 0),
    ("sft.batch_size", ">= 1", lambda v: v >= 1),
    ("sft.grad_accum", ">= 1", lambda v: v >= 1),
    ("sft.max_length", ">= 1", lambda v: v >= 1),
    ("sft.warmup_ratio", "between 0 and 1", lambda v: 0.0 <= v <= 1.0),
    ("sft.weight_decay", ">= 0", lambda v: v >= 0),
    ("sft.n_train", ">= 0 (0 = every training row)", lambda v: v >= 0),
    ("sft.n_dev_eval", ">= 0", lambda v: v >= 0),
    ("sft.max_new_tokens", ">= 1", lambda v: v >= 1),
    ("sft.eval_batch_size", ">= 1", lambda v: v >= 1),
    ("sft.logging_steps", ">= 1", lambda v: v >= 1),
    ("sft.save_steps", ">= 1", lambda v: v >= 1),
    ("rollouts.k", ">= 1", lambda v: v >= 1),
    ("rollouts.n_problems", ">= 0 (0 = every training problem)", lambda v: v >= 0),
    ("rollouts.temperature", ">= 0 (0 is greedy)", lambda v: v >= 0),
    ("rollouts.top_p", "between 0 and 1", lambda v: 0.0 <= v <= 1.0),
    ("rollouts.top_k", ">= 0 (0 = no top-k cut)", lambda v: v >= 0),
    ("rollouts.max_new_tokens", ">= 1", lambda v: v >= 1),
    ("rollouts.batch_size", ">= 1", lambda v: v >= 1),
    ("rollouts.shard_size", ">= 1", lambda v: v >= 1),
    ("bandit.window", ">= 1", lambda v: v >= 1),
    ("bandit.exp3_gamma", "between 0 and 1", lambda v: 0.0 <= v <= 1.0),
    ("bandit.ucb_c", ">= 0", lambda v: v >= 0),
    ("bandit.sim_rounds", ">= 1", lambda v: v >= 1),
    ("bandit.thompson_discount", "between 0 (excluded) and 1", lambda v: 0.0 < v <= 1.0),
    ("bandit.max_arms", ">= 1", lambda v: v >= 1),
    ("bandit.min_arm_size", ">= 1", lambda v: v >= 1),
    ("bandit.pass_rate_bins", ">= 1", lambda v: v >= 1),
    ("ppo.iterations", ">= 1", lambda v: v >= 1),
    ("ppo.prompts_per_iter", ">= 1", lambda v: v >= 1),
    ("ppo.k", ">= 1", lambda v: v >= 1),
    ("ppo.learning_rate", "> 0", lambda v: v > 0),
    ("ppo.value_learning_rate", "> 0", lambda v: v > 0),
    ("ppo.kl_coef", ">= 0", lambda v: v >= 0),
    ("ppo.clip_range", "> 0", lambda v: v > 0),
    ("ppo.value_clip", "> 0", lambda v: v > 0),
    ("ppo.gamma", "between 0 and 1", lambda v: 0.0 <= v <= 1.0),
    ("ppo.lam", "between 0 and 1", lambda v: 0.0 <= v <= 1.0),
    ("ppo.ppo_epochs", ">= 1", lambda v: v >= 1),
    ("ppo.minibatch_size", ">= 1", lambda v: v >= 1),
    ("ppo.ent_coef", ">= 0", lambda v: v >= 0),
    ("ppo.max_grad_norm", "> 0", lambda v: v > 0),
    ("ppo.temperature", ">= 0 (0 is greedy)", lambda v: v >= 0),
    ("ppo.max_new_tokens", ">= 1", lambda v: v >= 1),
    ("ppo.lora_r", ">= 1", lambda v: v >= 1),
    ("ppo.lora_alpha", "> 0", lambda v: v > 0),
    ("ppo.eval_every", ">= 0 (0 = no dev evaluation during training)", lambda v: v >= 0),
    ("ppo.n_dev", ">= 0 (0 = every dev problem)", lambda v: v >= 0),
    ("ppo.save_every", ">= 1", lambda v: v >= 1),
    ("eval.n_eval", ">= 0 (0 = every problem)", lambda v: v >= 0),
    ("eval.maj_k", ">= 1", lambda v: v >= 1),
    ("eval.temperature", ">= 0 (0 is greedy)", lambda v: v >= 0),
    ("eval.top_p", "between 0 and 1", lambda v: 0.0 <= v <= 1.0),
    ("eval.max_new_tokens", ">= 1", lambda v: v >= 1),
    ("eval.batch_size", ">= 1", lambda v: v >= 1),
    ("eval.shard_size", ">= 1", lambda v: v >= 1),
    ("eval.n_bootstrap", ">= 1", lambda v: v >= 1),
]
# the synthetic generator's sizes; real GSM8K ignores them
_SYNTHETIC_SIZES = ("data.n_train", "data.n_dev", "data.n_test", "data.n_platinum")


def _get(cfg: Config, key: str) -> Any:
    obj: Any = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def range_problems(cfg: Config) -> list[str]:
    """One sentence per value out of its range, naming the key and the range allowed.

    >>> range_problems(replace(smoke(), ppo=replace(smoke().ppo, iterations=0, learning_rate=-1.0)))
    ['ppo.iterations=0 is out of range: it must be >= 1', 'ppo.learning_rate=-1.0 is out of range: it must be > 0']
    """
    out = []
    ranges = list(_RANGES)
    if cfg.data.source == "synthetic":
        ranges += [(k, ">= 1 for synthetic data", lambda v: v >= 1) for k in _SYNTHETIC_SIZES]
    for key, allowed, ok in ranges:
        value = _get(cfg, key)
        # NaN fails every comparison, so it is reported like any value out of range
        if not ok(value):
            out.append(f"{key}={value!r} is out of range: it must be {allowed}")
    s = cfg.sft
    if not (s.max_steps > 0 or s.epochs > 0):
        out.append(f"sft.epochs={s.epochs!r} with sft.max_steps={s.max_steps!r} trains nothing: sft.epochs must be "
                   "> 0, or sft.max_steps > 0 to stop after that many steps")
    return out


def _validate(cfg: Config) -> None:
    problems = range_problems(cfg)
    if problems:
        raise ValueError("; ".join(problems) + ". Fix the parameter (-p key=value, or the profile file)")
    checks = [
        (cfg.profile in PROFILES, f"profile must be one of {PROFILES}"),
        (cfg.data.source in ("synthetic", "gsm8k"), "data.source must be 'synthetic' or 'gsm8k'"),
        (1 <= cfg.data.min_steps <= cfg.data.max_steps, "need 1 <= data.min_steps <= data.max_steps"),
        (_parse_teacher(cfg.data.teacher) == {"worked": 1.0} or cfg.data.source == "synthetic",
         "data.teacher applies to synthetic data only: real GSM8K keeps its own solutions (use teacher='worked:1')"),
        (cfg.model.quantization in ("none", "bf16", "4bit", "auto"),
         "model.quantization must be none, bf16, 4bit or auto"),
        (cfg.model.prompt_style in ("chat", "plain"), "model.prompt_style must be 'chat' or 'plain'"),
        (cfg.rollouts.backend in ("hf", "engine"), "rollouts.backend must be hf or engine"),
        (cfg.bandit.algorithm in ("thompson", "ucb1", "exp3", "uniform"),
         "bandit.algorithm must be thompson, ucb1, exp3 or uniform"),
        (cfg.bandit.arms in ("difficulty", "pass_rate"), "bandit.arms must be difficulty or pass_rate"),
        (cfg.ppo.advantage in ("gae", "group"), "ppo.advantage must be 'gae' or 'group'"),
        (cfg.device in ("auto", "cpu", "cuda"), "device must be auto, cpu or cuda"),
        (all(t in ("platinum", "gsm8k_test", "dev") for t in cfg.eval.test_sets),
         "eval.test_sets entries must be platinum, gsm8k_test or dev"),
        (cfg.ppo.lr_schedule in ("constant", "linear"), "ppo.lr_schedule must be 'constant' or 'linear'"),
        (cfg.ppo.precision in ("auto", "fp32"), "ppo.precision must be 'auto' or 'fp32'"),
        (0 <= cfg.ppo.warmup_iterations <= cfg.ppo.iterations,
         "ppo.warmup_iterations must be between 0 and ppo.iterations"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ValueError(msg)
