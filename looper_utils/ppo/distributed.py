"""What the PPO loop needs of accelerate: rank, world size, gradient and metric averaging, trackers.

Several GPUs: ``accelerate launch -m looper_utils.ppo --profile full ...``.
Each process samples its share of the batch's prompts; gradients of the
trained tensors (adapters and value head, a few MB) are averaged across
processes before each optimiser step; metrics are averaged (arm counts
summed); rank 0 alone sets old checkpoints aside, then the others resume from
what it left, and rank 0 alone writes. Proven on two CPU processes
(tests/test_multiproc.py). Each process pays its own copy of the bandit with
its own rollouts, so with several arms the copies drift apart and the
checkpoint keeps rank 0's.
"""
from __future__ import annotations

import contextlib
from typing import Any

import torch

from .. import modeling
from ..config import Config

__all__ = ["Distributed"]


def _tracked_config(cfg: Config) -> dict[str, Any]:
    """The run's PPO and reward settings as flat scalars (TensorBoard's hparams take no nested dicts).

    >>> from looper_utils.config import smoke
    >>> c = _tracked_config(smoke())
    >>> c["ppo.k"], c["reward.correct"], c["run_id"]
    (4, 1.0, 'latest')
    """
    out: dict[str, Any] = {"profile": cfg.profile, "run_id": cfg.run_id, "seed": cfg.seed}
    for sec in ("ppo", "reward"):
        out.update({f"{sec}.{k}": v for k, v in vars(getattr(cfg, sec)).items()})
    return out


class Distributed:
    """What the loop needs of accelerate: rank, world size, gradient and metric averaging."""

    def __init__(self, cfg: Config) -> None:
        from ..sft_setup import check_report_to, tracking_dir

        self.acc = None
        log_with = None if check_report_to(cfg.ppo.report_to, "ppo.report_to") == "none" else cfg.ppo.report_to
        try:
            from accelerate import Accelerator
            from accelerate.state import PartialState

            # the state is made once per process: without cpu=True a CPU-only launch of several
            # processes would find no backend and run each process alone
            cpu = cfg.device == "cpu" or not torch.cuda.is_available()
            if PartialState(cpu=cpu).num_processes > 1 or log_with:
                tb = tracking_dir(cfg, "05_ppo")
                self.acc = Accelerator(cpu=cpu, log_with=log_with, project_dir=str(tb.parent))
                if log_with:
                    # the tensorboard tracker writes under <project_dir>/<project name>; wandb and trackio
                    # take the project name as their project
                    self.acc.init_trackers(tb.name if log_with == "tensorboard" else "looper",
                                           config=_tracked_config(cfg),
                                           init_kwargs={"wandb": {"name": f"{cfg.run_id}-05_ppo"}})
        except ImportError:  # accelerate is a dependency; without it the loop runs on one device
            pass

    @property
    def rank(self) -> int:
        return self.acc.process_index if self.acc else 0

    @property
    def world(self) -> int:
        return self.acc.num_processes if self.acc else 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def main_first(self):
        """A block that rank 0 runs first, alone, and the other ranks after it: rank 0 is the one that moves
        checkpoint folders aside, and the others must then read what it left, not a folder half-moved."""
        return self.acc.main_process_first() if self.world > 1 else contextlib.nullcontext()

    def wait(self) -> None:
        if self.world > 1:
            self.acc.wait_for_everyone()

    def close(self) -> None:
        """Finish the trackers and leave the process group (a launcher warns about one left open)."""
        if self.acc is None:
            return
        self.acc.end_training()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    def device(self, cfg: Config) -> torch.device:
        return self.acc.device if self.acc else modeling.resolve_device(cfg.device)

    def average_grads(self, params: list[torch.nn.Parameter]) -> None:
        if self.world == 1:
            return
        for p in params:
            if p.grad is not None:
                p.grad = self.acc.reduce(p.grad, reduction="mean")

    def average(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """Float metrics averaged over the processes; integers (the iteration) kept; ``arms`` counts summed,
        so the logged line describes the whole batch, not rank 0's share."""
        if self.world == 1:
            return metrics
        keys = sorted(k for k, v in metrics.items() if isinstance(v, float))
        t = torch.tensor([metrics[k] for k in keys], device=self.acc.device)
        t = self.acc.reduce(t, reduction="mean").tolist()
        out = dict(metrics, **dict(zip(keys, t)))
        if isinstance(metrics.get("arms"), dict):
            from accelerate.utils import gather_object

            arms: dict[str, int] = {}
            for counts in gather_object([metrics["arms"]]):
                for a, n in counts.items():
                    arms[a] = arms.get(a, 0) + n
            out["arms"] = dict(sorted(arms.items(), key=lambda x: int(x[0])))
        return out

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if self.acc and self.acc.log_with:
            self.acc.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)
