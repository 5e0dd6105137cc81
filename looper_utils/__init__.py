"""looper_utils: the logic behind the six notebooks (data, SFT, rollouts, Regime W, PPO, evaluation).

Importing the package quiets, in this one place, the deprecation notices that the libraries raise
about each other's old names (peft reads transformers' ``is_gradient_checkpointing``; TRL and peft
call ``gradient_checkpointing_enable``): nothing a user of this project can act on, and they filled
every executed notebook. The project's own calls use the new names.
"""
import warnings as _warnings

for _message in (r"`is_gradient_checkpointing` is deprecated", r"`gradient_checkpointing_enable` is deprecated"):
    _warnings.filterwarnings("ignore", message=_message, category=FutureWarning)
