"""Several processes through ``accelerate launch``, proven on two CPU processes (gloo): SFT and PPO give the
weights of one process over the same global batch, rank 0 alone writes, and a two-process PPO checkpoint
resumes on one process. The tiny model of tests/_tiny.py; about a minute on two cores."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from _multiproc import PPO_PARAMS, cli, launch, make_root, ppo_update_on_fixed_batch

pytest.importorskip("accelerate")

SFT_PARAMS = ["max_steps=3", "n_dev_eval=4", "max_new_tokens=8", "save_steps=2"]


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """SFT on two processes (batch 2 each) in one root, on one process (batch 4) in a copy of it."""
    two = make_root(tmp_path_factory.mktemp("two"))
    res = launch(cli("looper_utils.sft", two, "r2", SFT_PARAMS + ["batch_size=2"]), processes=2)
    one = tmp_path_factory.mktemp("one")
    shutil.copytree(two / "data", one / "data")
    shutil.copytree(two / "checkpoints" / "base", one / "checkpoints" / "base")  # the same scratch base
    launch(cli("looper_utils.sft", one, "r1", SFT_PARAMS + ["batch_size=4"]), processes=1)
    return two, one, res


def test_sft_two_processes_match_one_with_the_same_global_batch(roots):
    two, one, _ = roots
    a = load_file(str(two / "checkpoints/sft/model.safetensors"))
    b = load_file(str(one / "checkpoints/sft/model.safetensors"))
    base = load_file(str(two / "checkpoints/base/model.safetensors"))
    assert max((a[n] - base[n]).abs().max().item() for n in a) > 1e-3, "SFT did not move the weights"
    for n in a:
        torch.testing.assert_close(a[n], b[n], atol=1e-5, rtol=1e-4, msg=f"{n} differs")


def test_sft_rank0_writes_once(roots):
    two, _, res = roots
    m = json.loads((two / "runs/r2/metrics/02_sft.json").read_text())
    assert m["n_processes"] == 2 and m["global_batch"] == 4 and m["train_steps"] == 3 and m["n_dev"] == 4
    assert 0.0 <= m["dev_accuracy_after"] <= 1.0 and m["final_loss"] > 0
    assert sorted(p.name for p in (two / "checkpoints/sft-trainer").iterdir() if p.is_dir()) == ["checkpoint-3"]
    assert res.stdout.count("done: 3 steps on 2 process(es)") == 1
    assert not list((two / "checkpoints").glob(".*"))  # no temporary or set-aside folder left by a race


def test_ppo_update_two_processes_match_one_on_a_fixed_batch(roots, tmp_path):
    """Through the update step only: see ``_multiproc.ppo_update_on_fixed_batch`` for why sampling is left out."""
    two, _, _ = roots
    out = tmp_path / "two.safetensors"
    launch(["tests/_multiproc.py", str(two), str(out)], processes=2)
    a = load_file(str(out))
    b = ppo_update_on_fixed_batch(two, rank=0, world=1)
    moved = [n for n in a if "lora_B" in n and ".policy." in n]
    assert moved and max(a[n].abs().max().item() for n in moved) > 1e-4, "the policy adapter did not move"
    for n in a:
        torch.testing.assert_close(a[n], b[n], atol=1e-6, rtol=1e-4, msg=f"{n} differs")


def test_ppo_two_processes_write_once_and_resume_on_one(roots):
    two, _, _ = roots
    res = launch(cli("looper_utils.ppo", two, "r2", PPO_PARAMS + ["iterations=1", "minibatch_size=4", "eval_every=1",
                                                              "n_dev=4"]), processes=2)
    out = two / "checkpoints/ppo"
    assert sorted(p.name for p in out.iterdir()) == ["best", "last", "ppo_log.jsonl"]
    assert not list(out.parent.glob("ppo.*")) and not list(out.parent.glob(".*"))
    log = [json.loads(x) for x in (out / "ppo_log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == [1] and 0.0 <= log[0]["dev_accuracy"] <= 1.0  # rank 0's dev check
    assert sum(log[0]["arms"].values()) == 4, "the iteration's arms count the prompts of both processes"
    assert res.stdout.count("done: 1 iterations on 2 process(es)") == 1
    assert json.loads((out / "last/looper_state.json").read_text())["step"] == 1
    res = launch(cli("looper_utils.ppo", two, "r2", PPO_PARAMS + ["iterations=2", "minibatch_size=4"]), processes=1)
    log = [json.loads(x) for x in (out / "ppo_log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == [1, 2], "one process did not continue the two-process run"
    assert json.loads((out / "last/looper_state.json").read_text())["step"] == 2
    assert not list(out.parent.glob("ppo.previous"))
