"""Export: the PPO policy as a plain Hugging Face folder that loads and answers like the policy it came from."""
import json

import _tiny
import pytest
import torch

from looper_utils import config, data, export, modeling, ppo, prompts, sft
from looper_utils.artifacts import MissingInputError
from looper_utils.ppo.model import POLICY

CPU = torch.device("cpu")
QUESTIONS = ["Mia has 3 apples and buys 4 more. How many apples does she have now?",
             "Ben has 9 cards. He gives away 2 cards. How many cards does he have left?"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny SFT model (a few steps of 02) and one PPO iteration over it (checkpoints/ppo/last), as in test_ppo."""
    root = tmp_path_factory.mktemp("export_root")
    rows = data.synthetic_problems(60, seed=0)
    cfg = _tiny.tiny_cfg(root, run_id="exp", learning_rate=1e-2, batch_size=8, max_steps=150, logging_steps=50,
                         save_steps=100, warmup_ratio=0.0)
    model, tok = modeling.build_or_load_base(cfg, rows, device=CPU)
    sft.train_sft(cfg, model, tok, rows[:50], device=CPU, progress=False)
    cfg = cfg.override(stage="ppo", iterations=1, prompts_per_iter=4, k=2, advantage="gae", max_new_tokens=12,
                       minibatch_size=4, eval_every=0, n_dev=4, ppo_epochs=2, learning_rate=5e-3)
    trainer = ppo.PPOTrainer(cfg, rows[:50], rows[50:], progress=False)
    trainer.train()
    return cfg, trainer


def _prompt_ids(tok, question):
    """A user's prompt: the chat template's text, tokenized without adding a second BOS."""
    text = tok.apply_chat_template([{"role": "user", "content": prompts.user_message(question)}], tokenize=False,
                                   add_generation_prompt=True)
    return torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])


def test_exported_folder_loads_without_looper_and_answers_like_the_policy(trained):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg, trainer = trained
    result = export.export_ppo(cfg, device=CPU)
    out = export.export_dir(cfg)
    assert result.path == out == cfg.checkpoints_dir / "export"
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert not hasattr(model, "peft_config") and tok.chat_template == trainer.tok.chat_template
    greedy = dict(max_new_tokens=16, do_sample=False, pad_token_id=tok.pad_token_id)
    sft_model, _ = modeling.load_policy(cfg, "sft", CPU)
    answers = set()
    for q in QUESTIONS:
        ids = _prompt_ids(tok, q)
        assert ids[0, 0].item() == tok.bos_token_id and (ids == tok.bos_token_id).sum() == 1  # BOS once
        assert ids[0].tolist() == prompts.encode_prompt(trainer.tok, prompts.build_prompt(q, trainer.tok, "chat"))
        att = torch.ones_like(ids)
        with torch.no_grad():
            exported = model.generate(ids, attention_mask=att, **greedy)[0, ids.shape[1]:]
            with trainer.pv.use(POLICY):
                policy = trainer.pv.model.generate(input_ids=ids, attention_mask=att, **greedy)[0, ids.shape[1]:]
                policy_logits = trainer.pv.model(input_ids=ids).logits
            logits, sft_logits = model(ids).logits, sft_model(ids).logits
        assert exported.tolist() == policy.tolist() and len(exported) > 0
        answers.add(tok.decode(exported))
        assert torch.allclose(logits, policy_logits, atol=1e-4)
        assert (logits - sft_logits).abs().max() > 1e-3  # PPO's update, not the SFT weights it started from
    assert len(answers) == len(QUESTIONS)  # real answers that depend on the question


def test_export_names_its_source_and_is_written_atomically(trained):
    cfg, trainer = trained
    first = export.export_ppo(cfg, "ppo_last", device=CPU)
    again = export.export_ppo(cfg, device=CPU)  # a second export replaces the first
    info = json.loads((again.path / export.EXPORT_INFO).read_text())
    assert info == again.info
    assert info["run_id"] == "exp" and info["profile"] == "smoke" and info["ppo_step"] == 1
    assert info["source_checkpoint"] == str((cfg.checkpoints_dir / "ppo" / "last").resolve())
    assert info["base_model"] == "scratch" and info["format"] == "merged"
    assert info["prompt_example"].startswith(trainer.tok.bos_token) and info["prompt_example"].endswith("<think>\n")
    assert info["answer_format"].endswith("after </think>")
    assert first.info["source_checkpoint"] == info["source_checkpoint"]
    assert {"config.json", "model.safetensors", "tokenizer.json", "looper_config.json",
            export.EXPORT_INFO} <= {p.name for p in again.path.iterdir()}
    assert [p.name for p in cfg.checkpoints_dir.iterdir() if p.name.startswith(".")] == []  # no temp folders left
    assert config.from_dict(json.loads((again.path / "looper_config.json").read_text())) == cfg


def test_missing_ppo_checkpoint_says_which_notebook_to_run(tmp_path):
    cfg = config.build("smoke", root=str(tmp_path))
    source, why = export.find_source(cfg)
    assert source is None and "05_ppo" in why
    with pytest.raises(MissingInputError, match="05_ppo"):
        export.export_ppo(cfg, device=CPU)
    assert not export.export_dir(cfg).exists()


def test_push_to_hub_uploads_model_and_tokenizer_privately(trained, tmp_path, monkeypatch):
    """The hub is replaced by a recorder: no test talks to the network."""
    from transformers import PreTrainedModel
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase

    cfg, _ = trained
    calls = []
    monkeypatch.setattr(PreTrainedModel, "push_to_hub", lambda self, repo, **kw: calls.append(("model", repo, kw)))
    monkeypatch.setattr(PreTrainedTokenizerBase, "push_to_hub", lambda self, repo, **kw: calls.append(("tok", repo, kw)))
    result = export.export_ppo(cfg, out_dir=tmp_path / "out", device=CPU, push_to_hub="me/looper-math")
    assert result.pushed_to == "me/looper-math" and result.path == tmp_path / "out"
    assert [(who, repo, kw["private"]) for who, repo, kw in calls] == [("model", "me/looper-math", True),
                                                                      ("tok", "me/looper-math", True)]
    assert export.export_ppo(cfg, out_dir=tmp_path / "quiet", device=CPU).pushed_to == "" and len(calls) == 2
