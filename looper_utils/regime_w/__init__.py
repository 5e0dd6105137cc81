"""Regime W: measure each completion, weigh the signals into one reward, and pick where rollouts go.

- ``scoring``: a frozen ``Score`` per completion (answer, correctness, format,
  calculator steps, truncation, repetition, guard flags);
- ``calc``: the calculator steps of a text, found and recomputed by ``safe_eval``;
- ``reward``: ``reward = sum_k W_k * component_k`` with W from the config, and the hacking guards;
- ``arms``: slices of the training problems; ``bandits``: the bandits that choose among them.
"""
from .arms import Arm, arm_of, arms_from_pass_rate, build_arms, difficulty_arms
from .bandits import Bandit, best_arms, learning_signal, make_bandit, simulate, simulation_summary
from .calc import audit_calculations, calc_steps
from .reward import COMPONENTS, GUARDS, components, components_table, guards, reward, reward_fn
from .safe_eval import UnsafeExpression, safe_eval, try_eval
from .scoring import Score, score, score_table

__all__ = [
    "Score", "score", "score_table", "calc_steps", "audit_calculations",
    "components", "reward", "reward_fn", "guards", "components_table", "COMPONENTS", "GUARDS",
    "Arm", "difficulty_arms", "arms_from_pass_rate", "build_arms", "arm_of", "make_bandit", "Bandit", "learning_signal",
    "simulate", "simulation_summary", "best_arms",
    "safe_eval", "try_eval", "UnsafeExpression",
]
