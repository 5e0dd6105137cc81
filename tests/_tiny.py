"""The tiny scratch Llama the model-layer tests share (seconds to build and train on a CPU)."""
from looper_utils import config

TINY_MODEL = dict(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64,
                  tokenizer_vocab=400, max_position=256)


def tiny_cfg(root, **kw):
    """The smoke config with the tiny model, rooted at ``root``; ``kw`` overrides (stage ``sft``)."""
    return config.build("smoke", stage="sft", root=str(root), **{**TINY_MODEL, **kw})
