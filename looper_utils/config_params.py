"""From notebook parameters to a checked config: key resolution, types, "did you mean", ranges.

``Config.override``, and so ``config.build``, hands its parameters to
``apply_overrides``. A parameter left at ``None`` keeps the profile's value.
Keys are resolved in this order: a top-level field (``seed``, ``run_id``),
a dotted ``section.field`` (``ppo.lr``), a ``section__field`` spelling of the
same (papermill parameters must be identifiers), then a bare field name in
the notebook's own ``stage`` section, then a bare name that exists in exactly
one section. Each value is coerced to its field's type. Unknown keys and
ill-typed values stop the run with a "did you mean" and the valid keys, so a
typo in a papermill ``-p`` never silently does nothing; values out of range
(``range_problems``) or not among a field's choices stop it before a stage
writes anything.

The config classes are ``looper_utils.config``'s; the functions here read the
fields of the class or config they are given.
"""
from __future__ import annotations

import types
import typing
from dataclasses import fields, replace
from typing import TYPE_CHECKING, Any

from .teacher import parse_teacher

if TYPE_CHECKING:
    from .config import Config

__all__ = ["PROFILES", "MAX_SEED", "keys_of", "section_parameters", "apply_overrides", "range_problems"]

PROFILES = ("smoke", "demo", "full")  # the profiles a config can name; ``config`` has a constructor for each

_SECTIONS = ("data", "model", "sft", "rollouts", "reward", "bandit", "ppo", "eval")
_STAGE_SECTION = {
    "01_data": "data", "data": "data",
    "02_sft": "sft", "sft": "sft",
    "03_rollouts": "rollouts", "rollouts": "rollouts",
    "04_regime_w": "reward", "regime_w": "reward", "reward": "reward", "bandit": "bandit",
    "05_ppo": "ppo", "ppo": "ppo",
    "06_eval": "eval", "eval": "eval",
}


# ---- keys and values -------------------------------------------------------

def keys_of(config_cls: type[Config]) -> list[str]:
    """Every key ``override`` accepts on ``config_cls`` (``config.Config``), qualified: ``seed``, ``ppo.k``, ...

    >>> from looper_utils.config import Config
    >>> keys_of(Config)[:4], "ppo.k" in keys_of(Config)
    (['profile', 'run_id', 'seed', 'root'], True)
    """
    top = [f.name for f in fields(config_cls) if f.name not in _SECTIONS]
    hints = typing.get_type_hints(config_cls)
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


def _resolve(config_cls: type[Config], key: str, stage: str | None) -> tuple[str | None, str]:
    hints = typing.get_type_hints(config_cls)
    top = {f.name for f in fields(config_cls)} - set(_SECTIONS)
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


def _suggest(key: str, keys: list[str]) -> str:
    """A "did you mean" for an unknown key among ``keys`` (``keys_of``), written the way the key was
    (dotted, ``__`` or bare).

    >>> from looper_utils.config import Config
    >>> keys = keys_of(Config)
    >>> [_suggest(key, keys) for key in ("reward__corect", "bandit.algoritm", "iteratons", "zzz")]
    [" (did you mean 'reward__correct'?)", " (did you mean 'bandit.algorithm'?)", " (did you mean 'iterations'?)", '']
    """
    import difflib

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


def apply_overrides(cfg: Config, stage: str | None, params: dict[str, Any]) -> Config:
    """``cfg`` with ``params`` applied and the result checked: what ``Config.override`` does.

    >>> from looper_utils.config import smoke
    >>> apply_overrides(smoke(), "ppo", {"k": 2, "lr_schedule": None}).ppo.k
    2
    """
    config_cls = type(cfg)
    hints = typing.get_type_hints(config_cls)
    top_changes: dict[str, Any] = {}
    sec_changes: dict[str, dict[str, Any]] = {}
    for key, value in params.items():
        if value is None:
            continue
        try:
            sec, name = _resolve(config_cls, key, stage)
        except KeyError as exc:
            keys = keys_of(config_cls)
            msg = exc.args[0] if exc.args and exc.args[0] != key else f"unknown parameter {key!r}{_suggest(key, keys)}"
            raise ValueError(f"{msg}. Valid keys: {', '.join(keys)}") from None
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


# ---- ranges and choices ----------------------------------------------------

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
    ("ppo.value_coef", ">= 0", lambda v: v >= 0),
    ("ppo.gamma", "between 0 and 1", lambda v: 0.0 <= v <= 1.0),
    ("ppo.lam", "between 0 and 1", lambda v: 0.0 <= v <= 1.0),
    ("ppo.ppo_epochs", ">= 1", lambda v: v >= 1),
    ("ppo.minibatch_size", ">= 1", lambda v: v >= 1),
    ("ppo.forward_batch_size", ">= 0 (0 = 4 x ppo.minibatch_size)", lambda v: v >= 0),
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

    >>> from looper_utils.config import smoke
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
        (parse_teacher(cfg.data.teacher) == {"worked": 1.0} or cfg.data.source == "synthetic",
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
        (cfg.ppo.sampling in ("auto", "merged", "adapters"), f"ppo.sampling={cfg.ppo.sampling!r}: use 'auto', "
         "'merged' (a merged copy of the policy) or 'adapters' (the adapter applied inside the sampler)"),
        (cfg.ppo.compile in ("auto", "on", "off"), f"ppo.compile={cfg.ppo.compile!r}: use 'auto', 'on' (compile "
         "the decoder layers) or 'off'"),
        (cfg.sft.compile in ("auto", "on", "off"), f"sft.compile={cfg.sft.compile!r}: use 'auto', 'on' (compile "
         "the decoder layers) or 'off'"),
        (cfg.ppo.critic in ("separate", "shared"), f"ppo.critic={cfg.ppo.critic!r} is not a critic: it must be "
         "'separate' (its own LoRA adapter) or 'shared' (a value head on the policy's hidden states)"),
        (cfg.ppo.trainer in ("ours", "trl-grpo"), f"ppo.trainer={cfg.ppo.trainer!r} is not a trainer: it must be "
         "'ours' (looper_utils.ppo) or 'trl-grpo' (TRL's GRPOTrainer, looper_utils.ppo.trl_grpo)"),
        (0 <= cfg.ppo.warmup_iterations <= cfg.ppo.iterations,
         "ppo.warmup_iterations must be between 0 and ppo.iterations"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ValueError(msg)
