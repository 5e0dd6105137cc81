"""Tokenizer and tiny-Llama builder, checkpoints, policy loading and the loader's error messages."""
from __future__ import annotations

import json

import pytest
import torch
from _tiny import tiny_cfg

from looper_utils import config, data, modeling, prompts


@pytest.fixture(scope="module")
def rows():
    return data.synthetic_problems(60, seed=3)


@pytest.fixture(scope="module")
def built(tmp_path_factory, rows):
    """A scratch base built once: (cfg, model, tokenizer)."""
    cfg = tiny_cfg(tmp_path_factory.mktemp("proj"))
    model, tok = modeling.build_or_load_base(cfg, rows, device=torch.device("cpu"))
    return cfg, model, tok


def test_tokenizer_splits_digits_and_keeps_think_tags(built):
    _, _, tok = built
    pieces = [tok.decode([i]) for i in tok("has 128 apples", add_special_tokens=False)["input_ids"]]
    assert [p for p in pieces if any(c.isdigit() for c in p)] == [" 1", "2", "8"]
    ids = tok("<think>\n2+2=4\n</think>\n\n#### 4", add_special_tokens=False)["input_ids"]
    assert tok.convert_tokens_to_ids("<think>") in ids and tok.convert_tokens_to_ids("</think>") in ids
    # not special: they survive decoding with skip_special_tokens (the grader needs </think>)
    assert tok.decode(ids + [tok.eos_token_id], skip_special_tokens=True) == "<think>\n2+2=4\n</think>\n\n#### 4"


def test_tokenizer_has_pad_bos_eos_and_a_think_template(built):
    _, _, tok = built
    assert {tok.pad_token, tok.bos_token, tok.eos_token} == {modeling.PAD, modeling.BOS, modeling.EOS}
    assert len({tok.pad_token_id, tok.bos_token_id, tok.eos_token_id}) == 3
    assert prompts.completion_starts_in_think(tok, "chat")


def test_base_checkpoint_round_trip(built):
    cfg, model, tok = built
    base = modeling.base_dir(cfg)
    state = modeling.read_state(base)
    assert state["stage"] == "base" and state["step"] == 0 and state["format"] == "full"
    assert state["n_params"] == modeling.count_params(model)["total"]
    saved = config.from_dict(json.loads((base / "looper_config.json").read_text()))
    assert saved.model == cfg.model
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 2
    assert model.config.vocab_size == len(tok) <= 400
    reloaded, tok2 = modeling.load_policy(cfg, "base", torch.device("cpu"))
    x = torch.tensor([prompts.encode_prompt(tok, "Mia has 3 apples.")])
    assert torch.equal(reloaded(x).logits, model(x).logits)
    assert tok2("Mia has 13", add_special_tokens=False)["input_ids"] == tok("Mia has 13", add_special_tokens=False)["input_ids"]


def test_existing_base_is_reused_not_rebuilt(built):
    cfg, model, _ = built
    marker = modeling.base_dir(cfg) / "model.safetensors"
    mtime = marker.stat().st_mtime_ns
    again, _ = modeling.build_or_load_base(cfg, None, device=torch.device("cpu"))
    assert marker.stat().st_mtime_ns == mtime
    assert torch.equal(again.model.embed_tokens.weight, model.model.embed_tokens.weight)


def test_base_built_with_other_settings_is_refused(built):
    cfg, _, _ = built
    other = cfg.override(stage="sft", hidden_size=48, num_heads=2)
    with pytest.raises(modeling.ModelLoadError, match="other model settings.*hidden_size.*delete"):
        modeling.build_or_load_base(other, None, device=torch.device("cpu"))


def test_missing_base_without_rows_names_the_notebook(tmp_path):
    with pytest.raises(modeling.ModelLoadError, match="01_data"):
        modeling.build_or_load_base(tiny_cfg(tmp_path), [], device=torch.device("cpu"))


def test_small_init_scales_with_width(built):
    cfg, _, _ = built
    m = modeling.build_scratch_model(cfg.model, built[2], seed=0)
    assert m.config.initializer_range == pytest.approx((2 / (5 * 32)) ** 0.5)
    m2 = modeling.build_scratch_model(cfg.override(stage="sft", init_std=0.02).model, built[2], seed=0)
    assert m2.config.initializer_range == 0.02


def test_same_seed_same_weights(built):
    cfg, _, tok = built
    a = modeling.build_scratch_model(cfg.model, tok, seed=5)
    b = modeling.build_scratch_model(cfg.model, tok, seed=5)
    c = modeling.build_scratch_model(cfg.model, tok, seed=6)
    assert torch.equal(a.lm_head.weight, b.lm_head.weight)
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)


def test_adapter_checkpoint_loads_on_its_base(built, tmp_path):
    cfg, model, tok = built
    lora_cfg = cfg.override(stage="sft", use_lora=True, model__lora_r=4, model__lora_alpha=8, lora_dropout=0.0)
    peft_model = modeling.apply_lora(modeling.load_policy(cfg, "base", torch.device("cpu"))[0], lora_cfg.model)
    with torch.no_grad():  # make the adapter do something (LoRA B starts at zero)
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    peft_model.eval()
    out = modeling.save_checkpoint(tmp_path / "sft", peft_model, tok, lora_cfg, stage="sft", step=7)
    assert (out / "adapter_config.json").is_file() and modeling.read_state(out)["format"] == "adapter"
    x = torch.tensor([prompts.encode_prompt(tok, "Ben has 4 cards.")])
    want = peft_model(x).logits
    for merge in (True, False):
        loaded, _ = modeling.load_policy(lora_cfg, str(out), torch.device("cpu"), merge=merge)
        assert hasattr(loaded, "peft_config") != merge
        torch.testing.assert_close(loaded(x).logits, want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(model(x).logits, want)  # the adapter changed the output


def test_four_bit_without_cuda_is_a_clear_error():
    with pytest.raises(modeling.ModelLoadError, match="4bit.*CUDA"):
        modeling.choose_quantization("4bit", 10, torch.device("cpu"))


def test_auto_quantization_by_gpu_memory(monkeypatch):
    class Props:
        total_memory = 0

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: Props)
    cuda = torch.device("cuda", 0)
    Props.total_memory = 80 * 2**30
    assert modeling.choose_quantization("auto", 8_000_000_000, cuda) == "bf16"
    Props.total_memory = 24 * 2**30
    assert modeling.choose_quantization("auto", 8_000_000_000, cuda) == "4bit"
    assert modeling.choose_quantization("auto", 8_000_000_000, torch.device("cpu")) == "none"


def test_not_a_causal_lm_is_a_clear_error(tmp_path):
    from transformers import T5Config  # an encoder-decoder: a path someone could point at by mistake

    T5Config(d_model=32, num_layers=1, num_heads=2, d_ff=64, d_kv=16).save_pretrained(tmp_path)
    cfg = config.build("full", root=str(tmp_path), name_or_path=str(tmp_path), quantization="none")
    with pytest.raises(modeling.ModelLoadError, match="not a causal language model"):
        modeling.load_base(cfg, torch.device("cpu"))


def test_folder_without_config_is_a_clear_error(tmp_path):
    cfg = config.build("full", root=str(tmp_path), name_or_path=str(tmp_path), quantization="none")
    with pytest.raises(modeling.ModelLoadError, match="config.json is missing"):
        modeling.load_base(cfg, torch.device("cpu"))


def test_local_causal_lm_loads_like_a_hub_model(built):
    cfg, model, _ = built
    full = config.build("full", root=cfg.root, name_or_path=str(modeling.base_dir(cfg)), quantization="auto")
    loaded, tok = modeling.load_policy(full, "base", torch.device("cpu"))
    assert loaded.dtype == torch.float32 and not loaded.training
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)


def test_missing_pad_token_is_fixed_with_a_note(built):
    _, _, tok = built
    t = tok.__class__.from_pretrained(tok.name_or_path) if tok.name_or_path else tok
    t.pad_token = None
    with pytest.warns(UserWarning, match="no pad token"):
        modeling.ensure_pad_token(t)
    assert t.pad_token == t.eos_token


def test_resolve_device():
    assert modeling.resolve_device("cpu") == torch.device("cpu")
    assert modeling.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(modeling.ModelLoadError, match="no CUDA"):
            modeling.resolve_device("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_four_bit_load_on_gpu(built):
    pytest.importorskip("bitsandbytes")
    cfg, _, _ = built
    full = config.build("full", root=cfg.root, name_or_path=str(modeling.base_dir(cfg)), quantization="4bit")
    model, tok = modeling.load_policy(full, "base", torch.device("cuda"))
    assert getattr(model, "is_loaded_in_4bit", False)
    x = torch.tensor([prompts.encode_prompt(tok, "Mia has 3 apples.")], device="cuda")
    assert torch.isfinite(model(x).logits).all()
    peft_model = modeling.apply_lora(model, full.model)
    assert modeling.count_params(peft_model)["trainable"] > 0
