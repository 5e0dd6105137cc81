"""The prompt convention: plain vs chat, and the pre-filled <think> block of R1-Distill-like templates."""
from __future__ import annotations

import pytest

from looper_utils import answers, prompts
from looper_utils.modeling import build_tokenizer, chat_template

ROW = {"id": "t-1", "question": "Mia has 3 apples. First, Mia buys 4 more apples. How many apples does Mia have now?",
       "answer": "Mia starts with 3 apples.\nAfter that Mia has 3+4=<<3+4=7>>7 apples.\n#### 7", "gold": "7"}

# A hand-written copy of the structure of DeepSeek-R1-Distill's template (its special tokens use
# full-width bars): generation prompt ends in "<｜Assistant｜><think>\n", assistant turns keep
# only the text after </think>.
R1_LIKE_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '<｜User｜>' + message['content'] }}"
    "{% elif message['role'] == 'assistant' %}{% set content = message['content'] %}"
    "{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}"
    "{{ '<｜Assistant｜>' + content + eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<｜Assistant｜><think>\\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def tok():
    texts = [ROW["question"], ROW["answer"], *prompts.prompt_wording()] * 20
    return build_tokenizer(texts, vocab_size=400, think=True)


@pytest.fixture()
def tok_no_think(tok):
    t = build_tokenizer([ROW["question"], ROW["answer"]] * 20, vocab_size=400, think=False)
    assert t.chat_template == chat_template(think=False)
    return t


def test_plain_prompt_carries_instruction_and_question(tok):
    p = prompts.build_prompt(ROW["question"], tok, "plain")
    assert p.startswith("You are a careful math tutor.")
    assert "'#### 42'" in p and ROW["question"] in p and p.endswith("Solution:\n")
    assert not prompts.completion_starts_in_think(tok, "plain")


def test_plain_sft_example_is_the_gold_solution(tok):
    ex = prompts.sft_example(ROW, tok, "plain")
    assert ex["completion"] == ROW["answer"] + tok.eos_token
    assert "</think>" not in ex["completion"]
    assert answers.is_correct(ex["completion"].removesuffix(tok.eos_token), "7", mode="strict", think=False)


def test_chat_prompt_prefills_think(tok):
    p = prompts.build_prompt(ROW["question"], tok, "chat")
    assert p.startswith(tok.bos_token) and p.endswith("<|assistant|><think>\n")
    assert prompts.user_message(ROW["question"]) in p
    assert prompts.completion_starts_in_think(tok, "chat")


def test_think_sft_example_closes_the_block_before_the_answer(tok):
    ex = prompts.sft_example(ROW, tok, "chat")
    reasoning = "Mia starts with 3 apples.\nAfter that Mia has 3+4=<<3+4=7>>7 apples."
    assert ex["completion"] == f"{reasoning}\n</think>\n\n#### 7{tok.eos_token}"
    text = ex["completion"].removesuffix(tok.eos_token)
    assert answers.is_correct(text, "7", mode="strict", think=True)
    # the same reasoning without the closing tag has no answer under the think convention
    assert not answers.is_correct(reasoning + "\n#### 7", "7", think=True)


def test_rendering_the_whole_turn_through_the_template_would_lose_the_reasoning(tok):
    ex = prompts.sft_example(ROW, tok, "chat")
    whole = tok.apply_chat_template(
        [{"role": "user", "content": prompts.user_message(ROW["question"])},
         {"role": "assistant", "content": ex["completion"].removesuffix(tok.eos_token)}], tokenize=False)
    assert "<<3+4=7>>" not in whole  # the template keeps only what follows </think>
    assert "<<3+4=7>>" in ex["prompt"] + ex["completion"]  # our convention keeps it


def test_r1_like_template_is_detected(tok):
    tok.chat_template, saved = R1_LIKE_TEMPLATE, tok.chat_template
    try:
        p = prompts.build_prompt(ROW["question"], tok, "chat")
        assert p.endswith("<｜Assistant｜><think>\n")
        assert prompts.completion_starts_in_think(tok, "chat")
        assert "</think>\n\n#### 7" in prompts.sft_example(ROW, tok, "chat")["completion"]
    finally:
        tok.chat_template = saved


def test_template_without_think_uses_the_plain_target(tok_no_think):
    t = tok_no_think
    assert not prompts.completion_starts_in_think(t, "chat")
    ex = prompts.sft_example(ROW, t, "chat")
    assert ex["prompt"].endswith("<|assistant|>")
    assert ex["completion"] == ROW["answer"] + t.eos_token


def test_chat_style_needs_a_template(tok):
    tok.chat_template, saved = None, tok.chat_template
    try:
        with pytest.raises(ValueError, match="no chat template.*plain"):
            prompts.build_prompt("q", tok, "chat")
    finally:
        tok.chat_template = saved


def test_unknown_style_is_rejected(tok):
    with pytest.raises(ValueError, match="chat, plain"):
        prompts.build_prompt("q", tok, "fancy")


def test_encode_prompt_puts_bos_once(tok):
    chat = prompts.encode_prompt(tok, prompts.build_prompt(ROW["question"], tok, "chat"))
    plain = prompts.encode_prompt(tok, prompts.build_prompt(ROW["question"], tok, "plain"))
    for ids in (chat, plain):
        assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1


def test_prompt_plus_completion_ids_round_trip(tok):
    ex = prompts.sft_example(ROW, tok, "chat")
    ids = prompts.encode_prompt(tok, ex["prompt"]) + prompts.encode_completion(tok, ex["completion"])
    assert ids[-1] == tok.eos_token_id
    assert tok.decode(ids) == ex["prompt"] + ex["completion"]


def test_reasoning_drops_every_final_line():
    assert prompts.reasoning_of("a\n#### 3\nb\n#### 4") == "a\n\nb"
