"""Helpers of tests/test_multiproc.py: a tiny project root, ``accelerate launch`` of CPU processes, and one
PPO update on a fixed batch (run as ``accelerate launch tests/_multiproc.py ROOT OUT`` or in-process)."""
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

REPO = Path(__file__).resolve().parents[1]
# the sizes of tests/_tiny.py, as -p options of the CLIs
TINY_PARAMS = ["hidden_size=32", "num_layers=2", "num_heads=2", "num_kv_heads=1", "intermediate_size=64",
               "tokenizer_vocab=400", "max_position=256"]
# one PPO iteration: 4 prompts x 2 completions, short completions, no dev eval
PPO_PARAMS = ["prompts_per_iter=4", "k=2", "max_new_tokens=8", "eval_every=0", "ppo_epochs=1", "advantage=group",
              "kl_coef=0.05", "learning_rate=0.01"]


def env() -> dict[str, str]:
    """The environment of a launched process: this worktree first on the path, one thread, no network."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
                OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], processes: int, timeout: int = 180) -> subprocess.CompletedProcess:
    """``accelerate launch`` of ``processes`` CPU processes (torchrun underneath, gloo backend); ``args`` follow
    the launcher's own options (``-m module ...`` or ``script ...``). One process runs plain ``python``."""
    if processes == 1:
        cmd = [sys.executable, *args]
    else:
        # --cpu would pick accelerate's single-process launcher (several CPU processes otherwise need mpirun);
        # --multi_gpu starts torchrun, and the code asks accelerate for the CPU, which gives gloo
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), *args]
    res = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=timeout)
    if res.returncode:
        raise AssertionError(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-6000:]}")
    return res


def cli(module: str, root: Path, run_id: str, params: list[str]) -> list[str]:
    out = ["-m", module, "--profile", "smoke", "--run-id", run_id, "--root", str(root)]
    for p in TINY_PARAMS + params:
        out += ["-p", p]
    return out


def make_root(root: Path) -> Path:
    """``data/`` with 48 synthetic train and 12 dev problems."""
    from looper_utils import data

    rows = data.synthetic_problems(60, seed=0)
    files = data.data_files(root / "data")
    files["train"].parent.mkdir(parents=True, exist_ok=True)
    data.write_jsonl(files["train"], rows[:48])
    data.write_jsonl(files["dev"], rows[48:])
    return root


def ppo_update_on_fixed_batch(root: Path, rank: int, world: int) -> dict[str, torch.Tensor]:
    """The trained tensors after one PPO update on a fixed global batch, of which this rank takes its share.

    Sampling is left out on purpose: each rank draws its own prompts with its own seeded stream
    (``_pick_prompts``), so a two-process iteration never sees the prompts of a one-process one. The
    batch here is 4 prompts x 2 handmade completions of 6 tokens each: every sequence has as many
    completion tokens, so the token mean of the whole batch is the mean of the two halves' token means
    and gradient averaging across processes is exactly one process's gradient. Advantages are
    ``group`` ones (per prompt, and each prompt's completions stay on one rank); ``gae`` whitens over
    each rank's batch and would differ. One minibatch per rank covers its whole share.
    """
    from looper_utils import config, data, ppo
    from looper_utils.ppo.losses import group_advantages

    params = dict(p.split("=", 1) for p in TINY_PARAMS + PPO_PARAMS)
    from looper_utils.pipeline import parse_params

    n_prompts, k, n_tok = 4, 2, 6
    over = parse_params([f"{a}={b}" for a, b in params.items()])
    over["minibatch_size"] = n_prompts * k // world
    cfg = config.build("smoke", stage="ppo", root=str(root), run_id="fixed", **over)
    files = data.data_files(cfg.data_dir)
    train, dev = data.read_jsonl(files["train"]), data.read_jsonl(files["dev"])
    tr = ppo.PPOTrainer(cfg, train, dev, out_dir=Path(root) / f"fixed-{world}", progress=False)
    assert tr.dist.world == world and tr.dist.rank == rank, (tr.dist.world, world, tr.dist.rank, rank)
    from looper_utils import prompts

    g = torch.Generator().manual_seed(0)
    completions = torch.randint(10, len(tr.tok) - 1, (n_prompts, k, n_tok), generator=g).tolist()
    rewards_all = torch.tensor([[1.0, 0.0], [0.2, 1.0], [0.0, 0.5], [1.0, -0.2]])
    mine = range(rank * n_prompts // world, (rank + 1) * n_prompts // world)
    samples, rewards = [], []
    for j, i in enumerate(mine):
        p_ids = prompts.encode_prompt(tr.tok, prompts.build_prompt(train[i]["question"], tr.tok, cfg.model.prompt_style))
        for c in range(k):
            samples.append(SimpleNamespace(prompt_ids=p_ids, completion_ids=completions[i][c], prompt_index=j))
            rewards.append(float(rewards_all[i, c]))
    b = ppo.make_batch(samples, tr.tok.pad_token_id, tr.device)
    old = tr._forward_all(b)
    adv = group_advantages(torch.tensor(rewards), b.group)[:, None] * b.mask
    tr._update(b, old, adv, old["values"] * b.mask)
    state = tr.pv.trainable_state()
    tr.dist.close()
    return state


if __name__ == "__main__":  # accelerate launch tests/_multiproc.py ROOT OUT_FILE
    from accelerate import PartialState
    from safetensors.torch import save_file

    ps = PartialState(cpu=True)
    state = ppo_update_on_fixed_batch(Path(sys.argv[1]), ps.process_index, ps.num_processes)
    if ps.process_index == 0:
        save_file(state, sys.argv[2])
