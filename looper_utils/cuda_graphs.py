"""A training forward and its backward replayed as CUDA graphs, one recording per input shape (``sft.cuda_graphs``).

`demo`'s SFT step is bound by the host CPU, not the GPU (docs/benchmarks.md, "The step waits on the CPU"):
about 450 kernel launches a step, each queued through Python, and an H200 runs them faster than the host
queues them, so the step time followed the host (25-38 ms on five H200 machines). A CUDA graph records a
sequence of launches once and replays it with one call. ``torch.cuda.make_graphed_callables`` is PyTorch's
tool for a training forward: it records a module's forward and its backward as two graphs and returns an
autograd function that replays them, the parameters' gradients coming out of the backward graph. It is the
library here; this module decides which calls replay and keeps one recording per input shape:

- **Shapes.** A graph replays fixed shapes at fixed addresses: the batch is copied into the recorded input
  tensors, and each (rows, width) has its own recording. 02 pads its batches to a multiple of
  ``WIDTH_MULTIPLE`` tokens where graphs are on (``sft_setup.padding_multiple``), which leaves `demo` 6
  shapes over its 5 epochs, at 2.5 % more padded positions. A shape is recorded the second time it comes
  (a shape seen once, such as an epoch's last short batch, runs eagerly), at most ``max_graphs`` of them;
  other shapes run eagerly.
- **Gradients.** The backward graph writes the gradients into its own tensors, which autograd then hands to
  the parameters' ``.grad`` (TRL empties those after each optimiser step). Added to gradients already there
  (accumulation over several batches) they would be overwritten by the next replay, so a call that finds a
  gradient in place runs eagerly.
- **Memory.** All recordings share one memory pool: only the graphs' inputs, outputs and gradients are kept
  per shape (for `demo` the gradients, 0.1 GB a shape); a step's activations reuse the same memory whatever
  its shape, which is safe because one step's forward and backward run before the next step's.
- **The rest of the step** (clipping, the fused optimiser, the schedule) stays in TRL's loop, a few launches.
- **A recording that fails** (an operation that cannot be recorded, such as a read of a GPU value by the
  host inside a model's forward) turns the graphs off for the rest of the run with a warning; that call
  and the later ones run eagerly.
"""
from __future__ import annotations

import warnings
from collections import Counter
from typing import Any, Callable

import torch
from torch import nn

__all__ = ["GraphedModule", "record", "SETTINGS", "WIDTH_MULTIPLE"]

SETTINGS = ("on", "off")
WIDTH_MULTIPLE = 16  # batches padded to this many tokens: `demo` 6 shapes (4 at 32, 48 unpadded)


def record(module: nn.Module, sample: tuple[torch.Tensor, ...], *, pool, stream: torch.cuda.Stream,
           warmup: int = 3) -> Callable[..., tuple[torch.Tensor, ...]]:
    """``module``'s forward on ``sample`` and its backward to the trainable parameters, recorded as two CUDA graphs
    (``torch.cuda.make_graphed_callables``'s recipe): a function of tensors shaped like ``sample`` that copies them
    into ``sample``, replays the forward and returns its outputs, whose backward replays the second graph.

    Warm-up and recording run on ``stream``, the same for every recording (see the module's docstring).
    """
    params = tuple(p for p in module.parameters() if p.requires_grad)

    def backward_of(outs, grad_outputs):
        wanted = [o for o in outs if o.requires_grad]
        return torch.autograd.grad(wanted, params, grad_outputs=grad_outputs, allow_unused=True)

    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # lazy work (compiling, autotuning, cuBLAS handles) before the recording
        for _ in range(warmup):
            outs = module(*sample)
            backward_of(outs, [torch.zeros_like(o) for o in outs if o.requires_grad])
            del outs
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    fwd, bwd = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
    with torch.cuda.graph(fwd, pool=pool, stream=stream):
        static_out = tuple(module(*sample))
    wants_grad = [o.requires_grad for o in static_out]
    static_grad_out = [torch.empty_like(o) for o in static_out if o.requires_grad]
    with torch.cuda.graph(bwd, pool=pool, stream=stream):
        static_grads = backward_of(static_out, static_grad_out)
    n = len(sample)

    class Replay(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *inputs):
            for recorded, given in zip(sample, inputs[:n]):
                if recorded.data_ptr() != given.data_ptr():
                    recorded.copy_(given)
            fwd.replay()
            return tuple(o.detach() for o in static_out)

        @staticmethod
        @torch.autograd.function.once_differentiable
        def backward(ctx, *grads):
            for static, grad in zip(static_grad_out, (g for g, w in zip(grads, wants_grad) if w)):
                if grad is None:
                    static.zero_()
                elif static.data_ptr() != grad.data_ptr():
                    static.copy_(grad)
            bwd.replay()
            return (None,) * n + tuple(None if g is None else g.detach() for g in static_grads)

    return lambda *args: Replay.apply(*args, *params)


class GraphedModule:
    """``module(*tensors)`` (a tuple of tensors back), replayed from a CUDA graph per input shape where it may.

    ``make(module, sample)`` records (None: ``record`` on the GPU; tests pass a stand-in); ``capture_at``: the
    sighting of a shape at which it is recorded; ``max_graphs``: recordings kept at most. ``replays``,
    ``eager`` and ``shapes`` say how calls ran; ``failed`` is why recording stopped, or None.
    """

    def __init__(self, module: nn.Module, *, capture_at: int = 2, max_graphs: int = 32,
                 make: Callable[[nn.Module, tuple], Any] | None = None) -> None:
        if capture_at < 1 or max_graphs < 0:
            raise ValueError(f"capture_at={capture_at} must be >= 1 and max_graphs={max_graphs} >= 0")
        self.module = module
        self.capture_at, self.max_graphs = capture_at, max_graphs
        self._make = make  # None: ``record`` on the GPU
        self._trainable = next((p for p in module.parameters() if p.requires_grad), None)
        self._graphs: dict[tuple, Callable[..., tuple[torch.Tensor, ...]]] = {}
        self._seen: Counter = Counter()
        self._pool = self._stream = None
        self.replays = self.eager = 0
        self.failed: str | None = None

    @property
    def shapes(self) -> list[tuple]:
        """The input shapes recorded, in the order they were."""
        return [tuple(shape for shape, _ in key) for key in self._graphs]

    def __call__(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        key = tuple((tuple(a.shape), a.dtype) for a in args)
        graphed = self._graphs.get(key)
        grads_in_place = self._trainable is not None and self._trainable.grad is not None
        if graphed is None and not grads_in_place and self.failed is None and len(self._graphs) < self.max_graphs:
            self._seen[key] += 1
            if self._seen[key] >= self.capture_at:
                graphed = self._record(key, args)
        if graphed is None or grads_in_place:
            self.eager += 1
            return self.module(*args)
        self.replays += 1
        return graphed(*args)

    def _record(self, key: tuple, args: tuple[torch.Tensor, ...]):
        try:
            # the recorded inputs are copies: each replay copies its batch into them
            sample = tuple(a.detach().clone() for a in args)
            if self._make is not None:
                graphed = self._make(self.module, sample)
            else:
                if self._pool is None:
                    self._pool, self._stream = torch.cuda.graph_pool_handle(), torch.cuda.Stream()
                graphed = record(self.module, sample, pool=self._pool, stream=self._stream)
        except Exception as exc:  # noqa: BLE001 - any failure leaves the eager path, said once
            self.failed = f"{type(exc).__name__}: {exc}"[:300]
            warnings.warn(f"CUDA graphs turned off for the rest of this run: recording a step of shape "
                          f"{[tuple(a.shape) for a in args]} failed ({self.failed}); the steps run without them. "
                          "Set sft.cuda_graphs='off' to skip the attempt.", RuntimeWarning, stacklevel=3)
            return None
        self._graphs[key] = graphed
        return graphed
