"""The merged copy a PPO rollout samples from (``engine.merged``) and the engine's compaction sizes.

Tiny random-init Llamas with LoRA on every projection, float32 on CPU; the
GPU test (CUDA graphs over the copy) is marked ``gpu``.
"""
from __future__ import annotations

import pytest
import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

from looper_utils import engine as eng
from looper_utils.engine.sampler import _bucket

peft = pytest.importorskip("peft")
from looper_utils.engine.merged import MergedCopy, merged_bytes, why_not_merged  # noqa: E402

PAD = 0
DIMS = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128, initializer_range=0.1, pad_token_id=PAD)
PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _lora_model(device="cpu", hidden=32, seed=0, **lora):
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**{**DIMS, "hidden_size": hidden})).to(device).eval()
    model.generation_config.eos_token_id = None
    pm = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=PROJ, **lora),
                             adapter_name="policy")
    _perturb(pm, "lora_B", 0.3)  # B = 0 at init would make the adapter a no-op
    return pm.eval()


def _perturb(pm, which: str, std: float, seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if which in name:
                p.add_(torch.randn(p.shape, generator=g).to(p.device) * std)


def _prompts(device="cpu"):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, DIMS["vocab_size"], (4, 9), generator=g)
    mask = torch.ones_like(ids)
    for row, n in enumerate([9, 4, 7, 1]):
        ids[row, : 9 - n], mask[row, : 9 - n] = PAD, 0
    return ids.to(device), mask.to(device)


def _logits(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


def _greedy(model, ids, mask, n):
    cfg = GenerationConfig(max_new_tokens=n, do_sample=False, pad_token_id=PAD, eos_token_id=None, bos_token_id=None)
    return model.generate(input_ids=ids, attention_mask=mask, generation_config=cfg)[:, ids.shape[1]:]


def test_merged_copy_computes_the_adapted_model_and_shares_the_rest():
    pm = _lora_model()
    ids, mask = _prompts()
    cp = MergedCopy(pm)
    want = _logits(pm, ids, mask)
    with pm.disable_adapter():
        base = _logits(pm, ids, mask)
    assert (want - base).abs().max() > 0.1  # the adapter changes the model
    assert torch.allclose(_logits(cp.model, ids, mask), want, atol=1e-5, rtol=1e-5)
    # the engine over the copy samples what HF greedy gives for the adapted model
    got = eng.Engine(cp.model).sample(ids, mask, max_new_tokens=10, pad_token_id=PAD)
    assert got.sequences.tolist() == _greedy(pm, ids, mask, 10).tolist()
    # adapted projections are plain linears; embedding, norms, LM head are the model's own tensors
    layer = cp.model.model.layers[0]
    assert all(type(getattr(layer.self_attn, n)) is torch.nn.Linear for n in ("q_proj", "k_proj", "v_proj", "o_proj"))
    lm = pm.get_base_model()
    assert cp.model.model.embed_tokens.weight is lm.model.embed_tokens.weight
    assert cp.model.lm_head.weight is lm.lm_head.weight
    assert cp.model.model.norm.weight is lm.model.norm.weight
    assert not any(p.requires_grad for p in cp.model.parameters())
    # per layer q 32x32, k and v 16x32 (2 KV heads of 8), o 32x32, gate and up 64x32, down 32x64; fp32
    per_layer = 32 * 32 + 2 * 16 * 32 + 32 * 32 + 2 * 64 * 32 + 32 * 64
    assert cp.nbytes == merged_bytes(pm) == 4 * 2 * per_layer


def test_refresh_follows_the_adapters_and_never_touches_the_base():
    pm = _lora_model()
    ids, mask = _prompts()
    base_before = {n: p.detach().clone() for n, p in pm.named_parameters() if "lora_" not in n}
    cp = MergedCopy(pm)
    old = _logits(cp.model, ids, mask)
    _perturb(pm, "lora_A", 0.5, seed=7)  # an optimiser step on the adapter, in place
    new = _logits(pm, ids, mask)
    assert (new - old).abs().max() > 0.05
    assert torch.equal(_logits(cp.model, ids, mask), old)  # the copy changes only on refresh()
    cp.refresh()
    assert torch.allclose(_logits(cp.model, ids, mask), new, atol=1e-5, rtol=1e-5)
    for n, p in pm.named_parameters():
        if "lora_" not in n:
            assert torch.equal(p, base_before[n]), n  # the base is never merged into
    assert not any(getattr(m, "merged", False) for m in pm.modules())


def test_refresh_takes_the_active_adapter_or_none():
    pm = _lora_model()
    pm.add_adapter("other", peft.LoraConfig(r=4, lora_alpha=8, target_modules=PROJ))
    _perturb(pm, "lora_B.other", 0.3, seed=11)
    ids, mask = _prompts()
    cp = MergedCopy(pm)
    policy = _logits(pm, ids, mask)
    assert torch.allclose(_logits(cp.model, ids, mask), policy, atol=1e-5)
    pm.set_adapter("other")
    cp.refresh()
    other = _logits(pm, ids, mask)
    assert (other - policy).abs().max() > 0.05
    assert torch.allclose(_logits(cp.model, ids, mask), other, atol=1e-5)
    with pm.disable_adapter():
        cp.refresh()
        base = _logits(pm, ids, mask)
    assert torch.allclose(_logits(cp.model, ids, mask), base, atol=1e-6)


def test_why_not_merged_names_the_reason():
    torch.manual_seed(0)
    plain = LlamaForCausalLM(LlamaConfig(**DIMS))
    assert "not a PEFT model" in why_not_merged(plain)
    with pytest.raises(ValueError, match="not a PEFT model"):
        MergedCopy(plain)
    assert why_not_merged(_lora_model()) is None
    dora = _lora_model(use_dora=True)
    assert "DoRA" in why_not_merged(dora)
    with pytest.warns(UserWarning, match="lora_bias"):  # PEFT: the projections have no bias of their own
        biased = _lora_model(lora_bias=True)
    assert "lora_bias" in why_not_merged(biased)


def test_sampling_choice_follows_the_setting():
    from looper_utils.ppo.iteration import sampling_choice

    pm, cpu = _lora_model(), torch.device("cpu")
    assert sampling_choice("adapters", pm, cpu, "engine")[0] is False
    assert sampling_choice("merged", pm, cpu, "engine") == (True, "ppo.sampling='merged'")
    merged, why = sampling_choice("auto", pm, cpu, "engine")
    assert not merged and "on cpu" in why  # the CPU keeps the adapters in: smoke samples the fp32 policy itself
    with pytest.raises(ValueError, match="ppo.sampling='merged' is not possible here: .*DoRA"):
        sampling_choice("merged", _lora_model(use_dora=True), cpu, "engine")


def test_auto_merges_on_a_gpu_only_where_the_copy_is_small(monkeypatch):
    from types import SimpleNamespace

    from looper_utils.ppo.iteration import sampling_choice

    pm, gpu = _lora_model(), torch.device("cuda")
    need = merged_bytes(pm)
    for total, want in ((20 * need, True), (20 * need - 1, False)):
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d, t=total: SimpleNamespace(total_memory=t))
        merged, why = sampling_choice("auto", pm, gpu, "engine")
        assert merged is want, why
        assert ("twentieth" in why and "ppo.sampling='merged'" in why) if not want else "merged copy" in why
    assert sampling_choice("auto", pm, gpu, "hf")[0] is False  # the copy is for the engine


def test_config_rejects_an_unknown_sampling():
    from looper_utils import config

    assert config.build("smoke", sampling="merged").ppo.sampling == "merged"
    with pytest.raises(ValueError, match="ppo.sampling='fast'"):
        config.build("smoke", sampling="fast")


def test_compaction_keeps_power_of_two_rows():
    assert [_bucket(n) for n in (1, 7, 8, 9, 100, 128, 129, 513)] == [8, 8, 8, 16, 128, 128, 256, 1024]
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**DIMS)).eval()
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(3, DIMS["vocab_size"], (40, 5), generator=g)
    free = eng.sample(model, ids, max_new_tokens=12, pad_token_id=PAD).sequences
    eos = torch.bincount(free[:, :4].reshape(-1), minlength=DIMS["vocab_size"]).topk(4).indices.tolist()
    engine = eng.Engine(model, check_every=2)
    got = engine.sample(ids, max_new_tokens=12, eos_token_id=eos, pad_token_id=PAD)
    plain = eng.Engine(model, check_every=2, compact=False).sample(ids, max_new_tokens=12, eos_token_id=eos,
                                                                   pad_token_id=PAD)
    assert got.compactions >= 1 and got.sequences.tolist() == plain.sequences.tolist()
    assert engine._n in (8, 16)  # 40 rows, then a power of two once at most half are running


@pytest.mark.gpu
def test_gpu_graphs_over_the_copy_follow_refresh():
    pm = _lora_model(device="cuda", hidden=64)
    ids, mask = _prompts("cuda")
    cp = MergedCopy(pm)
    engine = eng.Engine(cp.model, kv_bucket=16)
    assert engine.sample(ids, mask, max_new_tokens=20).sequences.tolist() == _greedy(pm, ids, mask, 20).tolist()
    captures = engine.n_captures
    _perturb(pm, "lora_A", 0.5, seed=7)
    cp.refresh()  # in place: the captured graphs read the new weights
    want = _greedy(pm, ids, mask, 20)
    got = engine.sample(ids, mask, max_new_tokens=20).sequences
    assert engine.n_captures == captures
    assert (got == want).float().mean() > 0.9  # float32 merge rounding may flip a late near-tie
