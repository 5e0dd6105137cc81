"""How fast can one training step of the `demo` model be? Hand-written steps, variant by variant.

02's SFT step (128 sequences) and 05's PPO minibatch (128 sequences) of the
`demo` model (a 24 M-parameter Llama, 512 wide) take 60-75 ms on an H200,
where the matrix products are a sixth of the GPU time (docs/benchmarks.md).
This bench times the step itself, without a trainer around it, so what a
variant saves is the kernels' and not the loop's:

- ``sft``: the full model trained (fp32 weights, bf16 autocast, fused AdamW),
  the causal-LM loss on the completion tokens, as 02 trains it;
- ``ppo``: LoRA (r=16, every linear layer) on a frozen bf16 base under bf16
  autocast, token log-probs at the completion positions and a policy-gradient
  loss, as 05's update trains it.

Variants: ``mask`` (the padding mask passed, as TRL's collator and HF do), no
mask (right-padded rows: the causal mask alone keeps real tokens from the
padding, and SDPA may use FlashAttention), ``layers`` (each decoder layer
compiled with ``torch.compile``), ``model`` (the whole model compiled),
``cudagraphs`` (the compiled layers replayed as CUDA graphs: ``mode="reduce-overhead"``),
``cppwrapper`` (Inductor's launches from C++: ``cpp_wrapper``), ``sorted`` (rows grouped by length, so a
batch carries less padding) and
``pipelined`` (no GPU synchronisation between the timed steps, so the CPU
queues the next step while the GPU runs this one: the mean over the steps is
what the GPU itself needs unless the CPU is slower (``host_median_ms``, the
CPU's time to queue a step, says which), where the default, synchronised, also counts the
CPU's time to launch each step; PPO's completion positions are then gathered
with indices found on the CPU instead of 05's boolean mask, whose
data-dependent size makes the CPU wait for the GPU).

Lengths are drawn from the `demo` training set's (prompt + completion tokens,
quantiles 5/25/50/75/95/100 %: 88, 109, 135, 204, 284, 330) with a fixed seed;
weights are random (the time does not depend on them).

GPU (a few minutes on one H200)::

    python bench/train_step_floor.py --out runs/bench/train_step_floor.json

CPU (a smaller shape; proves the script end to end)::

    python bench/train_step_floor.py --device cpu --layers 2 --batch 8 --steps 3 --variants sft:mask,ppo:
"""
from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

_QUANTILES = ([0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0], [70, 88, 109, 135, 204, 284, 330])


class _Tok:
    """What ``build_scratch_model`` reads of a tokenizer: the size and three special ids."""

    def __init__(self, vocab: int):
        self.vocab, self.bos_token_id, self.eos_token_id, self.pad_token_id = vocab, 1, 2, 0

    def __len__(self) -> int:
        return self.vocab


def batches(n_batches: int, batch: int, vocab: int, sort: bool, seed: int = 0) -> list[dict]:
    """Right-padded batches: ``input_ids``, ``attention_mask``, ``labels`` (-100 on prompt and padding)."""
    rng = np.random.default_rng(seed)
    lengths = np.interp(rng.random(n_batches * batch), *_QUANTILES).astype(int)
    if sort:  # rows of similar length together, the batches in random order (what length grouping does)
        lengths = np.sort(lengths)
    out = []
    for b in range(n_batches):
        lens = lengths[b * batch:(b + 1) * batch]
        width = int(lens.max())
        ids = torch.randint(3, vocab, (batch, width))
        att = (torch.arange(width)[None] < torch.as_tensor(lens)[:, None]).long()
        labels = ids.masked_fill(att == 0, -100)
        prompt = torch.as_tensor(lens * 0.4).long()  # the prompt is about 40 % of a row
        labels = labels.masked_fill(torch.arange(width)[None] < prompt[:, None], -100)
        rows, cols = (labels[:, 1:] != -100).nonzero(as_tuple=True)  # the completion positions, found on the CPU
        out.append({"input_ids": ids * att, "attention_mask": att, "labels": labels, "tokens": int(lens.sum()),
                    "rows": rows, "cols": cols})
    if sort:
        order = rng.permutation(len(out))
        out = [out[i] for i in order]
    return out


def build_model(args, device: torch.device):
    from looper_utils import config, scratch

    mcfg = config.demo().model
    if args.layers:
        mcfg = type(mcfg)(**{**mcfg.__dict__, "num_layers": args.layers})
    return scratch.build_scratch_model(mcfg, _Tok(mcfg.tokenizer_vocab)).to(device)


def compile_layers(model, **options) -> None:
    import torch._dynamo

    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    for layer in model.get_decoder().layers:
        layer.compile(dynamic=True, **options)


def sft_step(model, opt, b, mask: bool, device):
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"] if mask else None,
                    labels=b["labels"], use_cache=False)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)


def ppo_step(model, opt, b, mask: bool, device, positions: bool = False):
    """``positions``: the completion positions gathered with indices found on the CPU, not with 05's boolean
    mask, whose data-dependent size makes the CPU wait for the GPU."""
    lm = model.get_base_model()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        hidden = lm.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"] if mask else None,
                          use_cache=False).last_hidden_state
        if positions:
            h, target = hidden[b["rows"], b["cols"]], b["input_ids"][b["rows"], b["cols"] + 1]
        else:
            sel = b["labels"][:, 1:] != -100
            h, target = hidden[:, :-1][sel], b["input_ids"][:, 1:][sel]
        logits = lm.lm_head(h).float()
    logp = logits.gather(-1, target[:, None]).squeeze(-1) - torch.logsumexp(logits, -1)
    adv = torch.ones_like(logp)
    ratio = torch.exp(logp - logp.detach())
    loss = -torch.min(ratio * adv, ratio.clamp(0.8, 1.2) * adv).mean()
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)


def run_variant(args, name: str, device: torch.device) -> dict:
    import torch._dynamo

    torch._dynamo.reset()
    kind, _, opts = name.partition(":")
    opts = set(filter(None, opts.split("+")))
    torch.manual_seed(0)
    model = build_model(args, device)
    if kind == "ppo":
        from peft import LoraConfig, get_peft_model

        model.to(torch.bfloat16 if device.type == "cuda" else torch.float32)
        for p in model.parameters():
            p.requires_grad_(False)
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                                 task_type="CAUSAL_LM"))
        lm = model.get_base_model()
    else:
        lm = model
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=device.type == "cuda")
    import torch._inductor.config as inductor_config

    inductor_config.cpp_wrapper = "cppwrapper" in opts  # the compiled code's launches from C++, not Python
    if "layers" in opts or "cudagraphs" in opts:
        compile_layers(lm, **({"mode": "reduce-overhead"} if "cudagraphs" in opts else {}))
    if "model" in opts:  # SFT: the forward with its loss; PPO: the decoder (the update applies the head itself)
        (lm if kind == "sft" else lm.model).compile(dynamic=True)
    data = [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in b.items()}
            for b in batches(args.n_batches, args.batch, lm.config.vocab_size, "sorted" in opts)]
    one = sft_step if kind == "sft" else functools.partial(ppo_step, positions="pipelined" in opts)

    def step(b) -> None:
        if "cudagraphs" in opts:  # a new step: the graphs' outputs of the last one may be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        one(model, opt, b, "mask" in opts, device)
    t0 = time.perf_counter()
    for b in data[:args.warmup]:
        step(b)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    warm_s = time.perf_counter() - t0
    times, host, tokens = [], [], 0
    t_all = time.perf_counter()
    for i in range(args.steps):
        b = data[(args.warmup + i) % len(data)]
        t = time.perf_counter()
        step(b)
        host.append(time.perf_counter() - t)  # the CPU's time to queue the step (until a wait, if any)
        if "pipelined" not in opts:  # otherwise the CPU may queue the next steps while the GPU runs this one
            sync()
        times.append(time.perf_counter() - t)
        tokens += b["tokens"]
    sync()
    all_ms = 1000 * (time.perf_counter() - t_all) / args.steps
    res = {"median_ms": None if "pipelined" in opts else round(1000 * statistics.median(times), 2),
           "mean_ms": round(all_ms, 2), "host_median_ms": round(1000 * statistics.median(host), 2),
           "warmup_s": round(warm_s, 1), "real_tokens_per_step": tokens // args.steps,
           "padded_tokens_per_step": int(np.mean([b["input_ids"].numel() for b in data]))}
    if device.type == "cuda":
        res["peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        torch.cuda.reset_peak_memory_stats(device)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--variants", default="sft:mask,sft:,sft:layers,sft:model,sft:layers+sorted,"
                                          "ppo:,ppo:layers,ppo:model,ppo:layers+sorted",
                    help="comma-separated KIND:OPTS, KIND sft or ppo, OPTS '+'-joined of mask, layers, model, sorted, "
                         "pipelined, cudagraphs, cppwrapper")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--layers", type=int, default=0, help="decoder layers (0 = demo's 8)")
    ap.add_argument("--n-batches", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=20, help="untimed steps (compiles happen here)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    device = torch.device(args.device)
    import transformers

    res = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
           "torch": torch.__version__, "transformers": transformers.__version__, "batch": args.batch, "variants": {}}
    for name in args.variants.split(","):
        try:
            res["variants"][name] = run_variant(args, name, device)
        except Exception as exc:  # one variant the stack refuses must not lose the others
            res["variants"][name] = {"error": repr(exc)[:800]}
        print(name, json.dumps(res["variants"][name]), flush=True)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
