"""The rollout engine: batched sampling for Llama-like decoders, fast on a GPU, exact on CPU.

- ``sampler``: the loop, the KV cache, CUDA graphs over the decode step, the sampling policy (``Engine``);
- ``forward``: the model's prefill and decode step over that cache, eager or fused (``Engine``'s forward pass);
- ``model_parts``: what the engine reads off a model, and whether it can run it (``supports``);
- ``kernels``: attention (Triton split-K decode, or GQA-packed SDPA), fused decode ops and samplers;
- ``merged``: a copy of a LoRA model with its adapters merged into plain weights, to sample from
  (PPO's rollouts: ``ppo.sampling``).

``generation.generate(..., backend="engine")`` is how the stages use it; notes in docs/engine_notes.md.
"""
from .model_parts import supports
from .sampler import Engine, EngineOutput, sample

__all__ = ["Engine", "EngineOutput", "sample", "supports"]
