"""CPU benchmark of Regime W scoring, and an audit of GSM8K's own calculator steps.

    python bench/scoring.py [--n 10000] [--gsm8k ../shared/data/gsm8k] [--examples 40]

Times ``regime_w.score`` (one process, one core) on three kinds of
completions: GSM8K-style worked solutions, the same with hacking variants
(hedged, stuffed, truncated, empty), and long reasoning-model completions
(a ``<think>`` block of about a thousand tokens). Then scores the whole
rollout table once more through ``score_table`` + ``components_table``.

When a GSM8K folder (``train.jsonl``) is found, every calculator step of
every gold solution is recomputed and the share that is right is printed,
with the wrong ones listed. Without it, synthetic problems stand in and the
audit is skipped.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

import pandas as pd

from looper_utils import data
from looper_utils.config import RewardWeights
from looper_utils.regime_w import audit_calculations, components_table, score, score_table

DEFAULT_GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k"


def load_rows(gsm8k: Path, n: int) -> tuple[list[dict], str]:
    train = gsm8k / "train.jsonl"
    if train.is_file():
        rows = []
        for i, line in enumerate(open(train, encoding="utf-8")):
            rec = json.loads(line)
            rows.append({"id": f"gsm8k-train-{i:05d}", "question": rec["question"], "answer": rec["answer"],
                         "gold": data.gold_from_answer(rec["answer"]) or ""})
        return rows, f"GSM8K train ({train})"
    return data.synthetic_problems(min(n, 5000), seed=0, min_steps=2, max_steps=6, max_value=100), "synthetic"


def hacked(answer: str, rng: random.Random) -> tuple[str, str]:
    """A hacking variant of a worked solution and its finish reason."""
    body, _, final = answer.rpartition("\n")
    kind = rng.randrange(5)
    if kind == 0:
        return f"{body}\n{final} or {rng.randint(1, 99)}", "eos"
    if kind == 1:
        return f"{body}\n" + f"{final}\n" * 6, "eos"
    if kind == 2:
        return final, "eos"
    if kind == 3:
        return answer, "length"
    return body + "\n" + " ".join(["and so on"] * 40), "length"


def long_think(answer: str, rng: random.Random, words: int = 700) -> str:
    """A reasoning-model completion: a long <think> block (completion starts inside it), then the solution."""
    filler = []
    while len(filler) < words:
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        filler += (f"Wait, let me double-check that. If I take {a} and add {b} I get {a} + {b} = {a + b}, "
                   f"which matches what I expected, so the next part should be fine.").split()
    return " ".join(filler[:words]) + "\n</think>\n\n" + answer


def timed(name: str, n: int, chars: float, fn) -> dict:
    """Wall and CPU time of ``fn()``; CPU time is what one core spent, whatever else the machine runs."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    return {"completions": name, "n": n, "mean chars": round(chars), "wall s": round(wall, 3),
            "cpu s": round(cpu, 3), "wall s per 1000": round(1000 * wall / n, 3),
            "cpu s per 1000": round(1000 * cpu / n, 3)}


def time_scoring(name: str, items: list[tuple[str, dict, str]], think: bool) -> dict:
    def run() -> None:
        for text, row, finish in items:
            score(text, row, finish_reason=finish, think=think)
    return timed(name, len(items), sum(len(t) for t, _, _ in items) / len(items), run)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10000, help="completions per kind")
    ap.add_argument("--gsm8k", type=Path, default=DEFAULT_GSM8K, help="folder holding GSM8K train.jsonl")
    ap.add_argument("--examples", type=int, default=40, help="wrong steps to list")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    rng = random.Random(args.seed)
    rows, source = load_rows(args.gsm8k, args.n)
    picks = [rows[rng.randrange(len(rows))] for _ in range(args.n)]
    print(f"data: {source}, {len(rows)} solutions; {args.n} completions per kind\n")

    results = [
        time_scoring("worked solutions", [(r["answer"], r, "eos") for r in picks], think=False),
        time_scoring("hacking variants", [(t, r, f) for r in picks for t, f in [hacked(r["answer"], rng)]],
                     think=False),
        time_scoring("long <think> (~700 words)", [(long_think(r["answer"], rng), r, "eos") for r in picks],
                     think=True),
    ]
    table = pd.DataFrame({"completion": [r["answer"] for r in picks], "gold": [r["gold"] for r in picks],
                          "finish_reason": "eos", "n_tokens": 0})
    results.append(timed("score_table + components_table", len(table), table["completion"].str.len().mean(),
                         lambda: components_table(score_table(table), RewardWeights())))
    print(pd.DataFrame(results).to_string(index=False))
    print(f"\nload average while running: {', '.join(f'{x:.1f}' for x in os.getloadavg())} "
          f"on {os.cpu_count()} cores (wall time suffers when the machine is shared; CPU time less so)")

    if source == "synthetic":
        print("\nGSM8K not found: calculator audit skipped")
        return
    t0 = time.perf_counter()
    audit = audit_calculations(rows)
    dt = time.perf_counter() - t0
    print(f"\nGSM8K train calculator audit ({dt:.1f} s): {len(audit)} steps in {len(rows)} solutions")
    summary = audit.groupby("kind")["ok"].agg(steps="size", right="sum", share="mean")
    summary.loc["all"] = [len(audit), int(audit["ok"].sum()), audit["ok"].mean()]
    print(summary.to_string(float_format=lambda x: f"{x:.5f}"))
    bad_rows = audit.loc[~audit["ok"], "row"].nunique()
    print(f"solutions with every step right: {1 - bad_rows / len(rows):.5f} ({bad_rows} with a wrong or unreadable step)")
    wrong = audit[~audit["ok"]]
    refused = wrong[wrong["value"].isna()]
    print(f"\nsteps the evaluator refused (not + - * / ** arithmetic): {len(refused)}")
    for _, r in refused.iterrows():
        print(f"  {r['id']}: {r['text']}")
    slips = wrong[wrong["value"].notna()]
    print(f"\nsteps that are arithmetically wrong as written: {len(slips)}")
    for _, r in slips.head(args.examples).iterrows():
        print(f"  {r['id']} [{r['kind']}]: {r['text']}   (is {r['value']:.6g})")


if __name__ == "__main__":
    main()
