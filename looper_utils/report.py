"""The report card of a run: ``runs/<run_id>/report.md`` and a self-contained ``report.html``.

Built from the run's own files only (``metrics/*.json``, ``configs/*.json``,
``figures/*.png`` and the optional ``pipeline.json`` of per-stage wall times),
so it can be rebuilt at any time and shared as it is: the HTML embeds every
figure as a base64 data URI, carries its CSS inline and fetches nothing.

A partial run still gets a report that names the missing stages. Metrics the
stage renderers below do not know are listed generically under "Other
metrics", so a key a stage adds later is never silently dropped.

Both files come from one list of blocks (heading, paragraph, table, figure,
details) so the Markdown and the HTML always say the same thing. Jinja or
nbconvert would add a dependency for a page this small.
"""
from __future__ import annotations

import base64
import html
import json
import os
import platform
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from .artifacts import STAGES, atomic_write_text, read_json
from .stats import verdict_sentence, wilson_ci

__all__ = ["build_report", "environment_info", "STAGE_TITLES"]

STAGE_TITLES = {"01_data": "Data", "02_sft": "Supervised fine-tuning", "03_rollouts": "Rollouts",
                "04_regime_w": "Regime W: reward and bandit", "05_ppo": "PPO", "06_eval": "Evaluation"}
# The Config sections each stage reads, shown first in that stage's configuration.
_CONFIG_SECTIONS = {"01_data": ("data",), "02_sft": ("model", "sft"), "03_rollouts": ("rollouts",),
                    "04_regime_w": ("reward", "bandit"), "05_ppo": ("ppo", "bandit", "reward"),
                    "06_eval": ("eval",)}
_PACKAGES = ("torch", "transformers", "trl", "peft", "datasets", "accelerate")
_DASH = "—"


# ---- blocks ------------------------------------------------------------------------------

@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Para:
    text: str
    kind: str = ""  # "" | "missing" | "meta"


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    align_numbers: bool = True  # right-align cells that start with a number (not for version strings)


@dataclass
class Figure:
    path: Path
    caption: str
    number: int = 0


@dataclass
class Details:
    summary: str
    blocks: list[Any] = field(default_factory=list)


# ---- formatting --------------------------------------------------------------------------

def _num(x: Any) -> str:
    if x is None:
        return _DASH
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if x.is_integer() and abs(x) >= 1000:
            return f"{int(x):,}"
        return f"{x:,.1f}" if abs(x) >= 1000 else f"{x:.4g}"
    if isinstance(x, list):
        if len(x) <= 12:
            return "[" + ", ".join(_num(v) for v in x) + "]"
        vals = [v for v in x if isinstance(v, (int, float)) and not isinstance(v, bool)]
        extra = f", min {_num(min(vals))}, max {_num(max(vals))}" if vals else ""
        return f"{len(x)} values: first {_num(x[0])}, last {_num(x[-1])}{extra}"
    return str(x)


def _pct(x: Any) -> str:
    return f"{100 * x:.1f}%" if isinstance(x, (int, float)) and not isinstance(x, bool) else _DASH


def _pct_ci(acc: Any, ci: Any = None, n: Any = None) -> str:
    """``45.0% [38.1, 52.0]``; the interval is Wilson's when only ``n`` is known.

    >>> _pct_ci(0.45, [0.381, 0.52]), _pct_ci(0.5, n=100), _pct_ci(None)
    ('45.0% [38.1, 52.0]', '50.0% [40.4, 59.6]', '—')
    """
    if not isinstance(acc, (int, float)):
        return _DASH
    if not (isinstance(ci, (list, tuple)) and len(ci) == 2 and None not in ci) and isinstance(n, int) and n > 0:
        ci = list(wilson_ci(round(acc * n), n)[1:])
    out = _pct(acc)
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and None not in ci:
        out += f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"
    return out


def _seconds(s: Any) -> str:
    """
    >>> _seconds(12.34), _seconds(131.7), _seconds(7384)
    ('12.3 s', '2 min 11 s', '2 h 03 min')
    """
    if not isinstance(s, (int, float)):
        return _DASH
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


def _p(p: Any) -> str:
    if not isinstance(p, (int, float)):
        return _DASH
    return "< 0.0001" if p < 1e-4 else f"{p:.3g}"


def _sort_key(k: str) -> tuple:
    return (0, float(k), "") if re.fullmatch(r"-?\d+(\.\d+)?", str(k)) else (1, 0.0, str(k))


# ---- generic rendering of nested metrics -------------------------------------------------

def _flatten(obj: Any, prefix: tuple = ()) -> list[tuple[tuple, Any]]:
    if isinstance(obj, dict) and obj:
        return [kv for k, v in obj.items() for kv in _flatten(v, prefix + (str(k),))]
    if isinstance(obj, list) and obj and all(isinstance(v, dict) for v in obj):
        return [kv for i, v in enumerate(obj) for kv in _flatten(v, prefix + (str(i),))]
    return [(prefix, obj)]


def _dict_table(d: dict, key_header: str = "key", value_fmt: Callable = _num) -> Table:
    """A dict of scalars as rows; equally deep dicts as a grid (outer keys joined by " / " x innermost keys).

    >>> _dict_table({"sft": {"platinum": {"wrong": 3, "correct": 5}}}, "model / set").rows
    [['sft / platinum', '3', '5']]
    """
    leaves = _flatten(d)
    depths = {len(p) for p, _ in leaves}
    if len(depths) == 1 and min(depths) >= 2 and len({p[-1] for p, _ in leaves}) > 1:
        cols = list(dict.fromkeys(p[-1] for p, _ in leaves))
        rows: dict[str, dict[str, Any]] = {}
        for p, v in leaves:
            rows.setdefault(" / ".join(p[:-1]), {})[p[-1]] = v
        return Table([key_header] + cols, [[r] + [value_fmt(vals.get(c)) for c in cols] for r, vals in rows.items()])
    return Table([key_header, "value"], [[" / ".join(p), value_fmt(v)] for p, v in leaves])


def _kv(pairs: list[tuple[str, str, bool]]) -> Table:
    return Table(["metric", "value"], [[k, v] for k, v, present in pairs if present])


# ---- stage renderers: (metrics) -> (one-line summary, blocks, consumed key paths) ----------

def _data(m: dict) -> tuple[str, list, set]:
    rows, steps = m.get("rows") or {}, m.get("steps_mean") or {}
    splits = list(rows) + [s for s in steps if s not in rows]
    blocks: list[Any] = [_kv([("source", str(m.get("source")), "source" in m),
                              ("profile", str(m.get("profile")), "profile" in m)])]
    if splits:
        blocks.append(Table(["split"] + splits, [["rows"] + [_num(rows.get(s)) for s in splits],
                                                 ["mean calculation steps"] + [_num(steps.get(s)) for s in splits]]))
    for key, title in (("platinum_status_counts", "GSM8K-Platinum status"), ("overlap", "Overlap between splits")):
        if isinstance(m.get(key), dict) and m[key]:  # synthetic data has no Platinum status: no empty table
            blocks += [Para(f"{title}:"), _dict_table(m[key], key)]
    summary = " · ".join(f"{s} {_num(rows[s])}" for s in rows)
    if m.get("source"):
        summary += f" ({m['source']})"
    return summary, blocks, {("rows",), ("steps_mean",), ("source",), ("profile",), ("platinum_status_counts",),
                             ("overlap",)}


def _sft(m: dict) -> tuple[str, list, set]:
    n, b, a = m.get("n_dev"), m.get("dev_accuracy_before"), m.get("dev_accuracy_after")
    delta = f"{100 * (a - b):+.1f} pp" if isinstance(a, (int, float)) and isinstance(b, (int, float)) else _DASH
    blocks = [_kv([("dev accuracy before SFT [95% Wilson CI]", _pct_ci(b, n=n), "dev_accuracy_before" in m),
                   ("dev accuracy after SFT [95% Wilson CI]", _pct_ci(a, n=n), "dev_accuracy_after" in m),
                   ("change", delta, "dev_accuracy_before" in m and "dev_accuracy_after" in m),
                   ("dev problems", _num(n), "n_dev" in m),
                   ("training steps", _num(m.get("train_steps")), "train_steps" in m),
                   ("training time", _seconds(m.get("train_seconds")), "train_seconds" in m),
                   ("final loss", _num(m.get("final_loss")), "final_loss" in m),
                   ("parameters", _num(m.get("n_params")), "n_params" in m),
                   ("tokens / s", _num(m.get("tokens_per_second")), "tokens_per_second" in m)])]
    summary = f"dev accuracy {_pct(b)} → {_pct(a)}" + (f" (n={n})" if n else "")
    return summary, blocks, {(k,) for k in ("n_dev", "dev_accuracy_before", "dev_accuracy_after", "train_steps",
                                            "train_seconds", "final_loss", "n_params", "tokens_per_second")}


def _rollouts(m: dict) -> tuple[str, list, set]:
    maj = m.get("maj_at_k")
    blocks: list[Any] = [_kv([("samples per problem (k)", _num(m.get("k")), "k" in m),
                              ("problems", _num(m.get("n_problems")), "n_problems" in m),
                              ("completions", _num(m.get("n_completions")), "n_completions" in m),
                              ("accuracy (all samples)", _pct(m.get("accuracy")), "accuracy" in m),
                              (f"maj@{m.get('k', 'k')}", _pct(maj), isinstance(maj, (int, float))),
                              ("truncated", _pct(m.get("truncation_rate")), "truncation_rate" in m),
                              ("tokens / s", _num(m.get("tokens_per_second")), "tokens_per_second" in m),
                              ("time", _seconds(m.get("seconds")), "seconds" in m)])]
    pk = m.get("pass_at_k") if isinstance(m.get("pass_at_k"), dict) else {}
    ks = sorted(set(pk) | (set(maj) if isinstance(maj, dict) else set()), key=_sort_key)
    if ks:
        rows = [["pass@k"] + [_pct(pk.get(k)) for k in ks]]
        if isinstance(maj, dict):
            rows.append(["maj@k"] + [_pct(maj.get(k)) for k in ks])
        blocks.append(Table(["k"] + ks, rows))
    if isinstance(m.get("accuracy_by_steps"), dict):
        by = m["accuracy_by_steps"]
        blocks += [Para("Accuracy by number of calculation steps in the gold solution:"),
                   Table(["steps"] + sorted(by, key=_sort_key), [["accuracy"] + [_pct(by[k]) for k in
                                                                                 sorted(by, key=_sort_key)]])]
    parts = [f"pass@{k} {_pct(pk[k])}" for k in (ks[:1] + ks[-1:] if len(ks) > 1 else ks) if k in pk]
    if isinstance(maj, (int, float)):
        parts.append(f"maj@{m.get('k', 'k')} {_pct(maj)}")
    return ", ".join(parts), blocks, {(k,) for k in ("k", "n_problems", "n_completions", "accuracy", "maj_at_k",
                                                     "truncation_rate", "tokens_per_second", "seconds",
                                                     "pass_at_k", "accuracy_by_steps")}


def _regime_w(m: dict) -> tuple[str, list, set]:
    bandit = m.get("bandit") if isinstance(m.get("bandit"), dict) else {}
    mean, std = m.get("reward_mean"), m.get("reward_std")
    blocks: list[Any] = [_kv([("completions scored", _num(m.get("n_completions")), "n_completions" in m),
                              ("reward mean ± std", f"{_num(mean)} ± {_num(std)}", "reward_mean" in m),
                              ("format ok", _pct(m.get("format_ok_rate")), "format_ok_rate" in m),
                              ("calculator steps verified", _pct(m.get("calc_verified_rate")),
                               "calc_verified_rate" in m)])]
    for key, title, fmt in (("components", "Reward components", _num),
                            ("guard_counts", "Reward-hacking guards fired", _num),
                            ("arm_pass_rate", "Pass rate per arm", _pct)):
        if isinstance(m.get(key), dict):
            blocks += [Para(f"{title}:"), _dict_table(m[key], key.split("_")[0], fmt)]
    consumed = {(k,) for k in ("n_completions", "reward_mean", "reward_std", "format_ok_rate", "calc_verified_rate",
                               "components", "guard_counts", "arm_pass_rate")}
    if bandit:
        cum, uni = bandit.get("cumulative_payoff"), bandit.get("uniform_cumulative_payoff")
        both = isinstance(cum, (int, float)) and isinstance(uni, (int, float)) and uni
        ratio = f"{cum / uni:.2f}×" if both else _DASH
        blocks += [Para("Bandit simulation:"),
                   _kv([("algorithm", str(bandit.get("algorithm")), "algorithm" in bandit),
                        ("share of pulls on the best arms", _pct(bandit.get("share_on_best_arms")),
                         "share_on_best_arms" in bandit),
                        ("cumulative payoff", _num(cum), "cumulative_payoff" in bandit),
                        ("uniform sampling payoff", _num(uni), "uniform_cumulative_payoff" in bandit),
                        ("payoff vs uniform", ratio, ratio != _DASH)])]
        consumed |= {("bandit", k) for k in ("algorithm", "share_on_best_arms", "cumulative_payoff",
                                              "uniform_cumulative_payoff")}
    summary = f"reward {_num(mean)} ± {_num(std)}"
    if bandit.get("algorithm"):
        summary += f"; {bandit['algorithm']} payoff {_num(bandit.get('cumulative_payoff'))} " \
                   f"vs uniform {_num(bandit.get('uniform_cumulative_payoff'))}"
    return summary, blocks, consumed


_TIME_PARTS = {"generate": "sampling", "score": "scoring (Regime W)", "forward": "log-probs and values",
               "update": "PPO update"}


def _ppo(m: dict) -> tuple[str, list, set]:
    n, s, p = m.get("n_dev"), m.get("dev_accuracy_sft"), m.get("dev_accuracy_ppo")
    blocks: list[Any] = [_kv([
        ("dev accuracy SFT [95% CI]", _pct_ci(s, m.get("dev_ci95_sft"), n), "dev_accuracy_sft" in m),
        ("dev accuracy PPO [95% CI]", _pct_ci(p, m.get("dev_ci95_ppo"), n), "dev_accuracy_ppo" in m),
        ("change", f"{100 * (p - s):+.1f} pp" if isinstance(p, (int, float)) and isinstance(s, (int, float))
         else _DASH, "dev_accuracy_ppo" in m and "dev_accuracy_sft" in m),
        ("dev problems", _num(n), "n_dev" in m), ("iterations", _num(m.get("iterations")), "iterations" in m),
        ("reward first → last iteration", f"{_num(m.get('reward_first'))} → {_num(m.get('reward_last'))}",
         "reward_first" in m or "reward_last" in m),
        ("KL to reference (last)", _num(m.get("kl_last")), "kl_last" in m),
        ("tokens / s", _num(m.get("tokens_per_second")), "tokens_per_second" in m),
        ("time", _seconds(m.get("seconds")), "seconds" in m)])]
    first, last = m.get("reward_by_arm_first"), m.get("reward_by_arm_last")
    if isinstance(first, dict) and isinstance(last, dict) and (first or last):
        sf, sl = m.get("arm_share_first") or {}, m.get("arm_share_last") or {}
        arms = list(dict.fromkeys([*first, *last]))
        blocks += [Para("The mean reward moves with the arm mix as well as with learning: each arm's own reward "
                        "and its share of the prompts, first → last iteration."),
                   Table(["arm", "reward", "share of prompts"],
                         [[a, f"{_num(first.get(a))} → {_num(last.get(a))}", f"{_pct(sf.get(a))} → {_pct(sl.get(a))}"]
                          for a in arms])]
    split = m.get("time_split")
    if isinstance(split, dict) and split:
        total = sum(v for v in split.values() if isinstance(v, (int, float))) or None
        blocks += [Para("Where the time went:"),
                   Table(["part", "time", "share"], [[_TIME_PARTS.get(k, k), _seconds(v), _pct(v / total) if total and
                                                      isinstance(v, (int, float)) else _DASH] for k, v in split.items()])]
    summary = f"dev accuracy SFT {_pct(s)} → PPO {_pct(p)}"
    if "reward_first" in m or "reward_last" in m:
        summary += f"; reward {_num(m.get('reward_first'))} → {_num(m.get('reward_last'))}"
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
                cells.append(_pct_ci(r.get("accuracy"), r.get("ci95")) + (f" (n={r['n']})" if "n" in r else ""))
                scells.append(_pct(r.get("accuracy_strict")))
                consumed |= {("models", name, ts, k) for k in ("accuracy", "ci95", "n", "accuracy_strict")}
            rows.append(cells)
            strict.append(scells)
        blocks += [Para("Accuracy with 95% bootstrap intervals (flexible grader):"), Table(["model"] + sets, rows)]
        if any(c != _DASH for r in strict for c in r[1:]):
            blocks += [Para("Accuracy with the strict grader (`#### N` line only):"), Table(["model"] + sets, strict)]
    paired = m.get("paired") if isinstance(m.get("paired"), dict) else {}
    prow = []
    for comp, per in paired.items():
        for ts, r in (per.items() if isinstance(per, dict) else []):
            if not isinstance(r, dict):
                continue
            ci = r.get("ci95")
            ci_s = f"[{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]" if isinstance(ci, list) and len(ci) == 2 \
                and None not in ci else _DASH
            diff = f"{100 * r['diff']:+.1f} pp" if isinstance(r.get("diff"), (int, float)) else _DASH
            prow.append([comp.replace("_vs_", " vs "), ts, diff, ci_s, _p(r.get("mcnemar_p")),
                         _num(r.get("b10")), _num(r.get("b01"))])
            consumed |= {("paired", comp, ts, k) for k in ("diff", "ci95", "mcnemar_p", "b01", "b10")}
    if prow:
        blocks += [Para("Paired comparison on the same questions (first model minus second; McNemar exact test; "
                        "wins = questions only the first model solved):"),
                   Table(["comparison", "test set", "difference", "95% CI (pp)", "McNemar p", "wins", "losses"],
                         prow)]
    if isinstance(m.get("errors"), dict):
        blocks += [Para("Error categories:"), _dict_table(m["errors"], "model / test set")]
    by_style = m.get("by_style") if isinstance(m.get("by_style"), dict) else {}
    srows, styles = [], []
    for name, per in by_style.items():
        for ts, st in (per.items() if isinstance(per, dict) else []):
            if isinstance(st, dict):
                styles = styles or list(st)
                srows.append([name, ts] + [f"{_pct(v.get('share'))} (right {_pct(v.get('accuracy'))})"
                                           if isinstance(v, dict) else _DASH for v in st.values()])
    if srows:
        blocks += [Para("How the answers were written (share of answers in each style, and how often an answer "
                        "of that style is right; `data.completion_style`):"),
                   Table(["model", "test set"] + styles, srows)]
    consumed |= {("by_style",), ("verdicts",)}
    head = sets[0] if sets else None
    summary = ", ".join(f"{name} {_pct_ci(per[head].get('accuracy'), per[head].get('ci95'))}"
                        for name, per in models.items() if isinstance(per, dict) and isinstance(per.get(head), dict))
    return (f"{head}: {summary}" if summary else ""), blocks, consumed


_RENDERERS = {"01_data": _data, "02_sft": _sft, "03_rollouts": _rollouts, "04_regime_w": _regime_w,
              "05_ppo": _ppo, "06_eval": _eval}


def _leftovers(m: dict, consumed: set) -> list[list[str]]:
    """Rows for every leaf of ``m`` no renderer showed (a consumed path covers everything under it)."""
    consumed = consumed | {("environment",), ("figure_captions",)}
    return [[".".join(p), _num(v)] for p, v in _flatten(m)
            if p and not any(p[:i] in consumed for i in range(1, len(p) + 1))]


# ---- environment ---------------------------------------------------------------------------

def environment_info() -> dict[str, Any]:
    """Python, key package versions, CPU count and the GPU (if CUDA is available) of this machine."""
    from importlib import metadata

    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in _PACKAGES:
        try:
            info[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            info[pkg] = None
    info["cpu_count"] = os.cpu_count()
    info["gpu"] = None
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpu_count"] = torch.cuda.device_count()
            info["cuda"] = torch.version.cuda
    except Exception:  # noqa: BLE001 - a broken torch install must not stop the report
        pass
    return info


# ---- assembling ------------------------------------------------------------------------------

def _read_all(folder: Path, problems: list[str]) -> dict[str, Any]:
    out = {}
    for p in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            out[p.stem] = read_json(p)
        except (ValueError, OSError) as exc:
            problems.append(str(exc))
    return out


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


def _caption(path: Path, stage: str | None, captions: dict) -> str:
    if path.name in captions:
        return str(captions[path.name])
    if path.name in FIGURE_CAPTIONS:
        return FIGURE_CAPTIONS[path.name]
    stem = path.stem
    for prefix in ([stage + "_"] if stage else []) + [stem[:3]]:
        if re.fullmatch(r"\d\d_", stem[:3]) and stem.startswith(prefix):
            stem = stem[len(prefix):]
            break
    text = stem.replace("_", " ").strip() or path.stem
    return text[0].upper() + text[1:]


def _cfg_value(v: Any) -> str:
    # Exact values, as a notebook parameter would be written (no thousands separators, no rounding).
    return json.dumps(v) if isinstance(v, (list, dict, bool)) or v is None else str(v)


def _config_blocks(cfg: Any, stage: str) -> list:
    """The sections the stage reads (and the run-level fields) first; the rest folded away."""
    if not isinstance(cfg, dict):
        return [Table(["key", "value"], [["(value)", _cfg_value(cfg)]])]
    mine = [s for s in _CONFIG_SECTIONS.get(stage, ()) if s in cfg] + [k for k in cfg if not isinstance(cfg[k], dict)]
    rest = [k for k in cfg if k not in mine]
    table = lambda keys: Table(["key", "value"], [[".".join(p), _cfg_value(v)] for k in keys  # noqa: E731
                                                  for p, v in _flatten({k: cfg[k]})])
    out = [table(mine)] if mine else []
    if rest:
        out.append(Details(f"other sections ({', '.join(rest)})", [table(rest)]))
    return out


@dataclass
class _Run:
    """What a run folder holds, read once; ``problems`` collects files that could not be read."""

    dir: Path
    metrics: dict[str, Any]
    configs: dict[str, Any]
    pipeline: dict[str, Any]
    figures: list[Path]
    problems: list[str]

    @property
    def pstages(self) -> dict[str, Any]:
        s = self.pipeline.get("stages")
        return s if isinstance(s, dict) else {}

    @property
    def profile(self) -> str | None:
        return self.pipeline.get("profile") or (self.metrics.get("01_data") or {}).get("profile") or next(
            (c["profile"] for c in self.configs.values() if isinstance(c, dict) and c.get("profile")), None)


def _load(run_dir: Path) -> _Run:
    problems: list[str] = []
    metrics = _read_all(run_dir / "metrics", problems)
    configs = _read_all(run_dir / "configs", problems)
    pipeline: Any = {}
    if (run_dir / "pipeline.json").is_file():
        try:
            pipeline = read_json(run_dir / "pipeline.json")
        except ValueError as exc:
            problems.append(str(exc))
    figures = sorted((run_dir / "figures").glob("*.png")) if (run_dir / "figures").is_dir() else []
    return _Run(run_dir, metrics, configs, pipeline if isinstance(pipeline, dict) else {}, figures, problems)


def _head_blocks(run: _Run, rendered: dict) -> tuple[str, list]:
    title = f"Report card: run {run.dir.name}" + (f" ({run.profile} profile)" if run.profile else "")
    meta = [f"run `{run.dir.name}`", f"profile `{run.profile or 'unknown'}`"]
    if run.pipeline.get("started"):
        meta.append(f"started {run.pipeline['started']}")
    meta.append("built " + datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    blocks: list[Any] = [Heading(1, title), Para(" · ".join(meta), "meta")]
    missing = [s for s in STAGES if s not in run.metrics]
    if missing:
        blocks.append(Para(f"Partial run: no metrics for {', '.join(missing)}. Run notebooks/{missing[0]}.ipynb "
                           "(and the stages after it) to complete the report.", "missing"))
    blocks += [Para(f"Could not read: {msg}", "missing") for msg in run.problems]
    blocks += _verdict_blocks(run)
    rows, total = [], 0.0
    for stage in STAGES:
        ps = run.pstages.get(stage) or {}
        status = ps.get("status") or ("ok" if stage in run.metrics else "missing")
        if stage not in run.metrics and status == "ok":
            status = "ok, but no metrics file"
        secs = ps.get("seconds")
        total += secs if isinstance(secs, (int, float)) else 0.0
        rows.append([f"{stage} {STAGE_TITLES[stage]}", str(status), _seconds(secs),
                     rendered[stage][0] if stage in rendered else _DASH])
    rows.append(["total", "", _seconds(total) if run.pstages else _DASH, ""])
    blocks += [Heading(2, "Summary"), Table(["stage", "status", "wall time", "key results"], rows)]
    if not run.pstages:
        blocks.append(Para("No pipeline.json in this run, so wall times are unknown (the pipeline runner "
                           "writes it).", "meta"))
    return title, blocks


def _verdict_blocks(run: _Run) -> list:
    """The headline: one sentence per test set (06), or the dev comparison of 05 when 06 has not run."""
    ev = run.metrics.get("06_eval") or {}
    sentences = list((ev.get("verdicts") or {}).values()) if isinstance(ev.get("verdicts"), dict) else []
    ppo = run.metrics.get("05_ppo") or {}
    paired = ppo.get("paired") if isinstance(ppo.get("paired"), dict) else {}
    if not sentences and {"diff", "mcnemar_p"} <= set(paired):
        sentences = [verdict_sentence("the dev split", ppo.get("n_dev"), ppo.get("dev_accuracy_ppo", float("nan")),
                                      ppo.get("dev_accuracy_sft", float("nan")), paired)]
    if not sentences:
        return []
    cfg01 = run.configs.get("01_data")
    teacher = ((cfg01.get("data") or {}) if isinstance(cfg01, dict) else {}).get("teacher")
    blocks: list[Any] = [Heading(2, "Verdict")] + [Para(x) for x in sentences]
    if teacher:
        blocks.append(Para(f"SFT data: synthetic teacher `{teacher}` (data.teacher; `worked:1` is the clean "
                           "control).", "meta"))
    return blocks


def _stage_blocks(run: _Run, rendered: dict) -> list:
    captions = {k: v for m in run.metrics.values() if isinstance(m, dict)
                for k, v in (m.get("figure_captions") or {}).items()}
    by_stage: dict[str | None, list[Path]] = {}
    for f in run.figures:
        by_stage.setdefault(next((s for s in STAGES if f.name[:3] == s[:3]), None), []).append(f)
    blocks: list[Any] = []
    fig_no = 0
    for stage in [*STAGES, None]:
        if stage is None and not by_stage.get(None):
            continue
        blocks.append(Heading(2, f"{stage} {STAGE_TITLES[stage]}" if stage else "Other figures"))
        m, ps = run.metrics.get(stage) if stage else None, run.pstages.get(stage) or {}
        if ps.get("error"):
            blocks.append(Para(f"Pipeline status {ps.get('status')}: {ps['error']}", "missing"))
        if stage and m is None:
            blocks.append(Para(f"Missing: no metrics/{stage}.json. Run notebooks/{stage}.ipynb to fill this "
                               "section.", "missing"))
        elif stage in rendered:
            blocks += rendered[stage][1]
            extra = _leftovers(m, rendered[stage][2])
            if extra:
                blocks.append(Details(f"Other metrics ({len(extra)})", [Table(["key", "value"], extra)]))
        elif stage:
            blocks.append(Table(["key", "value"], [["(value)", _num(m)]]))
        for f in by_stage.get(stage, []):
            fig_no += 1
            blocks.append(Figure(f, _caption(f, stage, captions), fig_no))
    others = [k for k in run.metrics if k not in STAGES and k != "environment"]
    if others:
        blocks.append(Heading(2, "Other metrics files"))
        for k in others:
            m = run.metrics[k]
            blocks += [Heading(3, f"metrics/{k}.json"),
                       Table(["key", "value"], _leftovers(m if isinstance(m, dict) else {"value": m}, set()))]
    return blocks


def _tail_blocks(run: _Run) -> list:
    blocks: list[Any] = [Heading(2, "Configuration")]
    if not run.configs:
        blocks.append(Para("No configs/*.json in this run.", "missing"))
    for name, cfg in run.configs.items():
        blocks.append(Details(f"{name} (configs/{name}.json)", _config_blocks(cfg, name)))
    envs = {"this report's build": environment_info()}
    if isinstance(run.metrics.get("environment"), dict):
        envs["run (metrics/environment.json)"] = run.metrics["environment"]
    for stage in STAGES:
        if isinstance(run.metrics.get(stage), dict) and isinstance(run.metrics[stage].get("environment"), dict):
            envs[f"run ({stage})"] = run.metrics[stage]["environment"]
    keys = list(dict.fromkeys(k for e in envs.values() for k in e))
    blocks += [Heading(2, "Environment"),
               Table(["item"] + list(envs), [[k] + [_num(e.get(k)) for e in envs.values()] for k in keys], False)]
    return blocks


def _blocks(run_dir: Path) -> tuple[str, list]:
    run = _load(run_dir)
    rendered = {s: _RENDERERS[s](m) for s, m in run.metrics.items() if s in _RENDERERS and isinstance(m, dict)}
    title, head = _head_blocks(run, rendered)
    return title, head + _stage_blocks(run, rendered) + _tail_blocks(run)


# ---- renderers -------------------------------------------------------------------------------

def _md_cell(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def _md_table(t: Table) -> str:
    lines = ["| " + " | ".join(_md_cell(h) for h in t.headers) + " |",
             "|" + "|".join("---" for _ in t.headers) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in t.rows]
    return "\n".join(lines)


def _to_markdown(blocks: list, run_dir: Path) -> str:
    out = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append("#" * b.level + " " + b.text)
        elif isinstance(b, Para):
            out.append(f"> **{b.text}**" if b.kind == "missing" else (f"*{b.text}*" if b.kind == "meta" else b.text))
        elif isinstance(b, Table):
            out.append(_md_table(b))
        elif isinstance(b, Figure):
            rel = b.path.relative_to(run_dir).as_posix()
            out.append(f"![{b.caption}]({rel})\n\n*Figure {b.number}. {b.caption}* (`{rel}`)")
        elif isinstance(b, Details):
            out.append(f"<details><summary>{html.escape(b.summary)}</summary>\n\n"
                       + _to_markdown(b.blocks, run_dir) + "\n</details>")
    return "\n\n".join(out) + "\n"


def _inline(text: str) -> str:
    """Escape, then turn `code` spans into <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


_NUMERIC = re.compile(r"^[-+<]?\s?\d")  # cells that start with a number are right-aligned


def _html_blocks(blocks: list, run_dir: Path) -> str:
    out = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"<h{b.level}>{_inline(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            out.append(f'<p class="{b.kind}">{_inline(b.text)}</p>' if b.kind else f"<p>{_inline(b.text)}</p>")
        elif isinstance(b, Table):
            head = "".join(f"<th>{html.escape(str(h))}</th>" for h in b.headers)
            num = [[bool(i and b.align_numbers and _NUMERIC.match(c)) for i, c in enumerate(r)] for r in b.rows]
            body = "".join("<tr>" + "".join(('<td class="num">' if right else "<td>") + html.escape(c) + "</td>"
                                            for c, right in zip(row, flags)) + "</tr>"
                           for row, flags in zip(b.rows, num))
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif isinstance(b, Figure):
            data = base64.b64encode(b.path.read_bytes()).decode("ascii")
            rel = html.escape(b.path.relative_to(run_dir).as_posix())
            out.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(b.caption)}">'
                       f"<figcaption>Figure {b.number}. {html.escape(b.caption)} <code>{rel}</code>"
                       "</figcaption></figure>")
        elif isinstance(b, Details):
            out.append(f"<details><summary>{html.escape(b.summary)}</summary>{_html_blocks(b.blocks, run_dir)}"
                       "</details>")
    return "\n".join(out)


_CSS = """
body{font:15px/1.5 -apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:#1d2327;
 max-width:1000px;margin:2em auto;padding:0 1.2em;background:#fff}
h1{font-size:1.7em;margin-bottom:.2em}h2{border-bottom:2px solid #e3e6ea;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.92em}
th,td{border:1px solid #d5d9de;padding:.3em .7em;text-align:left;vertical-align:top}
th{background:#f1f3f5}tbody tr:nth-child(even){background:#fafbfc}td.num{text-align:right;
 font-variant-numeric:tabular-nums;white-space:nowrap}
p.meta{color:#5f6b76}p.missing{background:#fff4e5;border-left:4px solid #f0a020;padding:.5em .8em}
figure{margin:1em 0 1.6em;page-break-inside:avoid;break-inside:avoid}
figure img{max-width:100%;height:auto;border:1px solid #e3e6ea}
figcaption{color:#444;font-size:.9em;margin-top:.3em}code{background:#f1f3f5;padding:0 .25em;border-radius:3px}
details{margin:.4em 0}summary{cursor:pointer;font-weight:600}
@media print{body{margin:0;max-width:none}h2{page-break-after:avoid}table{page-break-inside:auto}}
"""
# Closed <details> would hide the configuration on paper: open them all before printing.
_PRINT_JS = "addEventListener('beforeprint',()=>document.querySelectorAll('details').forEach(d=>d.open=true));"


def _to_html(title: str, blocks: list, run_dir: Path) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style><script>{_PRINT_JS}</script></head>\n"
            f"<body>\n{_html_blocks(blocks, run_dir)}\n</body></html>\n")


def build_report(run_dir: Path) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` into ``run_dir``; return their paths."""
    run_dir = Path(run_dir).resolve()
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir} is not a run folder: pass runs/<run_id> written by the notebooks")
    title, blocks = _blocks(run_dir)
    md_path = atomic_write_text(run_dir / "report.md", _to_markdown(blocks, run_dir))
    html_path = atomic_write_text(run_dir / "report.html", _to_html(title, blocks, run_dir))
    return md_path, html_path


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Build report.md and report.html for a run folder.")
    parser.add_argument("run_dir", type=Path, help="runs/<run_id>")
    for p in build_report(parser.parse_args().run_dir):
        print(p)
