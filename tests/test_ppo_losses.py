import math

import pytest
import torch

from looper_utils.ppo import losses as L


def _gae_reference(rewards, values, gamma, lam):
    """Plain Python loop over one unpadded sequence."""
    T = len(rewards)
    adv, last = [0.0] * T, 0.0
    for t in reversed(range(T)):
        nv = values[t + 1] if t + 1 < T else 0.0
        delta = rewards[t] + gamma * nv - values[t]
        last = delta + gamma * lam * last
        adv[t] = last
    return adv, [a + v for a, v in zip(adv, values)]


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 1.0), (0.99, 0.0)])
def test_gae_matches_plain_loop_on_random_padded_batch(gamma, lam):
    g = torch.Generator().manual_seed(0)
    B, T = 5, 9
    rewards, values = torch.randn(B, T, generator=g), torch.randn(B, T, generator=g)
    lengths = [9, 1, 4, 7, 2]
    mask = torch.zeros(B, T)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    adv, ret = L.gae(rewards * mask, values * mask, mask, gamma, lam)
    for i, n in enumerate(lengths):
        ra, rr = _gae_reference(rewards[i, :n].tolist(), values[i, :n].tolist(), gamma, lam)
        assert adv[i, :n].tolist() == pytest.approx(ra, abs=1e-5)
        assert ret[i, :n].tolist() == pytest.approx(rr, abs=1e-5)
        assert adv[i, n:].abs().sum() == 0


def test_token_rewards_put_score_on_last_token_and_kl_everywhere():
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, 0.0]])
    ref = torch.tensor([[-1.5, -2.0, -2.0], [-1.0, -2.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    r = L.token_rewards(torch.tensor([1.0, 0.5]), logp, ref, mask, kl_coef=0.1)
    assert torch.allclose(r, torch.tensor([[-0.05, 0.0, 1.0 + 0.1], [0.0, -0.1 + 0.5, 0.0]]))


def test_clipped_policy_loss_hand_computed():
    old = torch.zeros(1, 3)
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))  # ratios 1.5, 0.5, 1.1
    adv = torch.tensor([[1.0, -1.0, 2.0]])
    loss, clipfrac = L.policy_loss(logp, old, adv, torch.ones(1, 3), clip_range=0.2)
    # token 0: max(-1.5, -1.2) = -1.2 (clipped); token 1: max(0.5, 0.8) = 0.8 (clipped); token 2: -2.2
    assert loss.item() == pytest.approx((-1.2 + 0.8 - 2.2) / 3, abs=1e-6)
    assert clipfrac.item() == pytest.approx(2 / 3)


def test_clipped_value_loss_hand_computed():
    v, old, ret = torch.tensor([[2.0, 0.0]]), torch.tensor([[1.0, 0.0]]), torch.tensor([[3.0, 1.0]])
    loss = L.value_loss(v, old, ret, torch.ones(1, 2), clip_range=0.5)
    # token 0: max((2-3)^2, (1.5-3)^2) = 2.25; token 1: max(1, 1) = 1
    assert loss.item() == pytest.approx(0.5 * (2.25 + 1.0) / 2)


def test_kl_estimators_against_exact_kl():
    g = torch.Generator().manual_seed(1)
    p_logits, q_logits = torch.randn(6, generator=g), torch.randn(6, generator=g)
    logp, logq = torch.log_softmax(p_logits, 0), torch.log_softmax(q_logits, 0)
    exact = (logp.exp() * (logp - logq)).sum().item()
    # expectation under p of each estimator equals KL(p || q)
    k1 = (logp.exp() * L.kl_k1(logp, logq)).sum().item()
    k3 = (logp.exp() * L.kl_k3(logp, logq)).sum().item()
    assert k1 == pytest.approx(exact, rel=1e-5) and k3 == pytest.approx(exact, rel=1e-5)
    assert (L.kl_k3(logp, logq) >= 0).all()


def test_group_advantages_normalise_per_prompt():
    scores = torch.tensor([1.0, 0.0, 0.0, 0.0, 5.0, 5.0, 5.0, 5.0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    adv = L.group_advantages(scores, groups)
    assert adv[:4].mean().item() == pytest.approx(0.0, abs=1e-6)
    assert adv[:4].std().item() == pytest.approx(1.0, abs=1e-4)
    assert adv[4:].abs().max().item() == 0.0  # an all-equal group carries no signal


def test_explained_variance_and_whiten():
    ret = torch.tensor([[1.0, 2.0, 3.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert L.explained_variance(ret, ret, mask) == pytest.approx(1.0)
    assert L.explained_variance(torch.full_like(ret, 2.0), ret, mask) == pytest.approx(0.0)
    w = L.masked_whiten(ret, mask)
    assert w[0, 3].item() == 0.0 and L.masked_mean(w, mask).item() == pytest.approx(0.0, abs=1e-6)


def test_entropy_of_uniform_is_log_n():
    assert L.entropy_from_logits(torch.zeros(2, 8)).tolist() == pytest.approx([math.log(8)] * 2)


def test_ppo_diagnostics_match_the_losses_without_stepping():
    from looper_utils.ppo.losses import kl_k3, masked_mean, policy_loss, ppo_diagnostics, value_loss

    torch.manual_seed(0)
    old = torch.log_softmax(torch.randn(3, 5, 7), -1)[..., 0]
    logp = old + 0.3 * torch.randn(3, 5)
    ref = old + 0.1 * torch.randn(3, 5)
    adv = torch.randn(3, 5)
    mask = torch.tensor([[1., 1., 1., 0., 0.], [1., 1., 1., 1., 1.], [1., 0., 0., 0., 0.]])
    v, v_old, ret = torch.randn(3, 5), torch.randn(3, 5), torch.randn(3, 5)
    logp.requires_grad_(True)
    d = ppo_diagnostics(logp, old, ref, adv, mask, 0.2, v, v_old, ret, 0.2)
    assert logp.grad is None  # nothing to step
    loss, clipfrac = policy_loss(logp, old, adv, mask, 0.2)
    ratio = torch.exp(logp - old)[mask.bool()]
    assert d["clipped_objective"] == pytest.approx(-loss.item()) and d["clipfrac"] == pytest.approx(clipfrac.item())
    assert d["ratio_min"] == pytest.approx(ratio.min().item()) and d["ratio_max"] == pytest.approx(ratio.max().item())
    assert d["clipped_objective"] <= d["objective"] + 1e-6  # PPO's objective is a pessimistic bound
    assert d["kl_k3"] == pytest.approx(masked_mean(kl_k3(logp, ref), mask).item()) and d["kl_k3"] >= 0
    assert d["kl_k1"] == pytest.approx(masked_mean(logp - ref, mask).item())
    assert d["value_loss"] == pytest.approx(value_loss(v, v_old, ret, mask, 0.2).item())
    same = ppo_diagnostics(old, old, old, adv, mask, 0.2)
    assert same["ratio_mean"] == same["ratio_min"] == same["ratio_max"] == 1.0 and same["clipfrac"] == 0.0
    assert same["objective"] == pytest.approx(masked_mean(adv, mask).item()) and "value_loss" not in same
