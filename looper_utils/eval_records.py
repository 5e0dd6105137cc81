"""Stage 06's records and what they add up to: one record per question, the ``06_eval.json`` summary.

``grade_question`` turns a question's completions into one record (the
columns of ``COLUMNS``) with the one grader, flexible and strict. With
``maj_k > 1`` each question has ``maj_k`` sampled answers; the record's answer
is their majority vote (``stats.majority_vote``) and its completion the first
sample that gave that answer.

``summarize(records)`` turns the records into the ``06_eval.json`` schema the
report card reads (``looper_utils.report``): accuracy with percentile-bootstrap
95% intervals over questions (Wilson's where every question scored the same,
0% or 100%: every resample is then identical and the bootstrap interval is a
point), paired comparisons on the same questions (``ppo_vs_sft``,
``sft_vs_base``: McNemar exact test and a paired bootstrap of the
difference), error categories, accuracy by difficulty and by style, and one
verdict sentence per test set. ``evaluation`` (the loop that makes the
records) re-exports these names.
"""
from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

import pandas as pd

from .answers import extract_answer, format_ok, normalize_number, numbers_equal
from .problem_rows import count_steps
from .stats import (ERROR_CATEGORIES, accuracy_ci, error_breakdown, error_category, majority_vote,
                    paired_comparison, verdict_sentence, wilson_ci)
from .teacher import COMPLETION_STYLES, completion_style

__all__ = ["COLUMNS", "PPO_NAMES", "PAIRS", "grade_question", "grade_records", "summarize", "verdicts",
           "accuracy_frame", "paired_table", "outcome_counts"]

COLUMNS = ["id", "question", "gold", "steps", "completion", "extracted", "extracted_strict", "correct",
           "correct_strict", "finish_reason", "n_tokens", "format_ok", "category", "n_samples",
           "n_correct_samples", "answers", "style", "weights"]
PPO_NAMES = ("ppo", "ppo_best", "ppo_last")
PAIRS = {"ppo_vs_sft": ("ppo", "sft"), "sft_vs_base": ("sft", "base")}  # first minus second


# ---- grading -------------------------------------------------------------------------------
# ``format_ok`` is ``answers.format_ok``, the rule the reward pays for

def grade_question(problem: Mapping[str, Any], texts: Sequence[str], finish_reasons: Sequence[str],
                   n_tokens: Sequence[int], think: bool) -> dict[str, Any]:
    """One record for one question from its ``k >= 1`` completions (majority vote when ``k > 1``).

    >>> row = {"id": "q1", "question": "2+3?", "answer": "<<2+3=5>>5\\n#### 5", "gold": "5"}
    >>> r = grade_question(row, ["2+3=5\\n#### 5"], ["eos"], [7], think=False)
    >>> r["correct"], r["format_ok"], r["category"], r["steps"]
    (True, True, 'correct', 1)
    >>> grade_question(row, ["2+3=6 so the answer is 6"], ["eos"], [9], think=False)["category"]
    'format'
    """
    gold = normalize_number(str(problem["gold"]))
    flex = [extract_answer(t, "flexible", think=think) for t in texts]
    strict = [extract_answer(t, "strict", think=think) for t in texts]
    vote, vote_strict = majority_vote(flex), majority_vote(strict)
    rep = next((i for i, a in enumerate(flex) if vote is not None and numbers_equal(a, vote)), 0)
    correct = numbers_equal(vote, gold)
    fmt = format_ok(texts[rep], think)
    return {
        "id": str(problem["id"]), "question": problem["question"], "gold": str(problem["gold"]),
        "steps": count_steps(problem.get("answer", "")), "completion": texts[rep], "extracted": vote,
        "extracted_strict": vote_strict, "correct": correct, "correct_strict": numbers_equal(vote_strict, gold),
        "finish_reason": finish_reasons[rep], "n_tokens": int(n_tokens[rep]), "format_ok": fmt,
        "category": error_category(vote, correct, finish_reasons[rep], fmt), "n_samples": len(texts),
        "n_correct_samples": sum(numbers_equal(a, gold) for a in flex), "answers": json.dumps(flex),
        "style": completion_style(texts[rep], think=think),
    }


def grade_records(problems: list[dict], samples: list[Any], think: bool) -> list[dict]:
    """One record per problem; ``samples[i].prompt_index`` indexes ``problems`` (``generation.Sample``)."""
    by_prompt: dict[int, list[Any]] = {}
    for s in samples:
        by_prompt.setdefault(s.prompt_index, []).append(s)
    out = []
    for i, p in enumerate(problems):
        ss = sorted(by_prompt.get(i, []), key=lambda s: s.sample_idx)
        if not ss:
            raise ValueError(f"problem {p['id']} (index {i}) got no completion from the sampler")
        out.append(grade_question(p, [s.text for s in ss], [s.finish_reason for s in ss],
                                  [s.n_tokens for s in ss], think))
    return out


# ---- statistics ----------------------------------------------------------------------------

def _frame(recs: Any) -> pd.DataFrame:
    return recs if isinstance(recs, pd.DataFrame) else pd.DataFrame(list(recs))


def _ppo_name(records: Mapping[str, Any]) -> str | None:
    return next((n for n in PPO_NAMES if n in records), None)


def paired_table(records: Mapping[str, Mapping[str, Any]], a: str, b: str, test_set: str) -> pd.DataFrame:
    """The questions both models answered, side by side (``*_a``, ``*_b`` columns), in ``a``'s order."""
    left = _frame(records[a][test_set])
    right = _frame(records[b][test_set])
    keep = [c for c in ("id", "correct", "extracted", "completion") if c in right.columns]
    return left.merge(right[keep], on="id", how="inner", suffixes=("_a", "_b"))


def outcome_counts(table: pd.DataFrame) -> dict[str, int]:
    """Both right / only a / only b / both wrong, from a ``paired_table``."""
    a, b = table["correct_a"].astype(bool), table["correct_b"].astype(bool)
    return {"both right": int((a & b).sum()), "only a": int((a & ~b).sum()), "only b": int((~a & b).sum()),
            "both wrong": int((~a & ~b).sum())}


def summarize(records: Mapping[str, Mapping[str, Any]], n_boot: int = 2000, seed: int = 0,
              skipped: Mapping[str, str] | None = None, synthetic: bool = False) -> dict[str, Any]:
    """The ``06_eval.json`` metrics from ``records[model][test_set]`` (DataFrames or lists of record dicts).

    ``paired`` holds ``ppo_vs_sft`` (the first of ppo, ppo_best, ppo_last
    present) and ``sft_vs_base`` where both models were scored on the set;
    ``diff`` is first minus second, ``b01`` the questions only the second
    solved, ``b10`` only the first. ``skipped`` notes go in as they are.
    """
    models: dict[str, Any] = {}
    errors: dict[str, Any] = {}
    by_steps: dict[str, Any] = {}
    by_style: dict[str, Any] = {}
    for name, per in records.items():
        for ts, recs in per.items():
            df = _frame(recs)
            if df.empty:
                continue
            correct = df["correct"].astype(float)
            acc, lo, hi = accuracy_ci(correct, n_boot=n_boot, seed=seed)
            if correct.nunique() == 1:  # every resample is identical: the bootstrap collapses to a point
                _, lo, hi = wilson_ci(int(correct.sum()), len(correct))
            models.setdefault(name, {})[ts] = {"accuracy": acc, "ci95": [lo, hi], "n": int(len(df)),
                                               "accuracy_strict": float(df["correct_strict"].astype(float).mean())}
            if "weights" in df and df["weights"].notna().any():  # records from before this column have none
                models[name][ts]["weights"] = ", ".join(sorted(set(df["weights"].dropna().astype(str))))
            counts = error_breakdown(df).iloc[0]
            errors.setdefault(name, {})[ts] = {c: int(counts[c]) for c in ERROR_CATEGORIES}
            acc_steps = df.groupby("steps")["correct"].apply(lambda s: float(s.astype(float).mean()))
            by_steps.setdefault(name, {})[ts] = {str(int(k)): v for k, v in acc_steps.items()}
            if "style" in df:
                by_style.setdefault(name, {})[ts] = {
                    st: {"share": float((df["style"] == st).mean()),
                         "accuracy": float(df.loc[df["style"] == st, "correct"].astype(float).mean())
                         if (df["style"] == st).any() else None}
                    for st in COMPLETION_STYLES}
    paired: dict[str, Any] = {}
    for key, (a, b) in PAIRS.items():
        a = _ppo_name(models) if a == "ppo" else a
        if a not in models or b not in models:
            continue
        for ts in models[a]:
            if ts not in models[b]:
                continue
            t = paired_table(records, a, b, ts)
            if t.empty:
                continue
            r = paired_comparison(t["correct_a"].astype(int), t["correct_b"].astype(int), n_boot=n_boot, seed=seed)
            paired.setdefault(key, {})[ts] = {k: r[k] for k in ("diff", "ci95", "mcnemar_p", "b01", "b10")}
    out = {"models": models, "paired": paired, "errors": errors, "by_steps": by_steps, "by_style": by_style}
    out["verdicts"] = verdicts(out, synthetic=synthetic)
    if skipped:
        out["skipped"] = dict(skipped)
    return out


_SET_NAMES = {"platinum": "GSM8K-Platinum", "gsm8k_test": "the GSM8K test split", "dev": "the dev split"}
_SYNTHETIC_SET_NAMES = {"platinum": "the synthetic Platinum split", "gsm8k_test": "the synthetic test split",
                        "dev": "the dev split"}


def verdicts(summary: Mapping[str, Any], alpha: float = 0.01, synthetic: bool = False) -> dict[str, str]:
    """One sentence per test set: PPO against SFT, the paired difference with its 95% interval and McNemar's p.

    ``synthetic`` names the sets as the offline profiles' stand-ins, not as GSM8K's.

    >>> s = {"models": {"ppo": {"platinum": {"accuracy": 0.82, "n": 1000}}, "sft": {"platinum": {"accuracy": 0.12}}},
    ...      "paired": {"ppo_vs_sft": {"platinum": {"diff": 0.70, "ci95": [0.67, 0.73], "mcnemar_p": 1e-150}}}}
    >>> print(verdicts(s)["platinum"])
    On GSM8K-Platinum (1000 problems) PPO beats SFT: 82.0% vs 12.0%, +70.0 points (95% CI +67.0 to +73.0), McNemar p < 1e-10.
    """
    out = {}
    models = summary.get("models", {})
    a = _ppo_name(models)
    for ts, r in summary.get("paired", {}).get("ppo_vs_sft", {}).items():
        pa, pb = models.get(a, {}).get(ts, {}), models.get("sft", {}).get(ts, {})
        name = (_SYNTHETIC_SET_NAMES if synthetic else _SET_NAMES).get(ts, ts)
        out[ts] = verdict_sentence(name, pa.get("n"), pa.get("accuracy", float("nan")),
                                   pb.get("accuracy", float("nan")), r, alpha)
    return out


def accuracy_frame(summary: Mapping[str, Any]) -> pd.DataFrame:
    """``summary["models"]`` as a long table: model, test_set, accuracy, lo, hi, n, accuracy_strict."""
    rows = [{"model": m, "test_set": ts, "accuracy": r["accuracy"], "lo": r["ci95"][0], "hi": r["ci95"][1],
             "n": r["n"], "accuracy_strict": r["accuracy_strict"]}
            for m, per in summary["models"].items() for ts, r in per.items()]
    return pd.DataFrame(rows, columns=["model", "test_set", "accuracy", "lo", "hi", "n", "accuracy_strict"])
