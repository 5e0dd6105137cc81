"""The one sampling function: order, counts, stopping, padding and seeding, on a tiny random Llama."""
from __future__ import annotations

import pytest
import torch

from looper_utils import config, data, modeling, prompts
from looper_utils.generation import generate

QUESTIONS = ["Mia has 3 apples. How many apples does Mia have now?",
             "Ben has 12 cards. First, Ben loses 5 cards. Then Ben buys 9 more cards. How many cards does Ben have?",
             "Ada has 7 coins."]


@pytest.fixture(scope="module")
def policy():
    rows = data.synthetic_problems(40, seed=1)
    cfg = config.build("smoke", stage="sft", hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
                       intermediate_size=64, tokenizer_vocab=400)
    tok = modeling.build_tokenizer(modeling.tokenizer_corpus(rows), 400)
    model = modeling.build_scratch_model(cfg.model, tok, seed=0).eval()
    return model, tok, [prompts.build_prompt(q, tok, "chat") for q in QUESTIONS]


def test_samples_come_back_in_input_order(policy):
    model, tok, ps = policy
    res = generate(model, tok, ps, n=3, max_new_tokens=5, temperature=1.0, seed=0, batch_size=4, progress=False)
    assert [(s.prompt_index, s.sample_idx) for s in res.samples] == [(i, j) for i in range(3) for j in range(3)]
    for s in res.samples:
        assert s.prompt_ids == prompts.encode_prompt(tok, ps[s.prompt_index])
        assert s.n_tokens == len(s.completion_ids) <= 5
    assert res.n_new_tokens == sum(s.n_tokens for s in res.samples)
    assert res.seconds > 0 and res.tokens_per_second == pytest.approx(res.n_new_tokens / res.seconds)


def test_length_finish_when_no_eos(policy):
    model, tok, ps = policy
    res = generate(model, tok, ps, max_new_tokens=6, progress=False)
    assert any(s.finish_reason == "length" for s in res.samples)
    for s in res.samples:
        if tok.eos_token_id not in s.completion_ids:
            assert s.finish_reason == "length" and s.n_tokens == 6


def test_eos_stops_a_sequence_and_is_kept(policy):
    model, tok, ps = policy
    free = generate(model, tok, ps[:1], max_new_tokens=8, progress=False).samples[0]
    stop_at = free.completion_ids[2]  # make the 3rd greedy token a stop token
    first = free.completion_ids.index(stop_at)
    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [tok.eos_token_id, stop_at]
    try:
        s = generate(model, tok, ps[:1], max_new_tokens=8, progress=False).samples[0]
    finally:
        model.generation_config.eos_token_id = saved
    assert s.finish_reason == "eos"
    assert s.completion_ids == free.completion_ids[:first + 1] and s.completion_ids[-1] == stop_at


def test_same_seed_same_samples(policy):
    model, tok, ps = policy
    kw = dict(n=2, max_new_tokens=8, temperature=1.0, progress=False)
    a = generate(model, tok, ps, seed=11, **kw)
    b = generate(model, tok, ps, seed=11, **kw)
    c = generate(model, tok, ps, seed=12, **kw)
    assert [s.completion_ids for s in a.samples] == [s.completion_ids for s in b.samples]
    assert [s.completion_ids for s in a.samples] != [s.completion_ids for s in c.samples]


def test_seed_leaves_the_callers_random_state_alone(policy):
    model, tok, ps = policy
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    generate(model, tok, ps, max_new_tokens=4, temperature=1.0, seed=5, progress=False)
    assert torch.equal(torch.rand(3), expected)


def test_left_padding_gives_the_unbatched_greedy_output(policy):
    model, tok, ps = policy
    assert len({len(prompts.encode_prompt(tok, p)) for p in ps}) == 3  # really different lengths
    batched = generate(model, tok, ps, max_new_tokens=10, batch_size=8, progress=False)
    alone = [generate(model, tok, [p], max_new_tokens=10, progress=False).samples[0] for p in ps]
    assert [s.completion_ids for s in batched.samples] == [s.completion_ids for s in alone]
    assert [s.text for s in batched.samples] == [tok.decode(s.completion_ids, skip_special_tokens=True) for s in alone]


def test_greedy_samples_are_identical(policy):
    model, tok, ps = policy
    res = generate(model, tok, ps[:1], n=3, max_new_tokens=6, progress=False)
    assert len({tuple(s.completion_ids) for s in res.samples}) == 1


def test_bad_arguments_are_rejected(policy):
    model, tok, ps = policy
    with pytest.raises(ValueError, match="temperature"):
        generate(model, tok, ps, max_new_tokens=4, temperature=-1.0, progress=False)
    with pytest.raises(ValueError, match="n >= 1"):
        generate(model, tok, ps, n=0, max_new_tokens=4, progress=False)


def test_training_mode_is_restored(policy):
    model, tok, ps = policy
    model.train()
    try:
        generate(model, tok, ps[:1], max_new_tokens=2, progress=False)
        assert model.training
    finally:
        model.eval()


def test_engine_backend_matches_hf_greedy_and_is_seeded():
    from looper_utils import config, data, generation, modeling, prompts

    rows = data.synthetic_problems(30, seed=2)
    tok = modeling.build_tokenizer(modeling.tokenizer_corpus(rows), vocab_size=300)
    model = modeling.build_scratch_model(config.smoke().model, tok, seed=1)
    ps = [prompts.build_prompt(r["question"], tok, "chat") for r in rows[:7]]
    hf = generation.generate(model, tok, ps, max_new_tokens=20, batch_size=4, progress=False)
    ours = generation.generate(model, tok, ps, max_new_tokens=20, batch_size=4, progress=False, backend="engine")
    assert [s.completion_ids for s in hf.samples] == [s.completion_ids for s in ours.samples]
    assert [s.finish_reason for s in hf.samples] == [s.finish_reason for s in ours.samples]
    a = generation.generate(model, tok, ps, n=3, max_new_tokens=12, temperature=1.0, seed=5, progress=False,
                            backend="engine")
    b = generation.generate(model, tok, ps, n=3, max_new_tokens=12, temperature=1.0, seed=5, progress=False,
                            backend="engine")
    assert a.texts == b.texts and len(a.samples) == 21
