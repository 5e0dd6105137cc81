"""The check that sampled tokens follow a target distribution, shared by the engine's sampling tests."""
from __future__ import annotations

import torch


def assert_draws_follow(counts: torch.Tensor, target: torch.Tensor, n: int) -> None:
    """``counts`` of ``n`` draws follow ``target`` (probabilities): tokens of probability 0 never drawn,
    and a chi-square test with rare tokens pooled so every cell expects >= 20 draws."""
    assert counts[target == 0].sum() == 0
    common = target * n >= 20
    obs = torch.cat([counts[common], counts[~common].sum()[None]])
    exp = torch.cat([target[common] * n, (target[~common] * n).sum()[None]])
    chi2 = float(((obs - exp) ** 2 / exp.clamp_min(1e-9)).sum())
    dof = int(common.sum())
    assert dof >= 5
    assert chi2 < dof + 6 * dof ** 0.5 + 10, (chi2, dof)
