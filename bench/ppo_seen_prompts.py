"""Does PPO change the greedy answers of the prompts it trained on? (smoke, CPU)

    python bench/ppo_seen_prompts.py --root /tmp/ppo-diag [-p ppo.learning_rate=2e-4 ...]

Needs 01_data and 02_sft run in ``--root`` (``python -m looper_utils.pipeline --stages 01,02
--root ROOT``). Runs PPO with the profile's settings while recording every prompt the bandit drew,
then scores greedily, for the SFT model and for the PPO policy: the dev set, the prompts PPO trained
on, and as many training prompts PPO never drew. Prints one JSON object. A benchmark, not a test:
it answers whether a gap between PPO and SFT on dev comes from learning that does not transfer, or
from too little learning per prompt.
"""
from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path

import torch

from looper_utils import config, data, modeling, ppo
from looper_utils.pipeline import parse_params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", required=True, help="project folder where 01 and 02 have run")
    ap.add_argument("--profile", default="smoke")
    ap.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE")
    a = ap.parse_args()
    cfg = config.build(a.profile, stage="ppo", root=a.root, run_id="ppo-seen-prompts", **parse_params(a.param))
    modeling.set_cpu_threads(cfg.model.cpu_threads, torch.device("cpu"))
    files = data.data_files(cfg.data_dir)
    train, dev = data.read_jsonl(files["train"]), data.read_jsonl(files["dev"])
    work = Path(tempfile.mkdtemp(prefix="ppo-seen-", dir=a.root))

    trainer = ppo.PPOTrainer(cfg, train, dev, out_dir=work / "ppo", progress=False)
    drawn: dict[str, dict] = {}
    pick = trainer._pick_prompts

    def recording_pick(it: int):
        rows, arms = pick(it)
        drawn.update((str(r["id"]), r) for r in rows)
        return rows, arms

    trainer._pick_prompts = recording_pick
    sft_dev, _ = trainer.dev_accuracy()
    trainer.train()
    seen = list(drawn.values())
    unseen = [r for r in train if str(r["id"]) not in drawn]
    random.Random(0).shuffle(unseen)
    unseen = unseen[:len(seen)]
    sft = ppo.PPOTrainer(cfg, train, dev, out_dir=work / "sft", progress=False)  # policy = the SFT weights
    out = {"iterations": trainer.iteration, "prompts_drawn": len(seen),
           "samples": trainer.iteration * cfg.ppo.prompts_per_iter * cfg.ppo.k,
           "dev": {"sft": sft_dev, "ppo": trainer.dev_accuracy()[0], "n": len(trainer.dev_rows)},
           "trained_prompts": {"sft": sft.dev_accuracy(seen)[0], "ppo": trainer.dev_accuracy(seen)[0]},
           "other_train_prompts": {"sft": sft.dev_accuracy(unseen)[0], "ppo": trainer.dev_accuracy(unseen)[0]}}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
