"""Rollout engine: batched sampling for Llama-like decoders, fast on a GPU, exact on CPU.

``sample(model, input_ids, attention_mask, max_new_tokens=..., ...)`` returns
an ``EngineOutput``; ``Engine(model)`` keeps the KV cache and CUDA graphs
between calls (PPO samples every iteration with the same shapes).

Why our own loop rather than ``model.generate``: on one H100, 8B Llama, 256
sequences, HF's static-cache decode step spends ~24 of its ~32 ms in
attention (the 8 KV heads copied out to 32 in every layer, the whole static
cache read) and syncs with the host every step. Here:

- the model's own submodules are called layer by layer (norms, q/k/v/o
  projections, MLP), so PEFT LoRA layers (adapters applied inside the engine,
  or merged) and bitsandbytes 4-bit linears work unchanged (which submodules:
  ``engine.model_parts``; the prefill and the decode step: ``engine.forward``);
- a preallocated cache ``[layers, 2, B, H_kv, T, D]`` is read by an attention
  that reads each KV head once and only the filled columns (Triton
  flash-decoding, or GQA-packed SDPA over a bucketed slice: ``engine.kernels``);
- on CUDA the glue between projections (residual + RMSNorm, rotary + cache
  write, SiLU * up) is fused, and the step (embedding -> logits) is a CUDA
  graph; sampling stays on the GPU; EOS is checked every ``check_every``
  steps, finished rows emit ``pad_token_id``, and once half the rows are done
  the running ones are compacted to the front of the batch.

Numerics follow transformers: positions ``cumsum(mask) - 1`` for left
padding, rotary from ``model.model.rotary_emb``, HF's temperature / top-k /
top-p rules on float32 scores. On CPU in float32 greedy output equals
``model.generate(do_sample=False)`` token for token (tests/test_engine.py).

Graphs capture parameter storage and PEFT's Python state. In-place parameter
updates (optimizer steps) are seen by them; new tensors or a change of PEFT
state (merge, disable, adapter switch) are detected at the next call and the
graphs are captured again.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import torch

from . import kernels as ek
from .forward import CachedForward
from .model_parts import fusable, parts, state_key
from .top_p import top_p_ready, top_p_sample


@dataclass
class EngineOutput:
    """Sampled continuations, padded with ``pad_token_id`` after EOS."""

    sequences: torch.Tensor  # [B, max_new_tokens] long
    lengths: torch.Tensor  # [B] new tokens including the EOS
    finished_eos: torch.Tensor  # [B] bool
    seconds: float
    n_new_tokens: int
    prefill_seconds: float = 0.0
    decode_steps: int = 0
    attention: str = ""
    fused: bool = False
    cuda_graphs: bool = False
    compactions: int = 0


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


class Engine(CachedForward):
    """Reusable sampler for one model: KV cache, static decode buffers and CUDA graphs.

    ``attention``: ``"auto"`` (Triton kernel on CUDA when it passes a check
    against SDPA, else SDPA), ``"triton"`` or ``"sdpa"``. ``fused``: ``"auto"``
    (on CUDA for Llama/Qwen2 norms and SiLU MLPs, after a check against the
    eager ops), True or False -- one Triton kernel each for residual add +
    RMSNorm, rotary + cache write, and SiLU * up in the decode step, with
    HF's roundings; the projections are still the model's own modules.
    ``kv_bucket``: the SDPA path attends a cache slice rounded up to this many
    columns (one graph per slice length). ``cuda_graphs``: None means on CUDA.
    ``compact``: at each EOS check, once at most half the rows are still
    running, move them to the front of the cache and decode only those (row
    count rounded up to a power of two, at least 8: one set of graphs per
    size, reused by later calls).
    """

    def __init__(self, model, *, attention: str = "auto", fused="auto", kv_bucket: int = 64,
                 cuda_graphs: bool | None = None, check_every: int = 16, compact: bool = True,
                 prefill_tokens: int = 16384):
        if attention not in ("auto", "triton", "sdpa"):
            raise ValueError(f"attention={attention!r}: use 'auto', 'triton' or 'sdpa'")
        if fused not in ("auto", True, False):
            raise ValueError(f"fused={fused!r}: use 'auto', True or False")
        self.model = model
        self.p = parts(model)
        self.device = self.p.embed.weight.device
        self.dtype = self.p.embed.weight.dtype if self.p.embed.weight.is_floating_point() else torch.bfloat16
        is_cuda = self.device.type == "cuda"
        self.attention = self._pick_attention(attention, is_cuda)
        self.fused = self._pick_fused(fused, is_cuda)
        self.kv_bucket = kv_bucket
        self.use_graphs = is_cuda if cuda_graphs is None else (cuda_graphs and is_cuda)
        self.check_every = check_every
        self.compact = compact
        self.prefill_tokens = prefill_tokens
        self._n = 0
        self._kv = None
        self._graphs: dict = {}
        self._pool = None
        self._key = None
        self.n_captures = 0

    # ---------------------------------------------------------------- setup
    def _checked(self, what: str, check, tol: float) -> bool:
        """Run a kernel check on this device; any failure switches the kernel off with a warning."""
        try:
            err = check()
        except Exception as exc:  # compile or launch failure on this machine: fall back, say why
            warnings.warn(f"{what} off: {type(exc).__name__}: {exc}")
            return False
        if not err <= tol:
            warnings.warn(f"{what} off: error {err:.3g} against the torch reference (tolerance {tol})")
        return err <= tol

    def _tol(self, half: float, full: float) -> float:
        return half if self.dtype in (torch.bfloat16, torch.float16) else full

    def _pick_attention(self, attention: str, is_cuda: bool) -> str:
        if attention == "sdpa":
            return "sdpa"
        p = self.p
        ok = (is_cuda or attention == "triton") and ek.triton_available() and ek.triton_supports(p.head_dim, p.groups)
        ok = ok and self._checked("Triton decode attention", lambda: ek.check_triton_decode(
            self.device, self.dtype, p.hkv, p.groups, p.head_dim), self._tol(2e-2, 1e-4))
        if attention == "triton" and not ok:
            raise RuntimeError("attention='triton' needs CUDA, triton, a power-of-two head_dim and a passing check; "
                               "use attention='sdpa'")
        return "triton" if ok else "sdpa"

    def _pick_fused(self, fused, is_cuda: bool) -> bool:
        if fused is False:
            return False
        p = self.p
        ok = (is_cuda or fused is True) and ek.triton_available() and fusable(p)
        ok = ok and self._checked("Fused decode ops", lambda: ek.check_fused_ops(
            self.device, self.dtype, p.cfg.hidden_size, p.hq, p.hkv, p.head_dim), self._tol(2e-2, 1e-5))
        if fused is True and not ok:
            raise RuntimeError("fused=True needs triton, Llama/Qwen2 RMSNorm + SiLU MLP layers and a passing check; "
                               "use fused=False")
        return ok

    def _ensure_cache(self, batch: int, need: int) -> None:
        p = self.p
        cap = _round_up(need, self.kv_bucket)
        if self._kv is not None and self._kv.shape[2] == batch and self._kv.shape[4] >= need:
            return
        self._kv = None
        self._drop_graphs()
        shape = (len(p.layers), 2, batch, p.hkv, cap, p.head_dim)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            need_bytes = torch.Size(shape).numel() * torch.finfo(self.dtype).bits // 8
            free, _ = torch.cuda.mem_get_info(self.device)
            if need_bytes > free:
                raise MemoryError(f"KV cache needs {need_bytes / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free: "
                                  f"lower the batch size ({batch}) or max_new_tokens")
        # zeros, not empty: the SDPA path multiplies masked columns by 0, and 0 * NaN is NaN
        self._kv = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self._tok = torch.zeros(batch, dtype=torch.long, device=self.device)
        self._pos = torch.zeros(batch, dtype=torch.long, device=self.device)
        self._start = torch.zeros(batch, dtype=torch.long, device=self.device)
        self._col = torch.zeros(1, dtype=torch.long, device=self.device)
        self._n_sm = torch.cuda.get_device_properties(self.device).multi_processor_count if self.device.type == "cuda" else 8


    def _run_step(self, length: int) -> torch.Tensor:
        if not self.use_graphs:
            return self._step(length)
        entry = self._graphs.get((self._n, length))
        if entry is None:
            entry = self._capture(length)
            if entry is None:
                return self._step(length)
        graph, out = entry
        graph.replay()
        return out

    def _drop_graphs(self) -> None:
        """Forget the captured graphs and their memory pool; the next capture takes a new pool. PyTorch's
        allocator refuses a capture into a pool whose graphs are all gone while blocks of it are still held
        (an INTERNAL ASSERT on the pool's use count, seen in 02's dev check after training), after which the
        engine decoded eagerly."""
        self._graphs.clear()
        self._pool = None

    def _capture(self, length: int):
        """Warm up on a side stream (lazy inits, Triton compiles), then capture one step."""
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        try:
            with torch.cuda.stream(stream):
                for _ in range(2):  # same inputs as the step about to run: the cache writes are idempotent
                    self._step(length)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                out = self._step(length)
        except Exception as exc:  # e.g. an op that syncs with the host: run eagerly from now on
            try:
                torch.cuda.synchronize(self.device)
            except RuntimeError:
                pass  # the failed capture's own error; the eager steps that follow run normally
            warnings.warn(f"CUDA graph capture failed ({type(exc).__name__}: {exc}); decoding eagerly")
            self.use_graphs = False
            self._drop_graphs()
            return None
        self.n_captures += 1
        self._graphs[(self._n, length)] = (graph, out)
        return graph, out

    # --------------------------------------------------------------- sample
    def sample(self, input_ids, attention_mask=None, *, max_new_tokens: int, temperature: float = 0.0,
               top_p: float = 1.0, top_k: int = 0, eos_token_id=None, pad_token_id: int | None = None,
               generator: torch.Generator | None = None) -> EngineOutput:
        """Sample ``max_new_tokens`` continuations of left-padded prompts (see module docstring)."""
        ids, mask, eos, pad = self._check_inputs(input_ids, attention_mask, max_new_tokens, eos_token_id, pad_token_id,
                                                 top_p, top_k, generator)
        model = self.model
        was_training = model.training
        model.eval()  # LoRA dropout off while sampling, as for any rollout
        try:
            # out of inference mode even under a caller's torch.inference_mode(): the cache and step
            # buffers outlive this call and are updated in place by later calls in any mode
            with torch.inference_mode(False), torch.no_grad():
                return self._sample(ids, mask, max_new_tokens, temperature, top_p, top_k, eos, pad, generator)
        finally:
            model.train(was_training)

    @property
    def cache_bytes(self) -> int:
        """Bytes held by the KV cache (0 before the first call and after ``release``)."""
        return 0 if self._kv is None else self._kv.numel() * self._kv.element_size()

    def release(self) -> None:
        """Free the KV cache and the graphs (e.g. before a PPO update); the next call rebuilds them."""
        self._kv = None
        self._drop_graphs()
        self._n = 0
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def repeat_last_step(self, times: int = 1, graphs: bool = True) -> torch.Tensor:
        """Run the last decode step of the previous ``sample`` again (same column): for profiles and timing."""
        if self._kv is None or self._n == 0:
            raise RuntimeError("repeat_last_step needs a previous sample() call on this engine")
        col = int(self._col) - 1  # sample() advanced the column past the last step
        length = self._kv.shape[4] if self.attention == "triton" else min(self._kv.shape[4],
                                                                          _round_up(col + 1, self.kv_bucket))
        self._col.fill_(col)
        with torch.inference_mode(False), torch.no_grad():
            for _ in range(times):
                out = self._run_step(length) if graphs else self._step(length)
        self._col.fill_(col + 1)
        return out

    def prefill_logits(self, input_ids, attention_mask=None) -> torch.Tensor:
        """Float32 logits of the last prompt token, through the engine's own prefill (for checks)."""
        ids, mask, _, _ = self._check_inputs(input_ids, attention_mask, 1, None, None, 1.0, 0)
        with torch.inference_mode(False), torch.no_grad():
            self._ensure_cache(ids.shape[0], ids.shape[1])
            return self._prefill(ids, mask, (mask == 0).sum(dim=1)).float()

    def _check_inputs(self, input_ids, attention_mask, max_new_tokens, eos_token_id, pad_token_id, top_p, top_k,
                      generator=None):
        if generator is not None and generator.device.type != self.device.type:
            raise ValueError(f"generator is on {generator.device}, the model on {self.device}: "
                             f"make it with torch.Generator(device='{self.device}')")
        if input_ids.dim() != 2 or input_ids.shape[1] < 1:
            raise ValueError(f"input_ids must be [batch, prompt_len >= 1], got {tuple(input_ids.shape)}")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if not 0.0 < top_p <= 1.0 or top_k < 0:
            raise ValueError(f"top_p must be in (0, 1] and top_k >= 0, got top_p={top_p}, top_k={top_k}")
        ids = input_ids.to(self.device)
        mask = torch.ones_like(ids) if attention_mask is None else attention_mask.to(self.device).long()
        if mask.shape != ids.shape:
            raise ValueError(f"attention_mask {tuple(mask.shape)} must match input_ids {tuple(ids.shape)}")
        # left padding: every row is 0...0 1...1 with a real last token
        bad = (mask[:, -1] != 1) | (mask[:, 1:] < mask[:, :-1]).any(dim=1)
        if bool(bad.any()):
            row = int(bad.nonzero()[0, 0])
            raise ValueError(f"attention_mask row {row} is not left-padded ({mask[row].tolist()[:16]}...): "
                             "tokenize with tokenizer.padding_side = 'left'")
        eos = None if eos_token_id is None else torch.as_tensor(eos_token_id).reshape(-1).to(self.device, torch.long)
        if pad_token_id is None:
            pad_token_id = int(eos[0]) if eos is not None else 0
        return ids, mask, eos, int(pad_token_id)

    def _compact(self, order: torch.Tensor) -> None:
        """Move rows ``order`` to the front of the cache and the step buffers; decode only those from now on."""
        n = order.shape[0]
        for i in range(self._kv.shape[0]):  # layer by layer: the gather's temporary stays small
            self._kv[i, :, :n] = self._kv[i, :, order]
        for buf in (self._tok, self._pos, self._start):
            buf[:n] = buf[order]
        self._n = n

    def _next_token(self, logits, temperature, top_p, top_k, generator) -> torch.Tensor:
        """HF-equivalent next token; when fused, plain sampling takes the one-pass Gumbel kernel and top-p
        (without top-k) the sort-free threshold search of ``engine.top_p``, neither syncing with the host."""
        if temperature <= 0.0:
            return logits.argmax(dim=-1)  # argmax of bf16 logits == argmax of their exact float32 copy
        if (self.fused and top_k == 0 and logits.numel() < 2**31
                and (top_p >= 1.0 or top_p_ready(self.device))):  # the top-p kernel's check runs once
            seed = torch.randint(0, 2**31 - 1, (1,), device=self.device, generator=generator)
            if top_p >= 1.0:
                return ek.gumbel_sample(logits, temperature, seed)
            return top_p_sample(logits, temperature, top_p, seed)
        return ek.sample_tokens(logits.float(), temperature, top_p, top_k, generator)

    def _sample(self, ids, mask, n_new, temperature, top_p, top_k, eos, pad, generator) -> EngineOutput:
        key = state_key(self.model)
        if key != self._key:
            self._drop_graphs()
            self._key = key
        b, plen = ids.shape
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        self._ensure_cache(b, plen + n_new - 1)
        start = (mask == 0).sum(dim=1)
        self._start.copy_(start)
        seqs = torch.full((b, n_new), pad, dtype=torch.long, device=self.device)
        finished = torch.zeros(b, dtype=torch.bool, device=self.device)

        logits = self._prefill(ids, mask, start)
        if cuda:
            torch.cuda.synchronize(self.device)
        t_prefill = time.perf_counter() - t0
        self._col.fill_(plen)
        self._pos.copy_(plen - start)
        self._n = b
        rows = torch.arange(b, device=self.device)  # original row of each running row
        cap = self._kv.shape[4]
        steps = compactions = 0
        for i in range(n_new):
            if i > 0:
                length = cap if self.attention == "triton" else min(cap, _round_up(plen + i, self.kv_bucket))
                logits = self._run_step(length)
                self._col.add_(1)
                self._pos[: self._n].add_(1)
                steps += 1
            nxt = self._next_token(logits, temperature, top_p, top_k, generator)
            nxt = torch.where(finished, pad, nxt)
            seqs[rows, i] = nxt
            self._tok[: self._n].copy_(nxt)
            if eos is None:
                continue
            finished |= torch.isin(nxt, eos)
            if (i + 1) % self.check_every == 0 and i + 1 < n_new:
                running = int((~finished).sum())  # the one host sync, every check_every steps
                if running == 0:
                    break
                keep = _bucket(running)
                if self.compact and keep <= self._n // 2:
                    order = torch.argsort(finished.to(torch.int8), stable=True)[:keep]  # running rows first
                    self._compact(order)
                    rows, finished = rows[order], finished[order]
                    compactions += 1
        lengths, hit = _lengths(seqs, eos, n_new)
        if cuda:
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - t0
        return EngineOutput(sequences=seqs, lengths=lengths, finished_eos=hit, seconds=seconds,
                            n_new_tokens=int(lengths.sum()), prefill_seconds=t_prefill, decode_steps=steps,
                            attention=self.attention, fused=self.fused, cuda_graphs=self.use_graphs,
                            compactions=compactions)


def _bucket(running: int) -> int:
    """Rows kept after a compaction: a power of two (at least 8), so that the sizes -- and the CUDA graphs
    captured for them -- are the same from one call to the next (PPO samples every iteration)."""
    return max(8, 1 << (running - 1).bit_length())


def _lengths(seqs: torch.Tensor, eos, n_new: int):
    if eos is None:
        hit = torch.zeros(seqs.shape[0], dtype=torch.bool, device=seqs.device)
        return torch.full_like(hit, n_new, dtype=torch.long), hit
    is_eos = torch.isin(seqs, eos)
    hit = is_eos.any(dim=1)
    first = is_eos.int().argmax(dim=1)
    return torch.where(hit, first + 1, torch.full_like(first, n_new)), hit


def sample(model, input_ids, attention_mask=None, *, max_new_tokens: int, temperature: float = 0.0,
           top_p: float = 1.0, top_k: int = 0, eos_token_id=None, pad_token_id: int | None = None,
           generator: torch.Generator | None = None, engine: Engine | None = None, **engine_kwargs) -> EngineOutput:
    """One-call sampling; pass ``engine=Engine(model)`` to keep its cache and graphs across calls."""
    eng = engine if engine is not None else Engine(model, **engine_kwargs)
    return eng.sample(input_ids, attention_mask, max_new_tokens=max_new_tokens, temperature=temperature,
                      top_p=top_p, top_k=top_k, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                      generator=generator)
