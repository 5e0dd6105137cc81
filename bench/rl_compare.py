"""Our PPO (``group``, ``gae``) beside TRL's GRPOTrainer from one SFT checkpoint: wall time to the same dev accuracy.

    python3 bench/rl_compare.py --profile demo --root /tmp/rlc --out $OUT/rl_compare.json \\
        [--arms group,trl-grpo,gae] [--sets eval_every=2 n_dev=500 ...] [--sft-sets epochs=1 ...] [--setup-only]
        [--arm-timeout SECONDS]

1. Sets ``--root`` up once: 01's splits (``data.prepare_splits`` / ``write_splits``) and 02's SFT
   (``python -m looper_utils.sft`` without its dev check). Both are skipped when already there, so a
   second call with the same root only runs the arms.
2. Runs each arm in its own process from ``checkpoints/sft``, with the profile's PPO settings plus
   ``--sets`` (the same iterations, prompts per iteration and ``k``: the same number of completions):
   ``group`` and ``gae`` are ``PPOTrainer`` with that ``advantage``, ``trl-grpo`` is ``ppo.train_trl_grpo``.
   Each arm writes its own ``checkpoints/rl_compare/<arm>`` (emptied first): no arm resumes another.
3. Per arm: the greedy dev check before training (iteration 0, the SFT policy) and every
   ``ppo.eval_every`` iterations and after the last, each with ``train_seconds`` (since training began,
   less the dev checks' own time) and ``seconds`` (checks included); final dev accuracy, completions
   sampled (counted), total times. ``summary``: the best dev accuracy every arm reaches and when each
   first reached it (``train_seconds``), also for each of ours beside TRL alone (``group_vs_trl-grpo``).
   The JSON is rewritten after every arm, so a run cut short keeps what finished; arms run in the
   order given, one failing does not stop the next. An arm stopped before its end (``--arm-timeout``,
   or a SIGTERM to the bench, e.g. from ``timeout``, which also stops the arms after it) keeps the dev
   checks it made (``partial``: each arm rewrites them after every check), and they count in
   ``summary`` as its best so far (``partial_arms``).

Not the same in the arms: prompt choice (our bandit; TRL draws uniformly), the sampler of training
(ours: ``rollouts.backend``, the engine in ``demo``; TRL: Hugging Face ``generate``; the dev check is
the same in all), and our loop writes a resumable checkpoint every ``ppo.save_every`` iterations (its
time is in ``train_seconds``, and apart in ``checkpoint_seconds``).

CPU check end to end (minutes)::

    python bench/rl_compare.py --profile smoke --root /tmp/rlc-smoke --out /tmp/rlc-smoke/rl_compare.json
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ARMS = ("group", "gae", "trl-grpo")
RUN_ID = "rl-compare"
MARK = "» "  # looper_utils.progress.PROGRESS_MARK
BAR = re.compile(r"\|\s*\d+/\d+ \[")  # a tqdm bar: "| 3/10 ["


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def parse_sets(pairs: list[str]) -> dict[str, Any]:
    from looper_utils.pipeline import parse_params

    return parse_params(pairs)


def child_env() -> dict[str, str]:
    from looper_utils.pipeline import OFFLINE_ENV

    env = dict(os.environ, **OFFLINE_ENV, PYTHONUNBUFFERED="1", TQDM_DISABLE="1", TOKENIZERS_PARALLELISM="false",
               HF_DATASETS_DISABLE_PROGRESS_BARS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return env


def clean(line: str) -> str:
    """A line of a stage's output without tqdm's bars (redrawn after carriage returns), progress lines kept.

    >>> clean("\\rppo:  10%|#    | 1/10 [00:19<02:59, 19.95s/it]» ppo iteration 1/10: 20 s elapsed\\n")
    '» ppo iteration 1/10: 20 s elapsed'
    """
    parts = [x[x.index(MARK):] if MARK in x else x for x in line.rstrip().split("\r")]
    return " ".join(x for x in parts if x.strip() and not BAR.search(x))


def stream(cmd: list[str], tag: str, timeout: float = 0) -> tuple[int, list[str]]:
    """Run ``cmd``, echoing its output line by line with ``tag``; (exit status, its last 60 lines).

    ``timeout`` (seconds, 0: none) stops it with SIGTERM. A SIGTERM to this process stops it too (so a
    ``timeout`` around the whole bench leaves the arm's partial results to read)."""
    tail: collections.deque[str] = collections.deque(maxlen=60)
    with subprocess.Popen(cmd, cwd=str(ROOT), env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, bufsize=1) as p:
        timer = threading.Timer(timeout, p.terminate) if timeout else None
        if timer:
            timer.start()
        try:
            for line in p.stdout:
                line = clean(line)
                if line:
                    tail.append(line)
                    print(f"  [{tag}] {line}", flush=True)
        finally:
            if timer:
                timer.cancel()
            if p.poll() is None:  # stopped from outside: stop the arm, then read what it wrote
                p.terminate()
            p.wait()
    return p.returncode, list(tail)


# ---- 1. the project folder --------------------------------------------------------------------------------

def setup(args) -> dict[str, Any]:
    from looper_utils import config, data, modeling

    cfg = config.build(args.profile, root=args.root, run_id=RUN_ID)
    out: dict[str, Any] = {}
    t = time.perf_counter()
    if all(f.is_file() for f in data.data_files(cfg.data_dir).values()):
        made_by = (data.check_splits(cfg.data_dir) or {}).get("profile", cfg.profile)
        if made_by != cfg.profile:
            raise SystemExit(f"{cfg.data_dir} holds {made_by!r} data, not {cfg.profile!r}: pass another --root")
        log(f"data: reusing {cfg.data_dir}")
        out["data_reused"] = True
    else:
        log(f"data: writing {args.profile} splits to {cfg.data_dir}")
        prepared = data.prepare_splits(cfg.data, cfg.seed)
        data.write_splits(cfg.data_dir, prepared["splits"], run_id=RUN_ID, profile=cfg.profile)
        out.update(data_reused=False, data_rows={s: len(r) for s, r in prepared["splits"].items()})
    out["data_seconds"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    sft = modeling.sft_dir(cfg)
    if (sft / modeling.STATE_FILE).is_file():
        made_by = json.loads((sft / modeling.CONFIG_FILE).read_text()).get("profile")
        if made_by != cfg.profile:
            raise SystemExit(f"{sft} was trained with the {made_by!r} profile, not {cfg.profile!r}: pass another --root")
        log(f"sft: reusing {sft}" + (" (--sft-sets not applied)" if args.sft_sets else ""))
        out["sft_reused"] = True
    else:
        log(f"sft: training into {sft}")
        cmd = [sys.executable, "-m", "looper_utils.sft", "--profile", args.profile, "--root", str(args.root),
               "--run-id", RUN_ID, "-p", "n_dev_eval=0"] + [x for kv in args.sft_sets for x in ("-p", kv)]
        rc, tail = stream(cmd, "sft")
        if rc:
            raise SystemExit(f"SFT failed (exit {rc}):\n" + "\n".join(tail[-20:]))
        out["sft_reused"] = False
    out["sft_seconds"] = round(time.perf_counter() - t, 2)
    out["sft_weights_digest"] = modeling.weights_digest(sft)
    return out


# ---- 2. one arm, in its own process ------------------------------------------------------------------------

def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_ours(cfg, train: list[dict], dev: list[dict], out: Path, partial: "Partial") -> dict[str, Any]:
    """``PPOTrainer.train`` with the dev checks, checkpoint writes and sampling counted from outside."""
    from looper_utils import ppo

    t = time.perf_counter()
    tr = ppo.PPOTrainer(cfg, train, dev, out_dir=out, progress=True)
    load_seconds = time.perf_counter() - t
    _sync()
    t = time.perf_counter()
    sft_acc, _ = tr.dev_accuracy()
    _sync()
    sft_dev_seconds = time.perf_counter() - t
    partial.check({"iteration": 0, "dev_accuracy": sft_acc, "train_seconds": 0.0, "dev_seconds": sft_dev_seconds,
                   "seconds": 0.0})
    spent = {"dev": 0.0, "checkpoint": 0.0, "completions": 0}
    check, save, sample = tr.dev_accuracy, tr.save, tr.sample

    def timed_check(rows=None):
        _sync()
        t = time.perf_counter()
        r = check(rows)
        _sync()
        spent["last_dev"] = time.perf_counter() - t
        spent["dev"] += spent["last_dev"]
        return r

    def timed_save(name):
        t = time.perf_counter()
        r = save(name)
        spent["checkpoint"] += time.perf_counter() - t
        return r

    def counted_sample(it):
        roll = sample(it)
        spent["completions"] += len(roll.samples)
        return roll

    tr.dev_accuracy, tr.save, tr.sample = timed_check, timed_save, counted_sample
    curve: list[dict[str, Any]] = []
    t0 = time.perf_counter()

    def on_iteration(m: dict[str, Any]) -> None:
        if "dev_accuracy" in m:
            _sync()
            now = time.perf_counter()
            curve.append({"iteration": m["iteration"], "dev_accuracy": m["dev_accuracy"],
                          "train_seconds": now - t0 - spent["dev"], "dev_seconds": spent["last_dev"],
                          "seconds": now - t0, "checkpoint_seconds": spent["checkpoint"]})
            partial.check(curve[-1])

    hist = tr.train(on_iteration=on_iteration)
    _sync()
    seconds = time.perf_counter() - t0
    return {"dev_accuracy_sft": sft_acc, "sft_dev_seconds": sft_dev_seconds, "load_seconds": load_seconds,
            "dev_curve": curve, "dev_accuracy_final": curve[-1]["dev_accuracy"] if curve else None,
            "seconds": seconds, "train_seconds": seconds - spent["dev"], "dev_check_seconds": spent["dev"],
            "checkpoint_seconds": spent["checkpoint"], "completions_sampled": spent["completions"],
            "iterations": len(hist), "reward_curve": [round(h["reward"], 4) for h in hist],
            "time_split": {k: round(sum(h[f"t_{k}"] for h in hist), 3)
                           for k in ("generate", "score", "forward", "update")}}


def run_trl(cfg, train: list[dict], dev: list[dict], out: Path, partial: "Partial") -> dict[str, Any]:
    from looper_utils.ppo.trl_grpo import train_trl_grpo

    m = train_trl_grpo(cfg, train, dev, out_dir=out, progress=True, on_check=partial.check)
    return {"dev_accuracy_sft": m["dev_accuracy_sft"], "dev_curve": m["dev_curve"],
            "dev_accuracy_final": m["dev_accuracy_ppo"], "seconds": m["seconds"], "train_seconds": m["train_seconds"],
            "dev_check_seconds": m["dev_check_seconds"], "completions_sampled": m["completions_sampled"],
            "iterations": m["iterations"], "optimizer_steps": m["optimizer_steps"], "reward_curve": m["reward_curve"],
            "kl_last": m["kl_last"]}


class Partial:
    """The dev checks an arm has made so far, rewritten to ``path`` after each (atomically): what the
    comparison keeps of an arm stopped before its end (``--arm-timeout``, or a limit around the bench)."""

    def __init__(self, path: Path):
        self.path, self.sft, self.curve = path, None, []
        path.unlink(missing_ok=True)

    def check(self, rec: dict[str, Any]) -> None:
        if rec["iteration"] == 0:
            self.sft = rec["dev_accuracy"]
        else:
            self.curve.append(dict(rec))
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"dev_accuracy_sft": self.sft, "dev_curve": self.curve}, default=float))
        os.replace(tmp, self.path)


def partial_path(child_out: Path) -> Path:
    return child_out.with_name(child_out.stem + ".partial.json")


def arm_child(args) -> int:
    """One arm in this process: write its results to ``--child-out``."""
    import torch

    from looper_utils import config, data, modeling

    t_start = time.perf_counter()
    over = {"resume": False, **parse_sets(args.sets)}
    over.update({"trainer": "trl-grpo"} if args.arm == "trl-grpo" else {"advantage": args.arm})
    cfg = config.build(args.profile, root=args.root, run_id=RUN_ID, stage="ppo", **over)
    files = data.data_files(cfg.data_dir)
    train, dev = data.read_jsonl(files["train"]), data.read_jsonl(files["dev"])
    out = cfg.checkpoints_dir / "rl_compare" / args.arm
    for d in (out, out.with_name(out.name + ".previous")):
        shutil.rmtree(d, ignore_errors=True)
    res = (run_trl if args.arm == "trl-grpo" else run_ours)(cfg, train, dev, out, Partial(partial_path(Path(args.child_out))))
    p = cfg.ppo
    import peft
    import transformers
    import trl

    res.update(arm=args.arm, process_inner_seconds=time.perf_counter() - t_start, out_dir=str(out),
               device=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
               peak_gib=torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
               versions={"torch": torch.__version__, "transformers": transformers.__version__,
                         "trl": trl.__version__, "peft": peft.__version__},
               settings={"advantage": p.advantage, "trainer": p.trainer, "iterations": p.iterations,
                         "prompts_per_iter": p.prompts_per_iter, "k": p.k, "ppo_epochs": p.ppo_epochs,
                         "minibatch_size": p.minibatch_size, "max_new_tokens": p.max_new_tokens,
                         "eval_every": p.eval_every, "n_dev": p.n_dev, "learning_rate": p.learning_rate,
                         "kl_coef": p.kl_coef, "save_every": p.save_every, "backend": cfg.rollouts.backend,
                         "bandit": cfg.bandit.algorithm, "sft_digest": modeling.weights_digest(modeling.sft_dir(cfg))})
    Path(args.child_out).write_text(json.dumps(res, indent=1, default=float))
    return 0


# ---- 3. the comparison ------------------------------------------------------------------------------------

def with_start(r: dict[str, Any]) -> list[dict[str, Any]]:
    """The arm's dev checks with the SFT check as iteration 0 (no training time yet)."""
    start = {"iteration": 0, "dev_accuracy": r["dev_accuracy_sft"], "train_seconds": 0.0, "seconds": 0.0}
    return [start] + list(r.get("dev_curve", []))


def summarize(arms: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The best dev accuracy every finished arm reached, and the first check at which each reached it.

    >>> a = {"dev_accuracy_sft": 0.3, "dev_curve": [{"iteration": 5, "dev_accuracy": 0.5, "train_seconds": 20.0,
    ...      "seconds": 25.0}, {"iteration": 10, "dev_accuracy": 0.7, "train_seconds": 40.0, "seconds": 50.0}]}
    >>> b = {"dev_accuracy_sft": 0.3, "dev_curve": [{"iteration": 5, "dev_accuracy": 0.6, "train_seconds": 60.0,
    ...      "seconds": 70.0}, {"iteration": 10, "dev_accuracy": 0.6, "train_seconds": 120.0, "seconds": 130.0}]}
    >>> s = summarize({"group": a, "trl-grpo": b})
    >>> s["target_dev_accuracy"], s["time_to_target"]["group"]["train_seconds"], s["trl_over_group"]
    (0.6, 40.0, 1.5)
    """
    done = {k: v for k, v in arms.items() if usable(v)}
    if not done:
        return {}
    target = min(max(c["dev_accuracy"] for c in with_start(r)) for r in done.values())
    reach = {}
    for k, r in done.items():
        first = next(c for c in with_start(r) if c["dev_accuracy"] >= target)
        reach[k] = {"iteration": first["iteration"], "train_seconds": first["train_seconds"],
                    "seconds": first["seconds"]}
    out: dict[str, Any] = {"target_dev_accuracy": target, "time_to_target": reach}
    cut = [k for k, r in done.items() if "error" in r]
    if cut:  # stopped early: their best so far counts, so the target may be lower than a whole run's
        out["partial_arms"] = cut
    for ours in ("group", "gae"):
        if ours in reach and "trl-grpo" in reach and reach[ours]["train_seconds"] > 0:
            out[f"trl_over_{ours}"] = round(reach["trl-grpo"]["train_seconds"] / reach[ours]["train_seconds"], 3)
        if ours in done and "trl-grpo" in done and len(done) > 2:  # the pair alone: the best both of them reached
            out[f"{ours}_vs_trl-grpo"] = summarize({ours: done[ours], "trl-grpo": done["trl-grpo"]})
    return out


def usable(r: dict[str, Any]) -> bool:
    """A finished arm, or one stopped early after its SFT check (``partial``)."""
    return "error" not in r or (bool(r.get("partial")) and r.get("dev_accuracy_sft") is not None)


def table(arms: dict[str, dict[str, Any]]) -> str:
    rows = ["arm       | SFT dev | dev checks (iteration: accuracy @ train s)      | final | train s | +dev s "
            "| process s | completions"]
    for k, r in arms.items():
        if "error" in r and not usable(r):
            rows.append(f"{k:<9} | failed: {r['error'][:100]}")
            continue
        if "error" in r:  # stopped early: the checks it made
            checks = ", ".join(f"{c['iteration']}: {c['dev_accuracy']:.3f} @ {c['train_seconds']:.1f}"
                               for c in r["dev_curve"])
            rows.append(f"{k:<9} | {r['dev_accuracy_sft']:.3f}   | {checks:<47} | stopped early: "
                        f"{r['error'].splitlines()[0][:60]}")
            continue
        checks = ", ".join(f"{c['iteration']}: {c['dev_accuracy']:.3f} @ {c['train_seconds']:.1f}"
                           for c in r["dev_curve"])
        rows.append(f"{k:<9} | {r['dev_accuracy_sft']:.3f}   | {checks:<47} | {r['dev_accuracy_final']:.3f} "
                    f"| {r['train_seconds']:7.1f} | {r['seconds']:6.1f} | {r['process_seconds']:9.1f} "
                    f"| {r['completions_sampled']}")
    return "\n".join(rows)


class Stopped(Exception):
    """SIGTERM reached the bench."""


def _stopped(signum, frame) -> None:
    raise Stopped


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="demo", choices=["smoke", "demo"])
    ap.add_argument("--root", required=True, help="project folder for data/ and checkpoints/ (made if missing)")
    ap.add_argument("--out", default="rl_compare.json")
    ap.add_argument("--arms", default="group,trl-grpo,gae", help=f"comma-separated, in order, of {', '.join(ARMS)}")
    ap.add_argument("--sets", nargs="*", default=[], metavar="KEY=VALUE", help="PPO config overrides for every arm")
    ap.add_argument("--sft-sets", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for 02's SFT")
    ap.add_argument("--setup-only", action="store_true", help="write data/ and train SFT, run no arm")
    ap.add_argument("--arm-timeout", type=float, default=0,
                    help="stop an arm after this many seconds and keep the dev checks it made (0: no limit)")
    ap.add_argument("--arm", choices=ARMS, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.root = str(Path(args.root).resolve())
    if args.arm:
        return arm_child(args)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    bad = [a for a in arms if a not in ARMS]
    if bad or not arms:
        ap.error(f"--arms {args.arms!r}: choose from {', '.join(ARMS)}")
    parse_sets(args.sets)  # a malformed pair stops here, before any training
    out = Path(args.out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(args.root).mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    result: dict[str, Any] = {"profile": args.profile, "root": args.root, "sets": args.sets, "sft_sets": args.sft_sets,
                              "arms_order": arms, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        result["setup"] = setup(args)
    except SystemExit as exc:  # the JSON says why nothing ran
        result["setup_error"] = str(exc)
        out.write_text(json.dumps(result, indent=1, default=float))
        raise
    result["arms"] = {}
    if args.setup_only:
        out.write_text(json.dumps(result, indent=1, default=float))
        log(f"setup done in {time.perf_counter() - t_all:.0f} s; wrote {out}")
        return 0
    signal.signal(signal.SIGTERM, _stopped)  # e.g. a `timeout` around the bench: keep what was measured
    for arm in arms:
        log(f"arm {arm}: starting")
        child_out = Path(args.root) / "rl_compare" / f"{arm}.json"
        child_out.parent.mkdir(parents=True, exist_ok=True)
        child_out.unlink(missing_ok=True)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--profile", args.profile, "--root", args.root,
               "--arm", arm, "--child-out", str(child_out), "--sets", *args.sets]
        t = time.perf_counter()
        stopped = False
        try:
            rc, tail = stream(cmd, arm, args.arm_timeout)
        except Stopped:
            rc, tail, stopped = -signal.SIGTERM, [], True
        secs = time.perf_counter() - t
        if rc == 0 and child_out.is_file():
            r = json.loads(child_out.read_text())
            r["process_seconds"] = secs
        else:
            why = ("the bench was stopped (SIGTERM)" if stopped else
                   f"stopped after --arm-timeout {args.arm_timeout:g} s" if args.arm_timeout
                   and secs >= args.arm_timeout and rc == -signal.SIGTERM else f"exit {rc}")
            r = {"error": f"{why}:\n" + "\n".join(tail[-25:]), "process_seconds": secs}
            if partial_path(child_out).is_file():  # the dev checks made before it stopped
                r.update(json.loads(partial_path(child_out).read_text()), partial=True)
        result["arms"][arm] = r
        result["summary"] = summarize(result["arms"])
        result["seconds_total"] = time.perf_counter() - t_all
        out.write_text(json.dumps(result, indent=1, default=float))
        log(f"arm {arm}: {'done' if 'error' not in r else 'FAILED'} in {secs:.1f} s; "
            + (f"dev {r['dev_accuracy_sft']:.3f} -> {r['dev_accuracy_final']:.3f}" if "error" not in r else
               f"{len(r.get('dev_curve', []))} dev checks kept" if r.get("partial") else ""))
        if stopped:
            break
    print("\n" + table(result["arms"]), flush=True)
    s = result.get("summary") or {}
    if s:
        print(f"\nbest dev accuracy every arm reached: {s['target_dev_accuracy']:.3f}; first reached at (train s): "
              + ", ".join(f"{k} {v['train_seconds']:.1f} (iteration {v['iteration']})"
                          for k, v in s["time_to_target"].items()), flush=True)
    log(f"wrote {out} ({time.perf_counter() - t_all:.0f} s in all)")
    return 0 if all("error" not in r for r in result["arms"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
