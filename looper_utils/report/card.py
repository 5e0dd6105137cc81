"""The report card of a run: ``runs/<run_id>/report.md`` and a self-contained ``report.html``.

Built from the run's own files only (``metrics/*.json``, ``configs/*.json``,
``figures/*.png`` and the optional ``pipeline.json`` of per-stage wall times),
so it can be rebuilt at any time and shared as it is.

The card: a title and the verdict, a summary table (status, wall time and key
result of every stage), one section per stage (its blocks from ``stages``,
its figures), then each stage's configuration and the environment. A partial
run still gets a card that names the missing stages, and a file that cannot
be read is named on the card instead of stopping the build.
"""
from __future__ import annotations

import json
import os
import platform
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..artifacts import STAGES, atomic_write_text, read_json
from ..stats import verdict_sentence
from .blocks import DASH, Details, Figure, Heading, Para, Table, flatten, fmt_num, fmt_seconds, to_html, to_markdown
from .stages import CONFIG_SECTIONS, FIGURE_CAPTIONS, RENDERERS, STAGE_TITLES, other_metrics

__all__ = ["build_report", "environment_info"]

_PACKAGES = ("torch", "transformers", "trl", "peft", "datasets", "accelerate")


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


# ---- reading the run and assembling the card ---------------------------------------------------

def _read_all(folder: Path, problems: list[str]) -> dict[str, Any]:
    out = {}
    for p in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            out[p.stem] = read_json(p)
        except (ValueError, OSError) as exc:
            problems.append(str(exc))
    return out


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
    mine = [s for s in CONFIG_SECTIONS.get(stage, ()) if s in cfg] + [k for k in cfg if not isinstance(cfg[k], dict)]
    rest = [k for k in cfg if k not in mine]
    table = lambda keys: Table(["key", "value"], [[".".join(p), _cfg_value(v)] for k in keys  # noqa: E731
                                                  for p, v in flatten({k: cfg[k]})])
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
        rows.append([f"{stage} {STAGE_TITLES[stage]}", str(status), fmt_seconds(secs),
                     rendered[stage][0] if stage in rendered else DASH])
    rows.append(["total", "", fmt_seconds(total) if run.pstages else DASH, ""])
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
            extra = other_metrics(m, rendered[stage][2])
            if extra:
                blocks.append(Details(f"Other metrics ({len(extra)})", [Table(["key", "value"], extra)]))
        elif stage:
            blocks.append(Table(["key", "value"], [["(value)", fmt_num(m)]]))
        for f in by_stage.get(stage, []):
            fig_no += 1
            blocks.append(Figure(f, _caption(f, stage, captions), fig_no))
    others = [k for k in run.metrics if k not in STAGES and k != "environment"]
    if others:
        blocks.append(Heading(2, "Other metrics files"))
        for k in others:
            m = run.metrics[k]
            blocks += [Heading(3, f"metrics/{k}.json"),
                       Table(["key", "value"], other_metrics(m if isinstance(m, dict) else {"value": m}, set()))]
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
               Table(["item"] + list(envs), [[k] + [fmt_num(e.get(k)) for e in envs.values()] for k in keys], False)]
    return blocks


def _blocks(run_dir: Path) -> tuple[str, list]:
    run = _load(run_dir)
    rendered = {s: RENDERERS[s](m) for s, m in run.metrics.items() if s in RENDERERS and isinstance(m, dict)}
    title, head = _head_blocks(run, rendered)
    return title, head + _stage_blocks(run, rendered) + _tail_blocks(run)


def build_report(run_dir: Path) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` into ``run_dir``; return their paths."""
    run_dir = Path(run_dir).resolve()
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir} is not a run folder: pass runs/<run_id> written by the notebooks")
    title, blocks = _blocks(run_dir)
    md_path = atomic_write_text(run_dir / "report.md", to_markdown(blocks, run_dir))
    html_path = atomic_write_text(run_dir / "report.html", to_html(title, blocks, run_dir))
    return md_path, html_path
