"""PPO on the tiny CPU model: adapter switching, gradients, checkpoints and resume."""
import contextlib
import json

import pytest
import torch

from looper_utils import config, data, modeling, ppo
from looper_utils.ppo.model import POLICY, REF, VALUE
from looper_utils.ppo.resume import load_state

from _tiny import tiny_ppo_project


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_ppo_project(tmp_path_factory.mktemp("ppo_root"), 120, 100, iterations=3, prompts_per_iter=4, k=2,
                            advantage="gae", max_new_tokens=16, minibatch_size=4, eval_every=0, n_dev=8,
                            ppo_epochs=1, learning_rate=5e-3)


def _trainer(setup, out, **over):
    cfg, train, dev = setup
    cfg = cfg.override(stage="ppo", **over)
    return ppo.PPOTrainer(cfg, train, dev, out_dir=out, progress=False)


def _batch(tr):
    from looper_utils import generation, prompts
    res = generation.generate(tr.pv.model, tr.tok, [prompts.build_prompt(r["question"], tr.tok, "chat")
                                                    for r in tr.train_rows[:3]], n=2, max_new_tokens=8,
                              temperature=1.0, seed=0, progress=False)
    return ppo.make_batch(res.samples, tr.tok.pad_token_id, tr.device)


def test_reference_fixed_policy_moves_value_head_learns(setup, tmp_path):
    tr = _trainer(setup, tmp_path / "a")
    b = _batch(tr)
    with torch.no_grad():
        ref0 = tr.pv.token_logprobs(REF, b.input_ids, b.attention_mask)[0]
        pol0 = tr.pv.token_logprobs(POLICY, b.input_ids, b.attention_mask)[0]
    assert torch.allclose(ref0, pol0, atol=1e-6)  # the policy starts as the SFT model
    base_before = {n: p.detach().clone() for n, p in tr.pv.model.named_parameters() if "lora_" not in n}
    tr.train(iterations=2)
    with torch.no_grad():
        ref1 = tr.pv.token_logprobs(REF, b.input_ids, b.attention_mask)[0]
        pol1 = tr.pv.token_logprobs(POLICY, b.input_ids, b.attention_mask)[0]
    assert torch.equal(ref0, ref1), "the reference moved"
    assert not torch.allclose(pol0, pol1), "the policy did not move"
    for n, p in tr.pv.model.named_parameters():
        if "lora_" not in n:
            assert torch.equal(p, base_before[n]), f"frozen base weight {n} changed"
            assert not p.requires_grad


def test_log_probs_are_those_of_the_sampling_temperature(setup, tmp_path):
    tr = _trainer(setup, tmp_path / "t", temperature=0.5)
    b = _batch(tr)
    old = tr._forward_all(b)
    with torch.no_grad(), tr.pv.use(POLICY):
        logits = tr.pv.model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits[:, :-1].float()
    at_half = torch.log_softmax(logits / 0.5, -1).gather(-1, b.input_ids[:, 1:, None]).squeeze(-1)
    at_one = torch.log_softmax(logits, -1).gather(-1, b.input_ids[:, 1:, None]).squeeze(-1)
    m = b.mask.bool()
    assert torch.allclose(old["logp"][m], at_half[m], atol=1e-5)
    assert torch.allclose(old["ref"][m], at_half[m], atol=1e-5)  # the policy starts at the reference
    assert not torch.allclose(old["logp"][m], at_one[m], atol=1e-3)


def test_adapter_switches_walk_the_model_only_when_the_adapter_changes(setup, tmp_path, monkeypatch):
    tr = _trainer(setup, tmp_path / "sw")
    flags = {n: p.requires_grad for n, p in tr.pv.model.named_parameters()}
    assert {n for n, f in flags.items() if f} == {n for n in flags if f".{POLICY}." in n or f".{VALUE}." in n}
    switches = []
    set_adapter = tr.pv.model.set_adapter
    monkeypatch.setattr(tr.pv.model, "set_adapter", lambda a: switches.append(a) or set_adapter(a))
    with tr.pv.use(POLICY):  # active already
        with tr.pv.use(VALUE):
            assert tr.pv.model.active_adapter == VALUE
            with tr.pv.use(VALUE):
                pass
            assert {n for n, p in tr.pv.model.named_parameters() if p.requires_grad} == {n for n, f in flags.items() if f}
    assert switches == [VALUE, POLICY] and tr.pv.model.active_adapter == POLICY
    assert {n: p.requires_grad for n, p in tr.pv.model.named_parameters()} == flags


def test_gradients_reach_value_head_not_base(setup, tmp_path):
    tr = _trainer(setup, tmp_path / "g")
    b = _batch(tr)
    v = tr.pv.values(b.input_ids, b.attention_mask)
    (v * b.mask).sum().backward()
    assert tr.pv.value_head.weight.grad is not None and tr.pv.value_head.weight.grad.abs().sum() > 0
    value_lora = [p for n, p in tr.pv.model.named_parameters() if f".{VALUE}." in n and "lora_A" in n]
    assert value_lora and all(p.grad is None or p.grad.abs().sum() == 0 for p in value_lora)  # B starts at 0
    assert all(p.grad is None for n, p in tr.pv.model.named_parameters() if "lora_" not in n)
    assert all(p.grad is None for n, p in tr.pv.model.named_parameters() if f".{POLICY}." in n)


@pytest.mark.parametrize("advantage,critic", [("gae", "separate"), ("group", "separate"), ("gae", "shared")])
def test_resume_matches_straight_run(setup, tmp_path, advantage, critic):
    straight = _trainer(setup, tmp_path / "s", advantage=advantage, critic=critic)
    hist_s = straight.train(iterations=3)
    part = _trainer(setup, tmp_path / "r", advantage=advantage, critic=critic)
    part.train(iterations=3, stop_after=2)
    assert json.loads((tmp_path / "r" / "ppo_log.jsonl").read_text().splitlines()[-1])["iteration"] == 2
    resumed = _trainer(setup, tmp_path / "r", advantage=advantage, critic=critic)  # a fresh process would build this
    hist_r = resumed.train(iterations=3)
    assert [h["iteration"] for h in hist_r] == [1, 2, 3]
    for a, b in zip(hist_s, hist_r):
        for k in ("reward", "accuracy", "kl", "policy_loss", "value_loss", "entropy", "response_length"):
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-7), k
    sd_s, sd_r = straight.pv.trainable_state(), resumed.pv.trainable_state()
    assert sd_s.keys() == sd_r.keys()
    for k in sd_s:
        assert torch.allclose(sd_s[k], sd_r[k], atol=1e-6), k


def test_killed_mid_iteration_resumes_from_last_complete(setup, tmp_path, monkeypatch):
    tr = _trainer(setup, tmp_path / "k")
    tr.train(iterations=3, stop_after=1)
    calls = {"n": 0}
    real = ppo.PPOTrainer._update

    def dying_update(self, *a, **kw):
        calls["n"] += 1
        raise KeyboardInterrupt("killed during the update of iteration 2")

    monkeypatch.setattr(ppo.PPOTrainer, "_update", dying_update)
    with pytest.raises(KeyboardInterrupt):
        _trainer(setup, tmp_path / "k").train(iterations=3)
    monkeypatch.setattr(ppo.PPOTrainer, "_update", real)
    again = _trainer(setup, tmp_path / "k")
    hist = again.train(iterations=3)
    assert calls["n"] == 1 and [h["iteration"] for h in hist] == [1, 2, 3]
    state = json.loads((tmp_path / "k" / "last" / "looper_state.json").read_text())
    assert state["step"] == 3


def test_state_of_other_settings_is_set_aside_not_resumed(setup, tmp_path):
    out = tmp_path / "o"
    first = _trainer(setup, out, k=2)
    first.train(iterations=2)
    old_adapter = {k: v.clone() for k, v in first.pv.trainable_state().items()}
    longer = _trainer(setup, out, k=2)  # same settings, more iterations: a continuation
    assert [h["iteration"] for h in longer.train(iterations=3)] == [1, 2, 3]  # 1 and 2 from the log
    other = _trainer(setup, out, k=3)  # another sampling setting: another run
    with pytest.warns(UserWarning, match=r"other settings \(ppo\.k\); not resuming"):
        hist = other.train(iterations=2)
    assert [h["iteration"] for h in hist] == [1, 2]
    assert json.loads((out / "last" / "resume_signature.json").read_text())["ppo"]["k"] == 3
    aside = tmp_path / "o.previous"
    kept = load_state(aside / "last")
    assert kept["iteration"] == 3 and not torch.equal(kept["trainable"][next(iter(old_adapter))],
                                                      other.pv.trainable_state()[next(iter(old_adapter))])


def test_retrained_sft_model_is_another_run(setup, tmp_path):
    from looper_utils.ppo.resume import resume_signature
    cfg, train, _ = setup
    root = tmp_path / "root"
    cfg2 = cfg.override(root=str(root))
    model, tok = modeling.load_checkpoint(modeling.sft_dir(cfg), torch.device("cpu"))
    modeling.save_checkpoint(modeling.sft_dir(cfg2), model, tok, cfg2, stage="sft", step=0)
    sig = resume_signature(cfg2, train)
    assert sig == resume_signature(cfg2, train) and sig["sft"] == resume_signature(cfg, train)["sft"]
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)
    modeling.save_checkpoint(modeling.sft_dir(cfg2), model, tok, cfg2, stage="sft", step=1)
    assert resume_signature(cfg2, train)["sft"] != sig["sft"]
    assert resume_signature(cfg2, train[:-1])["rows"] != sig["rows"]


def test_saved_policy_loads_for_generation(setup, tmp_path):
    from looper_utils import generation
    from looper_utils.ppo import model as ppo_model
    tr = _trainer(setup, tmp_path / "p")
    tr.train(iterations=1)
    model, tok = ppo_model.load_ppo_policy(tr.cfg, tmp_path / "p" / "last", torch.device("cpu"))
    q = [tr.train_rows[0]["question"]]
    from looper_utils import prompts
    p = [prompts.build_prompt(q[0], tok, "chat")]
    a = generation.generate(model, tok, p, max_new_tokens=10, progress=False).texts
    with tr.pv.use(POLICY):
        b = generation.generate(tr.pv.model, tr.tok, p, max_new_tokens=10, progress=False).texts
    assert a == b


def test_gradient_checkpointing_gives_the_same_update(setup, tmp_path):
    plain = _trainer(setup, tmp_path / "gc0")
    plain.train(iterations=1)
    ckpt = _trainer(setup, tmp_path / "gc1", gradient_checkpointing=True)
    assert ckpt.pv.model.is_gradient_checkpointing
    ckpt.train(iterations=1)
    # same losses; Adam amplifies rounding differences of near-zero gradients, so weights are
    # compared by their largest change rather than element by element
    for k in ("policy_loss", "value_loss", "entropy", "kl"):
        assert plain.history[0][k] == pytest.approx(ckpt.history[0][k], rel=1e-4, abs=1e-6), k
    a, b = plain.pv.trainable_state(), ckpt.pv.trainable_state()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 0.01


def test_ppo_attention_leaves_out_cudnn_on_a_gpu_only_and_restores_the_flags():
    from looper_utils.ppo.model import attention_backends

    flags = torch.backends.cuda
    before = (flags.cudnn_sdp_enabled(), flags.flash_sdp_enabled(), flags.mem_efficient_sdp_enabled())
    with attention_backends(torch.device("cuda")):
        assert not flags.cudnn_sdp_enabled()
        assert flags.flash_sdp_enabled() and flags.mem_efficient_sdp_enabled() and flags.math_sdp_enabled()
    assert (flags.cudnn_sdp_enabled(), flags.flash_sdp_enabled(), flags.mem_efficient_sdp_enabled()) == before
    with attention_backends(torch.device("cpu")):
        assert (flags.cudnn_sdp_enabled(), flags.flash_sdp_enabled(), flags.mem_efficient_sdp_enabled()) == before


def test_under_bf16_autocast_the_adapters_skip_the_input_casts_with_the_same_numbers(setup, tmp_path, monkeypatch):
    """Under bf16 autocast PEFT's cast of a projection's input to the fp32 adapter is undone by autocast before
    the product, so PPO leaves it out: the same log-probs and gradients, also through a recomputed forward
    (gradient checkpointing re-runs it in the backward pass, after autocast() has exited)."""
    from looper_utils.ppo import model as model_mod

    monkeypatch.setattr(model_mod, "use_bf16", lambda cfg, device: True)  # bf16 autocast, here on the CPU
    tr = _trainer(setup, tmp_path / "bf", gradient_checkpointing=True)
    assert tr.pv.bf16 and {p.dtype for n, p in tr.pv.model.named_parameters() if "lora_" not in n} == {torch.bfloat16}
    with torch.no_grad():
        for name, p in tr.pv.model.named_parameters():
            if f".{POLICY}." in name and "lora_B" in name:
                p.normal_(0, 0.5)  # the adapter must change the output for the test to see it
    layers = tr.pv._adapted
    assert layers and all(m.cast_input_dtype_enabled for m in layers)
    seen = []  # (casts on?, input dtype) of one adapted projection, each time it runs
    layers[0].register_forward_pre_hook(lambda m, args: seen.append((m.cast_input_dtype_enabled, args[0].dtype)))
    b = _batch(tr)
    tr.pv.model.train()  # checkpointing recomputes in train mode only

    def run():
        seen.clear()
        tr.pv.model.zero_grad(set_to_none=True)
        logp = tr.pv.token_logprobs(POLICY, b.input_ids, b.attention_mask, mask=b.mask)[0]
        (logp * b.mask).sum().backward()
        grads = {n: p.grad.clone() for n, p in tr.pv.model.named_parameters() if p.grad is not None}
        return logp.detach(), grads, list(seen)

    logp_off, grads_off, seen_off = run()
    assert all(m.cast_input_dtype_enabled for m in layers)  # restored after the forward
    assert seen_off == [(False, torch.bfloat16)] * 2  # the forward and its recomputation, both without casts
    monkeypatch.setattr(model_mod, "adapter_input_casts_off", lambda layers: contextlib.nullcontext())
    logp_on, grads_on, seen_on = run()
    assert seen_on == [(True, torch.bfloat16)] * 2
    assert grads_off and grads_off.keys() == grads_on.keys()
    assert torch.equal(logp_off, logp_on)
    for n in grads_on:
        assert torch.equal(grads_off[n], grads_on[n]), n
    tr.pv.model.eval()


def test_an_sft_adapter_trained_with_dropout_runs_without_it_in_ppo(tmp_path):
    """A LoRA SFT adapter keeps its lora_dropout when loaded; PPO's update runs in train mode, so the
    dropout must go, or the ratio compares a noisy policy with the one that computed the old log-probs."""
    from looper_utils.ppo.model import drop_adapter_dropout

    cfg, train, dev = tiny_ppo_project(tmp_path, 40, 30, iterations=1, prompts_per_iter=2, k=2, max_new_tokens=8,
                                       minibatch_size=4, eval_every=0, n_dev=4, ppo_epochs=1)
    lora = cfg.override(stage="sft", use_lora=True, model__lora_r=4, model__lora_alpha=8, lora_dropout=0.5)
    base, tok = modeling.load_policy(cfg, "base", torch.device("cpu"))
    sft = modeling.apply_lora(base, lora.model)
    assert sum(isinstance(m, torch.nn.Dropout) for m in sft.modules()) > 0  # what an SFT adapter carries
    with torch.no_grad():
        for name, p in sft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    modeling.save_checkpoint(modeling.sft_dir(cfg), sft, tok, lora, stage="sft", step=1)
    tr = ppo.PPOTrainer(lora.override(stage="ppo"), train, dev, out_dir=tmp_path / "ppo", progress=False)
    assert tr.pv.ref_mode == "adapter"
    assert not [m for m in tr.pv.model.modules() if isinstance(m, torch.nn.Dropout)]
    assert drop_adapter_dropout(tr.pv.model) == 0  # nothing left to replace
    b = _batch(tr)
    with torch.no_grad():
        tr.pv.model.eval()
        ev = tr.pv.token_logprobs(POLICY, b.input_ids, b.attention_mask)[0]
        tr.pv.model.train()
        tr_mode = tr.pv.token_logprobs(POLICY, b.input_ids, b.attention_mask)[0]
        tr.pv.model.eval()
    assert torch.equal(ev, tr_mode)
    stats = tr.iterate(0)
    assert stats["approx_kl"] == pytest.approx(0.0, abs=1e-10)  # first minibatch of one epoch: ratio 1


def test_the_public_steps_are_one_iteration(setup, tmp_path):
    whole = _trainer(setup, tmp_path / "w")
    m = whole.iterate(0)
    steps = _trainer(setup, tmp_path / "st")
    roll = steps.sample(0)
    scored = steps.score(roll)
    adv = steps.advantages(roll, scored)
    stats = steps.update(roll, adv)
    paid = steps.update_bandit(roll, scored)
    assert len(roll.samples) == 4 * 2 and len(scored.scores) == len(roll.samples) and adv.kind == "gae"
    assert float(scored.rewards.mean()) == m["reward"] and stats["policy_loss"] == m["policy_loss"]
    assert set(paid) == set(roll.arm_ids) and all(0.0 <= v <= 0.25 for v in paid.values())
    assert whole.bandit.state_dict() == steps.bandit.state_dict()
    for k, v in whole.pv.trainable_state().items():
        assert torch.equal(v, steps.pv.trainable_state()[k]), k
    table = ppo.samples_table(roll, scored)
    assert len(table) == 8 and {"completion", "reward", "c_correct", "format_ok"} <= set(table.columns)


def test_rehearsal_is_undone_and_diagnostics_do_not_step(setup, tmp_path):
    straight = _trainer(setup, tmp_path / "plain")
    hist_s = straight.train(iterations=2)
    tr = _trainer(setup, tmp_path / "rehearsed")
    before = tr.pv.trainable_state()
    with tr.rehearsal():
        roll = tr.sample(0)
        scored = tr.score(roll)
        gae_adv = tr.advantages(roll, scored, kind="gae")
        group_adv = tr.advantages(roll, scored, kind="group", old=gae_adv.old)
        d0 = tr.diagnostics(roll, gae_adv)
        assert all(torch.equal(v, tr.pv.trainable_state()[k]) for k, v in before.items())  # nothing stepped
        assert d0["ratio_min"] == pytest.approx(1.0) and d0["ratio_max"] == pytest.approx(1.0)
        assert d0["clipfrac"] == 0.0 and abs(d0["kl_k1"]) < 1e-6  # the policy starts as the reference
        tr.update(roll, gae_adv)
        tr.update_bandit(roll, scored)
        d1 = tr.diagnostics(roll, gae_adv)
        assert d1["ratio_max"] > 1.0 + 1e-4 and d1["kl_k3"] > 0
        table = ppo.sequence_table(tr.tokenizer, roll, {"gae": gae_adv, "group": group_adv}, 0)
        assert len(table) == int(roll.batch.mask[0].sum()) and table["advantage (group)"].nunique() == 1
        assert {"token", "kl_k1", "value", "token_reward (gae)", "advantage (gae)"} <= set(table.columns)
    for k, v in before.items():
        assert torch.equal(v, tr.pv.trainable_state()[k]), k
    hist_r = tr.train(iterations=2)
    for a, b in zip(hist_s, hist_r):
        for k in ("reward", "kl", "policy_loss", "value_loss", "entropy"):
            assert a[k] == b[k], k


def test_policy_and_reference_contexts(setup, tmp_path):
    tr = _trainer(setup, tmp_path / "ctx")
    b = _batch(tr)
    with torch.no_grad():
        with tr.policy() as model:
            pol = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits
        with tr.reference() as model:
            ref = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits
    assert torch.allclose(pol, ref, atol=1e-5) and tr.tokenizer is tr.pv.tokenizer


def test_linear_schedule_decays_to_zero_at_the_last_step(setup, tmp_path):
    tr = _trainer(setup, tmp_path / "lin", lr_schedule="linear", iterations=2, minibatch_size=3, ppo_epochs=2)
    assert tr.total_steps == ppo.optimizer_steps(tr.cfg) == 2 * 2 * 3  # 8 sequences in minibatches of 3
    lrs = []
    hist = tr.train(on_iteration=lambda m: lrs.append(m["lr"]))
    assert tr.sched_pi.last_epoch == tr.total_steps and len(hist) == 2
    assert tr.opt_pi.param_groups[0]["lr"] == 0.0 and lrs[-1] == 0.0
    assert lrs[0] == pytest.approx(tr.p.learning_rate * 0.5)  # halfway through the run's steps
    const = _trainer(setup, tmp_path / "const", iterations=2)
    const.train()
    assert const.opt_pi.param_groups[0]["lr"] == const.p.learning_rate  # the default: constant


def test_warmup_ramps_the_policy_learning_rate():
    assert [ppo.lr_factor(s, 10, 4, "linear") for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert ppo.lr_factor(4, 10, 4, "linear") == 1.0 and ppo.lr_factor(10, 10, 4, "linear") == 0.0
    factors = [ppo.lr_factor(s, 10, 4, "linear") for s in range(4, 11)]
    assert factors == sorted(factors, reverse=True)


def test_snapshot_and_restore_span_notebook_cells(setup, tmp_path):
    tr = _trainer(setup, tmp_path / "snap")
    snap = tr.snapshot()
    roll = tr.sample(0)
    scored = tr.score(roll)
    tr.update(roll, tr.advantages(roll, scored))
    tr.update_bandit(roll, scored)
    moved = tr.pv.trainable_state()
    tr.restore(snap)
    assert any(not torch.equal(moved[k], v) for k, v in snap["trainable"].items())
    assert all(torch.equal(v, tr.pv.trainable_state()[k]) for k, v in snap["trainable"].items())
    assert tr.sched_pi.last_epoch == 0 and not tr.opt_pi.state and tr.reference_mode == "disabled"


def _full_logits_logprobs(tr, b, adapter=POLICY, temperature=1.0):
    """The plain reference: the whole model's logits, log_softmax, gather, entropy."""
    with tr.pv.use(adapter):
        logits = tr.pv.model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits[:, :-1].float()
    logits = logits / temperature
    logp = torch.log_softmax(logits, -1)
    return logp.gather(-1, b.input_ids[:, 1:, None]).squeeze(-1), -(logp.exp() * logp).sum(-1)


@pytest.mark.parametrize("chunk", [1 << 26, 5 * 300])  # one chunk; chunks of a few tokens, recomputed in the backward
def test_chunked_head_log_probs_and_gradients_match_full_logits(setup, tmp_path, monkeypatch, chunk):
    from looper_utils.ppo import model as ppo_model

    monkeypatch.setattr(ppo_model, "_LOGIT_CHUNK", chunk)
    recomputed = []
    real_checkpoint = ppo_model.checkpoint
    monkeypatch.setattr(ppo_model, "checkpoint", lambda *a, **k: recomputed.append(1) or real_checkpoint(*a, **k))
    tr = _trainer(setup, tmp_path / "c")
    b = _batch(tr)
    with torch.no_grad():  # a policy away from the reference, so the adapter's gradients are not trivial
        for p in tr.policy_params:
            p.normal_(0, 0.05)
    m = b.mask.bool()
    ref_logp, ref_ent = _full_logits_logprobs(tr, b, temperature=0.7)
    (ref_logp[m].sum() + ref_ent[m].sum()).backward()
    want = [p.grad.clone() for p in tr.policy_params]
    tr.opt_pi.zero_grad(set_to_none=True)
    logp, ent = tr.pv.token_logprobs(POLICY, b.input_ids, b.attention_mask, with_entropy=True, mask=b.mask,
                                     temperature=0.7)
    assert torch.allclose(logp[m], ref_logp[m], atol=1e-5) and torch.allclose(ent[m], ref_ent[m], atol=1e-5)
    assert torch.all(logp[~m] == 0) and torch.all(ent[~m] == 0), "positions outside the mask are 0"
    (logp[m].sum() + ent[m].sum()).backward()
    got = [p.grad for p in tr.policy_params]
    assert (len(recomputed) > 1) == (chunk < 1 << 26)
    assert sum(float(g.abs().sum()) for g in want) > 0
    for g, w in zip(got, want):
        assert torch.allclose(g, w, atol=1e-5, rtol=1e-4)


def test_minibatch_cut_to_its_longest_sequence_changes_no_log_prob(setup, tmp_path):
    tr = _trainer(setup, tmp_path / "w")
    b = _batch(tr)
    lengths = b.attention_mask.sum(1)
    short = torch.nonzero(lengths < lengths.max()).flatten()[:2]
    assert len(short), "the batch needs sequences of different lengths"
    ids, att, m, width = ppo.minibatch(b, short)
    assert width == int(lengths[short].max()) < b.input_ids.shape[1]
    with torch.no_grad():
        cut = tr.pv.token_logprobs(POLICY, ids, att, mask=m)[0]
        whole = tr.pv.token_logprobs(POLICY, b.input_ids[short], b.attention_mask[short], mask=b.mask[short])[0]
    assert torch.allclose(cut, whole[:, :width - 1], atol=1e-5) and torch.all(whole[:, width - 1:] == 0)
    full = tr._forward_all(b, ("logp",))["logp"]
    assert full.shape == b.mask.shape
    assert torch.allclose(full[short], whole, atol=1e-5)


def test_the_forward_without_gradients_goes_longest_first_and_returns_rows_in_their_order(setup, tmp_path,
                                                                                           monkeypatch):
    from looper_utils.ppo import iteration

    tr = _trainer(setup, tmp_path / "fb", forward_batch_size=2)
    b = _batch(tr)
    lengths = b.attention_mask.sum(1)
    assert len(set(lengths.tolist())) > 2, "the batch needs sequences of several lengths"
    widths = []
    cut = iteration.minibatch
    monkeypatch.setattr(iteration, "minibatch", lambda bb, idx: widths.append(cut(bb, idx)[3]) or cut(bb, idx))
    got = tr._forward_all(b)
    assert len(widths) == 3 and widths == sorted(widths, reverse=True) and widths[0] == int(lengths.max())
    assert widths[-1] < widths[0]  # the shortest rows were computed without the longest one's padding
    with torch.no_grad():
        for i in range(len(lengths)):  # each row alone, unpadded
            n = int(lengths[i])
            ids, att, m = b.input_ids[i:i + 1, :n], b.attention_mask[i:i + 1, :n], b.mask[i:i + 1, :n - 1]
            alone = {"logp": tr.pv.token_logprobs(POLICY, ids, att, mask=m)[0],
                     "ref": tr.pv.token_logprobs(REF, ids, att, mask=m)[0], "values": tr.pv.values(ids, att) * m}
            for k, v in alone.items():
                assert torch.allclose(got[k][i, :n - 1], v[0], atol=1e-5), (k, i)
                assert torch.all(got[k][i, n - 1:] == 0), (k, i)
    assert tr.cfg.ppo.forward_batch_size == 2
    assert config.build("smoke", stage="ppo").ppo.forward_batch_size == 0  # 0: four minibatches at a time


def test_group_advantages_skip_the_critic_and_gae_adds_it(setup, tmp_path, monkeypatch):
    tr = _trainer(setup, tmp_path / "v", advantage="group")
    roll = tr.sample(0)
    scored = tr.score(roll)
    calls = []
    values = tr.pv.values
    monkeypatch.setattr(tr.pv, "values", lambda *a, **k: calls.append(1) or values(*a, **k))
    group = tr.advantages(roll, scored)
    assert calls == [] and "values" not in group.old and torch.all(group.ret == 0)
    gae = tr.advantages(roll, scored, kind="gae", old=group.old)  # 05 shows both from one forward
    assert calls and gae.old["values"].shape == roll.batch.mask.shape
    assert torch.equal(gae.old["logp"], group.old["logp"])
    table = ppo.sequence_table(tr.tokenizer, roll, {"group": group}, 0)
    assert "value" not in table and len(table) == int(roll.batch.mask[0].sum())
    assert "value" in ppo.sequence_table(tr.tokenizer, roll, {"gae": gae, "group": group}, 0)
    d = tr.diagnostics(roll, group)
    assert d["ratio_mean"] == pytest.approx(1.0, abs=1e-5) and "value_loss" not in d


def test_the_rollout_engine_is_made_once(setup, tmp_path, monkeypatch):
    from looper_utils import engine

    made = []
    real = engine.Engine
    monkeypatch.setattr(engine, "Engine", lambda *a, **k: made.append(1) or real(*a, **k))
    tr = _trainer(setup, tmp_path / "e", **{"rollouts.backend": "engine"})
    first = tr.sample(0)
    tr.sample(1)
    assert len(made) == 1 and tr._engine is not None
    assert len(first.samples) == tr.p.prompts_per_iter * tr.p.k


def test_merged_sampling_draws_what_the_adapters_draw_and_follows_the_update(setup, tmp_path):
    eng_set = {"rollouts.backend": "engine"}
    plain = _trainer(setup, tmp_path / "a", sampling="adapters", **eng_set)
    merged = _trainer(setup, tmp_path / "m", sampling="merged", **eng_set)
    auto = _trainer(setup, tmp_path / "u", **eng_set)
    texts = lambda roll: [s.text for s in roll.samples]  # noqa: E731
    first = merged.sample(0)
    assert texts(first) == texts(plain.sample(0))  # fp32: the same draws from the same seed
    assert (merged.sampling, plain.sampling) == ("merged", "adapters")
    assert merged._engine.model is merged._merged.model  # the engine runs the copy, made once
    copy_model = merged._merged.model
    auto.sample(0)
    assert auto.sampling == "adapters" and "on cpu" in auto.sampling_why  # auto: merged on a GPU only
    merged.iterate(1)  # an update moves the policy adapter; the next rollout refreshes the copy first
    merged.sample(2)
    assert merged._merged.model is copy_model
    ids = first.batch.input_ids[:4]
    att = first.batch.attention_mask[:4]
    with torch.no_grad(), merged.policy() as model:
        want = model(input_ids=ids, attention_mask=att).logits
    got = copy_model(input_ids=ids, attention_mask=att).logits
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)
    with torch.no_grad(), merged.reference() as model:
        ref = model(input_ids=ids, attention_mask=att).logits
    assert (ref - want).abs().max() > 1e-4  # the update did move the policy away from the SFT weights


def test_right_padded_rows_need_no_padding_mask(setup, tmp_path):
    tr = _trainer(setup, tmp_path / "r")
    b = _batch(tr)
    lengths = b.attention_mask.sum(1)
    assert lengths.min() < lengths.max()  # rows of different lengths: there is padding to keep out
    real = b.attention_mask[:, 1:].bool()
    with torch.no_grad():
        for adapter in (POLICY, REF):
            masked = tr.pv.token_logprobs(adapter, b.input_ids, b.attention_mask)[0]
            causal = tr.pv.token_logprobs(adapter, b.input_ids, b.attention_mask, right_padded=True)[0]
            assert torch.allclose(causal[real], masked[real], atol=1e-5)
            assert torch.equal(causal[~real], masked[~real])  # 0 after each row's end either way
        v_masked = tr.pv.values(b.input_ids, b.attention_mask)
        v_causal = tr.pv.values(b.input_ids, b.attention_mask, right_padded=True)
    assert torch.allclose(v_causal[real], v_masked[real], atol=1e-5)
    assert tr.pv.decoder_mask(b.attention_mask, True) is None
    assert tr.pv.decoder_mask(b.attention_mask, False) is b.attention_mask
    # a left-padded row is what right_padded must not be used for: its numbers change without the mask
    left = torch.cat([b.input_ids.new_full((1, 3), tr.tok.pad_token_id), b.input_ids[:1]], 1)
    left_att = torch.cat([b.attention_mask.new_zeros((1, 3)), b.attention_mask[:1]], 1)
    with torch.no_grad():
        ok = tr.pv.token_logprobs(POLICY, left, left_att)[0][:, 3:]
        wrong = tr.pv.token_logprobs(POLICY, left, left_att, right_padded=True)[0][:, 3:]
    assert (ok - wrong).abs().max() > 1e-3


def test_compiled_layers_give_the_same_logprobs_values_and_update(setup, tmp_path, monkeypatch):
    import functools

    from looper_utils import compiled
    from looper_utils.ppo import model as ppo_model

    # the compiler's graph capture without code generation: the same wiring as on a GPU, in seconds on a CPU
    monkeypatch.setattr(ppo_model, "CompiledLayers", functools.partial(compiled.CompiledLayers, backend="aot_eager"))
    eager = _trainer(setup, tmp_path / "e", advantage="gae")
    comp = _trainer(setup, tmp_path / "c", advantage="gae", compile="on")
    assert eager.pv.compiled is None and eager.compile_why == "ppo.compile='off'"  # the default
    auto = compiled.compile_choice("auto", "ppo.compile", torch.device("cpu"), checkpointing=False, quantized=False)
    assert auto[0] is False and "CPU" in auto[1]
    assert comp.pv.compiled is not None and comp.pv.compile_why == "ppo.compile='on'"
    b = _batch(comp)
    real = b.attention_mask[:, 1:].bool()
    graphs = lambda: torch._dynamo.utils.counters["stats"]["unique_graphs"]  # noqa: E731
    before = graphs()
    with torch.no_grad():  # without gradients the layers run eagerly: no graph is made
        comp.pv.token_logprobs(POLICY, b.input_ids, b.attention_mask, right_padded=True)
    assert graphs() == before
    for adapter in (POLICY, VALUE):  # the update's forwards, with gradients, through the compiled layers
        if adapter == VALUE:
            want, got = eager.pv.values(b.input_ids, b.attention_mask), comp.pv.values(b.input_ids, b.attention_mask)
        else:
            want = eager.pv.token_logprobs(adapter, b.input_ids, b.attention_mask, right_padded=True)[0]
            got = comp.pv.token_logprobs(adapter, b.input_ids, b.attention_mask, right_padded=True)[0]
        assert got.requires_grad and torch.allclose(got[real], want[real], atol=1e-5), adapter
    assert graphs() > before  # they did run compiled
    # the layers run their own forward outside the training forwards (generation never runs compiled)
    layers = compiled.decoder_layers(comp.pv.model)
    assert all("forward" not in layer.__dict__ for layer in layers)
    before = eager.pv.trainable_state()
    rolls = [tr.sample(0) for tr in (eager, comp)]
    assert [s.text for s in rolls[0].samples] == [s.text for s in rolls[1].samples]
    for tr, roll in zip((eager, comp), rolls):  # one update each: the compiled backward gives the same step
        tr.update(roll, tr.advantages(roll, tr.score(roll)))
    a, c = eager.pv.trainable_state(), comp.pv.trainable_state()
    assert a.keys() == c.keys()
    assert max((a[k] - before[k]).abs().max().item() for k in a) > 1e-4  # the update moved the adapters
    assert max((a[k] - c[k]).abs().max().item() for k in a) < 1e-5


def _count_decoder_passes(tr, monkeypatch) -> list[int]:
    """A list that grows by one at each forward of the shared base's decoder."""
    calls: list[int] = []
    inner = tr.pv.model.get_base_model().model
    forward = inner.forward
    monkeypatch.setattr(inner, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    return calls


def test_shared_critic_reads_the_policy_in_one_pass(setup, tmp_path, monkeypatch):
    tr = _trainer(setup, tmp_path / "sc", advantage="gae", critic="shared", minibatch_size=4, forward_batch_size=4)
    assert not [n for n, _ in tr.pv.model.named_parameters() if f".{VALUE}." in n]  # no value adapter
    assert tr.value_params == list(tr.pv.value_head.parameters())
    roll = tr.sample(0)
    scored = tr.score(roll)
    n_mb = -(-len(roll.samples) // 4)  # minibatches, and chunks of the forward without gradients
    calls = _count_decoder_passes(tr, monkeypatch)
    adv = tr.advantages(roll, scored)
    assert len(calls) == 2 * n_mb  # policy log-probs and values together, then the reference
    with torch.no_grad():
        b = roll.batch
        values = tr.pv.values(b.input_ids, b.attention_mask) * b.mask
        logp = tr.pv.token_logprobs(POLICY, b.input_ids, b.attention_mask, mask=b.mask,
                                    temperature=tr.p.temperature)[0]
    assert torch.allclose(adv.old["values"], values, atol=1e-5)
    assert torch.allclose(adv.old["logp"], logp, atol=1e-5)
    calls.clear()
    stats = tr.update(roll, adv)
    assert len(calls) == tr.p.ppo_epochs * n_mb  # one pass per minibatch for both losses
    assert stats["value_loss"] > 0
    with pytest.raises(ValueError, match="critic='shared'"):
        tr.pv.forward_roles(REF, b.input_ids, b.attention_mask, with_values=True)


def test_separate_critic_takes_its_own_passes(setup, tmp_path, monkeypatch):
    tr = _trainer(setup, tmp_path / "sp", advantage="gae", critic="separate", minibatch_size=4, forward_batch_size=4)
    roll = tr.sample(0)
    scored = tr.score(roll)
    n_mb = -(-len(roll.samples) // 4)  # minibatches, and chunks of the forward without gradients
    calls = _count_decoder_passes(tr, monkeypatch)
    adv = tr.advantages(roll, scored)
    assert len(calls) == 3 * n_mb
    calls.clear()
    tr.update(roll, adv)
    assert len(calls) == 2 * tr.p.ppo_epochs * n_mb


def test_shared_value_loss_trains_the_policy_adapter_by_value_coef(setup, tmp_path):
    def change_after_update(coef, name):
        tr = _trainer(setup, tmp_path / name, advantage="gae", critic="shared", value_coef=coef)
        roll = tr.sample(0)
        adv = tr.advantages(roll, tr.score(roll))
        adv.adv.zero_()  # no policy signal at all: only the value loss can move the policy adapter
        before = {k: v for k, v in tr.pv.trainable_state().items() if f".{POLICY}." in k}
        head0 = tr.pv.value_head.weight.detach().clone()
        tr.update(roll, adv)
        after = {k: v for k, v in tr.pv.trainable_state().items() if f".{POLICY}." in k}
        return (max(float((after[k] - before[k]).abs().max()) for k in before),
                float((tr.pv.value_head.weight - head0).abs().max()))

    assert change_after_update(0.0, "c0") == (0.0, 0.0)  # value_coef 0: the critic is not trained at all
    policy, head = change_after_update(1.0, "c1")
    assert policy > 1e-6 and head > 1e-6


def test_critic_must_be_known():
    with pytest.raises(ValueError, match="ppo.critic='both' is not a critic"):
        config.build("smoke", stage="ppo", critic="both")


def test_resume_signature_names_the_critic_only_when_shared(setup):
    from looper_utils.ppo.resume import resume_signature

    cfg, train, _ = setup
    sig = resume_signature(cfg, train)["ppo"]
    assert "critic" not in sig and "value_coef" not in sig  # states saved before the fields still resume
    shared = resume_signature(cfg.override(stage="ppo", critic="shared", value_coef=0.5), train)["ppo"]
    assert shared["critic"] == "shared" and shared["value_coef"] == 0.5
    # how the rollouts are sampled is not what is trained: states of either setting (and of releases before
    # the field) continue under the other
    assert "sampling" not in sig
    assert resume_signature(cfg.override(stage="ppo", sampling="merged"), train) == resume_signature(cfg, train)
