"""The tiny scratch Llama the model-layer tests share (seconds to build and train on a CPU)."""
from looper_utils import config, data, modeling

TINY_MODEL = dict(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64,
                  tokenizer_vocab=400, max_position=256)


def tiny_cfg(root, **kw):
    """The smoke config with the tiny model, rooted at ``root``; ``kw`` overrides (stage ``sft``)."""
    return config.build("smoke", stage="sft", root=str(root), **{**TINY_MODEL, **kw})


def tiny_ppo_project(root, n_rows: int, n_train: int, **ppo):
    """A project folder holding an untrained one-layer scratch model as both base and SFT checkpoint.

    Returns ``(cfg, train_rows, dev_rows)``: the smoke config rooted there with the PPO settings
    ``ppo`` (stage ``ppo``), and ``n_rows`` synthetic problems split at ``n_train``.
    """
    rows = data.synthetic_problems(n_rows, seed=0)
    cfg = config.build("smoke", root=str(root), stage="ppo", **ppo, **{"model.hidden_size": 32, "model.num_layers": 1,
                                                                       "model.intermediate_size": 64})
    tok = modeling.build_tokenizer(modeling.tokenizer_corpus(rows), vocab_size=300)
    model = modeling.build_scratch_model(cfg.model, tok, seed=0)
    modeling.save_checkpoint(modeling.base_dir(cfg), model, tok, cfg, stage="base", step=0)
    modeling.save_checkpoint(modeling.sft_dir(cfg), model, tok, cfg, stage="sft", step=0)
    return cfg, rows[:n_train], rows[n_train:]
