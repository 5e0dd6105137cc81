"""The model layer every stage uses: build, load and save the policy.

Two kinds of base model, one loading path:

* ``smoke`` / ``demo`` (``model.name_or_path == "scratch"``): a byte-level BPE
  tokenizer is trained with ``tokenizers`` on the training problems and a
  ``LlamaForCausalLM`` of the profile's size is initialised at random. Both
  are saved to ``checkpoints/base/`` so every later stage loads them with
  ``from_pretrained`` exactly like a hub model. Digits are split one per token
  so a tiny model can learn column arithmetic, and the chat template mimics
  DeepSeek-R1-Distill's: it pre-fills ``<think>\\n`` after the assistant tag
  and keeps only the text after ``</think>`` of a rendered assistant turn
  (see ``looper_utils.prompts`` for why that matters).
* ``full``: a hub id or local folder (``deepseek-ai/DeepSeek-R1-Distill-Llama-8B``)
  in bf16 or 4-bit NF4 (bitsandbytes, bf16 compute, double quantisation).
  ``quantization="auto"`` keeps bf16 where the GPU holds twice the bf16
  weights (8B = 16 GB: a 40-80 GB card) and falls back to 4-bit on smaller
  cards. LoRA goes on every linear projection.

Checkpoint folders (``checkpoints/base``, ``checkpoints/sft``) hold the
Hugging Face files plus ``looper_config.json`` (the Config that wrote them)
and ``looper_state.json`` (stage, step, format = ``full`` or ``adapter``).
They are written into a temporary sibling folder and renamed into place, so
a killed run never leaves a half-written checkpoint that a later stage trusts.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import sys
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

from . import config as config_mod
from .artifacts import atomic_dir, atomic_write_json, read_json
from .progress import overwrite_notice
from .prompts import THINK_CLOSE, THINK_OPEN, prompt_wording

__all__ = ["BOS", "EOS", "PAD", "USER", "ASSISTANT", "THINK_OPEN", "THINK_CLOSE", "ModelLoadError",
           "resolve_device", "chat_template", "build_tokenizer", "build_scratch_model", "tokenizer_corpus",
           "build_or_load_base", "load_base", "load_policy", "load_checkpoint", "apply_lora",
           "choose_quantization", "save_checkpoint", "read_state", "ensure_pad_token", "count_params",
           "base_dir", "sft_dir", "describe", "set_cpu_threads", "free_memory", "weights_digest",
           "checkpoint_digest", "quiet_progress"]

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
USER, ASSISTANT = "<|user|>", "<|assistant|>"
CONFIG_FILE, STATE_FILE = "looper_config.json", "looper_state.json"
PPO_ADAPTER_FILE = "policy_adapter.safetensors"  # the PPO policy adapter in checkpoints/ppo/{last,best}


class ModelLoadError(RuntimeError):
    """A model or tokenizer cannot be built or loaded; the message says how to fix it."""


# ---- devices ----------------------------------------------------------------

def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> the first CUDA GPU if there is one, else the CPU.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device={name!r} but no CUDA GPU is visible; pass device='cpu' or 'auto'")
    return torch.device(name)


def set_cpu_threads(n: int, device: torch.device) -> None:
    """Use ``n`` torch threads when running on CPU (``0`` keeps torch's default).

    A tiny model's operations are too small to split across cores: on a
    shared 2-core machine two threads made training 3x and generation up to
    20x slower than one (threads spin-waiting on a busy neighbour).
    """
    if device.type == "cpu" and n > 0:
        torch.set_num_threads(n)


def base_dir(cfg: config_mod.Config) -> Path:
    return cfg.checkpoints_dir / "base"


def sft_dir(cfg: config_mod.Config) -> Path:
    return cfg.checkpoints_dir / "sft"


# ---- tokenizer + tiny Llama from scratch --------------------------------------

def chat_template(think: bool = True) -> str:
    """An R1-Distill-like chat template for the scratch tokenizer.

    With ``think`` the generation prompt ends inside a think block
    (``<|assistant|><think>\\n``), and an assistant turn keeps only the text
    after ``</think>`` -- both exactly as DeepSeek-R1-Distill's template does.
    """
    prefill = "<|assistant|><think>\\n" if think else "<|assistant|>"
    return (
        "{{ bos_token }}"
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}{{ message['content'] }}"
        "{% elif message['role'] == 'user' %}{{ '<|user|>' + message['content'] }}"
        "{% elif message['role'] == 'assistant' %}"
        "{% set content = message['content'] %}"
        "{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}"
        "{{ '<|assistant|>' + content + eos_token }}"
        "{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '" + prefill + "' }}{% endif %}"
    )


def tokenizer_corpus(rows: Iterable[dict], extra: Iterable[str] = ()) -> Iterator[str]:
    """The text the scratch tokenizer learns its merges from: questions, solutions, prompt wording."""
    yield from extra
    for r in rows:
        yield r["question"]
        yield r["answer"]


def build_tokenizer(texts: Iterable[str], vocab_size: int, think: bool = True, model_max_length: int = 512):
    """Train a byte-level BPE tokenizer (digits split one per token) and wrap it for transformers.

    Byte-level means no unknown tokens; splitting digits means "128" is
    always the three tokens 1, 2, 8, which is what lets a tiny model add.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [PAD, BOS, EOS, USER, ASSISTANT]
    tok = Tokenizer(models.BPE())
    # one digit per piece; a space before a number stays with its first digit
    # (" 1", "2") so the space costs no token of its own
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r" ?[0-9]"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + len(specials) + 2:
        raise ModelLoadError(f"model.tokenizer_vocab={vocab_size} is too small: a byte-level tokenizer needs "
                             f"at least {len(alphabet) + len(specials) + 2}; raise model.tokenizer_vocab")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 2, special_tokens=specials, initial_alphabet=alphabet,
                                  min_frequency=2, show_progress=False)
    tok.train_from_iterator(texts, trainer)
    # Not special: decoding with skip_special_tokens=True must keep them, or the
    # grader could not find the answer after </think>. R1-Distill does the same.
    tok.add_tokens([AddedToken(THINK_OPEN, special=False, normalized=False),
                    AddedToken(THINK_CLOSE, special=False, normalized=False)])
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                 extra_special_tokens=[USER, ASSISTANT], model_max_length=model_max_length)
    hf.chat_template = chat_template(think)
    return hf


def build_scratch_model(mcfg: config_mod.ModelConfig, tokenizer, seed: int = 0):
    """A randomly initialised ``LlamaForCausalLM`` sized by the profile (seeded, fp32)."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    if mcfg.hidden_size % mcfg.num_heads or mcfg.num_heads % mcfg.num_kv_heads:
        raise ModelLoadError(f"model.hidden_size={mcfg.hidden_size} must divide by model.num_heads="
                             f"{mcfg.num_heads}, which must divide by model.num_kv_heads={mcfg.num_kv_heads}")
    lcfg = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=mcfg.hidden_size, intermediate_size=mcfg.intermediate_size,
        num_hidden_layers=mcfg.num_layers, num_attention_heads=mcfg.num_heads,
        num_key_value_heads=mcfg.num_kv_heads, max_position_embeddings=mcfg.max_position,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,  # the embedding is a large share of a tiny model
        # "small init" (Nguyen & Salazar 2019): the library's fixed 0.02 is too
        # small for a 96-wide model, which then takes far longer to learn to copy
        initializer_range=mcfg.init_std or math.sqrt(2.0 / (5.0 * mcfg.hidden_size)),
        attn_implementation=mcfg.attn_implementation,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(lcfg)
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id,
                                               eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    return model


# ---- checkpoints ---------------------------------------------------------------

@contextlib.contextmanager
def quiet_progress() -> Iterator[None]:
    """Hide the libraries' per-file and per-map bars ("Loading weights", "Writing model shards",
    dataset maps) for the duration; the Trainer's own step bar and ours stay."""
    from transformers.utils import logging as hf_logging

    ds = sys.modules.get("datasets")  # only if something already uses it; not worth an import
    hf_was = hf_logging.is_progress_bar_enabled()
    ds_was = ds is not None and not ds.utils.are_progress_bars_disabled()
    hf_logging.disable_progress_bar()
    if ds_was:
        ds.utils.disable_progress_bars()
    try:
        yield
    finally:
        if hf_was:
            hf_logging.enable_progress_bar()
        if ds_was:
            ds.utils.enable_progress_bars()


def save_checkpoint(out_dir: Path, model, tokenizer, cfg: config_mod.Config, stage: str, step: int,
                    extra: dict[str, Any] | None = None) -> Path:
    """Save model (full weights or PEFT adapter), tokenizer, config and step, atomically."""
    fmt = "adapter" if _is_peft(model) else "full"
    previous = Path(out_dir) / CONFIG_FILE
    if previous.is_file():
        try:
            notice = overwrite_notice(str(out_dir), read_json(previous), cfg.to_dict())
        except ValueError:  # an unreadable config of an old checkpoint is no reason to stop saving
            notice = None
        if notice:
            print(notice, flush=True)
    with atomic_dir(Path(out_dir)) as tmp, quiet_progress():
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        config_mod.save(cfg, tmp / CONFIG_FILE)
        state = {"stage": stage, "step": int(step), "format": fmt, "n_params": count_params(model)["total"],
                 **(extra or {})}
        atomic_write_json(tmp / STATE_FILE, state)
    return Path(out_dir)


def weights_digest(*paths: Path) -> str:
    """SHA-256 of weight files, what identifies a model's exact weights wherever its folder is.

    A folder stands for its ``*.safetensors`` then its ``*.bin`` files (each
    set sorted by name; tokenizer, config and training-state files are not
    weights); a file stands for itself. Names and contents are hashed in that
    order, so ``weights_digest(sft, ppo / "policy_adapter.safetensors")`` names
    a PPO policy together with the SFT weights under it. PPO's resume
    signature, the rollout manifest and the evaluation records all use it.
    """
    h = hashlib.sha256()
    for path in map(Path, paths):
        files = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")) if path.is_dir() else [path]
        for f in files:
            if f.name.startswith("trainer_state."):  # PPO's optimiser and RNG state, not weights
                continue
            h.update(f.name.encode())
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 24), b""):
                    h.update(chunk)
    return h.hexdigest()


def checkpoint_digest(cfg: config_mod.Config, folder: Path, *files: Path) -> str:
    """``weights_digest`` of a checkpoint folder (and ``files`` loaded over it, such as a PPO policy adapter),
    with what an adapter sits on: the scratch base's weights, or the pretrained model's id or path.

    That is everything ``load_checkpoint`` puts together, so two equal
    digests mean the same weights generate.
    """
    digest = weights_digest(folder, *files)
    if not (Path(folder) / "adapter_config.json").is_file():
        return digest
    # a hub model's weights are not read here (16 GB for the 8B); its id or local path stands for them
    under = weights_digest(base_dir(cfg)) if cfg.model.name_or_path == "scratch" else cfg.model.name_or_path
    return f"{digest} over {under}"


def read_state(ckpt_dir: Path) -> dict[str, Any]:
    """The ``looper_state.json`` of a checkpoint folder (stage, step, format...)."""
    p = Path(ckpt_dir) / STATE_FILE
    if not p.is_file():
        raise ModelLoadError(f"{p} is missing: {ckpt_dir} is not a finished checkpoint; rerun the stage "
                             "that writes it (02_sft for checkpoints/base and checkpoints/sft)")
    return read_json(p)


_ARCH_FIELDS = ("name_or_path", "tokenizer_vocab", "hidden_size", "num_layers", "num_heads", "num_kv_heads",
                "intermediate_size", "max_position", "chat_think", "init_std")


def build_or_load_base(cfg: config_mod.Config, train_rows: list[dict] | None = None,
                       device: torch.device | None = None):
    """(model, tokenizer) of the base policy; for ``scratch`` builds ``checkpoints/base`` once.

    A scratch base that exists is reused only if it was built with the same
    architecture; otherwise the error says which folder to delete.
    """
    device = device or resolve_device(cfg.device)
    set_cpu_threads(cfg.model.cpu_threads, device)
    if cfg.model.name_or_path != "scratch":
        return load_base(cfg, device)
    out = base_dir(cfg)
    if (out / STATE_FILE).is_file():
        saved = read_json(out / CONFIG_FILE).get("model", {}) if (out / CONFIG_FILE).is_file() else {}
        diff = {k: (saved.get(k), getattr(cfg.model, k)) for k in _ARCH_FIELDS if saved.get(k) != getattr(cfg.model, k)}
        if diff:
            raise ModelLoadError(f"{out} was built with other model settings {diff} (saved, wanted); delete "
                                 f"{out} and {sft_dir(cfg)} to rebuild, or use another root")
        return load_checkpoint(out, device)
    if not train_rows:
        raise ModelLoadError(f"{out} does not exist and no training rows were given to build it; "
                             "pass the train split (run notebooks/01_data.ipynb first)")
    tokenizer = build_tokenizer(tokenizer_corpus(train_rows, extra=prompt_wording() * len(train_rows)),
                                cfg.model.tokenizer_vocab, think=cfg.model.chat_think,
                                model_max_length=cfg.model.max_position)
    model = build_scratch_model(cfg.model, tokenizer, seed=cfg.seed)
    save_checkpoint(out, model, tokenizer, cfg, stage="base", step=0)
    return load_checkpoint(out, device)


# ---- hub / local models ----------------------------------------------------------

def _causal_lm_config(path: str):
    """The model's config, or an error saying why ``path`` is not a causal LM."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    p = Path(path).expanduser()
    if (p.is_absolute() or path.startswith(".")) and not p.exists():
        raise ModelLoadError(f"model.name_or_path={path!r}: no such folder; point it at a saved model "
                             "folder or a hub id")
    if p.is_dir() and not (p / "config.json").is_file():
        raise ModelLoadError(f"{p}/config.json is missing: {p} is not a saved transformers model; point "
                             "model.name_or_path at a folder written by save_pretrained (or a hub id)")
    try:
        mconf = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read the config of {path!r} ({exc}); check the hub id or local path, "
                             "and network access for hub ids") from exc
    if mconf.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        arch = ", ".join(getattr(mconf, "architectures", None) or [mconf.model_type])
        raise ModelLoadError(f"{path!r} is a {arch} model, not a causal language model; point "
                             "model.name_or_path at a decoder-only LM such as "
                             "deepseek-ai/DeepSeek-R1-Distill-Llama-8B")
    return mconf


def _estimate_params(mconf) -> int:
    """Parameter count of a Llama-like config, without loading weights."""
    h = mconf.hidden_size
    heads = mconf.num_attention_heads
    kv = getattr(mconf, "num_key_value_heads", None) or heads
    head_dim = getattr(mconf, "head_dim", None) or h // heads
    inter = getattr(mconf, "intermediate_size", 4 * h)
    per_layer = h * head_dim * (2 * heads + 2 * kv) + 3 * h * inter
    emb = mconf.vocab_size * h * (1 if getattr(mconf, "tie_word_embeddings", False) else 2)
    return mconf.num_hidden_layers * per_layer + emb


def choose_quantization(quantization: str, n_params: int, device: torch.device) -> str:
    """Resolve ``auto`` and check the choice fits the device.

    ``auto``: bf16 when the GPU holds twice the bf16 weights (room for
    activations, LoRA optimizer state and the KV cache), else 4-bit; on CPU
    ``none`` (fp32).

    >>> choose_quantization("auto", 8_000_000_000, torch.device("cpu"))
    'none'
    >>> choose_quantization("bf16", 10, torch.device("cpu"))
    'bf16'
    """
    if quantization == "4bit" and device.type != "cuda":
        raise ModelLoadError("model.quantization='4bit' needs a CUDA GPU (bitsandbytes NF4 kernels); on this "
                             "machine set model.quantization='bf16' or 'none', or run on a GPU box")
    if quantization != "auto":
        return quantization
    if device.type != "cuda":
        return "none"
    total = torch.cuda.get_device_properties(device.index or 0).total_memory
    return "bf16" if total >= 2 * 2 * n_params else "4bit"


def load_base(cfg: config_mod.Config, device: torch.device):
    """(model, tokenizer) of a hub id or local model folder, in the configured precision."""
    path = cfg.model.name_or_path
    mconf = _causal_lm_config(path)
    quant = choose_quantization(cfg.model.quantization, _estimate_params(mconf), device)
    return _load_pretrained(path, quant, device, cfg.model.attn_implementation)


def _load_pretrained(path: str, quant: str, device: torch.device, attn: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"attn_implementation": attn}
    if quant == "4bit":
        try:
            from transformers import BitsAndBytesConfig
            import bitsandbytes  # noqa: F401
        except ImportError as exc:
            raise ModelLoadError("model.quantization='4bit' needs bitsandbytes: pip install -e '.[gpu]'") from exc
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16)
        kwargs["dtype"] = torch.bfloat16
    else:
        kwargs["dtype"] = torch.bfloat16 if quant == "bf16" else torch.float32
    if device.type == "cuda":
        kwargs["device_map"] = {"": device.index or 0}
    with quiet_progress():
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if device.type != "cuda":
        model.to(device)
    tokenizer = AutoTokenizer.from_pretrained(path)
    ensure_pad_token(tokenizer, model, source=path)
    return model, tokenizer


def ensure_pad_token(tokenizer, model=None, source: str = "the tokenizer") -> None:
    """Give a tokenizer without a pad token one (EOS), with a note, and mirror it onto the model.

    Padding is masked out everywhere (attention mask, labels), so reusing EOS
    is safe; generation stops on EOS ids, not on the pad id.
    """
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise ModelLoadError(f"{source}: tokenizer has neither a pad nor an EOS token; add one with "
                                 "tokenizer.add_special_tokens({'pad_token': ...}) and resize the embeddings")
        warnings.warn(f"{source}: tokenizer has no pad token; using {fallback!r} for padding", stacklevel=2)
        tokenizer.pad_token = fallback
    if model is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id


def apply_lora(model, mcfg: config_mod.ModelConfig, gradient_checkpointing: bool = False):
    """Wrap ``model`` with trainable LoRA adapters on every linear projection (k-bit prep for 4-bit)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    lora = LoraConfig(r=mcfg.lora_r, lora_alpha=mcfg.lora_alpha, lora_dropout=mcfg.lora_dropout,
                      target_modules="all-linear", task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


# ---- policies for later stages ---------------------------------------------------

def _is_peft(model) -> bool:
    return hasattr(model, "peft_config")


def count_params(model) -> dict[str, int]:
    """Total and trainable parameter counts (4-bit weights counted as stored elements)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable}


def load_checkpoint(ckpt_dir: Path, device: torch.device, cfg: config_mod.Config | None = None,
                    merge: bool = True):
    """(model, tokenizer) from a folder holding a full model or a PEFT adapter.

    An adapter is put on the base of ``cfg`` (the current run's, or the
    one saved in the folder): ``checkpoints/base`` for scratch models, the hub
    id or path otherwise. ``merge`` folds it into the weights for faster
    generation where the base is not quantised.
    """
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        raise ModelLoadError(f"{ckpt_dir} does not exist; run notebooks/02_sft.ipynb first")
    saved_cfg = config_mod.from_dict(read_json(ckpt_dir / CONFIG_FILE)) if (ckpt_dir / CONFIG_FILE).is_file() else None
    run_cfg = cfg or saved_cfg
    if (ckpt_dir / "adapter_config.json").is_file():
        from peft import PeftModel
        from transformers import AutoTokenizer

        if run_cfg is None:
            raise ModelLoadError(f"{ckpt_dir} holds a LoRA adapter but no {CONFIG_FILE}; pass cfg so the "
                                 "base model can be found")
        if run_cfg.model.name_or_path == "scratch":
            base, _ = load_checkpoint(base_dir(run_cfg), device, merge=False)
        else:
            base, _ = load_base(run_cfg, device)
        model = PeftModel.from_pretrained(base, ckpt_dir)
        if merge and not getattr(base, "is_loaded_in_4bit", False):
            model = model.merge_and_unload()
        tokenizer = AutoTokenizer.from_pretrained(ckpt_dir)
        ensure_pad_token(tokenizer, model, source=str(ckpt_dir))
    else:
        if not (ckpt_dir / "config.json").is_file():
            raise ModelLoadError(f"{ckpt_dir} holds neither config.json nor adapter_config.json; it is not a "
                                 "checkpoint -- rerun the stage that writes it")
        quant = "none" if run_cfg is None or run_cfg.model.name_or_path == "scratch" else \
            choose_quantization(run_cfg.model.quantization, _estimate_params(_causal_lm_config(str(ckpt_dir))),
                                device)
        attn = run_cfg.model.attn_implementation if run_cfg else "sdpa"
        model, tokenizer = _load_pretrained(str(ckpt_dir), quant, device, attn)
    model.eval()
    return model, tokenizer


def load_policy(cfg: config_mod.Config, which: str, device: torch.device | None = None, merge: bool = True):
    """(model, tokenizer) ready for generation: ``which`` is ``base``, ``sft`` or a checkpoint folder.

    On CPU this also sets torch's thread count to ``model.cpu_threads``.
    """
    device = device or resolve_device(cfg.device)
    set_cpu_threads(cfg.model.cpu_threads, device)
    if which == "base":
        if cfg.model.name_or_path == "scratch":
            return load_checkpoint(base_dir(cfg), device, cfg, merge)
        model, tokenizer = load_base(cfg, device)
        model.eval()
        return model, tokenizer
    if which == "sft":
        return load_checkpoint(sft_dir(cfg), device, cfg, merge)
    p = Path(which)
    if not p.is_dir():
        raise ModelLoadError(f"which={which!r}: expected 'base', 'sft' or an existing checkpoint folder")
    return load_checkpoint(p, device, cfg, merge)


def free_memory() -> None:
    """Return memory of models that are no longer referenced (call after ``del model``)."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def describe(model) -> dict[str, Any]:
    """A few facts about a model for the notebooks (parameters, dtype, device, layers)."""
    conf = model.config
    return {"n_params": count_params(model)["total"], "dtype": str(next(model.parameters()).dtype),
            "device": str(next(model.parameters()).device), "layers": conf.num_hidden_layers,
            "hidden": conf.hidden_size, "vocab": conf.vocab_size}


