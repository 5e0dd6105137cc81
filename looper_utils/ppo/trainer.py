"""PPO with the Regime W reward: the training loop, checkpoints, resume, and a CLI.

One iteration:

1. the bandit picks the arm of each of the batch's prompts (Regime W's arms);
2. the policy samples ``k`` completions per prompt (``generation.generate``);
3. Regime W scores each completion and turns the scores into one reward;
4. old log-probs (policy), reference log-probs (SFT weights) and values in
   batched forwards;
5. advantages: ``gae`` (token-level KL penalty folded into the reward) or
   ``group`` (GRPO-style reward normalised per prompt, no critic; the KL
   then enters the loss through the k3 estimator);
6. PPO epochs over shuffled minibatches: clipped policy loss, clipped value
   loss, optional entropy bonus, gradient clipping;
7. the bandit is paid each arm's learning signal p(1-p);
8. metrics (one JSON line per iteration), periodic greedy dev eval, and an
   atomic checkpoint: adapters, value head, optimisers, schedulers, bandit,
   RNG states and the iteration, in files that load without running code
   (safetensors + JSON, ``ppo.resume.save_state``). The log is written
   before the checkpoint, so it always covers the checkpoint's iterations.
   ``resume`` continues from the last complete iteration; every random draw
   of an iteration is seeded by (seed, iteration), so a resumed run matches
   a straight one. A state written with other settings (model, SFT weights,
   reward, PPO knobs), an unreadable one, one in the old pickle format, and
   any earlier run's ``best``/``last`` when a run starts afresh are not
   resumed but set aside as ``checkpoints/ppo.previous`` (``ppo.resume``).

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
import copy
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from .. import modeling, prompts
from ..teacher import completion_style, style_shares
from ..artifacts import atomic_dir, atomic_write_text
from ..progress import Timer, progress_line
from ..config import Config
from ..generation import generate
from .losses import (explained_variance, gae, group_advantages, kl_k1, kl_k3, masked_mean, masked_whiten,
                         policy_loss, ppo_diagnostics, token_rewards, value_loss)
from .model import POLICY, REF, VALUE, PolicyValue, save_policy_adapter
from .resume import (STATE_TENSORS, StateError, can_resume, load_state, move_aside, resume_signature,
                         save_state, state_problem, write_signature)
from .steps import Advantages, Rollout, Scored, lr_factor, optimizer_steps
from ..regime_w.arms import build_arms
from ..regime_w.bandits import learning_signal, make_bandit
from ..regime_w.reward import components, reward
from ..regime_w.scoring import score

LOG_NAME = "ppo_log.jsonl"
STATE_NAME = STATE_TENSORS  # with trainer_state.json beside it


def ppo_dir(cfg: Config) -> Path:
    return cfg.checkpoints_dir / "ppo"


@dataclass
class Batch:
    """The tensors of one iteration's sequences, right-padded; ``mask`` marks completion tokens (shifted)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    mask: torch.Tensor  # [B, L-1]: 1 where position t predicts a completion token
    group: torch.Tensor  # prompt index of each sequence


def minibatch(b: Batch, idx: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """(input_ids, attention_mask, mask, width) of some rows of ``b``, cut to their longest sequence.

    The batch is padded to the longest of all its sequences; a minibatch of shorter ones would
    compute that padding for nothing. Sequences are right-padded, so dropping the columns after the
    minibatch's last real token changes no result. Tensors over positions (``mask``, log-probs,
    advantages) are cut with ``[:, :width - 1]``.
    """
    att = b.attention_mask[idx]
    width = max(2, int(att.sum(1).max()))
    return b.input_ids[idx][:, :width], att[:, :width], b.mask[idx][:, :width - 1], width


def _pad_to(x: torch.Tensor, length: int) -> torch.Tensor:
    """Right-pad the last dimension of ``x`` with zeros to ``length``."""
    return torch.nn.functional.pad(x, (0, length - x.shape[-1]))


def make_batch(samples: list[Any], pad_id: int, device: torch.device) -> Batch:
    seqs = [s.prompt_ids + s.completion_ids for s in samples]
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    att = torch.zeros((len(seqs), L), dtype=torch.long)
    mask = torch.zeros((len(seqs), L - 1), dtype=torch.float32)
    for i, (s, seq) in enumerate(zip(samples, seqs)):
        ids[i, :len(seq)] = torch.tensor(seq)
        att[i, :len(seq)] = 1
        p = len(s.prompt_ids)
        mask[i, p - 1:len(seq) - 1] = 1.0  # logits at p-1 predict the first completion token
    group = torch.tensor([s.prompt_index for s in samples])
    return Batch(ids.to(device), att.to(device), mask.to(device), group.to(device))


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


class PPOTrainer:
    """Holds the models, optimisers, bandit and data; ``train()`` runs the iterations."""

    def __init__(self, cfg: Config, train_rows: list[dict], dev_rows: list[dict], out_dir: Path | None = None,
                 progress: bool = True) -> None:
        self.cfg, self.p = cfg, cfg.ppo
        self.dist = Distributed(cfg)
        self.device = self.dist.device(cfg)
        self.out = Path(out_dir) if out_dir else ppo_dir(cfg)
        self.progress = progress and self.dist.is_main
        torch.manual_seed(cfg.seed)
        self.pv = PolicyValue(cfg, self.device)
        self.tok = self.pv.tokenizer
        self.style = cfg.model.prompt_style
        self.think = prompts.completion_starts_in_think(self.tok, self.style)
        self.train_rows, self.dev_rows = train_rows, dev_rows[:self.p.n_dev] if self.p.n_dev else dev_rows
        rollout_df = None
        if cfg.bandit.arms == "pass_rate":  # arms from 03's measured pass rates
            from ..rollouts import load_rollouts

            rollout_df = load_rollouts(cfg.run_dir)
        self.arms = build_arms(cfg.bandit, train_rows, rollout_df)
        row_of = {str(r["id"]): i for i, r in enumerate(train_rows)}
        self.arm_rows = [[row_of[i] for i in arm.ids] for arm in self.arms]
        self.bandit = make_bandit(cfg.bandit, len(self.arms), cfg.seed)
        pol, val = self.pv.adapter_params(POLICY), self.pv.adapter_params(VALUE) + list(self.pv.value_head.parameters())
        self.policy_params, self.value_params = pol, val
        self.opt_pi = torch.optim.AdamW(pol, lr=self.p.learning_rate, weight_decay=0.0)
        self.opt_v = torch.optim.AdamW(val, lr=self.p.value_learning_rate, weight_decay=0.0)
        # the policy's schedule over every optimiser step of the run (cfg.ppo.iterations, whatever train() is
        # asked for); the value model's learning rate stays constant
        self.total_steps = optimizer_steps(cfg, self.dist.world)
        self.warmup_steps = round(self.total_steps * self.p.warmup_iterations / max(1, self.p.iterations))
        self.sched_pi = torch.optim.lr_scheduler.LambdaLR(
            self.opt_pi, lambda i: lr_factor(i, self.total_steps, self.warmup_steps, self.p.lr_schedule))
        self.sched_v = torch.optim.lr_scheduler.LambdaLR(self.opt_v, lambda i: 1.0)
        self.signature = resume_signature(cfg, train_rows)
        self.iteration = 0
        self.best_dev = -1.0
        self.history: list[dict[str, Any]] = []
        self.last_dev_styles: list[str] = []
        self._engine = None  # the rollout engine, made by the first sample()

    # -- one iteration ----------------------------------------------------------
    def _pick_prompts(self, it: int) -> tuple[list[dict], list[int]]:
        n_local = max(1, self.p.prompts_per_iter // self.dist.world)
        rng = np.random.default_rng([self.cfg.seed, it, self.dist.rank])
        arm_ids = self.bandit.select(n_local, rng)
        rows = []
        for a in arm_ids:
            idx = self.arm_rows[a]
            rows.append(self.train_rows[int(idx[rng.integers(len(idx))])])
        return rows, list(arm_ids)

    def _forward_all(self, b: Batch, roles: tuple[str, ...] = ("logp", "ref", "values")) -> dict[str, torch.Tensor]:
        """Old log-probs (``logp``), reference log-probs (``ref``) and/or ``values``, in minibatches,
        without gradients; [B, L-1] each, 0 after a sequence's end."""
        outs: dict[str, list[torch.Tensor]] = {k: [] for k in roles}
        mb, full = self.p.minibatch_size, b.input_ids.shape[1] - 1
        with torch.no_grad():
            for s in range(0, len(b.input_ids), mb):
                ids, att, m, _ = minibatch(b, slice(s, s + mb))
                for role in roles:
                    if role == "values":
                        x = self.pv.values(ids, att) * m
                    else:
                        x = self.pv.token_logprobs(POLICY if role == "logp" else REF, ids, att, mask=m,
                                                   temperature=self.p.temperature)[0]
                    outs[role].append(_pad_to(x, full))
        return {k: torch.cat(v) for k, v in outs.items()}

    # the steps of one iteration, public so 05 can run them one at a time
    @property
    def tokenizer(self):
        """The policy's tokenizer (the SFT checkpoint's), for prompts and for reading token ids."""
        return self.pv.tokenizer

    @property
    def reference_mode(self) -> str:
        """``disabled``: the reference is the SFT weights with the adapters off; ``adapter``: a frozen SFT adapter."""
        return self.pv.ref_mode

    @contextlib.contextmanager
    def policy(self) -> Iterator[Any]:
        """The model with the policy adapter active: ``with trainer.policy() as model: generate(model, ...)``."""
        with self.pv.use(POLICY):
            yield self.pv.model

    @contextlib.contextmanager
    def reference(self) -> Iterator[Any]:
        """The model as the frozen reference (the SFT weights), the policy's KL anchor."""
        with self.pv.use(REF):
            yield self.pv.model

    def sample(self, it: int) -> Rollout:
        """Steps 1-2: the bandit picks each prompt's arm, the policy samples ``k`` completions per prompt."""
        rows, arm_ids = self._pick_prompts(it)
        with self.policy() as model:
            res = generate(model, self.tok, [prompts.build_prompt(r["question"], self.tok, self.style) for r in rows],
                           n=self.p.k, max_new_tokens=self.p.max_new_tokens, temperature=self.p.temperature,
                           batch_size=max(self.p.minibatch_size, len(rows) * self.p.k), seed=self.cfg.seed * 100_003 + it,
                           progress=False, backend=self.cfg.rollouts.backend, engine=self._sampler(model))
        self._release_sampler()
        return Rollout(it, rows, arm_ids, res, make_batch(res.samples, self.tok.pad_token_id, self.device))

    def _sampler(self, model):
        """The rollout engine, made once and kept: its checks, KV cache and CUDA graphs are reused by every
        iteration (the adapters are updated in place, so the graphs stay valid). None: HF generate."""
        from .. import engine

        if self._engine is None and self.cfg.rollouts.backend == "engine" and engine.supports(model):
            self._engine = engine.Engine(model)
        return self._engine

    def _release_sampler(self) -> None:
        """Free the engine's KV cache when it would crowd the update (over a tenth of the GPU's memory)."""
        eng = self._engine
        if eng is None or self.device.type != "cuda" or eng.cache_bytes == 0:
            return
        if eng.cache_bytes > 0.1 * torch.cuda.get_device_properties(self.device).total_memory:
            eng.release()

    def score(self, rollout: Rollout) -> Scored:
        """Step 3: Regime W scores every sample and weighs the components into one reward."""
        scores = [score(s.text, rollout.rows[s.prompt_index], finish_reason=s.finish_reason, n_tokens=s.n_tokens,
                        think=self.think) for s in rollout.samples]
        rewards = torch.tensor([reward(sc, self.cfg.reward) for sc in scores], dtype=torch.float32)
        return Scored(scores, rewards, [components(sc) for sc in scores], [bool(sc.correct) for sc in scores],
                      [completion_style(s.text, think=self.think) for s in rollout.samples])

    def advantages(self, rollout: Rollout, scored: Scored, kind: str | None = None,
                   old: dict[str, torch.Tensor] | None = None) -> Advantages:
        """Steps 4-5: old, reference log-probs and values (or ``old`` from another call), then advantages.

        ``kind`` is the config's ``ppo.advantage`` unless given: 05 computes both from one batch.
        """
        kind = kind or self.p.advantage
        if kind not in ("gae", "group"):
            raise ValueError(f"advantage kind must be 'gae' or 'group', got {kind!r}")
        b = rollout.batch
        # the values are the critic's: gae needs them, group has no critic and skips that forward
        if old is None:
            old = self._forward_all(b, ("logp", "ref", "values") if kind == "gae" else ("logp", "ref"))
        elif kind == "gae" and "values" not in old:
            old = {**old, **self._forward_all(b, ("values",))}
        m = b.mask
        kl_tok = kl_k1(old["logp"], old["ref"]) * m
        r = scored.rewards.to(self.device)
        tr = None
        if kind == "gae":
            tr = token_rewards(r, old["logp"], old["ref"], m, self.p.kl_coef)
            adv, ret = gae(tr, old["values"] * m, m, self.p.gamma, self.p.lam)
            adv = masked_whiten(adv, m)
        else:
            seq_adv = group_advantages(r, b.group)
            adv = seq_adv[:, None] * m
            ret = torch.zeros_like(adv)  # no critic, nothing to learn
        return Advantages(kind, old, adv, ret, kl_tok, tr)

    def update(self, rollout: Rollout, adv: Advantages) -> dict[str, float]:
        """Step 6: PPO epochs over shuffled minibatches (policy, and the value model with ``gae``)."""
        return self._update(rollout.batch, adv.old, adv.adv, adv.ret)

    def update_bandit(self, rollout: Rollout, scored: Scored) -> dict[int, float]:
        """Step 7: each arm drawn is paid the learning signal p(1-p) of its samples; returns the payments."""
        by_arm: dict[int, list[bool]] = {}
        for s, c in zip(rollout.samples, scored.correct):
            by_arm.setdefault(rollout.arm_ids[s.prompt_index], []).append(c)
        paid = {}
        for a, flags in by_arm.items():
            paid[a] = learning_signal(flags)
            self.bandit.update(a, paid[a])
        return paid

    def diagnostics(self, rollout: Rollout, adv: Advantages) -> dict[str, float]:
        """Ratio, clipped objective, KL and value loss of the current policy on the whole batch, without
        stepping (``ppo.losses.ppo_diagnostics``): before ``update`` the ratio is 1, after it is not."""
        b = rollout.batch
        critic = adv.kind == "gae"
        now = self._forward_all(b, ("logp", "values") if critic else ("logp",))
        return ppo_diagnostics(now["logp"], adv.old["logp"], adv.old["ref"], adv.adv, b.mask, self.p.clip_range,
                               now.get("values"), adv.old.get("values") if critic else None, adv.ret,
                               self.p.value_clip)

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

    def iterate(self, it: int) -> dict[str, Any]:
        """One whole iteration: ``sample``, ``score``, ``advantages``, ``update``, ``update_bandit``, metrics."""
        timer = Timer()
        with timer.section("generate"):
            roll = self.sample(it)
        with timer.section("score"):
            scored = self.score(roll)
        with timer.section("forward"):
            adv = self.advantages(roll, scored)
        with timer.section("update"):
            stats = self.update(roll, adv)
        self.update_bandit(roll, scored)
        samples, rewards, comps = roll.samples, scored.rewards, scored.components
        n_tok = sum(s.n_tokens for s in samples)
        t = timer.totals
        metrics = {
            "iteration": it + 1,
            "reward": float(rewards.mean()), "reward_std": float(rewards.std()) if len(rewards) > 1 else 0.0,
            "accuracy": float(np.mean(scored.correct)),
            **{f"r_{k}": float(np.mean([c[k] for c in comps])) for k in comps[0]},
            "kl": float((adv.kl_tok.sum(1)).mean()), "response_length": n_tok / len(samples),
            **{f"style_{k}": v for k, v in style_shares(scored.styles).items()},
            "truncated": float(np.mean([s.finish_reason == "length" for s in samples])),
            **stats,
            "lr": self.sched_pi.get_last_lr()[0],
            "t_generate": t.get("generate", 0.0), "t_score": t.get("score", 0.0),
            "t_forward": t.get("forward", 0.0), "t_update": t.get("update", 0.0),
            "gen_tokens_per_second": roll.result.tokens_per_second,
            "arms": {str(a): sum(1 for x in roll.arm_ids if x == a) for a in sorted(set(roll.arm_ids))},
            # the mean reward moves with the arm mix as much as with learning: each arm's own reward
            "reward_by_arm": self._reward_by_arm(roll, rewards),
        }
        return self.dist.average(metrics)

    def _reward_by_arm(self, roll: Rollout, rewards: torch.Tensor) -> dict[str, float]:
        by: dict[str, list[float]] = {}
        for s, r in zip(roll.samples, rewards.tolist()):
            by.setdefault(self.arms[roll.arm_ids[s.prompt_index]].name, []).append(r)
        return {name: float(np.mean(v)) for name, v in by.items()}

    def _step(self, opt, sched, params: list[torch.nn.Parameter]) -> None:
        """Average gradients across processes, clip them, step the optimiser and its schedule."""
        self.dist.average_grads(params)
        torch.nn.utils.clip_grad_norm_(params, self.p.max_grad_norm)
        opt.step()
        sched.step()

    def _update(self, b: Batch, old: dict[str, torch.Tensor], adv: torch.Tensor, ret: torch.Tensor) -> dict[str, float]:
        p, n = self.p, len(b.input_ids)
        g = torch.Generator().manual_seed(self.cfg.seed * 7919 + self.iteration)
        # detached tensors, read once at the end: a .item() per minibatch would wait for the GPU each time
        agg: dict[str, list[torch.Tensor]] = {"policy_loss": [], "value_loss": [], "clipfrac": [], "entropy": [],
                                              "approx_kl": []}
        # train mode switches gradient checkpointing on; LoRA dropout is 0 and Llama has none, so the
        # numbers are those of eval mode
        self.pv.model.train()
        for _ in range(p.ppo_epochs):
            perm = torch.randperm(n, generator=g)
            for s in range(0, n, p.minibatch_size):
                idx = perm[s:s + p.minibatch_size].to(self.device)
                ids, att, m, width = minibatch(b, idx)
                cut = lambda x: x[idx][:, :width - 1]  # noqa: E731 - the minibatch's rows and columns
                logp, ent = self.pv.token_logprobs(POLICY, ids, att, with_entropy=True, mask=m,
                                                   temperature=self.p.temperature)
                old_logp = cut(old["logp"])
                pl, clipfrac = policy_loss(logp, old_logp, cut(adv), m, p.clip_range)
                loss = pl - p.ent_coef * masked_mean(ent, m)
                if p.advantage == "group" and p.kl_coef > 0:
                    loss = loss + p.kl_coef * masked_mean(kl_k3(logp, cut(old["ref"])), m)
                self.opt_pi.zero_grad(set_to_none=True)
                loss.backward()
                self._step(self.opt_pi, self.sched_pi, self.policy_params)
                with torch.no_grad():
                    agg["policy_loss"].append(pl.detach())
                    agg["clipfrac"].append(clipfrac.detach())
                    agg["entropy"].append(masked_mean(ent, m))
                    agg["approx_kl"].append(masked_mean(0.5 * (logp - old_logp) ** 2, m))
                if p.advantage == "gae":
                    with self.pv.use(VALUE):  # backward inside: checkpointing re-runs the value forward
                        v = self.pv.values(ids, att)
                        vl = value_loss(v, cut(old["values"]), cut(ret), m, p.value_clip)
                        self.opt_v.zero_grad(set_to_none=True)
                        vl.backward()
                    self._step(self.opt_v, self.sched_v, self.value_params)
                    agg["value_loss"].append(vl.detach())
        self.pv.model.eval()
        out = {k: float(torch.stack(v).float().mean()) if v else 0.0 for k, v in agg.items()}
        out["explained_variance"] = explained_variance(old["values"], ret, b.mask) if p.advantage == "gae" else float("nan")
        return out

    # -- evaluation ---------------------------------------------------------------
    def dev_accuracy(self, rows: list[dict] | None = None) -> tuple[float, list[bool]]:
        """Greedy accuracy of the policy with the one dev check of 02 (``sft.dev_check``).

        The style of every answer (``data.completion_style``) is kept in
        ``last_dev_styles`` for the style-share plots.
        """
        from ..sft import dev_check

        rows = rows if rows is not None else self.dev_rows
        with self.pv.use(POLICY):
            acc, records, _ = dev_check(self.pv.model, self.tok, rows, style=self.style,
                                        max_new_tokens=self.p.max_new_tokens, batch_size=self.cfg.sft.eval_batch_size,
                                        progress=False, backend=self.cfg.rollouts.backend)
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
        from ..config import save as save_cfg

        final = self.out / name
        with atomic_dir(final) as tmp:
            save_state(tmp, self.state())
            save_policy_adapter(self.pv, tmp)
            save_cfg(self.cfg, tmp / modeling.CONFIG_FILE)
            write_signature(tmp, self.signature)
            atomic_write_text(tmp / modeling.STATE_FILE, json.dumps(
                {"stage": "ppo", "step": self.iteration, "format": "ppo_adapter", "best_dev": self.best_dev}) + "\n")
        return final

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



def main(argv: list[str] | None = None) -> int:
    """``python -m looper_utils.ppo`` / ``accelerate launch -m looper_utils.ppo``: 05 without the notebook."""
    from .. import data
    from ..pipeline import stage_config

    cfg = stage_config("looper_utils.ppo", "PPO with the Regime W reward", "ppo", argv)
    files = data.data_files(cfg.data_dir)
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
