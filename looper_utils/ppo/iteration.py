"""One PPO iteration with the Regime W reward: the models, optimisers and bandit, and the steps.

``PPOIteration`` builds what an iteration works on (one base model in three
roles, two optimisers and their schedules, the bandit over Regime W's arms)
and runs one iteration (``iterate``) or its steps one at a time, as 05 does.
``ppo.trainer.PPOTrainer`` runs the iterations, with dev evaluation,
checkpoints and resume.

One iteration:

1. the bandit picks the arm of each of the batch's prompts (Regime W's arms);
2. the policy samples ``k`` completions per prompt (``generation.generate``; on a GPU from a merged
   copy of it, ``ppo.sampling``);
3. Regime W scores each completion and turns the scores into one reward;
4. old log-probs (policy), reference log-probs (SFT weights) and values in
   batched forwards;
5. advantages: ``gae`` (token-level KL penalty folded into the reward) or
   ``group`` (GRPO-style reward normalised per prompt, no critic; the KL
   then enters the loss through the k3 estimator);
6. PPO epochs over shuffled minibatches: clipped policy loss, clipped value
   loss, optional entropy bonus, gradient clipping (with ``ppo.critic="shared"``
   one forward and one backward give both losses);
7. the bandit is paid each arm's learning signal p(1-p);
8. metrics; then ``PPOTrainer.train`` logs them as one JSON line, runs the periodic
   greedy dev eval and writes a checkpoint (``ppo.trainer``).
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import numpy as np
import torch

from .. import prompts
from ..teacher import completion_style, style_shares
from ..progress import Timer
from ..config import Config
from ..generation import generate
from .distributed import Distributed
from .losses import (explained_variance, gae, group_advantages, kl_k1, kl_k3, masked_mean, masked_whiten,
                         policy_loss, ppo_diagnostics, token_rewards, value_loss)
from .model import POLICY, REF, VALUE, PolicyValue
from .steps import Advantages, Batch, Rollout, Scored, lr_factor, make_batch, minibatch, optimizer_steps
from ..regime_w.arms import build_arms
from ..regime_w.bandits import learning_signal, make_bandit
from ..regime_w.reward import components, reward
from ..regime_w.scoring import score

__all__ = ["PPOIteration", "sampling_choice"]


def _pad_to(x: torch.Tensor, length: int) -> torch.Tensor:
    """Right-pad the last dimension of ``x`` with zeros to ``length``."""
    return torch.nn.functional.pad(x, (0, length - x.shape[-1]))


def sampling_choice(setting: str, model, device: torch.device, backend: str) -> tuple[bool, str]:
    """(sample from a merged copy?, why) for ``ppo.sampling``.

    ``"adapters"``: the policy adapter applied inside the sampler. ``"merged"``: a merged copy
    (``engine.merged.MergedCopy``); a ValueError names the reason when the model has none (a quantised
    base, a LoRA variant). ``"auto"``: merged with the rollout engine on a GPU, where the copy is possible
    and small: at most a twentieth of the GPU's memory (`demo`'s is 48 MB). The 8B base's copy, about 13 GiB
    in bf16, is left to ``"merged"``: beside `full`'s KV cache for 256 rollouts of 1,024 tokens (43 GB) it
    would not leave an 80 GB card room, and it has not been measured there. On the CPU the adapters stay
    in, which keeps `smoke`'s samples those of the fp32 policy itself.
    """
    from ..engine.merged import merged_bytes, why_not_merged

    if setting == "adapters":
        return False, "ppo.sampling='adapters'"
    reason = why_not_merged(model)
    if setting == "merged":
        if reason:
            raise ValueError(f"ppo.sampling='merged' is not possible here: {reason}; use ppo.sampling='adapters' "
                             "or 'auto'")
        return True, "ppo.sampling='merged'"
    if reason:
        return False, reason
    if backend != "engine" or device.type != "cuda":
        return False, f"rollouts.backend={backend!r} on {device.type}: the copy is for the engine on a GPU"
    need, total = merged_bytes(model), torch.cuda.get_device_properties(device).total_memory
    if need > total / 20:
        return False, (f"the copy would take {need / 2**30:.1f} of {total / 2**30:.0f} GiB (auto: at most a "
                       "twentieth); ppo.sampling='merged' asks for it")
    return True, f"a merged copy of {need / 2**20:.0f} MiB"


class PPOIteration:
    """Holds the models, optimisers, bandit and training rows; ``iterate`` runs one iteration, and its steps
    (``sample``, ``score``, ``advantages``, ``update``, ``update_bandit``) run one at a time."""

    def __init__(self, cfg: Config, train_rows: list[dict]) -> None:
        self.cfg, self.p = cfg, cfg.ppo
        self.dist = Distributed(cfg)
        self.device = self.dist.device(cfg)
        torch.manual_seed(cfg.seed)
        self.pv = PolicyValue(cfg, self.device)
        self.compile_why = self.pv.compile_why  # whether the update runs compiled layers, and why (ppo.compile)
        self.tok = self.pv.tokenizer
        self.style = cfg.model.prompt_style
        self.think = prompts.completion_starts_in_think(self.tok, self.style)
        self.train_rows = train_rows
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
        # fused AdamW on a GPU: one kernel for all the adapters' tensors (the default loops over hundreds at 8B)
        fused = {"fused": True} if self.device.type == "cuda" else {}
        self.opt_pi = torch.optim.AdamW(pol, lr=self.p.learning_rate, weight_decay=0.0, **fused)
        self.opt_v = torch.optim.AdamW(val, lr=self.p.value_learning_rate, weight_decay=0.0, **fused)
        # the policy's schedule over every optimiser step of the run (cfg.ppo.iterations, whatever train() is
        # asked for); the value model's learning rate stays constant
        self.total_steps = optimizer_steps(cfg, self.dist.world)
        self.warmup_steps = round(self.total_steps * self.p.warmup_iterations / max(1, self.p.iterations))
        self.sched_pi = torch.optim.lr_scheduler.LambdaLR(
            self.opt_pi, lambda i: lr_factor(i, self.total_steps, self.warmup_steps, self.p.lr_schedule))
        self.sched_v = torch.optim.lr_scheduler.LambdaLR(self.opt_v, lambda i: 1.0)
        self.iteration = 0
        self._engine = None  # the rollout engine, made by the first sample()
        self._merged = None  # the policy's merged copy that sample() draws from (ppo.sampling), or None
        self.sampling, self.sampling_why = "", ""  # "merged" or "adapters", and why: chosen by the first sample()

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
        """Old log-probs (``logp``), reference log-probs (``ref``) and/or ``values``, without gradients;
        [B, L-1] each, in ``b``'s row order, 0 after a sequence's end.

        The rows go through in chunks of ``ppo.forward_batch_size`` (4 minibatches by default: nothing is
        kept for a backward pass), longest first, each chunk cut to its own longest sequence, so a chunk
        computes little padding and the first, widest one sets the peak memory."""
        outs: dict[str, list[torch.Tensor]] = {k: [] for k in roles}
        fb, full = self.p.forward_batch_size or 4 * self.p.minibatch_size, b.input_ids.shape[1] - 1
        order = torch.argsort(b.attention_mask.sum(1), descending=True, stable=True)
        with torch.no_grad():
            for s in range(0, len(order), fb):
                ids, att, m, _ = minibatch(b, order[s:s + fb])
                done: dict[str, torch.Tensor] = {}
                if self.pv.shared_critic and "logp" in roles and "values" in roles:  # one pass for both
                    logp, _, v = self.pv.forward_roles(POLICY, ids, att, mask=m, temperature=self.p.temperature,
                                                       with_values=True, right_padded=True)
                    done = {"logp": logp, "values": v * m}
                for role in roles:
                    if role in done:
                        x = done[role]
                    elif role == "values":
                        x = self.pv.values(ids, att, right_padded=True) * m
                    else:
                        x = self.pv.token_logprobs(POLICY if role == "logp" else REF, ids, att, mask=m,
                                                   temperature=self.p.temperature, right_padded=True)[0]
                    outs[role].append(_pad_to(x, full))
        cat = {k: torch.cat(v) for k, v in outs.items()}
        return {k: torch.empty_like(x).index_copy_(0, order, x) for k, x in cat.items()}  # back to b's order

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
            model = self._sampling_model(model)
            res = generate(model, self.tok, [prompts.build_prompt(r["question"], self.tok, self.style) for r in rows],
                           n=self.p.k, max_new_tokens=self.p.max_new_tokens, temperature=self.p.temperature,
                           batch_size=max(self.p.minibatch_size, len(rows) * self.p.k), seed=self.cfg.seed * 100_003 + it,
                           progress=False, backend=self.cfg.rollouts.backend, engine=self._sampler(model))
        self._release_sampler()
        return Rollout(it, rows, arm_ids, res, make_batch(res.samples, self.tok.pad_token_id, self.device))

    def _sampling_model(self, model):
        """What the rollouts are drawn from: the policy itself, its adapter applied inside the engine, or a
        merged copy of it (``ppo.sampling``, ``engine.merged``), made once and refreshed from the adapters
        before every rollout."""
        if not self.sampling:
            merged, why = sampling_choice(self.p.sampling, model, self.device, self.cfg.rollouts.backend)
            self.sampling = "merged" if merged else "adapters"
            self.sampling_why = why
            if merged:
                from ..engine.merged import MergedCopy

                self._merged = MergedCopy(model)  # refreshed as it is made
                return self._merged.model
        if self._merged is None:
            return model
        self._merged.refresh()
        return self._merged.model

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
        # train mode switches gradient checkpointing on; LoRA dropout is removed (drop_adapter_dropout) and
        # Llama has none, so the numbers are those of eval mode
        self.pv.model.train()
        for _ in range(p.ppo_epochs):
            perm = torch.randperm(n, generator=g)
            for s in range(0, n, p.minibatch_size):
                idx = perm[s:s + p.minibatch_size].to(self.device)
                ids, att, m, width = minibatch(b, idx)
                cut = lambda x: x[idx][:, :width - 1]  # noqa: E731 - the minibatch's rows and columns
                shared = p.advantage == "gae" and self.pv.shared_critic  # one forward, one backward for both
                logp, ent, v = self.pv.forward_roles(POLICY, ids, att, with_entropy=True, mask=m,
                                                     temperature=self.p.temperature, with_values=shared,
                                                     right_padded=True)
                old_logp = cut(old["logp"])
                pl, clipfrac = policy_loss(logp, old_logp, cut(adv), m, p.clip_range)
                loss = pl - p.ent_coef * masked_mean(ent, m)
                if p.advantage == "group" and p.kl_coef > 0:
                    loss = loss + p.kl_coef * masked_mean(kl_k3(logp, cut(old["ref"])), m)
                if shared:
                    vl = value_loss(v, cut(old["values"]), cut(ret), m, p.value_clip)
                    loss = loss + p.value_coef * vl
                    self.opt_v.zero_grad(set_to_none=True)
                    agg["value_loss"].append(vl.detach())
                self.opt_pi.zero_grad(set_to_none=True)
                loss.backward()
                self._step(self.opt_pi, self.sched_pi, self.policy_params)
                if shared:
                    self._step(self.opt_v, self.sched_v, self.value_params)
                with torch.no_grad():
                    agg["policy_loss"].append(pl.detach())
                    agg["clipfrac"].append(clipfrac.detach())
                    agg["entropy"].append(masked_mean(ent, m))
                    agg["approx_kl"].append(masked_mean(0.5 * (logp - old_logp) ** 2, m))
                if p.advantage == "gae" and not shared:
                    with self.pv.use(VALUE):  # backward inside: checkpointing re-runs the value forward
                        v = self.pv.values(ids, att, right_padded=True)
                        vl = value_loss(v, cut(old["values"]), cut(ret), m, p.value_clip)
                        self.opt_v.zero_grad(set_to_none=True)
                        vl.backward()
                    self._step(self.opt_v, self.sched_v, self.value_params)
                    agg["value_loss"].append(vl.detach())
        self.pv.model.eval()
        out = {k: float(torch.stack(v).float().mean()) if v else 0.0 for k, v in agg.items()}
        out["explained_variance"] = explained_variance(old["values"], ret, b.mask) if p.advantage == "gae" else float("nan")
        return out
