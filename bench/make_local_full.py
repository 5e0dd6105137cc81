"""Local stand-ins for the `full` profile on a box with no hub access.

Writes, under OUT:
- `gsm8k/{train,test}.jsonl` and `platinum/test.jsonl`: GSM8K-format problems
  (synthetic, 3-6 steps; platinum rows carry a `cleaning_status`);
- `llama8b-random/`: a random-init LlamaForCausalLM with the 8B shape
  (hidden 4096, 32 layers, 32 heads, 8 KV heads, intermediate 14336, vocab
  128256) in bf16, with the byte-level BPE tokenizer the project builds;
- `full_local.json`: a profile file = `full` pointed at those paths, with the
  small budgets given on the command line.

    python bench/make_local_full.py --out /tmp/full [--quantization 4bit] [--shape 8b|small] [--set KEY=VALUE ...]

The weights are drawn on the GPU (meta device, then `to_empty` and an
in-place normal init), so building the 16 GB checkpoint takes seconds.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from looper_utils import data, modeling

SHAPES = {
    "8b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
               intermediate_size=14336, vocab_size=128256),
    "small": dict(hidden_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=512, vocab_size=1024),
}


def write_data(out: Path, n_train: int, n_test: int, seed: int = 0) -> None:
    kw = dict(min_steps=3, max_steps=6, max_value=100)
    train = data.synthetic_problems(n_train, seed, prefix="loc-train", **kw)
    test = data.synthetic_problems(n_test, seed, prefix="loc-test", exclude={r["question"] for r in train}, **kw)
    status = ["consensus", "consensus", "verified", "revised", "rejected"]
    plat = [dict(r, cleaning_status=status[i % len(status)]) for i, r in enumerate(test)]
    strip = lambda rows: [{"question": r["question"], "answer": r["answer"], **({"cleaning_status": r["cleaning_status"]} if "cleaning_status" in r else {})} for r in rows]  # noqa: E731
    data.write_jsonl(out / "gsm8k" / "train.jsonl", strip(train))
    data.write_jsonl(out / "gsm8k" / "test.jsonl", strip(test))
    data.write_jsonl(out / "platinum" / "test.jsonl", strip(plat))


def write_model(out: Path, shape: str, device: str) -> float:
    from transformers import LlamaConfig, LlamaForCausalLM

    t0 = time.perf_counter()
    rows = data.read_jsonl(out / "gsm8k" / "train.jsonl", required=("question", "answer"), check_gold=False)
    tok = modeling.build_tokenizer(modeling.tokenizer_corpus([dict(r, gold="0") for r in rows]), vocab_size=2048,
                                   think=True, model_max_length=4096)
    conf = LlamaConfig(**SHAPES[shape], max_position_embeddings=4096, rope_theta=500000.0, tie_word_embeddings=False,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                       torch_dtype="bfloat16")
    with torch.device("meta"):
        model = LlamaForCausalLM(conf)
    model = model.to_empty(device=device).to(torch.bfloat16)
    g = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=g)
    model.config.use_cache = True
    dest = out / "llama8b-random"
    model.save_pretrained(dest, max_shard_size="5GB")
    tok.save_pretrained(dest)
    del model
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/full")
    ap.add_argument("--shape", default="8b", choices=sorted(SHAPES))
    ap.add_argument("--quantization", default="4bit", choices=["4bit", "bf16", "auto"])
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-test", type=int, default=200)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra profile override, repeatable (e.g. sft.max_steps=10); values are JSON or strings")
    a = ap.parse_args()
    out = Path(a.out)
    write_data(out, a.n_train, a.n_test)
    secs = write_model(out, a.shape, a.device) if not (out / "llama8b-random" / "config.json").is_file() else 0.0
    overrides = {
        "model.name_or_path": str(out / "llama8b-random"), "model.quantization": a.quantization,
        "data.gsm8k_path": str(out / "gsm8k"), "data.platinum_path": str(out / "platinum" / "test.jsonl"),
        "sft.max_steps": 20, "sft.n_train": 640, "sft.n_dev_eval": 64, "sft.max_new_tokens": 128,
        "sft.max_length": 512, "sft.eval_batch_size": 64,
        "rollouts.n_problems": 64, "rollouts.k": 4, "rollouts.max_new_tokens": 256, "rollouts.shard_size": 64,
        "ppo.iterations": 2, "ppo.prompts_per_iter": 64, "ppo.k": 4, "ppo.max_new_tokens": 256,
        "ppo.eval_every": 0, "ppo.n_dev": 64,
        "eval.n_eval": 64, "eval.max_new_tokens": 128, "eval.batch_size": 64,
    }
    for item in a.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: write KEY=VALUE, e.g. --set sft.max_steps=10")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    prof = out / f"full_local_{a.quantization}.json"
    prof.write_text(json.dumps({"profile": "full", "description": "full profile on local random-init 8B-shaped "
                                "weights and GSM8K-format JSONL, small budgets", "overrides": overrides}, indent=1))
    print(json.dumps({"profile_file": str(prof), "model_build_seconds": round(secs, 1)}))


if __name__ == "__main__":
    main()
