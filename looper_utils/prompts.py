r"""The one place that turns a problem into model input, and a gold solution into an SFT target.

Two prompt styles:

* ``plain``: the instruction and the question as plain text
  (``You are a careful math tutor ... '#### 42'``), no chat template;
* ``chat``: the question as a user turn rendered by the tokenizer's chat
  template with the generation prompt.

The ``<think>`` convention (one convention for SFT targets, rollouts, reward
and evaluation). DeepSeek-R1-Distill's chat template ends the generation
prompt with ``<｜Assistant｜><think>\n``: the model's output starts *inside*
the think block. When the same template renders a whole assistant turn it
keeps only the text after ``</think>``, so an SFT example rendered through
the template in one piece would lose its reasoning. Therefore:

* the prompt is always ``template(question, add_generation_prompt=True)``
  (or the plain text), and the completion is appended to it as text, never
  rendered by the template;
* when the prompt ends inside a think block (``completion_starts_in_think``)
  the SFT completion is ``<worked solution without the #### line>\n</think>\n\n#### N``
  followed by EOS: the reasoning sits in the think block, the answer after it;
  otherwise it is the gold solution as written (``...\n#### N``) plus EOS;
* every grader call passes ``think=completion_starts_in_think(tokenizer, style)``
  to ``looper_utils.answers.is_correct``: in a think prompt a completion that
  never closes ``</think>`` has no answer.

Token ids follow one rule too (``encode_prompt``): the prompt text is
tokenized without the tokenizer's automatic special tokens, and BOS is put in
front once if the text does not already start with it (a chat template
usually writes it). SFT trains on exactly ``encode_prompt(prompt) +
completion ids`` and generation feeds exactly ``encode_prompt(prompt)``, so
training and sampling see the same tokens.
"""
from __future__ import annotations

import re

__all__ = ["STYLES", "PLAIN_PROMPT", "CHAT_INSTRUCTION", "THINK_CLOSE", "build_prompt", "user_message",
           "completion_starts_in_think", "reasoning_of", "sft_example", "encode_prompt", "encode_completion",
           "prompt_wording"]

STYLES = ("chat", "plain")
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
PLAIN_PROMPT = ("You are a careful math tutor. Solve the problem step by step, showing each calculation, "
                "and give the final numeric answer in the form '#### 42'.\n\n"
                "Problem: {question}\nSolution:\n")
# short on purpose: every token of it is paid for in every training step and rollout
CHAT_INSTRUCTION = "Give the final numeric answer as '#### 42'."
_FINAL_LINE = re.compile(r"^[ \t]*####.*$", re.M)
_FINAL_NUMBER = re.compile(r"^[ \t]*####[ \t]*(\S[^\n]{0,40}?)[ \t]*$", re.M)


def _check_style(style: str) -> None:
    if style not in STYLES:
        raise ValueError(f"prompt style {style!r} unknown; choose one of {', '.join(STYLES)} "
                         "(model.prompt_style)")


def user_message(question: str) -> str:
    """The user turn of the chat style: the question and the answer-format instruction.

    >>> user_message("What is 2+3?")
    "What is 2+3?\\nGive the final numeric answer as '#### 42'."
    """
    return f"{question.strip()}\n{CHAT_INSTRUCTION}"


def build_prompt(question: str, tokenizer=None, style: str = "chat") -> str:
    """The text the model continues for ``question``.

    >>> print(build_prompt("What is 2+3?", style="plain"))
    You are a careful math tutor. Solve the problem step by step, showing each calculation, and give the final numeric answer in the form '#### 42'.
    <BLANKLINE>
    Problem: What is 2+3?
    Solution:
    <BLANKLINE>
    """
    _check_style(style)
    if style == "plain":
        return PLAIN_PROMPT.format(question=question.strip())
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", None) or "this tokenizer"
        raise ValueError(f"{name} has no chat template; use model.prompt_style='plain' "
                         "or a tokenizer that carries one")
    return tokenizer.apply_chat_template([{"role": "user", "content": user_message(question)}],
                                         tokenize=False, add_generation_prompt=True)


def completion_starts_in_think(tokenizer=None, style: str = "chat") -> bool:
    """Whether the prompt pre-fills ``<think>``: the ``think=`` flag of every grader call."""
    _check_style(style)
    if style == "plain":
        return False
    return build_prompt("1+1?", tokenizer, style).rstrip().endswith(THINK_OPEN)


def reasoning_of(answer: str) -> str:
    """A worked solution without its ``#### N`` line(s).

    >>> reasoning_of("2+3=<<2+3=5>>5 apples.\\n#### 5")
    '2+3=<<2+3=5>>5 apples.'
    """
    return _FINAL_LINE.sub("", answer).strip()


def sft_example(row: dict, tokenizer, style: str = "chat") -> dict[str, str]:
    """``{"prompt", "completion"}`` for one problem row; the completion ends with EOS.

    The text is the row's ``teacher_answer`` when it has one (the teacher
    mix of ``looper_utils.data``), else its ``answer``. The final line is the
    canonical number of that text's ``#### N`` line (the gold number for
    ``worked`` and ``terse`` answers, the slipped result for ``slip``), so
    what SFT teaches is exactly what the strict grader reads.
    """
    from .answers import normalize_number

    prompt = build_prompt(row["question"], tokenizer, style)
    teacher = row.get("teacher_answer")
    final = row["gold"]
    if teacher:
        finals = _FINAL_NUMBER.findall(teacher)
        final = (normalize_number(finals[-1]) if finals else None) or final
    reasoning = reasoning_of(teacher or row["answer"])
    eos = tokenizer.eos_token or ""
    if completion_starts_in_think(tokenizer, style):
        completion = f"{reasoning}\n{THINK_CLOSE}\n\n#### {final}{eos}"
    else:
        completion = f"{reasoning}\n#### {final}{eos}"
    return {"prompt": prompt, "completion": completion}


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """Prompt token ids: no automatic special tokens, BOS once in front if the tokenizer has one."""
    ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    bos = tokenizer.bos_token_id
    if bos is not None and (not ids or ids[0] != bos):
        ids.insert(0, bos)
    return ids


def encode_completion(tokenizer, completion: str) -> list[int]:
    """Completion token ids (an EOS written as text becomes the EOS id)."""
    return list(tokenizer(completion, add_special_tokens=False)["input_ids"])


def prompt_wording() -> list[str]:
    """The fixed wording every prompt carries (for training a scratch tokenizer's merges)."""
    return [PLAIN_PROMPT.format(question=""), CHAT_INSTRUCTION, "\n\n#### "]
