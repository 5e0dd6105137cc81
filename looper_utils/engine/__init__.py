"""The rollout engine: batched sampling for Llama-like decoders, fast on a GPU, exact on CPU.

- ``sampler``: the loop, the KV cache, CUDA graphs over the decode step, the sampling policy (``Engine``);
- ``kernels``: attention (Triton split-K decode, or GQA-packed SDPA), fused decode ops and samplers.

``generation.generate(..., backend="engine")`` is how the stages use it; notes in docs/engine_notes.md.
"""
from .sampler import Engine, EngineOutput, sample, supports

__all__ = ["Engine", "EngineOutput", "sample", "supports"]
