"""The rollout engine against transformers: greedy token for token, sampling in distribution.

Tiny random-init models in float32 on CPU (seconds). GPU tests (CUDA graphs,
Triton kernel) are marked ``gpu`` and skipped without CUDA.
"""
from __future__ import annotations

import pytest
import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from looper_utils import engine as eng
from looper_utils.engine import kernels as ek

from _sampling import assert_draws_follow

PAD = 0
DIMS = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128, initializer_range=0.1, pad_token_id=PAD)


def _model(cls=LlamaForCausalLM, cfg_cls=LlamaConfig, seed=0, device="cpu", **overrides):
    torch.manual_seed(seed)
    model = cls(cfg_cls(**{**DIMS, **overrides})).to(device).eval()
    model.generation_config.eos_token_id = None  # EOS only where a test passes one
    return model


def _prompts(lengths, seed=1, device="cpu"):
    """Left-padded random prompts of the given lengths."""
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.full((len(lengths), width), PAD, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, width - n:] = torch.randint(3, DIMS["vocab_size"], (n,), generator=g)
        mask[row, width - n:] = 1
    return ids.to(device), mask.to(device)


def _hf_greedy(model, ids, mask, n, eos=None):
    cfg = GenerationConfig(max_new_tokens=n, do_sample=False, pad_token_id=PAD, eos_token_id=eos, bos_token_id=None)
    out = model.generate(input_ids=ids, attention_mask=mask, generation_config=cfg)
    return out[:, ids.shape[1]:]


LENGTHS = [5, 9, 3, 7, 1]


@pytest.mark.parametrize("cls,cfg_cls", [(LlamaForCausalLM, LlamaConfig), (Qwen2ForCausalLM, Qwen2Config)])
def test_greedy_equals_hf_greedy_on_left_padded_batch(cls, cfg_cls):
    model = _model(cls, cfg_cls)
    ids, mask = _prompts(LENGTHS)
    want = _hf_greedy(model, ids, mask, 12)
    got = eng.sample(model, ids, mask, max_new_tokens=12, temperature=0.0, pad_token_id=PAD)
    assert got.sequences.tolist() == want.tolist()
    assert got.lengths.tolist() == [12] * len(LENGTHS)
    assert not got.finished_eos.any()
    assert got.n_new_tokens == 12 * len(LENGTHS)
    # rows differ, so padding and positions were really exercised
    assert len({tuple(r) for r in want.tolist()}) > 1


def test_greedy_stops_at_eos_and_pads_like_hf():
    model = _model()
    ids, mask = _prompts(LENGTHS)
    free = _hf_greedy(model, ids, mask, 12)
    eos = int(free[0, 3])  # a token row 0 emits at step 4: rows stop at different steps
    want = _hf_greedy(model, ids, mask, 12, eos=eos)
    got = eng.sample(model, ids, mask, max_new_tokens=12, temperature=0.0, eos_token_id=eos, pad_token_id=PAD)
    n = want.shape[1]  # HF stops early once every row finished
    assert got.sequences[:, :n].tolist() == want.tolist()
    assert (got.sequences[:, n:] == PAD).all()
    assert got.lengths[0].item() <= 4 and got.finished_eos[0].item()
    for row in range(len(LENGTHS)):
        length = int(got.lengths[row])
        if got.finished_eos[row]:
            assert got.sequences[row, length - 1].item() == eos
            assert (got.sequences[row, length:] == PAD).all()
        else:
            assert length == 12 and eos not in got.sequences[row].tolist()


def test_lora_in_engine_and_merged_equal_hf_greedy():
    pm = _lora(_model())
    ids, mask = _prompts(LENGTHS)
    want = _hf_greedy(pm, ids, mask, 10)
    with pm.disable_adapter():
        base = _hf_greedy(pm, ids, mask, 10)
    assert want.tolist() != base.tolist()  # the adapter changes the output
    pm.train()  # the engine must switch LoRA dropout off while sampling and restore the mode after
    engine = eng.Engine(pm)
    got = engine.sample(ids, mask, max_new_tokens=10, pad_token_id=PAD)
    assert pm.training
    assert got.sequences.tolist() == want.tolist()
    pm.merge_adapter()
    merged = engine.sample(ids, mask, max_new_tokens=10, pad_token_id=PAD)
    pm.unmerge_adapter()
    assert merged.sequences.tolist() == want.tolist()


def test_sampler_matches_hf_warpers_in_distribution():
    # logits with a tie at the top-k boundary and a long tail
    logits = torch.tensor([[2.0, 1.5, 1.5, 1.0, 0.5, 0.2, -1.0, -3.0]])
    temp, k, p = 0.8, 5, 0.85
    scores = logits.clone()
    for w in (TemperatureLogitsWarper(temp), TopKLogitsWarper(k), TopPLogitsWarper(p)):
        scores = w(None, scores)
    target = torch.softmax(scores, dim=-1)[0]
    n = 40000
    g = torch.Generator().manual_seed(0)
    draws = ek.sample_tokens(logits.expand(n, -1).contiguous(), temp, p, k, generator=g)
    counts = torch.bincount(draws, minlength=logits.shape[1]).double()
    assert counts[target == 0].sum() == 0  # filtered tokens never drawn
    keep = target > 0
    expected = target[keep].double() * n
    chi2 = float(((counts[keep] - expected) ** 2 / expected).sum())
    assert keep.sum() >= 3
    assert chi2 < 25.0, (chi2, counts.tolist(), target.tolist())  # dof <= 4; p(chi2 > 25) < 1e-4


def test_first_token_distribution_equals_softmax_of_model_logits():
    model = _model(seed=5)
    ids, mask = _prompts([6], seed=7)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits[:, -1].float()
    temp, p = 1.5, 0.9
    scores = TopPLogitsWarper(p)(None, TemperatureLogitsWarper(temp)(None, logits))
    target = torch.softmax(scores, dim=-1)[0].double()
    n = 6000
    g = torch.Generator().manual_seed(11)
    out = eng.sample(model, ids.expand(n, -1), mask.expand(n, -1), max_new_tokens=1, temperature=temp, top_p=p,
                     pad_token_id=PAD, generator=g)
    counts = torch.bincount(out.sequences[:, 0], minlength=DIMS["vocab_size"]).double()
    assert_draws_follow(counts, target, n)


def test_engine_reused_inside_and_outside_inference_mode():
    model = _model()
    ids, mask = _prompts(LENGTHS)
    engine = eng.Engine(model)
    with torch.inference_mode():  # as looper_utils.generation calls it
        first = engine.sample(ids, mask, max_new_tokens=6)
    second = engine.sample(ids, mask, max_new_tokens=6)  # same cache, updated in place outside the mode
    assert first.sequences.tolist() == second.sequences.tolist() == _hf_greedy(model, ids, mask, 6).tolist()


def test_supports_and_input_errors():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = _model()
    assert eng.supports(model)
    assert not eng.supports(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50)))
    ids, mask = _prompts([2, 4])
    with pytest.raises(ValueError, match="padding_side"):
        eng.sample(model, ids, mask.flip(1), max_new_tokens=2)
    with pytest.raises(ValueError, match="max_new_tokens"):
        eng.sample(model, ids, mask, max_new_tokens=0)


def test_compaction_keeps_outputs_equal_to_hf():
    model = _model()
    ids, mask = _prompts([1 + (7 * i) % 13 for i in range(32)], seed=2)
    free = _hf_greedy(model, ids, mask, 16)
    eos = torch.bincount(free[:, :6].reshape(-1), minlength=DIMS["vocab_size"]).topk(3).indices.tolist()
    want = _hf_greedy(model, ids, mask, 16, eos=eos)
    got = eng.Engine(model, check_every=2).sample(ids, mask, max_new_tokens=16, eos_token_id=eos, pad_token_id=PAD)
    assert got.compactions >= 1  # most rows stop early: the running ones were moved and decoded alone
    n = want.shape[1]
    assert got.sequences[:, :n].tolist() == want.tolist()
    assert (got.sequences[:, n:] == PAD).all()
    assert got.n_new_tokens == int(got.lengths.sum()) < 32 * 16
    plain = eng.Engine(model, check_every=2, compact=False).sample(ids, mask, max_new_tokens=16, eos_token_id=eos,
                                                                   pad_token_id=PAD)
    assert plain.compactions == 0 and plain.sequences.tolist() == got.sequences.tolist()


def _lora(model, seed=3, std=0.3):
    peft = pytest.importorskip("peft")
    cfg = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1,
                          target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    pm = peft.get_peft_model(model, cfg)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in pm.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, std)  # B = 0 at init would make the adapter a no-op
    return pm.eval()


# head_dim 16 on the GPU: the smallest the Triton kernels take
@pytest.mark.gpu
@pytest.mark.parametrize("attention,fused", [("sdpa", False), ("sdpa", True), ("triton", True), ("triton", False)])
def test_gpu_graphs_greedy_equals_hf(attention, fused):
    model = _model(device="cuda", hidden_size=64)
    ids, mask = _prompts(LENGTHS, device="cuda")
    want = _hf_greedy(model, ids, mask, 40)
    engine = eng.Engine(model, attention=attention, fused=fused, kv_bucket=16)
    got = engine.sample(ids, mask, max_new_tokens=40, pad_token_id=PAD)
    assert got.cuda_graphs and got.attention == attention and got.fused == fused
    assert got.sequences.tolist() == want.tolist()
    again = engine.sample(ids, mask, max_new_tokens=40, pad_token_id=PAD)  # graphs reused
    assert again.sequences.tolist() == want.tolist()
    assert engine.n_captures == (1 if attention == "triton" else 3)  # 16-column buckets over 10..48


@pytest.mark.gpu
def test_gpu_graphs_are_captured_afresh_for_a_new_batch_size():
    """A batch of another size drops the graphs (a new KV cache) and captures new ones in a new memory pool,
    while the first call's outputs are still held: no fallback to eager decoding, HF's greedy tokens."""
    import warnings

    model = _model(device="cuda", hidden_size=64)
    engine = eng.Engine(model, kv_bucket=16)
    ids, mask = _prompts(LENGTHS, device="cuda")
    first = engine.sample(ids, mask, max_new_tokens=20, pad_token_id=PAD)
    captures, pool = engine.n_captures, engine._pool
    small_ids, small_mask = ids[:3], mask[:3]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "CUDA graph capture failed ..." would raise here
        second = engine.sample(small_ids, small_mask, max_new_tokens=20, pad_token_id=PAD)
    assert second.cuda_graphs and engine.use_graphs and engine.n_captures > captures
    assert engine._pool is not None and engine._pool != pool
    assert second.sequences.tolist() == _hf_greedy(model, small_ids, small_mask, 20).tolist()
    assert first.sequences.shape[0] == len(LENGTHS)


@pytest.mark.gpu
def test_gpu_graphs_follow_lora_updates_and_merge():
    pm = _lora(_model(device="cuda", hidden_size=64))
    ids, mask = _prompts(LENGTHS, device="cuda")
    engine = eng.Engine(pm, kv_bucket=16)
    assert engine.sample(ids, mask, max_new_tokens=20).sequences.tolist() == _hf_greedy(pm, ids, mask, 20).tolist()
    with torch.no_grad():  # an optimizer step: in place, so the captured graphs must see it
        for name, param in pm.named_parameters():
            if "lora_A" in name:
                param.mul_(-1.5)
    want = _hf_greedy(pm, ids, mask, 20)
    assert engine.sample(ids, mask, max_new_tokens=20).sequences.tolist() == want.tolist()
    pm.merge_adapter()  # flips PEFT's Python state: graphs are captured again
    merged = engine.sample(ids, mask, max_new_tokens=20).sequences
    pm.unmerge_adapter()
    assert (merged == want).float().mean() > 0.9  # float32 merge rounding may flip a late near-tie


@pytest.mark.gpu
def test_gpu_gumbel_sampler_matches_softmax():
    logits = torch.tensor([2.0, 1.5, 1.5, 1.0, 0.5, 0.2, -1.0, -3.0], device="cuda")
    n, temp = 200000, 0.8
    g = torch.Generator(device="cuda").manual_seed(0)
    seed = torch.randint(0, 2**31 - 1, (1,), device="cuda", generator=g)
    draws = ek.gumbel_sample(logits.expand(n, -1).contiguous().bfloat16(), temp, seed)
    target = torch.softmax(logits.bfloat16().float() / temp, -1).double().cpu() * n
    counts = torch.bincount(draws.cpu(), minlength=8).double()
    chi2 = float(((counts - target) ** 2 / target).sum())
    assert chi2 < 30.0, (chi2, counts.tolist())  # 7 dof


@pytest.mark.gpu
def test_gpu_kernels_match_torch():
    for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 2e-2)):
        assert ek.check_triton_decode("cuda", dtype, kv_heads=8, groups=4, head_dim=128) < tol
        assert ek.check_fused_ops("cuda", dtype, hidden=4096, n_heads=32, kv_heads=8, head_dim=128) < tol
