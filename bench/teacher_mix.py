"""The teacher-mix experiment without notebooks: data, SFT and PPO in one process, with diagnostics.

For each run: greedy dev accuracy of SFT and PPO, the style of every greedy
answer (``data.completion_style``), and greedy accuracy with the style forced
by a prefix (what each style would score if the model always chose it). Used
to choose the ``smoke`` and ``demo`` teacher mixes (docs/benchmarks.md).

    python bench/teacher_mix.py --root /tmp/tm/a --teacher worked:0.4,terse:0.6 [--set ppo.learning_rate=5e-4 ...]
        [--stages data,sft,ppo] [--profile smoke]
"""
from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

from looper_utils import config, data, modeling, prompts, sft
from looper_utils.answers import is_correct
from looper_utils.generation import generate
from looper_utils.pipeline import parse_params
from looper_utils.stats import paired_comparison


def greedy(model, tok, cfg, rows, prefix_of=None):
    style = cfg.model.prompt_style
    think = prompts.completion_starts_in_think(tok, style)
    ps = [prompts.build_prompt(r["question"], tok, style) + (prefix_of(r) if prefix_of else "") for r in rows]
    res = generate(model, tok, ps, max_new_tokens=cfg.ppo.max_new_tokens, temperature=0.0,
                   batch_size=cfg.sft.eval_batch_size, progress=False, backend=cfg.rollouts.backend)
    texts = [(prefix_of(r) if prefix_of else "") + s.text for r, s in zip(rows, res.samples)]
    flags = [is_correct(t, r["gold"], think=think) for t, r in zip(texts, rows)]
    styles = [data.completion_style(t, think=think) for t in texts]
    return flags, styles


def report(tag, model, tok, cfg, rows):
    flags, styles = greedy(model, tok, cfg, rows)
    out = {"acc": sum(flags) / len(flags), "styles": dict(Counter(styles)),
           "acc_by_style": {k: round(sum(f for f, s in zip(flags, styles) if s == k) / n, 3)
                            for k, n in Counter(styles).items()}}
    forced = {"terse": lambda r: "The answer is", "worked": lambda r: r["question"].split()[0] + " starts with"}
    for name, pre in forced.items():
        f, _ = greedy(model, tok, cfg, rows, pre)
        out[f"forced_{name}"] = round(sum(f) / len(f), 3)
    print(tag, json.dumps(out), flush=True)
    return flags, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--profile", default="smoke")
    ap.add_argument("--teacher", default=None)
    ap.add_argument("--stages", default="data,sft,ppo")
    ap.add_argument("--set", action="append", default=[])
    a = ap.parse_args()
    params = parse_params(a.set)
    if a.teacher:
        params["data.teacher"] = a.teacher
    cfg = config.build(a.profile, root=a.root, **params)
    Path(a.root).mkdir(parents=True, exist_ok=True)
    files = data.data_files(cfg.data_dir)
    stages = a.stages.split(",")
    t0 = time.time()
    if "data" in stages:
        prep = data.prepare_splits(cfg.data, cfg.seed)
        data.write_splits(cfg.data_dir, prep["splits"], run_id="teacher-mix", profile=cfg.profile)
    train, dev = data.read_jsonl(files["train"]), data.read_jsonl(files["dev"])[:cfg.ppo.n_dev]
    print("teacher", Counter(r.get("teacher_style") for r in train), flush=True)
    device = modeling.resolve_device(cfg.device)
    if "sft" in stages:
        model, tok = modeling.build_or_load_base(cfg, train, device)
        res = sft.train_sft(cfg, model, tok, train, device=device, progress=False)
        print(f"sft {res.train_steps} steps {res.train_seconds:.0f}s loss {res.final_loss:.3f}", flush=True)
    model, tok = modeling.load_policy(cfg, "sft", device)
    sft_flags, _ = report("SFT", model, tok, cfg, dev)
    del model
    if "ppo" in stages:
        from looper_utils.ppo import PPOTrainer

        t1 = time.time()
        tr = PPOTrainer(cfg, train, dev, out_dir=Path(a.root) / "checkpoints" / "ppo-bench", progress=False)
        keys = ["iteration", "reward", "accuracy", "style_worked", "style_terse", "style_slip", "response_length",
                "kl", "dev_accuracy", "seconds"]
        tr.train(on_iteration=lambda m: print(" ".join(f"{k}={m[k]:.3g}" for k in keys if k in m), flush=True))
        print(f"ppo {time.time() - t1:.0f}s", flush=True)
        with tr.pv.use("policy"):
            ppo_flags, _ = report("PPO", tr.pv.model, tr.tok, cfg, dev)
        print("paired", json.dumps(paired_comparison(ppo_flags, sft_flags, seed=0)), flush=True)
    print(f"total {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
