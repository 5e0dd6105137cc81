"""Bandits: which arm (``regime_w.arms``) each PPO prompt comes from.

A bandit picks the arm of every prompt in a batch. Its payoff for an arm is
the *learning signal* of that arm's latest rollouts, ``p(1 - p)`` of their
pass rate: the variance of a 0/1 reward, which is what a policy-gradient
step can learn from. Problems that are always solved (p = 1) or never
solved (p = 0) give no gradient, so the bandit stops spending rollouts on
them and moves towards the arms where the policy is about half right.

Four bandits share one interface (``select``, ``update``, ``state_dict``,
``load_state_dict``): Thompson sampling (default), UCB1, EXP3 and uniform.
They are a few lines each on numpy; bandit libraries (e.g. MABWiser,
SMPyBandits) do not offer batched selection with JSON-exact state that a
checkpoint can restore, which a resumable PPO run needs.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

__all__ = ["learning_signal", "Bandit", "ThompsonBandit", "UCB1Bandit", "EXP3Bandit", "UniformBandit", "make_bandit",
           "simulate", "best_arms", "simulation_summary", "MAX_PAYOFF"]

MAX_PAYOFF = 0.25  # p(1 - p) peaks at p = 0.5


def learning_signal(correct_flags: Iterable[Any]) -> float:
    """``p(1 - p)`` of the pass rate of some rollouts: 0 when all or none are right, 0.25 at half.

    >>> learning_signal([1, 0, 1, 0]), learning_signal([True] * 8), learning_signal([])
    (0.25, 0.0, 0.0)
    """
    flags = np.asarray(list(correct_flags), dtype=float)
    if flags.size == 0:
        return 0.0
    p = float(flags.mean())
    return p * (1.0 - p)


# ---- bandits -----------------------------------------------------------------

class Bandit:
    """Shared bookkeeping: how often each arm was picked and what it paid.

    ``select(n, rng)`` returns the arm of each of ``n`` prompts;
    ``update(arm, payoff)`` feeds back one payoff in [0, 0.25] (scaled to
    [0, 1] inside). Without an ``rng`` the bandit's own generator is used,
    and its state is part of ``state_dict`` so a resumed run picks the same
    arms as an uninterrupted one.
    """

    algorithm = "base"
    _arrays: tuple[str, ...] = ("pulls", "updates", "payoff_sum")
    _params: tuple[str, ...] = ()

    def __init__(self, n_arms: int, seed: int = 0) -> None:
        if n_arms < 1:
            raise ValueError(f"a bandit needs at least one arm, got {n_arms}")
        self.n_arms = int(n_arms)
        self.rng = np.random.default_rng(seed)
        self.pulls = np.zeros(n_arms, dtype=np.int64)  # prompts allocated to the arm
        self.updates = np.zeros(n_arms, dtype=np.int64)  # payoffs received
        self.payoff_sum = np.zeros(n_arms)

    def select(self, n: int, rng: np.random.Generator | None = None) -> list[int]:
        arms = self._select(int(n), rng if rng is not None else self.rng)
        np.add.at(self.pulls, arms, 1)
        return [int(a) for a in arms]

    def update(self, arm: int, payoff: float) -> None:
        if not 0 <= arm < self.n_arms:
            raise IndexError(f"arm {arm} out of range for {self.n_arms} arms")
        x = min(max(float(payoff) / MAX_PAYOFF, 0.0), 1.0)
        self.updates[arm] += 1
        self.payoff_sum[arm] += float(payoff)
        self._update(int(arm), x)

    def mean_payoff(self) -> np.ndarray:
        """Average payoff received per arm (0 where none)."""
        return np.divide(self.payoff_sum, self.updates, out=np.zeros(self.n_arms), where=self.updates > 0)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"algorithm": self.algorithm, "n_arms": self.n_arms,
                                 "rng": self.rng.bit_generator.state}
        state.update({k: getattr(self, k) for k in self._params})
        state.update({k: getattr(self, k).tolist() for k in self._arrays})
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("algorithm") != self.algorithm or state.get("n_arms") != self.n_arms:
            raise ValueError(f"saved bandit is {state.get('algorithm')!r} with {state.get('n_arms')} arms, this one "
                             f"is {self.algorithm!r} with {self.n_arms}; build it with the saved config")
        for k in self._params:
            setattr(self, k, type(getattr(self, k))(state[k]))
        for k in self._arrays:
            old = getattr(self, k)
            setattr(self, k, np.asarray(state[k], dtype=old.dtype))
        self.rng.bit_generator.state = state["rng"]

    def _select(self, n: int, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def _update(self, arm: int, x: float) -> None:
        pass


class ThompsonBandit(Bandit):
    """Thompson sampling with a Beta posterior on the scaled payoff x = payoff / 0.25.

    A payoff x in [0, 1] adds x to alpha and 1 - x to beta (the usual
    fractional Bernoulli update). Each update first shrinks the arm's counts
    towards the Beta(1, 1) prior by the factor ``discount``, so an arm's
    posterior never grows more certain than about 1 / (1 - discount)
    observations: as the policy learns, yesterday's hard arm can become
    today's best one. Each of the ``n`` slots draws its own posterior sample.
    """

    algorithm = "thompson"
    _arrays = Bandit._arrays + ("alpha", "beta")
    _params = ("discount",)

    def __init__(self, n_arms: int, seed: int = 0, discount: float = 0.95) -> None:
        super().__init__(n_arms, seed)
        if not 0.0 < discount <= 1.0:
            raise ValueError(f"thompson discount must be in (0, 1], got {discount}; fix bandit.thompson_discount")
        self.discount = float(discount)
        self.alpha = np.ones(n_arms)
        self.beta = np.ones(n_arms)

    def _select(self, n: int, rng: np.random.Generator) -> np.ndarray:
        draws = rng.beta(self.alpha, self.beta, size=(n, self.n_arms))
        return draws.argmax(axis=1)

    def _update(self, arm: int, x: float) -> None:
        d = self.discount
        self.alpha[arm] = 1.0 + d * (self.alpha[arm] - 1.0) + x
        self.beta[arm] = 1.0 + d * (self.beta[arm] - 1.0) + (1.0 - x)


class UCB1Bandit(Bandit):
    """UCB1 on the scaled payoff; a batch is filled slot by slot, counting each slot as a pull.

    Counting the slots already given in this batch spreads a batch over the
    arms the way sequential UCB1 would, instead of giving it all to one arm.
    """

    algorithm = "ucb1"
    _params = ("c",)

    def __init__(self, n_arms: int, seed: int = 0, c: float = 1.0) -> None:
        super().__init__(n_arms, seed)
        self.c = float(c)

    def _select(self, n: int, rng: np.random.Generator) -> np.ndarray:
        mean = self.mean_payoff() / MAX_PAYOFF
        pulls = self.pulls.astype(float).copy()
        out = np.empty(n, dtype=np.int64)
        for i in range(n):
            untried = np.flatnonzero(pulls == 0)
            if untried.size:
                a = int(untried[0])
            else:
                bonus = self.c * np.sqrt(2.0 * math.log(pulls.sum()) / pulls)
                a = int(np.argmax(mean + bonus))
            out[i] = a
            pulls[a] += 1
        return out


class EXP3Bandit(Bandit):
    """EXP3 (adversarial bandit): exponential weights with ``gamma`` uniform exploration.

    A batch is n draws from the arm probabilities q. An arm drawn c times in
    the last batch and paid x gets the importance-weighted increment of c
    sequential pulls, ``gamma / K * c * x / q``, so a batch teaches EXP3 as
    much as n single pulls would.
    """

    algorithm = "exp3"
    _arrays = Bandit._arrays + ("log_w", "last_counts", "last_q")
    _params = ("gamma",)

    def __init__(self, n_arms: int, seed: int = 0, gamma: float = 0.1) -> None:
        super().__init__(n_arms, seed)
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"exp3 gamma must be in (0, 1], got {gamma}; fix bandit.exp3_gamma")
        self.gamma = float(gamma)
        self.log_w = np.zeros(n_arms)
        self.last_counts = np.zeros(n_arms, dtype=np.int64)  # draws per arm in the last batch
        self.last_q = self.probabilities()  # the probabilities they were drawn with

    def probabilities(self) -> np.ndarray:
        w = np.exp(self.log_w - self.log_w.max())
        return (1.0 - self.gamma) * w / w.sum() + self.gamma / self.n_arms

    def _select(self, n: int, rng: np.random.Generator) -> np.ndarray:
        self.last_q = self.probabilities()
        picks = rng.choice(self.n_arms, size=n, p=self.last_q)
        self.last_counts = np.bincount(picks, minlength=self.n_arms).astype(np.int64)
        return picks

    def _update(self, arm: int, x: float) -> None:
        c = max(int(self.last_counts[arm]), 1)
        self.log_w[arm] += self.gamma / self.n_arms * c * x / float(self.last_q[arm])


class UniformBandit(Bandit):
    """Every arm equally likely: the baseline the others are compared with."""

    algorithm = "uniform"

    def _select(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(0, self.n_arms, size=n)


def make_bandit(cfg: Any, n_arms: int, seed: int = 0) -> Bandit:
    """The bandit ``cfg`` (a ``BanditConfig``) names, for ``n_arms`` arms.

    >>> from looper_utils.config import BanditConfig
    >>> make_bandit(BanditConfig(), n_arms=3, seed=0).algorithm
    'thompson'
    """
    algo = cfg.algorithm
    if algo == "thompson":
        return ThompsonBandit(n_arms, seed, discount=cfg.thompson_discount)
    if algo == "ucb1":
        return UCB1Bandit(n_arms, seed, c=cfg.ucb_c)
    if algo == "exp3":
        return EXP3Bandit(n_arms, seed, gamma=cfg.exp3_gamma)
    if algo == "uniform":
        return UniformBandit(n_arms, seed)
    raise ValueError(f"unknown bandit algorithm {algo!r}; choose thompson, ucb1, exp3 or uniform")


# ---- simulation --------------------------------------------------------------

def simulate(bandit: Bandit, pass_rates: Sequence[float], rounds: int, batch: int,
             rng: np.random.Generator, k: int = 4) -> pd.DataFrame:
    """Run a bandit against arms of known pass rates, as PPO would use it.

    Each round the bandit picks the arm of ``batch`` prompts, each prompt
    gets ``k`` simulated rollouts (right with its arm's pass rate), and every
    arm picked is paid the learning signal of its rollouts of that round.
    Returns one row per (round, arm): ``pulls``, ``share`` of the batch,
    ``observed`` payoff (NaN if not picked), ``expected`` (this arm's part of
    the batch's mean true learning signal) and ``cumulative_payoff`` (the sum
    of the batch means up to this round; the same on every arm's row).

    >>> from looper_utils.config import BanditConfig
    >>> sim = simulate(make_bandit(BanditConfig(), 2, seed=0), [0.5, 1.0], 20, 8, np.random.default_rng(0))
    >>> sim.groupby("arm").pulls.sum().tolist()[0] > 100
    True
    """
    p = np.asarray(pass_rates, dtype=float)
    if p.ndim != 1 or len(p) != bandit.n_arms or np.any((p < 0) | (p > 1)):
        raise ValueError(f"need {bandit.n_arms} pass rates in [0, 1], got {list(pass_rates)}")
    signal = p * (1.0 - p)
    rows, cumulative = [], 0.0
    for r in range(rounds):
        picks = np.asarray(bandit.select(batch, rng), dtype=np.int64)
        counts = np.bincount(picks, minlength=bandit.n_arms)
        observed = np.full(bandit.n_arms, np.nan)
        for a in np.flatnonzero(counts):
            flags = rng.random(counts[a] * k) < p[a]
            observed[a] = learning_signal(flags)
            bandit.update(int(a), observed[a])
        expected = counts * signal / max(batch, 1)
        cumulative += float(expected.sum())
        for a in range(bandit.n_arms):
            rows.append({"round": r, "arm": a, "pulls": int(counts[a]), "share": counts[a] / max(batch, 1),
                         "observed": observed[a], "expected": float(expected[a]), "cumulative_payoff": cumulative})
    return pd.DataFrame(rows)


def best_arms(pass_rates: Sequence[float], tol: float = 0.01) -> list[int]:
    """Arms whose learning signal p(1 - p) is within ``tol`` of the best: those nearest p = 0.5.

    >>> best_arms([0.05, 0.2, 0.45, 0.55, 0.8, 0.95])
    [2, 3]
    """
    s = np.asarray(pass_rates, dtype=float) * (1.0 - np.asarray(pass_rates, dtype=float))
    return [int(i) for i in np.flatnonzero(s >= s.max() - tol)]


def simulation_summary(sim: pd.DataFrame, pass_rates: Sequence[float], tol: float = 0.01) -> dict[str, Any]:
    """Share of all pulls on the best arms, the final cumulative payoff and each arm's share."""
    best = best_arms(pass_rates, tol)
    pulls = sim.groupby("arm")["pulls"].sum()
    total = max(int(pulls.sum()), 1)
    return {
        "best_arms": best,
        "share_on_best_arms": float(pulls.reindex(best, fill_value=0).sum() / total),
        "cumulative_payoff": float(sim["cumulative_payoff"].iloc[-1]) if len(sim) else 0.0,
        "share_per_arm": {int(a): float(v / total) for a, v in pulls.items()},
    }
