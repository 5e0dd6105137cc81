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


def test_ppo_bf16_base_matches_fp32_log_probs(tmp_path):
    """precision='auto' on a GPU: the frozen fp32 SFT base is held in bf16 and the forwards autocast; the
    log-probs stay within bf16 rounding of the fp32 ones, and the adapters train in fp32."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).parent))
    from _tiny import tiny_ppo_project

    cfg, train, dev = tiny_ppo_project(tmp_path, 60, 50, iterations=1, prompts_per_iter=4, k=2, max_new_tokens=16,
                                       minibatch_size=4, eval_every=0, n_dev=4, advantage="group")
    cfg = cfg.override(device="cuda")
    got = {}
    for precision in ("fp32", "auto"):
        tr = ppo.PPOTrainer(cfg.override(stage="ppo", precision=precision), train, dev, out_dir=tmp_path / precision,
                            progress=False)
        if precision == "fp32":
            roll = tr.sample(0)
        b = roll.batch
        with torch.no_grad():
            got[precision] = tr.pv.token_logprobs(ppo.POLICY, b.input_ids, b.attention_mask, mask=b.mask)[0]
        base = [p for n, p in tr.pv.model.named_parameters() if "lora_" not in n]
        assert {p.dtype for p in base} == {torch.bfloat16 if precision == "auto" else torch.float32}
        assert all(p.dtype == torch.float32 for p in tr.policy_params)
        stats = tr.update(roll, tr.advantages(roll, tr.score(roll)))
        assert all(torch.isfinite(torch.tensor(v)) for k, v in stats.items() if k != "explained_variance"), stats
    m = roll.batch.mask.bool()
    assert (got["auto"][m] - got["fp32"][m]).abs().max() < 0.1
