"""What the steps of one PPO iteration hand to each other, the learning-rate schedule, and 05's tables.

``PPOTrainer.iterate`` is ``sample`` -> ``Rollout``, ``score`` -> ``Scored``,
``advantages`` -> ``Advantages``, ``update``, ``update_bandit``; 05 calls the
steps one at a time and shows these objects with ``samples_table`` and
``sequence_table``. A ``Rollout`` carries its sequences as one padded ``Batch``
(``make_batch``), which the forwards and the update read in ``minibatch`` slices.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..config import Config

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Batch", "make_batch", "minibatch", "Rollout", "Scored", "Advantages", "optimizer_steps", "lr_factor",
           "samples_table", "sequence_table"]


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


@dataclass
class Rollout:
    """What ``PPOTrainer.sample`` drew for one iteration: the prompts, their arms, the samples, the batch."""

    iteration: int
    rows: list[dict]  # the problems, one per prompt
    arm_ids: list[int]  # the bandit's arm of each prompt
    result: Any  # generation.GenerationResult: k samples per prompt, in prompt order
    batch: Batch

    @property
    def samples(self) -> list[Any]:
        return self.result.samples


@dataclass
class Scored:
    """What ``PPOTrainer.score`` measured: one Regime W score, reward and components per sample."""

    scores: list[Any]  # regime_w.Score
    rewards: torch.Tensor  # [B] float32
    components: list[dict[str, float]]
    correct: list[bool]
    styles: list[str]  # data.completion_style of each sample


@dataclass
class Advantages:
    """What ``PPOTrainer.advantages`` computed: the forward pass of the batch and the advantages from it."""

    kind: str  # "gae" | "group"
    old: dict[str, torch.Tensor]  # "logp" (sampling policy), "ref" (reference), "values" (gae only): [B, L-1]
    adv: torch.Tensor  # [B, L-1], 0 on padding
    ret: torch.Tensor  # [B, L-1] value targets (gae); zeros (group: no critic)
    kl_tok: torch.Tensor  # [B, L-1] per-token k1 KL to the reference, 0 on padding
    token_rewards: torch.Tensor | None  # [B, L-1] KL penalty + final reward (gae), None for group


def optimizer_steps(cfg: Config, world: int = 1) -> int:
    """Policy optimiser steps of a whole run: iterations x ppo_epochs x minibatches per iteration.

    >>> from looper_utils import config
    >>> optimizer_steps(config.build("smoke", stage="ppo", iterations=3, prompts_per_iter=4, k=2, minibatch_size=3,
    ...                              ppo_epochs=2))
    18
    """
    p = cfg.ppo
    sequences = max(1, p.prompts_per_iter // world) * p.k  # what _pick_prompts draws, k samples each
    return max(1, p.iterations) * p.ppo_epochs * math.ceil(sequences / p.minibatch_size)


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """The policy learning rate's multiplier at optimiser step ``step`` (0-based) of ``total``.

    Warm-up: ``(step + 1) / warmup`` over the first ``warmup`` steps. Then ``constant`` stays at 1;
    ``linear`` falls from 1 to 0, reaching 0 after the last step (the transformers convention).

    >>> [lr_factor(s, 4, 0, "linear") for s in range(5)]
    [1.0, 0.75, 0.5, 0.25, 0.0]
    >>> [lr_factor(s, 4, 2, "constant") for s in range(4)]
    [0.5, 1.0, 1.0, 1.0]
    """
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    if schedule == "linear":
        return max(0.0, (total - step) / max(1, total - warmup))
    raise ValueError(f"ppo.lr_schedule must be 'constant' or 'linear', got {schedule!r}")


def samples_table(rollout: Rollout, scored: Scored) -> pd.DataFrame:
    """One row per sample: prompt, completion, reward, each component, correct, format, style."""
    import pandas as pd

    return pd.DataFrame([{"prompt": s.prompt_index, "sample": s.sample_idx, "gold": rollout.rows[s.prompt_index]["gold"],
                          "completion": s.text, "reward": float(r), **{f"c_{k}": v for k, v in c.items()},
                          "correct": sc.correct, "format_ok": sc.format_ok, "finish": s.finish_reason, "style": st}
                         for s, r, c, sc, st in zip(rollout.samples, scored.rewards.tolist(), scored.components,
                                                    scored.scores, scored.styles)])


def sequence_table(tokenizer, rollout: Rollout, advantages: dict[str, Advantages], i: int) -> pd.DataFrame:
    """Token by token for sample ``i``: the token, log-probs, KL, value, token reward, each advantage."""
    import pandas as pd

    m = rollout.batch.mask[i].bool()
    ids = rollout.batch.input_ids[i, 1:][m].tolist()
    first = next(iter(advantages.values()))
    out = {"token": tokenizer.convert_ids_to_tokens(ids),
           "logp": first.old["logp"][i][m].tolist(), "ref_logp": first.old["ref"][i][m].tolist(),
           "kl_k1": first.kl_tok[i][m].tolist()}
    if "values" in first.old:  # the critic's, computed for gae
        out["value"] = first.old["values"][i][m].tolist()
    for name, a in advantages.items():
        if a.token_rewards is not None:
            out[f"token_reward ({name})"] = a.token_rewards[i][m].tolist()
        out[f"advantage ({name})"] = a.adv[i][m].tolist()
    return pd.DataFrame(out)
