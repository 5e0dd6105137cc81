"""Run the numbered notebooks in order, headless, through papermill.

    python -m looper_utils.pipeline --profile smoke [--stages 01,02] [--run-id ID] [-p key=value ...]

Each notebook is executed into ``runs/<run_id>/NN_stage.ipynb`` with the
parameters ``profile``, ``run_id``, ``seed`` and ``root``; a ``-p key=value``
goes to every notebook whose parameters cell declares ``key`` (a key no
notebook declares is an error, not a silent no-op). The run stops at the
first failing notebook, naming it and the cell, and prints each stage's
metrics and wall time; ``runs/<run_id>/pipeline.json`` keeps the timings for
the report.

The run holds ``<root>/.looper.lock`` throughout, so two runs never train into
the same checkpoints. Exit status: 0 done, 1 a notebook failed or another run
holds the folder, 2 the command line asks for something that cannot run (the
one-line message says what to pass instead).
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .artifacts import STAGES, atomic_write_json, check_run_id, read_json
from .lock import ProjectBusyError, project_lock
from .progress import PROGRESS_MARK
from .config import find_project_root
from .config_params import MAX_SEED, PROFILES

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "HF_HUB_DISABLE_TELEMETRY": "1"}


# The kernel's own start-up log (a warning that it listens on local TCP without encryption, on every
# start) is noise in a batch log; its errors still show.
KERNEL_ARGS = ["--IPKernelApp.log_level=ERROR"]


class ProgressLines:
    r"""A ``stdout_file`` for papermill that passes on the progress lines a notebook prints.

    Long stages print one line per SFT logging step, PPO iteration and
    evaluation set, starting with ``artifacts.PROGRESS_MARK``; the pipeline
    streams those (and nothing else of a notebook's output) as they come.

    >>> seen = []
    >>> p = ProgressLines("05_ppo", seen.append)
    >>> _ = p.write("a table\n" + PROGRESS_MARK + "ppo 1/10, 3 s elapsed"), p.write(", about 27 s left\n")
    >>> seen
    ['[05_ppo] ppo 1/10, 3 s elapsed, about 27 s left']
    """

    def __init__(self, stage: str, log) -> None:
        self.stage, self.log, self.buf = stage, log, ""

    def write(self, text: str) -> int:
        self.buf += text
        *lines, self.buf = self.buf.split("\n")
        for line in lines:
            if line.startswith(PROGRESS_MARK):
                self.log(f"[{self.stage}] {line[len(PROGRESS_MARK):]}")
        return len(text)

    def flush(self) -> None:
        pass


class StageFailed(RuntimeError):
    """A notebook failed; the message names it, the cell and the executed copy."""


class UsageError(SystemExit):
    """The arguments ask for something that cannot run; the message says what to pass instead."""


def notebooks_dir(root: Path) -> Path:
    return Path(root) / "notebooks"


def available_stages(nb_dir: Path) -> list[str]:
    """The numbered notebooks that exist, in order."""
    return [s for s in STAGES if (nb_dir / f"{s}.ipynb").is_file()]


def declared_parameters(nb_path: Path) -> dict[str, str]:
    """Names and annotations in the notebook's ``parameters`` cell (without running it)."""
    nb = json.loads(Path(nb_path).read_text(encoding="utf-8"))
    for cell in nb["cells"]:
        if cell["cell_type"] == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            src = "".join(cell["source"])
            out = {}
            for node in ast.parse(src).body:
                if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                    out[node.target.id] = ast.unparse(node.annotation)
                elif isinstance(node, ast.Assign):
                    out.update({t.id: "" for t in node.targets if isinstance(t, ast.Name)})
            return out
    raise StageFailed(f"{nb_path}: no code cell tagged 'parameters'; tag the first code cell")


def did_you_mean(key: str, names: list[str]) -> str | None:
    """The declared parameter ``key`` most likely meant: a close spelling, or the one ``section__field``
    whose field is ``key`` (``arms``, and ``w_correct`` of older notebooks, become ``bandit__arms``,
    ``reward__correct``).

    >>> names = ["k", "reward__correct", "bandit__arms", "bandit__algorithm"]
    >>> did_you_mean("reward__corect", names), did_you_mean("arms", names), did_you_mean("w_correct", names)
    ('reward__correct', 'bandit__arms', 'reward__correct')
    >>> did_you_mean("bandit_algorithm", names), did_you_mean("nothing_like_it", names)
    ('bandit__algorithm', None)
    """
    import difflib

    close = difflib.get_close_matches(key, names, n=1, cutoff=0.75)
    if close:
        return close[0]
    fields = {key, key.split("_", 1)[-1]}
    tails = [n for n in names if "__" in n and n.split("__", 1)[1] in fields]
    return tails[0] if len(tails) == 1 else None


def parse_value(text: str) -> Any:
    """``-p`` values: Python literals when they parse (3, 0.5, True, None, [1, 2]), else the string.

    >>> parse_value("3"), parse_value("0.5"), parse_value("gae"), parse_value("None")
    (3, 0.5, 'gae', None)
    """
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _as_declared(value: Any, annotation: str) -> Any:
    """A ``-p`` value for a ``str`` parameter stays text: ``-p overrides={"a": 1}`` passes the JSON string.

    >>> _as_declared({"model.lora_r": 64}, "str"), _as_declared(3, "int")
    ('{"model.lora_r": 64}', 3)
    """
    return json.dumps(value) if annotation == "str" and value is not None and not isinstance(value, str) else value


def parse_params(pairs: list[str]) -> dict[str, Any]:
    out = {}
    for p in pairs:
        if "=" not in p:
            raise UsageError(f"-p {p!r}: write key=value")
        k, v = p.split("=", 1)
        out[k.strip()] = parse_value(v.strip())
    return out


def stage_config(prog: str, description: str, stage: str, argv: list[str] | None = None):
    """The config of one stage run from the command line (``python -m looper_utils.ppo`` or ``.sft``, also
    under ``accelerate launch``): ``--profile``, ``--run-id``, ``--root`` and ``-p key=value`` as here."""
    from .config import build

    ap = argparse.ArgumentParser(prog=prog, description=description)
    ap.add_argument("--profile", default="smoke")
    ap.add_argument("--run-id", default="latest")
    ap.add_argument("--root", default="")
    ap.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE")
    a = ap.parse_args(argv)
    return build(a.profile, stage=stage, run_id=a.run_id, root=a.root, **parse_params(a.param))


def _summary(metrics: dict[str, Any], stage: str = "", limit: int = 8) -> str:
    """The stage's key result in one line (its first plain metrics for a stage it does not know).

    >>> _summary({"dev_accuracy_sft": 0.37, "dev_accuracy_ppo": 0.7533, "iterations": 10,
    ...           "paired": {"diff": 0.3833, "mcnemar_p": 2.1e-25}}, "05_ppo")
    'dev accuracy SFT 0.370 -> PPO 0.753 (+38.3 points, McNemar p 2.1e-25), 10 iterations'
    """
    m = metrics

    def f(key: str, fmt: str = "{:.3f}") -> str:
        v = m.get(key)
        return fmt.format(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else "?"

    if stage == "01_data" and isinstance(m.get("rows"), dict):
        return ", ".join(f"{k} {v}" for k, v in m["rows"].items()) + f" ({m.get('source')}; teacher {m.get('teacher')})"
    if stage == "02_sft":
        return f"dev accuracy {f('dev_accuracy_before')} -> {f('dev_accuracy_after')} after {f('train_steps', '{}')} " \
               f"steps in {f('train_seconds', '{:.0f}')} s"
    if stage == "03_rollouts" and isinstance(m.get("pass_at_k"), dict) and m["pass_at_k"]:
        k = max(m["pass_at_k"], key=int)
        return f"pass@1 {f('accuracy')}, pass@{k} {m['pass_at_k'][k]:.3f}, maj@{m.get('k')} {f('maj_at_k')}, " \
               f"{f('tokens_per_second', '{:,.0f}')} tokens/s"
    if stage == "04_regime_w":
        return f"reward {f('reward_mean')} +- {f('reward_std')}, accuracy {f('accuracy')}, {f('blocked', '{}')} blocked"
    if stage == "05_ppo":
        p = m.get("paired") if isinstance(m.get("paired"), dict) else {}
        gain = f" ({100 * p['diff']:+.1f} points, McNemar p {p['mcnemar_p']:.2g})" if {"diff", "mcnemar_p"} <= set(p) else ""
        return f"dev accuracy SFT {f('dev_accuracy_sft')} -> PPO {f('dev_accuracy_ppo')}{gain}, " \
               f"{f('iterations', '{}')} iterations"
    if stage == "06_eval" and isinstance(m.get("verdicts"), dict) and m["verdicts"]:
        return " ".join(m["verdicts"].values())
    if stage == "06_eval" and isinstance(m.get("models"), dict):
        return "; ".join(f"{name} " + ", ".join(f"{ts} {r.get('accuracy', float('nan')):.3f}" for ts, r in per.items())
                         for name, per in m["models"].items() if isinstance(per, dict))
    items = [(k, v) for k, v in m.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)]
    parts = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in items[:limit]]
    return ", ".join(parts)


def run(profile: str = "smoke", stages: list[str] | None = None, run_id: str | None = None, seed: int = 0,
        root: Path | None = None, params: dict[str, Any] | None = None, nb_dir: Path | None = None,
        log=print) -> dict[str, Any]:
    """Execute the selected notebooks; return the pipeline record (also saved as pipeline.json).

    Arguments that cannot run raise ``UsageError`` before any notebook starts;
    another run in ``root`` raises ``artifacts.ProjectBusyError``.
    """
    profile = _check_profile(profile)
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise UsageError(f"--seed {seed!r}: a seed is a whole number from 0 to {MAX_SEED}; pass e.g. --seed 1")
    root = Path(root).resolve() if root else find_project_root()
    if root.exists() and not root.is_dir():
        raise UsageError(f"--root {root} is a file, not a folder; pass the project folder that holds (or will "
                         "hold) data/, checkpoints/ and runs/")
    nb_dir = Path(nb_dir) if nb_dir else notebooks_dir(find_project_root(Path(__file__).parent))
    have = available_stages(nb_dir)
    if not have:
        raise UsageError(f"{nb_dir}: no numbered notebooks found")
    if stages:
        wanted = []
        for s in stages:
            match = [h for h in have if h == s or h.startswith(s.zfill(2) + "_") or h.split("_", 1)[1] == s]
            if not match:
                raise UsageError(f"unknown stage {s!r}; available: {', '.join(have)}")
            wanted += match
        have = [h for h in have if h in wanted]
    params = dict(params or {})
    declared = {s: declared_parameters(nb_dir / f"{s}.ipynb") for s in have}
    unused = [k for k in params if not any(k in d for d in declared.values())]
    if unused:
        names = sorted({n for d in declared.values() for n in d})
        hints = [f"{k!r}: did you mean {m!r}?" for k in unused for m in [did_you_mean(k, names)] if m]
        raise UsageError(f"parameter(s) {', '.join(unused)} are declared by none of {', '.join(have)}"
                         + (f" ({'; '.join(hints)})" if hints else "")
                         + "; see `papermill --help-notebook notebooks/NN_stage.ipynb`")
    run_id = run_id if run_id is not None else default_run_id(profile)
    try:
        check_run_id(run_id)
    except ValueError as exc:
        raise UsageError(f"--run-id: {exc}") from None
    run_dir = root / "runs" / run_id
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--root {root}: cannot create it ({exc.strerror}); pass a folder you can write to") from None
    with project_lock(root, run_id):
        return _run_stages(profile, have, run_id, seed, root, run_dir, params, declared, nb_dir, log)


def default_run_id(profile: str) -> str:
    """``<profile>-<timestamp>``, the profile file's name made a plain folder name.

    >>> default_run_id("my full.json")[:8]
    'my-full-'
    """
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(profile).stem).strip("-._")[:40] or "run"
    return f"{stem}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def _check_profile(profile: str) -> str:
    """The profile name, or a profile file's absolute path once it reads as a valid profile."""
    from .config import profile_file

    if profile in PROFILES:
        return profile
    if not str(profile).endswith(".json"):
        raise UsageError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)} or a .json file")
    path = Path(profile).resolve()
    try:
        profile_file(path)  # fail before any notebook runs
    except (ValueError, OSError, TypeError) as exc:
        raise UsageError(f"--profile {profile}: {exc}; fix the file (a JSON object with 'profile' and "
                         "'overrides', as in the README) or pass one of "
                         f"{', '.join(PROFILES)}") from None
    return str(path)


def _run_stages(profile: str, have: list[str], run_id: str, seed: int, root: Path, run_dir: Path,
                params: dict[str, Any], declared: dict[str, dict[str, str]], nb_dir: Path, log) -> dict[str, Any]:
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{run_dir}: cannot create it ({exc.strerror}); pass a --root you can write to") from None
    from .config import build

    if build(profile).profile in ("smoke", "demo"):
        os.environ.update(OFFLINE_ENV)
    record_path = run_dir / "pipeline.json"
    record: dict[str, Any] = read_json(record_path) if record_path.is_file() else {}
    record.update({"profile": profile, "run_id": run_id, "root": str(root), "seed": seed,
                   "started": record.get("started") or datetime.now(timezone.utc).isoformat(timespec="seconds")})
    record.setdefault("stages", {})
    log(f"run {run_id} ({profile}) -> {run_dir}")
    for stage in have:
        nb_params = {"profile": profile, "run_id": run_id, "seed": seed, "root": str(root)}
        nb_params.update({k: _as_declared(v, declared[stage][k]) for k, v in params.items() if k in declared[stage]})
        out_nb = run_dir / f"{stage}.ipynb"
        log(f"[{stage}] running ...")
        t0, started = time.perf_counter(), time.time()
        progress = ProgressLines(stage, log)
        try:
            pm.execute_notebook(str(nb_dir / f"{stage}.ipynb"), str(out_nb), parameters=nb_params,
                                cwd=str(nb_dir), progress_bar=False, log_output=False, kernel_name="python3",
                                stdout_file=progress, extra_arguments=KERNEL_ARGS)
        except PapermillExecutionError as exc:
            secs = time.perf_counter() - t0
            record["stages"][stage] = {"seconds": round(secs, 1), "status": "failed"}
            atomic_write_json(record_path, record)
            raise StageFailed(f"{stage} failed in cell {exc.exec_count} ({exc.ename}: {exc.evalue}); "
                              f"the executed notebook with the traceback is {out_nb}") from None
        secs = time.perf_counter() - t0
        record["stages"][stage] = {"seconds": round(secs, 1), "status": "ok", "start": round(started, 1),
                                   "end": round(time.time(), 1)}
        atomic_write_json(record_path, record)
        mpath = run_dir / "metrics" / f"{stage}.json"
        summary = _summary(read_json(mpath), stage) if mpath.is_file() else "(no metrics written)"
        log(f"[{stage}] ok in {secs:.1f}s: {summary}")
    record["seconds_total"] = round(sum(s["seconds"] for s in record["stages"].values()), 1)
    atomic_write_json(record_path, record)
    report = run_dir / "report.html"
    if report.is_file():  # 06 built it before its own wall time was known: rebuild with every stage's time
        from .report.card import build_report

        build_report(run_dir)
    log(f"done in {record['seconds_total']:.0f}s. Outputs: {run_dir}"
        + (f"\nreport: {report}" if report.is_file() else ""))
    return record


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m looper_utils.pipeline", description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="smoke", help=f"{', '.join(PROFILES)}, or a .json profile file")
    ap.add_argument("--stages", default="", help="comma-separated, e.g. 01,02 or data,sft (default: all)")
    ap.add_argument("--run-id", default=None, help="folder under runs/: letters, digits, '.', '_', '-' "
                    "(default: <profile>-<timestamp>)")
    ap.add_argument("--seed", type=int, default=0, help=f"0 to {MAX_SEED}")
    ap.add_argument("--root", default=None, help="project folder for data/, checkpoints/, runs/")
    ap.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                    help="notebook parameter, repeatable")
    a = ap.parse_args(argv)
    stages = [s.strip() for s in a.stages.split(",") if s.strip()] or None
    try:
        run(a.profile, stages, a.run_id, a.seed, Path(a.root) if a.root else None, parse_params(a.param))
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (StageFailed, ProjectBusyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
