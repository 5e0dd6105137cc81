"""Compiled decoder layers for training on a GPU (``sft.compile``, ``ppo.compile``).

A training step of the `demo` model (a 24 M-parameter Llama, 512 wide, 128
sequences) spends most of its GPU time in elementwise kernels -- RMSNorm,
rotary, SiLU, autocast's casts -- each a pass over the activations, and a
sixth in matrix products. ``torch.compile`` fuses those passes. It is applied
to each decoder layer's ``forward`` (the "regional" compilation PyTorch
recommends for repeated blocks: the layers share their compiled graphs, so
it compiles in seconds, where compiling the whole model took three minutes
for the same step time), with dynamic shapes, so new batch sizes and lengths
need not compile again. ``torch.compile`` itself is the library here; this
module only decides where it runs and keeps the compiled forwards to the
training forwards: ``CompiledLayers.active()`` swaps them in and takes them
out again, so generation (HF ``generate`` with its KV cache, the rollout
engine) never runs through them.

Measured on one H200 (docs/benchmarks.md): a hand-written `demo` SFT step
takes 30 ms with compiled layers against 54 ms eager, a PPO minibatch 40
against 73 ms (``bench/train_step_floor.py``); 02's whole `demo` SFT ran at
53 ms a step. 02 compiles by default (``sft.compile="auto"``); 05 does not
(``ppo.compile="off"``): there the compiler took about two minutes of the
first iterations, more than it saved in a `demo` run.

``compile_choice`` says where ``auto`` compiles: on a GPU, with activations
kept (gradient checkpointing re-runs each layer inside the backward pass: not
measured compiled) and a base that is not 4-bit (bitsandbytes' layers: not
measured compiled). That is `demo`; `full` trains with recompute and keeps
the eager layers.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterable

import torch
from torch import nn

__all__ = ["CompiledLayers", "compile_choice", "decoder_layers", "SETTINGS"]

SETTINGS = ("auto", "on", "off")


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The decoder layers of a causal LM, a PEFT model around one, or a bare decoder."""
    if hasattr(model, "get_base_model"):  # PEFT
        model = model.get_base_model()
    body = model.get_decoder() if hasattr(model, "get_decoder") else model
    layers = getattr(body, "layers", None)
    if not isinstance(layers, nn.ModuleList) or not len(layers):
        raise ValueError(f"{type(model).__name__} has no decoder layers to compile (no .layers list); "
                         "use compile='off'")
    return list(layers)


def compile_choice(setting: str, key: str, device: torch.device, *, checkpointing: bool,
                   quantized: bool) -> tuple[bool, str]:
    """(compile the decoder layers?, why) for ``key`` (``sft.compile`` or ``ppo.compile``) set to ``setting``.

    >>> compile_choice("auto", "ppo.compile", torch.device("cpu"), checkpointing=False, quantized=False)
    (False, 'on the CPU: compiled layers are for the GPU (ppo.compile=on forces them)')
    >>> compile_choice("auto", "ppo.compile", torch.device("cuda"), checkpointing=False, quantized=False)
    (True, 'decoder layers compiled (auto: a GPU, activations kept, a full-precision or bf16 base)')
    """
    if setting not in SETTINGS:
        raise ValueError(f"{key}={setting!r}: use 'auto', 'on' (compile the decoder layers) or 'off'")
    if setting == "off":
        return False, f"{key}='off'"
    if setting == "on":
        return True, f"{key}='on'"
    if device.type != "cuda":
        return False, f"on the {device.type.upper()}: compiled layers are for the GPU ({key}=on forces them)"
    if checkpointing:
        return False, f"activations are recomputed (gradient checkpointing): not measured compiled ({key}=on forces it)"
    if quantized:
        return False, f"a 4-bit base: not measured compiled ({key}=on forces it)"
    return True, "decoder layers compiled (auto: a GPU, activations kept, a full-precision or bf16 base)"


class CompiledLayers:
    """Each layer's ``forward`` compiled once (``torch.compile``, dynamic shapes); ``active()`` runs the layers
    through them. The compiled code is made on first use, inside ``active()``; the modules, their parameters
    and their state dicts stay the model's own (nothing is wrapped)."""

    def __init__(self, layers: Iterable[nn.Module], backend: str = "inductor", **options: Any) -> None:
        import torch._dynamo

        self.layers = list(layers)
        # one graph per setting a layer meets (adapter, gradients on or off, autocast): more than the default 8
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        self.forwards = [torch.compile(layer.forward, dynamic=True, backend=backend, **options)
                         for layer in self.layers]
        self._depth = 0

    @contextlib.contextmanager
    def active(self):
        """The compiled forwards in place of the layers' own (re-entrant); the layers' own again on exit."""
        if self._depth == 0:
            for layer, fn in zip(self.layers, self.forwards):
                layer.forward = fn  # an instance attribute: nn.Module.__call__ runs it
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0:
                for layer in self.layers:
                    layer.__dict__.pop("forward", None)
