"""GPU-only checks (marked `gpu`, skipped without CUDA): run with `make test ARGS="-m gpu"` on a GPU box.

- a QLoRA (4-bit NF4) load of a local Llama and one SFT step;
- one PPO iteration on the GPU;
- the rollout engine's greedy output equals HF greedy on the same model.
"""
import pytest
import torch

from looper_utils import config, data, generation, modeling, ppo, prompts, sft

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def local_llama(tmp_path_factory):
    """A small random Llama with the project's tokenizer, saved like a hub model."""
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("gpu_root")
    rows = data.synthetic_problems(200, seed=0)
    tok = modeling.build_tokenizer(modeling.tokenizer_corpus(rows), vocab_size=400, think=True)
    conf = LlamaConfig(hidden_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       intermediate_size=512, vocab_size=len(tok), max_position_embeddings=1024,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(conf).save_pretrained(root / "llama")
    tok.save_pretrained(root / "llama")
    return root, rows


def _cfg(root, **over):
    return config.build("full", root=str(root), **{"model.name_or_path": str(root / "llama"),
                                                   "sft.max_steps": 1, "sft.batch_size": 4, "sft.grad_accum": 1,
                                                   "sft.max_length": 256, **over})


def test_qlora_load_and_one_sft_step(local_llama):
    pytest.importorskip("bitsandbytes")
    root, rows = local_llama
    cfg = _cfg(root, **{"model.quantization": "4bit"})
    device = torch.device("cuda")
    model, tok = modeling.load_base(cfg, device)
    assert getattr(model, "is_loaded_in_4bit", False)
    res = sft.train_sft(cfg, model, tok, rows[:16], device=device, progress=False)
    assert res.train_steps == 1 and res.final_loss is not None and res.final_loss > 0
    assert modeling.read_state(modeling.sft_dir(cfg))["format"] == "adapter"


def test_one_ppo_iteration_on_gpu(local_llama):
    root, rows = local_llama
    cfg = _cfg(root, **{"model.quantization": "bf16"})
    device = torch.device("cuda")
    model, tok = modeling.load_base(cfg, device)
    sft.train_sft(cfg, model, tok, rows[:16], device=device, progress=False)
    cfg = cfg.override(stage="ppo", iterations=1, prompts_per_iter=8, k=2, max_new_tokens=32, minibatch_size=8,
                       eval_every=0, n_dev=8)
    tr = ppo.PPOTrainer(cfg, rows[:150], rows[150:], progress=False)
    hist = tr.train()
    assert len(hist) == 1 and hist[0]["response_length"] > 0
    assert tr.pv.ref_mode == "adapter" and next(tr.pv.model.parameters()).is_cuda
    assert (root / "checkpoints" / "ppo" / "last" / "policy_adapter.safetensors").is_file()


def test_engine_greedy_matches_hf_greedy(local_llama):
    from looper_utils import engine

    root, rows = local_llama
    device = torch.device("cuda")
    cfg = _cfg(root, **{"model.quantization": "bf16"})
    model, tok = modeling.load_base(cfg, device)
    model = model.float()  # fp32 so both paths round alike
    ps = [prompts.build_prompt(r["question"], tok, "chat") for r in rows[:6]]
    hf = generation.generate(model, tok, ps, max_new_tokens=24, progress=False)
    ours = generation.generate(model, tok, ps, max_new_tokens=24, progress=False, backend="engine")
    assert [s.completion_ids for s in hf.samples] == [s.completion_ids for s in ours.samples]
    assert engine.supports(model)
