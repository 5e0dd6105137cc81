"""Stage 05: PPO with the Regime W reward, one module per concern.

- ``trainer``: the loop (``PPOTrainer``: sample, score, advantages, update, update_bandit), checkpoints,
  resume, several processes through accelerate, and the command line (``python -m looper_utils.ppo``);
- ``model``: one base model in memory, three roles (policy and value adapters, the SFT reference);
- ``losses``: the arithmetic of PPO as pure tensor functions (GAE, group advantages, KL, clipped losses);
- ``steps``: what the steps hand each other, the learning-rate schedule, and the tables 05 shows;
- ``resume``: whether a saved state belongs to the run being started, and the state on disk.

What a notebook or another stage needs is importable from here (``from looper_utils import ppo``).
"""
from .losses import ppo_diagnostics
from .model import POLICY, REF, VALUE, PolicyValue, load_ppo_policy, save_policy_adapter
from .resume import StateError, load_state, resume_signature, save_state
from .steps import Advantages, Rollout, Scored, lr_factor, optimizer_steps, samples_table, sequence_table
from .trainer import LOG_NAME, Batch, Distributed, PPOTrainer, main, make_batch, minibatch, ppo_dir

__all__ = ["PPOTrainer", "Batch", "Distributed", "make_batch", "minibatch", "ppo_dir", "main", "LOG_NAME",
           "Rollout", "Scored", "Advantages", "lr_factor", "optimizer_steps", "samples_table", "sequence_table",
           "POLICY", "REF", "VALUE", "PolicyValue", "load_ppo_policy", "save_policy_adapter", "ppo_diagnostics",
           "StateError", "load_state", "save_state", "resume_signature"]
