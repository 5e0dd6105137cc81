"""Compiled decoder layers (looper_utils.compiled) and 02's training forwards (sft_setup.training_forwards).

The compiler runs with its ``aot_eager`` backend here: the graph capture, the autograd graph and the swap of
the layers' forwards as on a GPU, without generating kernels (seconds on a CPU)."""
import pytest
import torch

from looper_utils import compiled, config, modeling, sft_setup

from _tiny import tiny_cfg


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cfg = tiny_cfg(tmp_path_factory.mktemp("c"))
    tok = modeling.build_tokenizer(["12 + 30 = 42", "7 * 6 = 42", "so the answer is 42"], vocab_size=300)
    return cfg, tok


def _model(cfg, tok):
    return modeling.build_scratch_model(cfg.model, tok, seed=0)


def _right_padded(vocab: int, pad: int):
    torch.manual_seed(1)
    ids = torch.randint(3, vocab, (3, 12))
    att = torch.ones_like(ids)
    att[1, 8:] = 0
    att[2, 5:] = 0
    return ids.masked_fill(att == 0, pad), att


def test_compiled_layers_match_eager_forward_and_backward_and_leave_the_model_as_it_was(tiny):
    cfg, tok = tiny
    eager, comp = _model(cfg, tok), _model(cfg, tok)
    keys = list(comp.state_dict())
    layers = compiled.decoder_layers(comp)
    assert len(layers) == cfg.model.num_layers
    cl = compiled.CompiledLayers(layers, backend="aot_eager")
    ids, att = _right_padded(len(tok), tok.pad_token_id)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    with cl.active():
        with cl.active():  # re-entrant: the inner exit leaves the outer's forwards in place
            pass
        assert all(layer.forward is fn for layer, fn in zip(layers, cl.forwards))
        out_c = comp(input_ids=ids, attention_mask=att, labels=ids.masked_fill(att == 0, -100))
        out_c.loss.backward()
        for n in (12, 7):  # other lengths: dynamic shapes, no error
            comp(input_ids=ids[:2, :n])
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs
    out_e = eager(input_ids=ids, attention_mask=att, labels=ids.masked_fill(att == 0, -100))
    out_e.loss.backward()
    assert torch.allclose(out_c.logits, out_e.logits, atol=1e-5)
    grads_e = dict(eager.named_parameters())
    for name, p in comp.named_parameters():
        assert torch.allclose(p.grad, grads_e[name].grad, atol=1e-5), name
    assert all("forward" not in layer.__dict__ for layer in layers)  # the layers' own forward again
    assert list(comp.state_dict()) == keys  # nothing wrapped: checkpoints keep their names


def test_decoder_layers_needs_a_layer_list():
    with pytest.raises(ValueError, match="no decoder layers"):
        compiled.decoder_layers(torch.nn.Linear(2, 2))


def test_compile_choice_reasons():
    gpu, cpu = torch.device("cuda"), torch.device("cpu")
    choice = lambda s, d, **kw: compiled.compile_choice(s, "ppo.compile", d, **{"checkpointing": False,  # noqa: E731
                                                                              "quantized": False, **kw})
    assert choice("auto", gpu)[0] and not choice("auto", cpu)[0]
    assert choice("auto", gpu, checkpointing=True) == (False, "activations are recomputed (gradient checkpointing): "
                                                              "not measured compiled (ppo.compile=on forces it)")
    assert not choice("auto", gpu, quantized=True)[0] and "4-bit" in choice("auto", gpu, quantized=True)[1]
    assert choice("off", gpu) == (False, "ppo.compile='off'")
    assert choice("on", cpu, checkpointing=True) == (True, "ppo.compile='on'")
    with pytest.raises(ValueError, match="ppo.compile='yes'"):
        choice("yes", gpu)
    with pytest.raises(ValueError, match="ppo.compile='yes'"):
        config.build("demo", stage="ppo", compile="yes")


def test_training_forwards_drop_the_padding_mask_on_a_gpu_only_and_undo_it(tiny):
    cfg, tok = tiny
    cfg = cfg.override(stage="sft", compile="off")
    model = _model(cfg, tok)
    ids, att = _right_padded(len(tok), tok.pad_token_id)
    labels = ids.masked_fill(att == 0, -100)
    seen = []
    model.get_decoder().register_forward_pre_hook(lambda m, a, kw: seen.append(kw.get("attention_mask")),
                                                  with_kwargs=True)
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=att, labels=labels)
        # the decision is made from the device; the hook itself runs anywhere, so a CPU model shows it
        with sft_setup.training_forwards(model, cfg, torch.device("cuda")) as why:
            got = model(input_ids=ids, attention_mask=att, labels=labels)
        after = model(input_ids=ids, attention_mask=att, labels=labels)
        with sft_setup.training_forwards(model, cfg, torch.device("cpu")):
            model(input_ids=ids, attention_mask=att, labels=labels)
    assert why == "sft.compile='off'"
    assert seen[0] is att and seen[1] is None and seen[2] is att and seen[3] is att
    real = att.bool()
    assert torch.allclose(got.logits[real], want.logits[real], atol=1e-5)  # right padding: the same numbers
    assert torch.allclose(got.loss, want.loss, atol=1e-6) and torch.equal(after.logits, want.logits)


@pytest.mark.gpu
def test_inductor_compiled_layers_on_a_gpu_match_eager(tiny):
    """The real backend (Triton kernels) under bf16 autocast, as 02 runs it: within bf16 rounding of the eager
    layers, forward and backward."""
    cfg, tok = tiny
    dev = torch.device("cuda")
    eager, comp = _model(cfg, tok).to(dev), _model(cfg, tok).to(dev)
    cl = compiled.CompiledLayers(compiled.decoder_layers(comp))
    ids, att = (t.to(dev) for t in _right_padded(len(tok), tok.pad_token_id))
    labels = ids.masked_fill(att == 0, -100)
    outs = []
    for model, ctx in ((eager, None), (comp, cl)):
        with torch.autocast("cuda", dtype=torch.bfloat16), (ctx.active() if ctx else torch.enable_grad()):
            out = model(input_ids=ids, labels=labels)
        out.loss.backward()
        outs.append(out)
    real = att.bool()
    assert (outs[0].logits[real].float() - outs[1].logits[real].float()).abs().max() < 0.05
    assert abs(outs[0].loss.item() - outs[1].loss.item()) < 1e-2
    g = dict(eager.named_parameters())
    for name, p in comp.named_parameters():
        assert torch.allclose(p.grad, g[name].grad, atol=1e-2, rtol=0.1), name
