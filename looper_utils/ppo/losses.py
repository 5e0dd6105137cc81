"""The arithmetic of PPO, as pure tensor functions: advantages, KL, losses.

Kept apart from the training loop so each piece is tested against a plain
reference on small tensors. Shapes: ``[B, T]`` over completion tokens, with a
0/1 ``mask`` marking real (not padding) positions; sequences are
right-padded, so a sequence's last real token is its last action.
"""
from __future__ import annotations

import torch

__all__ = ["masked_mean", "masked_whiten", "kl_k1", "kl_k3", "gae", "group_advantages", "policy_loss",
           "value_loss", "explained_variance", "entropy_from_logits", "token_rewards", "ppo_diagnostics"]


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over positions where ``mask`` is 1.

    >>> masked_mean(torch.tensor([[1., 2., 9.]]), torch.tensor([[1., 1., 0.]])).item()
    1.5
    """
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp_min(1.0)
    return (x * mask).sum(dim) / mask.sum(dim).clamp_min(1.0)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over masked positions; padding stays 0."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + eps) * mask


def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token ``log p - log p_ref`` (unbiased, can be negative per token).

    >>> kl_k1(torch.tensor([-1.0]), torch.tensor([-1.5])).item()
    0.5
    """
    return logp - ref_logp


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token ``exp(r) - r - 1`` with ``r = log p_ref - log p``: unbiased and never negative.

    >>> round(kl_k3(torch.tensor([-1.0]), torch.tensor([-1.0])).item(), 6)
    0.0
    """
    r = ref_logp - logp
    return torch.exp(r) - r - 1.0


def token_rewards(scores: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor,
                  kl_coef: float) -> torch.Tensor:
    """Per-token rewards: ``-kl_coef * k1`` at every token, the sequence reward added at the last one."""
    rewards = -kl_coef * kl_k1(logp, ref_logp) * mask
    last = (mask.sum(1).long() - 1).clamp_min(0)
    rewards[torch.arange(len(scores)), last] += scores.to(rewards.dtype)
    return rewards


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over right-padded sequences; returns (advantages, returns).

    The value after a sequence's last token is 0 (the episode ends there).
    """
    B, T = rewards.shape
    mask = mask.to(rewards.dtype)
    adv = torch.zeros_like(rewards)
    last = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    next_value = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(T)):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = delta + gamma * lam * last
        last = last * m  # padding carries nothing back
        adv[:, t] = last
        next_value = values[:, t] * m
    returns = adv + values * mask
    return adv, returns


def group_advantages(scores: torch.Tensor, group_ids: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """GRPO-style: (reward - mean of its prompt's group) / (group std + eps), one value per sequence.

    >>> group_advantages(torch.tensor([1., 0., 2., 2.]), torch.tensor([0, 0, 1, 1])).tolist()
    [0.7071..., -0.7071..., 0.0, 0.0]
    """
    out = torch.zeros_like(scores)
    for g in group_ids.unique():
        sel = group_ids == g
        s = scores[sel]
        std = s.std(unbiased=True) if s.numel() > 1 else torch.zeros((), dtype=s.dtype)
        out[sel] = (s - s.mean()) / (std + eps)
    return out


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor,
                clip_range: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped surrogate loss (to minimise) and the clip fraction."""
    ratio = torch.exp(logp - old_logp)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clipfrac = masked_mean((clipped > unclipped).to(logp.dtype), mask)
    return loss, clipfrac


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip_range: float) -> torch.Tensor:
    """Clipped value loss: 0.5 * max((V - R)^2, (V_clipped - R)^2)."""
    v_clipped = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    return 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (v_clipped - returns) ** 2), mask)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(R - V) / Var(R) over masked positions (1 is perfect, <= 0 is no better than a constant)."""
    m = mask.bool()
    r, v = returns[m].double(), values[m].double()
    var = r.var(unbiased=False)
    return float("nan") if var.item() == 0 else float(1.0 - (r - v).var(unbiased=False) / var)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Per-position entropy of the softmax distribution."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def ppo_diagnostics(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor, adv: torch.Tensor,
                    mask: torch.Tensor, clip_range: float, values: torch.Tensor | None = None,
                    old_values: torch.Tensor | None = None, returns: torch.Tensor | None = None,
                    value_clip: float = 0.2) -> dict[str, float]:
    """What one PPO step would look at on a batch, as plain numbers, without stepping anything.

    - ``ratio``: pi(token) / pi_old(token) per completion token (mean, min, max): 1 everywhere before
      the first update of an iteration, since the samples came from pi_old;
    - ``objective`` (unclipped, ``mean(A * ratio)``) and ``clipped_objective`` (PPO's
      ``mean(min(A * ratio, A * clip(ratio)))``, minus the policy loss) and ``clipfrac``, the share of
      tokens where the clip is what counts;
    - ``kl_k1`` and ``kl_k3``: per-token KL to the reference (k1 enters GAE's rewards, k3 the group loss);
    - ``value_loss``: the clipped value loss, when values, old values and returns are given.

    >>> lp = torch.log(torch.tensor([[0.5, 0.5, 0.25]]))
    >>> d = ppo_diagnostics(lp, lp, lp, torch.tensor([[1.0, 1.0, 0.0]]), torch.tensor([[1.0, 1.0, 0.0]]), 0.2)
    >>> d["ratio_mean"], d["clipfrac"], d["clipped_objective"], d["kl_k3"]
    (1.0, 0.0, 1.0, 0.0)
    """
    with torch.no_grad():
        m = mask.bool()
        ratio = torch.exp(logp - old_logp)
        loss, clipfrac = policy_loss(logp, old_logp, adv, mask, clip_range)
        out = {
            "ratio_mean": masked_mean(ratio, mask), "ratio_min": ratio[m].min() if m.any() else torch.tensor(1.0),
            "ratio_max": ratio[m].max() if m.any() else torch.tensor(1.0),
            "objective": masked_mean(adv * ratio, mask), "clipped_objective": -loss, "clipfrac": clipfrac,
            "kl_k1": masked_mean(kl_k1(logp, ref_logp), mask), "kl_k3": masked_mean(kl_k3(logp, ref_logp), mask),
        }
        if values is not None and old_values is not None and returns is not None:
            out["value_loss"] = value_loss(values, old_values, returns, mask, value_clip)
    return {k: float(v) for k, v in out.items()}
