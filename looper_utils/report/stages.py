"""What the report card says about each stage: its title, its metrics as blocks, its figures' captions.

One renderer per stage turns that stage's ``metrics/NN_stage.json`` into
(one-line summary, blocks, consumed key paths); ``RENDERERS`` maps the stage
to it. The summary goes into the card's summary table, the blocks into the
stage's section, and ``other_metrics`` lists every key no renderer consumed,
so a metric a stage adds later is never silently dropped.

``card`` puts these sections together with the rest of the card.
"""
from __future__ import annotations

from typing import Any

from .blocks import (DASH, Para, Table, dict_table, flatten, fmt_num, fmt_p, fmt_pct, fmt_pct_ci, fmt_seconds,
                     kv_table, sort_key)

__all__ = ["STAGE_TITLES", "CONFIG_SECTIONS", "FIGURE_CAPTIONS", "RENDERERS", "other_metrics"]

STAGE_TITLES = {"01_data": "Data", "02_sft": "Supervised fine-tuning", "03_rollouts": "Rollouts",
                "04_regime_w": "Regime W: reward and bandit", "05_ppo": "PPO", "06_eval": "Evaluation"}
# The Config sections each stage reads, shown first in that stage's configuration.
CONFIG_SECTIONS = {"01_data": ("data",), "02_sft": ("model", "sft"), "03_rollouts": ("rollouts",),
                   "04_regime_w": ("reward", "bandit"), "05_ppo": ("ppo", "bandit", "reward"),
                   "06_eval": ("eval",)}
# Captions of the figures the notebooks write (a metrics file's "figure_captions" overrides them).
FIGURE_CAPTIONS = {
    "01_steps.png": "Calculation steps per solution, share of each split",
    "01_gold_magnitude.png": "Size of the answers (|gold|), per split",
    "02_loss.png": "SFT loss per completion token over optimizer steps",
    "03_pass_at_k.png": "pass@k of the SFT policy: problems solved by at least one of k samples",
    "03_lengths_finish.png": "Completion length by correctness, and why sampling stopped",
    "04_bandit.png": "Bandit simulation: where each algorithm sends the prompts",
    "04_reward_per_arm.png": "Reward per arm",
    "05_ppo_curves.png": "PPO training curves: reward, accuracy, KL, entropy, clipping, prompts per arm",
    "05_style_share.png": "Style of the sampled completions over PPO iterations, beside accuracy",
    "05_time_split.png": "Where PPO's time went",
    "06_accuracy.png": "Accuracy per model and test set, 95% bootstrap intervals",
    "06_paired_ppo_vs_sft.png": "PPO vs SFT on the same questions",
    "06_error_categories.png": "Outcome of every question, per model and test set",
    "06_accuracy_by_steps.png": "Accuracy by number of calculation steps",
}


# ---- stage renderers: (metrics) -> (one-line summary, blocks, consumed key paths) ----------

def _data(m: dict) -> tuple[str, list, set]:
    rows, steps = m.get("rows") or {}, m.get("steps_mean") or {}
    splits = list(rows) + [s for s in steps if s not in rows]
    blocks: list[Any] = [kv_table([("source", str(m.get("source")), "source" in m),
                                    ("profile", str(m.get("profile")), "profile" in m)])]
    if splits:
        blocks.append(Table(["split"] + splits, [["rows"] + [fmt_num(rows.get(s)) for s in splits],
                                                 ["mean calculation steps"] + [fmt_num(steps.get(s)) for s in splits]]))
    for key, title in (("platinum_status_counts", "GSM8K-Platinum status"), ("overlap", "Overlap between splits")):
        if isinstance(m.get(key), dict) and m[key]:  # synthetic data has no Platinum status: no empty table
            blocks += [Para(f"{title}:"), dict_table(m[key], key)]
    summary = " · ".join(f"{s} {fmt_num(rows[s])}" for s in rows)
    if m.get("source"):
        summary += f" ({m['source']})"
    return summary, blocks, {("rows",), ("steps_mean",), ("source",), ("profile",), ("platinum_status_counts",),
                             ("overlap",)}


def _sft(m: dict) -> tuple[str, list, set]:
    n, b, a = m.get("n_dev"), m.get("dev_accuracy_before"), m.get("dev_accuracy_after")
    delta = f"{100 * (a - b):+.1f} pp" if isinstance(a, (int, float)) and isinstance(b, (int, float)) else DASH
    blocks = [kv_table([("dev accuracy before SFT [95% Wilson CI]", fmt_pct_ci(b, n=n), "dev_accuracy_before" in m),
                        ("dev accuracy after SFT [95% Wilson CI]", fmt_pct_ci(a, n=n), "dev_accuracy_after" in m),
                        ("change", delta, "dev_accuracy_before" in m and "dev_accuracy_after" in m),
                        ("dev problems", fmt_num(n), "n_dev" in m),
                        ("training steps", fmt_num(m.get("train_steps")), "train_steps" in m),
                        ("training time", fmt_seconds(m.get("train_seconds")), "train_seconds" in m),
                        ("final loss", fmt_num(m.get("final_loss")), "final_loss" in m),
                        ("parameters", fmt_num(m.get("n_params")), "n_params" in m),
                        ("tokens / s", fmt_num(m.get("tokens_per_second")), "tokens_per_second" in m)])]
    summary = f"dev accuracy {fmt_pct(b)} → {fmt_pct(a)}" + (f" (n={n})" if n else "")
    return summary, blocks, {(k,) for k in ("n_dev", "dev_accuracy_before", "dev_accuracy_after", "train_steps",
                                            "train_seconds", "final_loss", "n_params", "tokens_per_second")}


def _rollouts(m: dict) -> tuple[str, list, set]:
    maj = m.get("maj_at_k")
    blocks: list[Any] = [kv_table([("samples per problem (k)", fmt_num(m.get("k")), "k" in m),
                                    ("problems", fmt_num(m.get("n_problems")), "n_problems" in m),
                                    ("completions", fmt_num(m.get("n_completions")), "n_completions" in m),
                                    ("accuracy (all samples)", fmt_pct(m.get("accuracy")), "accuracy" in m),
                                    (f"maj@{m.get('k', 'k')}", fmt_pct(maj), isinstance(maj, (int, float))),
                                    ("truncated", fmt_pct(m.get("truncation_rate")), "truncation_rate" in m),
                                    ("tokens / s", fmt_num(m.get("tokens_per_second")), "tokens_per_second" in m),
                                    ("time", fmt_seconds(m.get("seconds")), "seconds" in m)])]
    pk = m.get("pass_at_k") if isinstance(m.get("pass_at_k"), dict) else {}
    ks = sorted(set(pk) | (set(maj) if isinstance(maj, dict) else set()), key=sort_key)
    if ks:
        rows = [["pass@k"] + [fmt_pct(pk.get(k)) for k in ks]]
        if isinstance(maj, dict):
            rows.append(["maj@k"] + [fmt_pct(maj.get(k)) for k in ks])
        blocks.append(Table(["k"] + ks, rows))
    if isinstance(m.get("accuracy_by_steps"), dict):
        by = m["accuracy_by_steps"]
        blocks += [Para("Accuracy by number of calculation steps in the gold solution:"),
                   Table(["steps"] + sorted(by, key=sort_key), [["accuracy"] + [fmt_pct(by[k]) for k in
                                                                                 sorted(by, key=sort_key)]])]
    parts = [f"pass@{k} {fmt_pct(pk[k])}" for k in (ks[:1] + ks[-1:] if len(ks) > 1 else ks) if k in pk]
    if isinstance(maj, (int, float)):
        parts.append(f"maj@{m.get('k', 'k')} {fmt_pct(maj)}")
    return ", ".join(parts), blocks, {(k,) for k in ("k", "n_problems", "n_completions", "accuracy", "maj_at_k",
                                                     "truncation_rate", "tokens_per_second", "seconds",
                                                     "pass_at_k", "accuracy_by_steps")}


def _regime_w(m: dict) -> tuple[str, list, set]:
    bandit = m.get("bandit") if isinstance(m.get("bandit"), dict) else {}
    mean, std = m.get("reward_mean"), m.get("reward_std")
    blocks: list[Any] = [kv_table([("completions scored", fmt_num(m.get("n_completions")), "n_completions" in m),
                                    ("reward mean ± std", f"{fmt_num(mean)} ± {fmt_num(std)}", "reward_mean" in m),
                                    ("format ok", fmt_pct(m.get("format_ok_rate")), "format_ok_rate" in m),
                                    ("calculator steps verified", fmt_pct(m.get("calc_verified_rate")),
                                     "calc_verified_rate" in m)])]
    for key, title, fmt in (("components", "Reward components", fmt_num),
                            ("guard_counts", "Reward-hacking guards fired", fmt_num),
                            ("arm_pass_rate", "Pass rate per arm", fmt_pct)):
        if isinstance(m.get(key), dict):
            blocks += [Para(f"{title}:"), dict_table(m[key], key.split("_")[0], fmt)]
    consumed = {(k,) for k in ("n_completions", "reward_mean", "reward_std", "format_ok_rate", "calc_verified_rate",
                               "components", "guard_counts", "arm_pass_rate")}
    if bandit:
        cum, uni = bandit.get("cumulative_payoff"), bandit.get("uniform_cumulative_payoff")
        both = isinstance(cum, (int, float)) and isinstance(uni, (int, float)) and uni
        ratio = f"{cum / uni:.2f}×" if both else DASH
        blocks += [Para("Bandit simulation:"),
                   kv_table([("algorithm", str(bandit.get("algorithm")), "algorithm" in bandit),
                              ("share of pulls on the best arms", fmt_pct(bandit.get("share_on_best_arms")),
                               "share_on_best_arms" in bandit),
                              ("cumulative payoff", fmt_num(cum), "cumulative_payoff" in bandit),
                              ("uniform sampling payoff", fmt_num(uni), "uniform_cumulative_payoff" in bandit),
                              ("payoff vs uniform", ratio, ratio != DASH)])]
        consumed |= {("bandit", k) for k in ("algorithm", "share_on_best_arms", "cumulative_payoff",
                                              "uniform_cumulative_payoff")}
    summary = f"reward {fmt_num(mean)} ± {fmt_num(std)}"
    if bandit.get("algorithm"):
        summary += f"; {bandit['algorithm']} payoff {fmt_num(bandit.get('cumulative_payoff'))} " \
                   f"vs uniform {fmt_num(bandit.get('uniform_cumulative_payoff'))}"
    return summary, blocks, consumed


_TIME_PARTS = {"generate": "sampling", "score": "scoring (Regime W)", "forward": "log-probs and values",
               "update": "PPO update"}


def _ppo(m: dict) -> tuple[str, list, set]:
    n, s, p = m.get("n_dev"), m.get("dev_accuracy_sft"), m.get("dev_accuracy_ppo")
    blocks: list[Any] = [kv_table([
        ("dev accuracy SFT [95% CI]", fmt_pct_ci(s, m.get("dev_ci95_sft"), n), "dev_accuracy_sft" in m),
        ("dev accuracy PPO [95% CI]", fmt_pct_ci(p, m.get("dev_ci95_ppo"), n), "dev_accuracy_ppo" in m),
        ("change", f"{100 * (p - s):+.1f} pp" if isinstance(p, (int, float)) and isinstance(s, (int, float))
         else DASH, "dev_accuracy_ppo" in m and "dev_accuracy_sft" in m),
        ("dev problems", fmt_num(n), "n_dev" in m), ("iterations", fmt_num(m.get("iterations")), "iterations" in m),
        ("reward first → last iteration", f"{fmt_num(m.get('reward_first'))} → {fmt_num(m.get('reward_last'))}",
         "reward_first" in m or "reward_last" in m),
        ("KL to reference (last)", fmt_num(m.get("kl_last")), "kl_last" in m),
        ("tokens / s", fmt_num(m.get("tokens_per_second")), "tokens_per_second" in m),
        ("time", fmt_seconds(m.get("seconds")), "seconds" in m)])]
    first, last = m.get("reward_by_arm_first"), m.get("reward_by_arm_last")
    if isinstance(first, dict) and isinstance(last, dict) and (first or last):
        sf, sl = m.get("arm_share_first") or {}, m.get("arm_share_last") or {}
        arms = list(dict.fromkeys([*first, *last]))
        blocks += [Para("The mean reward moves with the arm mix as well as with learning: each arm's own reward "
                        "and its share of the prompts, first → last iteration."),
                   Table(["arm", "reward", "share of prompts"],
                         [[a, f"{fmt_num(first.get(a))} → {fmt_num(last.get(a))}",
                           f"{fmt_pct(sf.get(a))} → {fmt_pct(sl.get(a))}"] for a in arms])]
    split = m.get("time_split")
    if isinstance(split, dict) and split:
        total = sum(v for v in split.values() if isinstance(v, (int, float))) or None
        blocks += [Para("Where the time went:"),
                   Table(["part", "time", "share"],
                         [[_TIME_PARTS.get(k, k), fmt_seconds(v),
                           fmt_pct(v / total) if total and isinstance(v, (int, float)) else DASH]
                          for k, v in split.items()])]
    summary = f"dev accuracy SFT {fmt_pct(s)} → PPO {fmt_pct(p)}"
    if "reward_first" in m or "reward_last" in m:
        summary += f"; reward {fmt_num(m.get('reward_first'))} → {fmt_num(m.get('reward_last'))}"
    return summary, blocks, {(k,) for k in ("n_dev", "dev_accuracy_sft", "dev_accuracy_ppo", "dev_ci95_sft",
                                            "dev_ci95_ppo", "iterations", "reward_first", "reward_last", "kl_last",
                                            "tokens_per_second", "seconds", "time_split", "reward_by_arm_first",
                                            "reward_by_arm_last", "arm_share_first", "arm_share_last")}


def _eval(m: dict) -> tuple[str, list, set]:
    models = m.get("models") if isinstance(m.get("models"), dict) else {}
    sets = list(dict.fromkeys(ts for per in models.values() if isinstance(per, dict) for ts in per))
    blocks: list[Any] = []
    consumed: set = {("errors",)}
    if models:
        rows, strict = [], []
        for name, per in models.items():
            cells, scells = [name], [name]
            for ts in sets:
                r = per.get(ts) if isinstance(per, dict) and isinstance(per.get(ts), dict) else {}
                cells.append(fmt_pct_ci(r.get("accuracy"), r.get("ci95")) + (f" (n={r['n']})" if "n" in r else ""))
                scells.append(fmt_pct(r.get("accuracy_strict")))
                consumed |= {("models", name, ts, k) for k in ("accuracy", "ci95", "n", "accuracy_strict")}
            rows.append(cells)
            strict.append(scells)
        blocks += [Para("Accuracy with 95% bootstrap intervals (flexible grader):"), Table(["model"] + sets, rows)]
        if any(c != DASH for r in strict for c in r[1:]):
            blocks += [Para("Accuracy with the strict grader (`#### N` line only):"), Table(["model"] + sets, strict)]
    paired = m.get("paired") if isinstance(m.get("paired"), dict) else {}
    prow = []
    for comp, per in paired.items():
        for ts, r in (per.items() if isinstance(per, dict) else []):
            if not isinstance(r, dict):
                continue
            ci = r.get("ci95")
            ci_s = f"[{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]" if isinstance(ci, list) and len(ci) == 2 \
                and None not in ci else DASH
            diff = f"{100 * r['diff']:+.1f} pp" if isinstance(r.get("diff"), (int, float)) else DASH
            prow.append([comp.replace("_vs_", " vs "), ts, diff, ci_s, fmt_p(r.get("mcnemar_p")),
                         fmt_num(r.get("b10")), fmt_num(r.get("b01"))])
            consumed |= {("paired", comp, ts, k) for k in ("diff", "ci95", "mcnemar_p", "b01", "b10")}
    if prow:
        blocks += [Para("Paired comparison on the same questions (first model minus second; McNemar exact test; "
                        "wins = questions only the first model solved):"),
                   Table(["comparison", "test set", "difference", "95% CI (pp)", "McNemar p", "wins", "losses"],
                         prow)]
    if isinstance(m.get("errors"), dict):
        blocks += [Para("Error categories:"), dict_table(m["errors"], "model / test set")]
    by_style = m.get("by_style") if isinstance(m.get("by_style"), dict) else {}
    srows, styles = [], []
    for name, per in by_style.items():
        for ts, st in (per.items() if isinstance(per, dict) else []):
            if isinstance(st, dict):
                styles = styles or list(st)
                srows.append([name, ts] + [f"{fmt_pct(v.get('share'))} (right {fmt_pct(v.get('accuracy'))})"
                                           if isinstance(v, dict) else DASH for v in st.values()])
    if srows:
        blocks += [Para("How the answers were written (share of answers in each style, and how often an answer "
                        "of that style is right; `data.completion_style`):"),
                   Table(["model", "test set"] + styles, srows)]
    consumed |= {("by_style",), ("verdicts",)}
    head = sets[0] if sets else None
    summary = ", ".join(f"{name} {fmt_pct_ci(per[head].get('accuracy'), per[head].get('ci95'))}"
                        for name, per in models.items() if isinstance(per, dict) and isinstance(per.get(head), dict))
    return (f"{head}: {summary}" if summary else ""), blocks, consumed


RENDERERS = {"01_data": _data, "02_sft": _sft, "03_rollouts": _rollouts, "04_regime_w": _regime_w,
             "05_ppo": _ppo, "06_eval": _eval}


def other_metrics(m: dict, consumed: set) -> list[list[str]]:
    """Rows for every leaf of ``m`` no renderer showed (a consumed path covers everything under it)."""
    consumed = consumed | {("environment",), ("figure_captions",)}
    return [[".".join(p), fmt_num(v)] for p, v in flatten(m)
            if p and not any(p[:i] in consumed for i in range(1, len(p) + 1))]
