"""Stage 05: PPO with the Regime W reward, one module per concern.

- ``trainer``: the run (``PPOTrainer.train``): iterations, dev eval, checkpoints, resume, and the command
  line (``python -m looper_utils.ppo``);
- ``iteration``: one iteration and its steps (``PPOIteration``: sample, score, advantages, update,
  update_bandit), which ``PPOTrainer`` inherits;
- ``distributed``: several processes through accelerate (ranks, gradient and metric averaging, trackers);
- ``model``: one base model in memory, three roles (policy and value adapters, the SFT reference);
- ``losses``: the arithmetic of PPO as pure tensor functions (GAE, group advantages, KL, clipped losses);
- ``steps``: what the steps hand each other (the padded batch among them), the learning-rate schedule, and
  the tables 05 shows;
- ``resume``: whether a saved state belongs to the run being started, and the state on disk;
- ``trl_grpo``: the same stage trained by TRL's ``GRPOTrainer`` instead (``ppo.trainer="trl-grpo"``), for comparison.

What a notebook or another stage needs is importable from here (``from looper_utils import ppo``).
"""
from .distributed import Distributed
from .iteration import PPOIteration
from .losses import ppo_diagnostics
from .model import POLICY, REF, VALUE, PolicyValue, load_ppo_policy, save_policy_adapter
from .resume import StateError, load_state, resume_signature, save_state
from .steps import (Advantages, Batch, Rollout, Scored, lr_factor, make_batch, minibatch, optimizer_steps,
                    samples_table, sequence_table)
from .trainer import LOG_NAME, PPOTrainer, main, ppo_dir
from .trl_grpo import grpo_batch, train_trl_grpo

__all__ = ["PPOTrainer", "PPOIteration", "Batch", "Distributed", "make_batch", "minibatch", "ppo_dir", "main",
           "LOG_NAME", "Rollout", "Scored", "Advantages", "lr_factor", "optimizer_steps", "samples_table",
           "sequence_table", "POLICY", "REF", "VALUE", "PolicyValue", "load_ppo_policy", "save_policy_adapter",
           "ppo_diagnostics", "StateError", "load_state", "save_state", "resume_signature", "train_trl_grpo",
           "grpo_batch"]
