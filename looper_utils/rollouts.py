"""Sampled completions from a policy, graded, written as resumable Parquet shards.

``collect`` samples ``k`` completions for each of N problems with the one
generation function, grades each with the one grader, and writes one Parquet
file per shard of problems under ``runs/<run_id>/rollouts/``. A rerun skips
the shards already written; each shard is written atomically, so a killed run
loses at most the shard in flight. Every shard is sampled with its own seed
(``seed + shard index``), which makes a resumed run identical to a straight one.

A ``manifest.json`` records what the shards were made with (``manifest``: the
sampling settings and a digest of the SFT weights, not their folder); a rerun
with other settings or a retrained SFT model stops instead of mixing two kinds
of samples in one table.

Metrics: pass@k with the unbiased estimator, maj@k, accuracy per difficulty
bucket (calculation steps of the gold solution), truncation rate, tokens/s,
and per solution style (``data.completion_style``: worked, terse, slip,
other): the share of completions in each style, their accuracy, and how many
problems at least one completion of that style solves. Under a mixed teacher
that table is the headroom greedy SFT leaves: a style that is right far more
often than the one greedy decoding picks is what RL can select.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pandas as pd

from .answers import extract_answer, normalize_number, numbers_equal
from .artifacts import MissingInputError, check_manifest
from .problem_rows import count_steps
from .shards import write_missing
from .stats import maj_at_k, pass_at_k
from .teacher import COMPLETION_STYLES, completion_style

COLUMNS = ["prompt_id", "sample_idx", "question", "answer", "gold", "steps", "completion", "n_tokens",
           "finish_reason", "extracted", "extracted_strict", "correct", "correct_strict", "style"]


def rollout_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "rollouts"


def manifest(cfg: Any) -> dict[str, Any]:
    """What 03's shards are sampled with: the sampling settings and the exact SFT weights.

    The weights enter as their digest (``modeling.checkpoint_digest``): 02
    rerun with other settings writes the same folder, and a resumed 03 must
    not add shards of the new model to a table sampled from the old one.
    """
    from .modeling import checkpoint_digest, sft_dir

    r = cfg.rollouts
    return {"k": r.k, "temperature": r.temperature, "top_p": r.top_p, "top_k": r.top_k,
            "max_new_tokens": r.max_new_tokens, "prompt_style": cfg.model.prompt_style,
            "policy": str(sft_dir(cfg)), "policy_weights": checkpoint_digest(cfg, sft_dir(cfg))}


def grade_records(problems: list[dict], samples: list[Any], think: bool) -> list[dict]:
    """One record per sample; ``samples[i].prompt_index`` indexes ``problems``."""
    recs = []
    for s in samples:
        p = problems[s.prompt_index]
        gold = normalize_number(str(p["gold"]))
        flex = extract_answer(s.text, "flexible", think=think)
        strict = extract_answer(s.text, "strict", think=think)
        recs.append({
            "prompt_id": str(p["id"]), "sample_idx": int(s.sample_idx), "question": p["question"],
            "answer": p.get("answer", ""), "gold": str(p["gold"]), "steps": count_steps(p.get("answer", "")),
            "completion": s.text, "n_tokens": int(s.n_tokens), "finish_reason": s.finish_reason,
            "extracted": flex, "extracted_strict": strict,
            "correct": numbers_equal(flex, gold), "correct_strict": numbers_equal(strict, gold),
            "style": completion_style(s.text, think=think),
        })
    return recs


def collect(problems: list[dict], sample_fn: Callable[[list[dict], int], Any], out_dir: Path, *,
            shard_size: int, seed: int, think: bool, manifest: dict[str, Any],
            log: Callable[[str], None] = print) -> tuple[pd.DataFrame, dict[str, float]]:
    """Sample, grade and write every shard not yet on disk; return the full table and throughput.

    ``sample_fn(problem_rows, shard_seed)`` returns a ``GenerationResult``
    (``looper_utils.generation``) for those problems; passing it in keeps this
    module free of model code, so the notebook picks the backend.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    check_manifest(out, dict(manifest, n_problems=len(problems), shard_size=shard_size, seed=seed), "rollouts")
    speed = write_missing(problems, sample_fn, lambda rows, samples: grade_records(rows, samples, think), out,
                          shard_size=shard_size, seed=seed, columns=COLUMNS)
    if speed["shards_skipped"]:
        log(f"resumed: {speed['shards_skipped']} of {speed['shards']} shards were already on disk")
    return load_rollouts(out.parent), speed


def load_rollouts(run_dir: Path) -> pd.DataFrame:
    """Every shard of ``runs/<run_id>/rollouts/`` as one table (problem order, then sample index)."""
    files = sorted(rollout_dir(run_dir).glob("shard_*.parquet"))
    if not files:
        raise MissingInputError(f"{rollout_dir(run_dir)} holds no rollouts: run notebooks/03_rollouts.ipynb "
                                "first (with the same run_id)")
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def per_problem(df: pd.DataFrame) -> pd.DataFrame:
    """One row per problem: samples, correct count, pass rate, steps, majority answer."""
    g = df.groupby("prompt_id", sort=False)
    out = g.agg(question=("question", "first"), gold=("gold", "first"), steps=("steps", "first"),
                n=("correct", "size"), c=("correct", "sum"))
    out["pass_rate"] = out["c"] / out["n"]
    out["maj_correct"] = [maj_at_k(list(sub["extracted"]), gold) for (_, sub), gold in zip(g, out["gold"])]
    return out.reset_index()


def metrics(df: pd.DataFrame, ks: list[int] | None = None) -> dict[str, Any]:
    """pass@k (unbiased), maj@k, accuracy overall and per steps, truncation rate."""
    pp = per_problem(df)
    k_max = int(pp["n"].min())
    ks = sorted({k for k in (ks or [1, 2, 4, 8, 16, 32, 64]) if k <= k_max} | {k_max})
    pass_k = {str(k): float(sum(pass_at_k(int(n), int(c), k) for n, c in zip(pp["n"], pp["c"])) / len(pp))
              for k in ks}
    by_steps = df.groupby("steps")["correct"].mean()
    return {
        "k": k_max, "n_problems": int(len(pp)), "n_completions": int(len(df)),
        "accuracy": float(df["correct"].mean()), "accuracy_strict": float(df["correct_strict"].mean()),
        "pass_at_k": pass_k, "maj_at_k": float(pp["maj_correct"].mean()),
        "accuracy_by_steps": {str(int(s)): float(v) for s, v in by_steps.items()},
        "truncation_rate": float((df["finish_reason"] == "length").mean()),
        "never_solved": int((pp["c"] == 0).sum()), "always_solved": int((pp["c"] == pp["n"]).sum()),
        "mean_tokens": float(df["n_tokens"].mean()),
        "by_style": by_style(df),
    }


def by_style(df: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per completion style: share of completions, accuracy (pass@1 within the style), mean tokens, and
    ``solved_by_any``: the share of problems that at least one completion of that style gets right.

    >>> t = pd.DataFrame({"prompt_id": ["a", "a", "b", "b"], "style": ["worked", "terse", "worked", "worked"],
    ...                   "correct": [True, False, False, True], "n_tokens": [20, 5, 22, 18]})
    >>> by_style(t)["worked"]
    {'share': 0.75, 'accuracy': 0.6667, 'mean_tokens': 20.0, 'solved_by_any': 1.0}
    >>> by_style(t)["slip"]["share"]
    0.0
    """
    if "style" not in df:  # shards written before styles were recorded
        return {}
    n_prob = max(1, df["prompt_id"].nunique())
    out = {}
    for st in COMPLETION_STYLES:
        g = df[df["style"] == st]
        out[st] = {"share": round(len(g) / max(1, len(df)), 4),
                   "accuracy": round(float(g["correct"].mean()), 4) if len(g) else float("nan"),
                   "mean_tokens": round(float(g["n_tokens"].mean()), 2) if len(g) else float("nan"),
                   "solved_by_any": round(float(g.groupby("prompt_id")["correct"].any().sum()) / n_prob, 4)}
    return out



def select_problems(rows: list[dict], n: int, seed: int) -> list[dict]:
    """A seeded sample of ``n`` problems (all of them when ``n`` is 0 or too large), in a stable order."""
    import random

    if n <= 0 or n >= len(rows):
        return list(rows)
    idx = sorted(random.Random(f"rollouts:{seed}").sample(range(len(rows)), n))
    return [rows[i] for i in idx]
