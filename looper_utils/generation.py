"""One batched sampling function for every stage: SFT checks, rollouts, PPO and evaluation.

``generate(model, tokenizer, prompts, n=..., max_new_tokens=..., temperature=...)``
returns a ``GenerationResult``: one ``Sample`` per (prompt, sample index),
in input order, with the decoded completion, the prompt and completion token
ids (PPO scores exactly these tokens), the number of new tokens and why the
sequence stopped (``eos`` or ``length``), plus wall time and tokens/s.

How: prompts are tokenized with ``prompts.encode_prompt`` (the same ids SFT
trained on), each repeated ``n`` times, sorted longest first so a batch holds
prompts of similar length (less padding), left-padded (a decoder continues
from the last position), and handed to Hugging Face ``model.generate`` with
an explicit ``GenerationConfig``; results are put back in input order.
``temperature=0`` is greedy. A ``seed`` makes sampling repeatable without
disturbing the caller's random state. A faster engine can replace the body
behind this same signature.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from .prompts import encode_prompt

__all__ = ["Sample", "GenerationResult", "generate", "stop_token_ids"]


@dataclass
class Sample:
    """One completion of one prompt."""

    prompt_index: int
    sample_idx: int
    text: str  # decoded completion, special tokens skipped
    prompt_ids: list[int]
    completion_ids: list[int]  # up to and including EOS when produced
    n_tokens: int
    finish_reason: str  # "eos" | "length"


@dataclass
class GenerationResult:
    """Every sample (prompt 0 samples 0..n-1, prompt 1 ...) and the throughput."""

    samples: list[Sample] = field(default_factory=list)
    seconds: float = 0.0
    n_new_tokens: int = 0
    tokens_per_second: float = 0.0

    @property
    def texts(self) -> list[str]:
        return [s.text for s in self.samples]


def stop_token_ids(model, tokenizer) -> list[int]:
    """EOS ids of the tokenizer and of the model's generation config (Llama 3 lists several)."""
    ids: list[int] = []
    for v in (tokenizer.eos_token_id, getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        for i in (v if isinstance(v, (list, tuple)) else [v]):
            if i is not None and i not in ids:
                ids.append(int(i))
    if not ids:
        raise ValueError(f"{getattr(tokenizer, 'name_or_path', 'tokenizer')}: no EOS token, so generation "
                         "could never stop early; set tokenizer.eos_token")
    return ids


def _generation_config(max_new_tokens: int, temperature: float, top_p: float, top_k: int, pad: int,
                       eos: list[int]):
    from transformers import GenerationConfig

    kw = dict(max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=eos)
    if temperature > 0:
        kw.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=top_k if top_k > 0 else None)
    else:
        # explicit neutral values: the model's own defaults (R1-Distill ships
        # temperature 0.6) would otherwise be merged in and warned about
        kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    return GenerationConfig(**kw)


def generate(model, tokenizer, prompts: list[str], *, n: int = 1, max_new_tokens: int,
             temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, batch_size: int = 64,
             seed: int | None = None, progress: bool = True, desc: str = "generate",
             backend: str = "hf", engine=None) -> GenerationResult:
    """Sample ``n`` completions of each prompt (``temperature=0``: greedy).

    ``batch_size`` counts sequences (prompt x sample) per call. ``backend``:
    ``hf`` runs ``model.generate``; ``engine`` runs ``looper_utils.engine``
    (same tokens for greedy, same distribution for sampling; faster on a
    GPU), falling back to ``hf`` for models it does not support. Pass an
    ``engine.Engine`` as ``engine`` to keep its cache and CUDA graphs across calls.
    """
    from tqdm.auto import tqdm  # a widget in a notebook (ipywidgets is a dependency), a plain bar elsewhere

    if n < 1 or max_new_tokens < 1 or batch_size < 1:
        raise ValueError(f"need n >= 1, max_new_tokens >= 1, batch_size >= 1 (got {n}, {max_new_tokens}, "
                         f"{batch_size})")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    device = next(model.parameters()).device
    eos = stop_token_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    gcfg = _generation_config(max_new_tokens, temperature, top_p, top_k, pad, eos)

    if backend not in ("hf", "engine"):
        raise ValueError(f"backend={backend!r}: use 'hf' or 'engine'")
    use_engine = backend == "engine" or engine is not None
    if use_engine:
        from . import engine as engine_mod

        if engine is None and not engine_mod.supports(model):
            use_engine = False  # a decoder the engine does not know: HF generate is always correct
        else:
            eng = engine or engine_mod.Engine(model)
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    jobs = [(i, j) for i in range(len(prompts)) for j in range(n)]
    jobs.sort(key=lambda ij: -len(encoded[ij[0]]))  # stable: ties keep input order
    out: dict[tuple[int, int], Sample] = {}
    eos_set = set(eos)
    n_new = 0

    was_training = model.training
    model.eval()
    devices = [device.index or 0] if device.type == "cuda" else []
    t0 = time.perf_counter()
    bar = tqdm(total=len(jobs), desc=desc, disable=not progress, unit="seq")
    try:
        with torch.random.fork_rng(devices=devices, enabled=seed is not None), torch.inference_mode():
            if seed is not None:
                torch.manual_seed(seed)
            for start in range(0, len(jobs), batch_size):
                batch = jobs[start:start + batch_size]
                width = max(len(encoded[i]) for i, _ in batch)
                ids = torch.full((len(batch), width), pad, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, (i, _) in enumerate(batch):
                    p = encoded[i]
                    ids[row, width - len(p):] = torch.tensor(p)
                    mask[row, width - len(p):] = 1
                if use_engine:
                    g = None
                    if seed is not None:
                        g = torch.Generator(device=device).manual_seed(seed * 1_000_003 + start)
                    eo = eng.sample(ids.to(device), mask.to(device), max_new_tokens=max_new_tokens,
                                    temperature=temperature, top_p=top_p, top_k=top_k, eos_token_id=eos,
                                    pad_token_id=pad, generator=g)
                    new = eo.sequences.tolist()
                else:
                    gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                         generation_config=gcfg)
                    new = gen[:, width:].tolist()
                for row, (i, j) in enumerate(batch):
                    toks = new[row]
                    stop = next((k for k, t in enumerate(toks) if t in eos_set), None)
                    comp = toks[:stop + 1] if stop is not None else toks[:max_new_tokens]
                    n_new += len(comp)
                    out[(i, j)] = Sample(prompt_index=i, sample_idx=j,
                                         text=tokenizer.decode(comp, skip_special_tokens=True),
                                         prompt_ids=list(encoded[i]), completion_ids=comp, n_tokens=len(comp),
                                         finish_reason="eos" if stop is not None else "length")
                bar.update(len(batch))
                bar.set_postfix(tok_s=f"{n_new / max(time.perf_counter() - t0, 1e-9):.0f}")
    finally:
        bar.close()
        if was_training:
            model.train()
    seconds = time.perf_counter() - t0
    samples = [out[(i, j)] for i in range(len(prompts)) for j in range(n)]
    return GenerationResult(samples=samples, seconds=seconds, n_new_tokens=n_new,
                            tokens_per_second=n_new / seconds if seconds > 0 else 0.0)
