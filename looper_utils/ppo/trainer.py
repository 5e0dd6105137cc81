"""PPO with the Regime W reward: the run of iterations, dev evaluation, checkpoints, resume, and a CLI.

``PPOTrainer`` is ``ppo.iteration.PPOIteration`` (one iteration, step by step:
its docstring lists the steps) run iteration after iteration. After each one:
metrics (one JSON line per iteration), periodic greedy dev eval, and an
atomic checkpoint: adapters, value head, optimisers, schedulers, bandit, RNG
states and the iteration, in files that load without running code
(safetensors + JSON, ``ppo.resume.save_state``). The log is written before
the checkpoint, so it always covers the checkpoint's iterations. ``resume``
continues from the last complete iteration; every random draw of an
iteration is seeded by (seed, iteration), so a resumed run matches a
straight one. A state written with other settings (model, SFT weights,
reward, PPO knobs), an unreadable one, one in the old pickle format, and any
earlier run's ``best``/``last`` when a run starts afresh are not resumed but
set aside as ``checkpoints/ppo.previous`` (``ppo.resume``).

Several GPUs: ``accelerate launch -m looper_utils.ppo --profile full ...``;
``ppo.distributed`` says what each process does.
"""
from __future__ import annotations

import contextlib
import copy
import json
import random
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from ..artifacts import atomic_write_text
from ..config import Config
from ..progress import progress_line
from ..teacher import completion_style, style_shares
from .iteration import PPOIteration
from .model import POLICY
from .resume import (STATE_TENSORS, StateError, can_resume, load_state, move_aside, resume_signature,
                     state_problem, write_checkpoint)

__all__ = ["PPOTrainer", "main", "ppo_dir", "LOG_NAME"]


LOG_NAME = "ppo_log.jsonl"
STATE_NAME = STATE_TENSORS  # with trainer_state.json beside it


def ppo_dir(cfg: Config) -> Path:
    return cfg.checkpoints_dir / "ppo"


class PPOTrainer(PPOIteration):
    """``PPOIteration`` and the run around it: ``train()`` runs the iterations, with dev eval, checkpoints,
    resume and the log."""

    def __init__(self, cfg: Config, train_rows: list[dict], dev_rows: list[dict], out_dir: Path | None = None,
                 progress: bool = True) -> None:
        super().__init__(cfg, train_rows)
        self.out = Path(out_dir) if out_dir else ppo_dir(cfg)
        self.progress = progress and self.dist.is_main
        self.dev_rows = dev_rows[:self.p.n_dev] if self.p.n_dev else dev_rows
        self.signature = resume_signature(cfg, train_rows)
        self.best_dev = -1.0
        self.history: list[dict[str, Any]] = []
        self.last_dev_styles: list[str] = []

    # -- one iteration, rehearsed --------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Everything an iteration changes (weights, optimisers, schedules, bandit, RNGs), in memory,
        for ``restore``. Not the checkpoint format: nothing is written."""
        return {"trainable": self.pv.trainable_state(),
                "opt_pi": copy.deepcopy(self.opt_pi.state_dict()), "opt_v": copy.deepcopy(self.opt_v.state_dict()),
                "sched_pi": self.sched_pi.state_dict(), "sched_v": self.sched_v.state_dict(),
                "bandit": copy.deepcopy(self.bandit.state_dict()),
                "rng": (torch.get_rng_state(), random.getstate(), np.random.get_state(),
                        torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)}

    def restore(self, snap: dict[str, Any]) -> None:
        """Put back what ``snapshot`` took: 05 walks through one iteration between the two, so ``train()``
        afterwards computes exactly what ``python -m looper_utils.ppo`` does."""
        self.pv.load_trainable_state(snap["trainable"])
        self.opt_pi.load_state_dict(copy.deepcopy(snap["opt_pi"]))
        self.opt_v.load_state_dict(copy.deepcopy(snap["opt_v"]))
        self.sched_pi.load_state_dict(snap["sched_pi"])
        self.sched_v.load_state_dict(snap["sched_v"])
        self.bandit.load_state_dict(copy.deepcopy(snap["bandit"]))
        torch.set_rng_state(snap["rng"][0])
        random.setstate(snap["rng"][1])
        np.random.set_state(snap["rng"][2])
        if snap["rng"][3] is not None:
            torch.cuda.set_rng_state_all(snap["rng"][3])
        self.pv.model.eval()

    @contextlib.contextmanager
    def rehearsal(self) -> Iterator[None]:
        """``snapshot`` on entry, ``restore`` on exit: steps run inside leave the trainer as it was."""
        snap = self.snapshot()
        try:
            yield
        finally:
            self.restore(snap)

    # -- evaluation ---------------------------------------------------------------
    def dev_accuracy(self, rows: list[dict] | None = None) -> tuple[float, list[bool]]:
        """Greedy accuracy of the policy with the one dev check of 02 (``sft.dev_check``).

        The style of every answer (``data.completion_style``) is kept in
        ``last_dev_styles`` for the style-share plots.
        """
        rows = rows if rows is not None else self.dev_rows
        with self.pv.use(POLICY):
            acc, records = greedy_dev_check(self.cfg, self.pv.model, self.tok, rows)
        self.last_dev_styles = [completion_style(r["completion"], think=self.think) for r in records]
        return acc, [bool(r["correct"]) for r in records]

    # -- checkpoints ------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "iteration": self.iteration, "best_dev": self.best_dev,
            "trainable": self.pv.trainable_state(),
            "opt_pi": self.opt_pi.state_dict(), "opt_v": self.opt_v.state_dict(),
            "sched_pi": self.sched_pi.state_dict(), "sched_v": self.sched_v.state_dict(),
            "bandit": self.bandit.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                    "numpy": np.random.get_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        }

    def save(self, name: str) -> Path:
        """Write ``<out>/<name>/`` atomically: trainer state, policy adapter, config, step."""
        return write_checkpoint(self.out / name, self.cfg, self.pv, self.signature,
                                {"stage": "ppo", "step": self.iteration, "format": "ppo_adapter",
                                 "best_dev": self.best_dev}, trainer_state=self.state())

    def load(self, path: Path, st: dict[str, Any] | None = None) -> None:
        """Restore the state ``save`` wrote to ``path`` (or ``st``, read from it already). Nothing in the files
        runs; ``ppo.resume.StateError`` if they cannot be read."""
        st = load_state(path) if st is None else st
        self.pv.load_trainable_state(st["trainable"])
        self.opt_pi.load_state_dict(st["opt_pi"])
        self.opt_v.load_state_dict(st["opt_v"])
        self.sched_pi.load_state_dict(st["sched_pi"])
        self.sched_v.load_state_dict(st["sched_v"])
        self.bandit.load_state_dict(st["bandit"])
        torch.set_rng_state(st["rng"]["torch"])
        random.setstate(st["rng"]["python"])
        np.random.set_state(st["rng"]["numpy"])
        if st["rng"].get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(st["rng"]["cuda"])
        self.iteration, self.best_dev = st["iteration"], st["best_dev"]

    def _resume(self, last: Path) -> None:
        """Load ``last`` when it is a readable state of this run's settings; set aside one that is not."""
        if not last.is_dir():
            return
        why = state_problem(last)
        if why is None and can_resume(self.out, self.signature, last, set_aside=self.dist.is_main):
            try:
                st = load_state(last)
            except StateError as exc:  # a file cut short or not ours: nothing was restored yet
                why = str(exc)
            else:
                try:
                    self.load(last, st)
                except (KeyError, TypeError, ValueError, RuntimeError) as exc:
                    # half of it may be restored already: starting over from here would not be a fresh run
                    raise StateError(f"{last}: the saved training state does not fit this run ({exc}); move "
                                     f"{self.out} away (or pass resume=False) and run again") from exc
                return
        if why is not None and self.dist.is_main and self.out.is_dir():
            move_aside(self.out, why)
        self.iteration = 0

    def _read_log(self) -> list[dict[str, Any]]:
        path = self.out / LOG_NAME
        if not path.is_file():
            return []
        rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        return [r for r in rows if r["iteration"] <= self.iteration]  # lines past the checkpoint are redone

    def _write_log(self) -> None:
        atomic_write_text(self.out / LOG_NAME, "".join(json.dumps(r) + "\n" for r in self.history))

    # -- the loop -----------------------------------------------------------------
    def train(self, iterations: int | None = None, on_iteration: Callable[[dict[str, Any]], None] | None = None,
              stop_after: int | None = None) -> list[dict[str, Any]]:
        """Run until ``iterations`` (default: the config's); ``stop_after`` ends early (for tests)."""
        from tqdm.auto import tqdm

        total = iterations or self.p.iterations
        self.iteration = 0
        with self.dist.main_first():  # rank 0 decides and moves folders; the others then resume from what is left
            if self.p.resume:
                self._resume(self.out / "last")
            if not self.iteration and self.dist.is_main and any((self.out / n).is_dir() for n in ("best", "last")):
                # an earlier run's best would outlive this one's last and be what 06 evaluates
                move_aside(self.out, f"{self.out} holds an earlier PPO run that this one does not continue"
                           + ("" if self.p.resume else " (resume=False)"))
        self.history = self._read_log() if self.iteration else []
        bar = tqdm(total=total, initial=self.iteration, desc="ppo", disable=not self.progress)
        done, first, t_start = 0, self.iteration, time.perf_counter()
        while self.iteration < total and (stop_after is None or done < stop_after):
            t0 = time.perf_counter()
            metrics = self.iterate(self.iteration)
            self.iteration += 1
            # the dev check is greedy and the same on every rank: rank 0 alone runs it (and saves best)
            if self.p.eval_every and (self.iteration % self.p.eval_every == 0 or self.iteration == total) \
                    and self.dist.is_main:
                acc, _ = self.dev_accuracy()
                metrics["dev_accuracy"] = acc
                metrics.update({f"dev_style_{k}": v for k, v in style_shares(self.last_dev_styles).items()})
                if acc > self.best_dev and self.dist.is_main:
                    self.best_dev = acc
                    self.save("best")
            metrics["seconds"] = time.perf_counter() - t0
            # sampled tokens per second of the whole iteration (generation + scoring + update)
            metrics["tokens_per_second"] = (metrics["response_length"] * self.p.k * self.p.prompts_per_iter
                                            / max(1e-9, metrics["seconds"]))
            self.history.append(metrics)
            if self.dist.is_main and (self.iteration % self.p.save_every == 0 or self.iteration == total):
                # log first: a stop between the two leaves log lines past the checkpoint (redone on resume),
                # never a checkpoint whose iterations are missing from the log
                self._write_log()
                self.save("last")
            self.dist.log(metrics, self.iteration)
            if on_iteration:
                on_iteration(metrics)
            bar.update(1)
            done += 1
            if self.progress:  # one line per iteration, streamed by the pipeline (artifacts.progress_line)
                dev = f", dev {metrics['dev_accuracy']:.3f}" if "dev_accuracy" in metrics else ""
                print(progress_line("ppo iteration", done, total - first, t_start,
                                    f"reward {metrics['reward']:.3f}, accuracy {metrics['accuracy']:.3f}{dev}"),
                      flush=True)
        bar.close()
        self.dist.wait()  # no rank leaves while rank 0 still writes the last checkpoint
        return self.history


def greedy_dev_check(cfg: Config, model, tokenizer, rows: list[dict]) -> tuple[float, list[dict]]:
    """(accuracy, records) of ``model`` on ``rows``: 02's one dev check (``sft.dev_check``) with 05's settings
    (``ppo.max_new_tokens``, the rollout backend), for our loop and for TRL's GRPO alike."""
    from ..sft import dev_check

    acc, records, _ = dev_check(model, tokenizer, rows, style=cfg.model.prompt_style,
                                max_new_tokens=cfg.ppo.max_new_tokens, batch_size=cfg.sft.eval_batch_size,
                                progress=False, backend=cfg.rollouts.backend)
    return acc, records


def main(argv: list[str] | None = None) -> int:
    """``python -m looper_utils.ppo`` / ``accelerate launch -m looper_utils.ppo``: 05 without the notebook."""
    from .. import data
    from ..pipeline import stage_config

    cfg = stage_config("looper_utils.ppo", "PPO with the Regime W reward", "ppo", argv)
    files = data.data_files(cfg.data_dir)
    if cfg.ppo.trainer == "trl-grpo":  # TRL's GRPOTrainer instead of our loop, into the same folder for 06
        from .trl_grpo import train_trl_grpo

        m = train_trl_grpo(cfg, data.read_jsonl(files["train"]), data.read_jsonl(files["dev"]))
        print(json.dumps({k: v for k, v in m.items() if not isinstance(v, list)}, default=str), flush=True)
        return 0
    trainer = PPOTrainer(cfg, data.read_jsonl(files["train"]), data.read_jsonl(files["dev"]))
    main_rank = trainer.dist.is_main

    def show(m: dict[str, Any]) -> None:
        if main_rank:  # metrics are averaged over the ranks already: one line per iteration
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in m.items()}), flush=True)

    hist = trainer.train(on_iteration=show)
    if main_rank:
        print(f"done: {len(hist)} iterations on {trainer.dist.world} process(es), checkpoints in {trainer.out}")
    trainer.dist.close()
    return 0
