"""Stage 06: score base, SFT and PPO on GSM8K-Platinum and GSM8K test, and summarise with paired statistics.

``run(cfg)`` evaluates every model of ``cfg.eval.models`` on every set of
``cfg.eval.test_sets`` with the one generation function and the one grader
(flexible and strict), and keeps one record per question in Parquet shards
under ``runs/<run_id>/eval/<model>__<test_set>/``. As in ``rollouts``, each
shard is written atomically with its own seed and a ``manifest.json`` says
what the shards were made with: a killed run loses at most one shard, a rerun
with other settings stops instead of mixing two kinds of records, and a rerun
whose shards are all on disk loads no model at all, so rebuilding the figures
and the report costs no generation. Models are loaded one at a time and freed
before the next (an 8B model and its KV cache leave no room for a second).

Models: ``base`` (no adapter), ``sft``, ``ppo`` (``checkpoints/ppo/best`` if it
exists and the same PPO run wrote it as ``last`` -- their resume signatures
match -- else ``last``), ``ppo_best``, ``ppo_last``, or any checkpoint folder.
Every record names the exact weights it scored (``weights``: a digest of the
weight files, and of the weights under an adapter), and so does the manifest:
a checkpoint retrained in the same folder never adds records to a table
scored on the old weights.
A model whose checkpoint is missing is skipped with a note in the results;
``MissingInputError`` (naming the notebook that writes it) only when nothing
else is left to evaluate, e.g. when it was the only model asked for.

``summarize(records)`` turns the records into the ``06_eval.json`` schema the
report card reads. The records and their summary (``grade_question``,
``summarize``, ``verdicts``, the tables) live in ``eval_records`` and are
re-exported here, so that 06 imports one module.

With ``maj_k > 1`` each question gets ``maj_k`` sampled answers, which
``grade_question`` reduces to one record by majority vote.
"""
from __future__ import annotations

import gc
import hashlib
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

from .answers import format_ok  # re-exported: the format rule 06 shows
from .artifacts import MissingInputError, check_manifest, require
from .shards import n_shards, shard_path, write_missing
from .config import Config
from .data import data_files, read_jsonl
from .eval_records import (COLUMNS, PAIRS, PPO_NAMES, accuracy_frame, grade_question, grade_records,
                           outcome_counts, paired_table, summarize, verdicts)
from .progress import progress_line

__all__ = ["COLUMNS", "TEST_SETS", "PPO_NAMES", "PAIRS", "ModelSpec", "EvalResult", "eval_dir", "resolve_models",
           "load_test_set", "grade_question", "grade_records", "evaluate_set", "run", "load_records", "summarize",
           "accuracy_frame", "paired_table", "outcome_counts", "format_ok", "verdicts"]

TEST_SETS = {"platinum": "platinum", "gsm8k_test": "test", "dev": "dev"}  # name -> data.data_files key
from .modeling import PPO_ADAPTER_FILE as _PPO_FILE  # what ppo.model.save_policy_adapter writes


def eval_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "eval"


# ---- models --------------------------------------------------------------------------------

@dataclass
class ModelSpec:
    """One model to evaluate: where it is and whether it exists (``note`` says why not)."""

    name: str
    kind: str  # "base" | "checkpoint" | "ppo"
    path: Path | None  # None: the hub base model of the config
    notebook: str  # the notebook that writes it
    available: bool
    note: str = ""
    marker: Path | None = None  # the file whose absence makes the model unavailable


def _ppo_spec(cfg: Config, name: str, which: str | None) -> ModelSpec:
    from .ppo.resume import same_run

    ppo = cfg.checkpoints_dir / "ppo"
    order = [which] if which else ["best", "last"]
    note = ""
    if not which and (ppo / "best" / _PPO_FILE).is_file() and (ppo / "last" / _PPO_FILE).is_file() \
            and not same_run(ppo / "best", ppo / "last"):
        # a best left by an earlier run (other settings, other SFT weights) is no result of this one
        order = ["last"]
        note = (f"{ppo / 'best'} was not written by the PPO run of {ppo / 'last'} (their resume_signature.json "
                "differ); evaluating last")
    for sub in order:
        if (ppo / sub / _PPO_FILE).is_file():
            return ModelSpec(name, "ppo", ppo / sub, "05_ppo", True, note)
    where = " or ".join(str(ppo / s) for s in order)
    return ModelSpec(name, "ppo", ppo / order[-1], "05_ppo", False,
                     f"skipped: no PPO checkpoint ({where}); run notebooks/05_ppo.ipynb first",
                     ppo / order[-1] / _PPO_FILE)


def _spec(cfg: Config, name: str) -> ModelSpec:
    from .modeling import STATE_FILE, base_dir, sft_dir

    if name == "base" and cfg.model.name_or_path != "scratch":
        return ModelSpec("base", "base", None, "02_sft", True)  # a hub id or local model: loading will tell
    if name in ("base", "sft"):
        d = base_dir(cfg) if name == "base" else sft_dir(cfg)
        ok = (d / STATE_FILE).is_file()
        return ModelSpec(name, "checkpoint", d, "02_sft", ok,
                         "" if ok else f"skipped: no finished checkpoint at {d}; run notebooks/02_sft.ipynb first",
                         d / STATE_FILE)
    if name in PPO_NAMES:
        return _ppo_spec(cfg, name, {"ppo": None, "ppo_best": "best", "ppo_last": "last"}[name])
    p = Path(name).expanduser()
    if not p.is_absolute() and not p.exists():
        p = cfg.root_dir / p
    label = f"{p.parent.name}_{p.name}" if p.name in ("best", "last") else p.name
    label = re.sub(r"_+", "_", re.sub(r"[^\w.-]+", "_", label)).strip("_") or "model"
    if (p / _PPO_FILE).is_file():
        return ModelSpec(label, "ppo", p, "05_ppo", True)
    ok = (p / "config.json").is_file() or (p / "adapter_config.json").is_file()
    return ModelSpec(label, "checkpoint", p, "02_sft", ok,
                     "" if ok else f"skipped: {p} is not a checkpoint folder (no config.json, adapter_config.json "
                                   f"or {_PPO_FILE}); pass base, sft, ppo, ppo_best, ppo_last or a folder "
                                   "written by 02_sft or 05_ppo", p)


def resolve_models(cfg: Config, names: Sequence[str] | None = None) -> list[ModelSpec]:
    """Specs of ``names`` (default ``cfg.eval.models``), checked for existence without loading anything.

    Raises ``MissingInputError`` when none of them exists: evaluating nothing
    is never what was asked for (e.g. ``models="ppo"`` before 05 ran).
    """
    names = list(cfg.eval.models if names is None else names)
    if not names:
        raise ValueError("eval.models is empty; name at least one of base, sft, ppo or a checkpoint folder")
    specs = [_spec(cfg, n) for n in names]
    seen = [s.name for s in specs]
    dup = sorted({n for n in seen if seen.count(n) > 1})
    if dup:
        raise ValueError(f"eval.models names {dup} twice; each model's records go to eval/<name>__<set>/")
    if not any(s.available for s in specs):
        first = specs[0]
        require(first.marker, first.notebook)  # names the notebook that writes it
        raise MissingInputError(f"{first.name}: {first.note}")
    return specs


def _load_model(cfg: Config, spec: ModelSpec, device):
    from .modeling import load_policy
    from .ppo.model import load_ppo_policy

    if spec.kind == "ppo":
        return load_ppo_policy(cfg, spec.path, device)
    return load_policy(cfg, "base" if spec.path is None else str(spec.path), device)


def _fingerprint(spec: ModelSpec, cfg: Config) -> str:
    """The exact weights ``spec`` names: a digest of its weight files (for a PPO checkpoint, the policy
    adapter with the SFT weights under it), not of its folder: a retrained model in the same folder differs."""
    from .modeling import checkpoint_digest, sft_dir

    if spec.path is None:
        return f"hub:{cfg.model.name_or_path}"
    if spec.kind == "ppo":
        return checkpoint_digest(cfg, sft_dir(cfg), spec.path / _PPO_FILE)
    return checkpoint_digest(cfg, spec.path)


# ---- test sets -----------------------------------------------------------------------------

def load_test_set(cfg: Config, name: str) -> list[dict]:
    """Rows of a test set; ``n_eval > 0`` keeps a seeded sample (the same for every model)."""
    if name not in TEST_SETS:
        raise ValueError(f"test set {name!r} unknown; choose from {', '.join(TEST_SETS)}")
    rows = read_jsonl(require(data_files(cfg.data_dir)[TEST_SETS[name]], "01_data"))
    n = cfg.eval.n_eval
    if 0 < n < len(rows):
        idx = sorted(random.Random(f"eval:{name}:{cfg.seed}").sample(range(len(rows)), n))
        rows = [rows[i] for i in idx]
    return rows


# ---- shards --------------------------------------------------------------------------------

def _full_manifest(manifest: dict[str, Any], problems: list[dict], shard_size: int) -> dict[str, Any]:
    ids = hashlib.sha256("\n".join(str(p["id"]) for p in problems).encode()).hexdigest()[:16]
    return dict(manifest, n_problems=len(problems), ids_sha=ids, shard_size=shard_size)


def _read_shards(out: Path) -> pd.DataFrame:
    files = sorted(out.glob("shard_*.parquet"))
    if not files:
        return pd.DataFrame(columns=COLUMNS)
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def evaluate_set(problems: list[dict], sample_fn: Callable[[list[dict], int], Any], out_dir: Path, *,
                 shard_size: int, seed: int, think: bool, manifest: dict[str, Any],
                 log: Callable[[str], None] = print) -> tuple[pd.DataFrame, dict[str, float]]:
    """Generate, grade and write every shard not yet on disk; return all records and throughput.

    ``sample_fn(problem_rows, shard_seed)`` returns a ``GenerationResult`` with
    ``maj_k`` samples per problem; it is not called for shards on disk. Each
    record's ``weights`` is ``manifest["weights"]`` (the digest of the weights scored).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    check_manifest(out, _full_manifest(manifest, problems, shard_size), "records")
    weights = manifest.get("weights")

    def grade(rows: list[dict], samples: list[Any]) -> list[dict]:
        return [dict(r, weights=weights) for r in grade_records(rows, samples, think)]

    speed = write_missing(problems, sample_fn, grade, out, shard_size=shard_size, seed=seed, columns=COLUMNS)
    if speed["shards_skipped"]:
        log(f"{out.name}: resumed, {speed['shards_skipped']} of {speed['shards']} shards were already on disk")
    return _read_shards(out), speed


@dataclass
class EvalResult:
    """Records per model and test set, the models skipped (with why) and the throughput."""

    records: dict[str, dict[str, pd.DataFrame]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    speed: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    models: list[ModelSpec] = field(default_factory=list)


def _free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _evaluate_model(cfg: Config, spec: ModelSpec, sets: dict[str, list[dict]], device, progress: bool,
                    log: Callable[[str], None], counter: list | None = None) -> tuple[dict[str, pd.DataFrame], dict[str, dict[str, float]]]:
    """One model on every test set; the model is loaded only if some shard is missing, and dies with this frame."""
    from .generation import generate
    from .prompts import CHAT_INSTRUCTION, PLAIN_PROMPT, build_prompt, completion_starts_in_think

    e, sampled = cfg.eval, cfg.eval.maj_k > 1
    wording = hashlib.sha256((PLAIN_PROMPT + CHAT_INSTRUCTION).encode()).hexdigest()[:16]
    manifest = {"model": spec.name, "checkpoint": str(spec.path or cfg.model.name_or_path),
                "weights": _fingerprint(spec, cfg), "prompt_style": cfg.model.prompt_style, "prompt_wording": wording,
                "max_new_tokens": e.max_new_tokens, "maj_k": e.maj_k,
                # greedy output does not depend on the seed or the sampling settings
                "temperature": e.temperature if sampled else 0.0, "top_p": e.top_p if sampled else 1.0,
                "seed": cfg.seed if sampled else None}
    outs = {ts: eval_dir(cfg.run_dir) / f"{spec.name}__{ts}" for ts in sets}
    for ts, rows in sets.items():  # fail on a mismatch before spending minutes loading the model
        if (outs[ts] / "manifest.json").is_file():
            check_manifest(outs[ts], _full_manifest(manifest, rows, e.shard_size), "records")
    todo = any(not shard_path(outs[ts], i).is_file() for ts, rows in sets.items()
               for i in range(n_shards(len(rows), e.shard_size)))
    model = tokenizer = None
    think = False
    if todo:
        model, tokenizer = _load_model(cfg, spec, device)
        think = completion_starts_in_think(tokenizer, cfg.model.prompt_style)
    records, speed = {}, {}
    for ts, rows in sets.items():
        fn = lambda chunk, shard_seed, ts=ts: generate(  # noqa: E731
            model, tokenizer, [build_prompt(r["question"], tokenizer, cfg.model.prompt_style) for r in chunk],
            n=e.maj_k, max_new_tokens=e.max_new_tokens, temperature=e.temperature if sampled else 0.0,
            top_p=e.top_p, batch_size=e.batch_size, seed=shard_seed, progress=progress, desc=f"{spec.name}/{ts}",
            backend=cfg.rollouts.backend)
        records[ts], speed[ts] = evaluate_set(rows, fn, outs[ts], shard_size=e.shard_size, seed=cfg.seed,
                                              think=think, manifest=manifest, log=log)
        if counter is not None:
            counter[0] += 1
            acc = float(records[ts]["correct"].astype(float).mean()) if len(records[ts]) else float("nan")
            log(progress_line(f"eval {spec.name} on {ts}, set", counter[0], counter[1], counter[2],
                              f"accuracy {acc:.3f} (n={len(records[ts])})"))
    del model, tokenizer  # the closures' last references: the caller's gc.collect() can free the weights
    return records, speed


def run(cfg: Config, device=None, *, progress: bool = True, log: Callable[[str], None] = print) -> EvalResult:
    """Evaluate ``cfg.eval.models`` on ``cfg.eval.test_sets``, one model in memory at a time."""
    from .modeling import resolve_device, set_cpu_threads

    specs = resolve_models(cfg)
    sets = {ts: load_test_set(cfg, ts) for ts in cfg.eval.test_sets}
    device = device or resolve_device(cfg.device)
    set_cpu_threads(cfg.model.cpu_threads, device)  # load_ppo_policy does not set it; a PPO-only run needs it too
    result = EvalResult(models=specs)
    counter = [0, sum(s.available for s in specs) * len(sets), time.perf_counter()]  # sets done, total, start
    for spec in specs:
        if not spec.available:
            result.skipped[spec.name] = spec.note
            log(f"{spec.name}: {spec.note}")
            continue
        try:
            result.records[spec.name], result.speed[spec.name] = _evaluate_model(cfg, spec, sets, device,
                                                                                  progress, log, counter)
        finally:
            _free_memory()  # the model went out of scope with _evaluate_model's frame
    return result


def load_records(run_dir: Path) -> dict[str, dict[str, pd.DataFrame]]:
    """Every ``eval/<model>__<test_set>/`` folder of a run, read back (no generation)."""
    out: dict[str, dict[str, pd.DataFrame]] = {}
    for d in sorted(eval_dir(run_dir).glob("*__*")):
        if d.is_dir() and any(d.glob("shard_*.parquet")):
            model, ts = d.name.rsplit("__", 1)
            out.setdefault(model, {})[ts] = _read_shards(d)
    if not out:
        raise MissingInputError(f"{eval_dir(run_dir)} holds no evaluation records: run notebooks/06_eval.ipynb "
                                "first (with the same run_id)")
    return out
