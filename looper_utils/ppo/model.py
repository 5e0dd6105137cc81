"""One base model in memory, three roles: policy, value, reference.

TRL removed its PPOTrainer in 1.13 and its PPO never took rule-based
rewards, so the PPO models are ours, on transformers + PEFT:

- the base is the SFT model itself when 02 fine-tuned all weights (``smoke``,
  ``demo``), or the pretrained base (bf16, or 4-bit on small cards) when 02
  trained a LoRA adapter (``full``);
- ``policy``: a trainable LoRA adapter. Over a fully fine-tuned SFT model it
  starts at zero (so the policy starts as the SFT model); over a pretrained
  base it is loaded from the SFT adapter;
- ``value``: a second trainable LoRA adapter plus a scalar head on the last
  hidden state (``ppo.critic="separate"``, the default), or the head alone on
  the policy's own last hidden state (``ppo.critic="shared"``: one forward
  gives log-probs and values, and the value loss, weighted by
  ``ppo.value_coef``, also trains the policy adapter; TRL's former
  ``AutoModelForCausalLMWithValueHead`` did the same);
- reference = the SFT weights, frozen: the adapters disabled over a fully
  fine-tuned SFT model, or a frozen copy of the SFT adapter (``ref``).

Only the adapters and the value head are trained and saved, so a PPO
checkpoint is a few MB whatever the base.

Precision (``ppo.precision``): on a GPU with bf16, ``auto`` keeps a frozen
full-precision base in bf16 and runs the forwards under bf16 autocast (the
adapters, the value head, the optimiser and the log-prob arithmetic stay in
fp32), as SFT's Trainer does; the 8B base is bf16 or 4-bit already. ``fp32``
keeps everything in fp32. On the CPU both are fp32.

Attention on a GPU runs without cuDNN's SDPA backend (``attention_backends``):
PPO's minibatches change length from one to the next, and cuDNN builds a new
attention graph for each shape on the CPU, 10-20 ms a call, which left the
8B update waiting on the host for over half its time; FlashAttention or the
memory-efficient kernel (which take a padding mask) have no such set-up.
PPO's batches are right-padded, so its forwards give the decoder no padding
mask at all (``right_padded``, ``decoder_mask``) and FlashAttention may run.
Under bf16 autocast the adapters read their bf16 input as it is
(``adapter_input_casts_off``): PEFT would cast each adapted projection's input
to the adapters' fp32 and autocast would cast it straight back to bf16 for the
product, two copies of every projection's input each way, for the same result.
The policy adapter runs without dropout, also when it comes from an SFT
adapter trained with ``model.lora_dropout``: the update runs in train mode
(gradient checkpointing needs it), and PPO's ratio must compare the same
function that computed the old log-probs.

Token log-probs are taken from the decoder's hidden states at the positions
asked for (the completion tokens), with the LM head applied in chunks, so the
full ``[batch, length, vocab]`` fp32 logits of a 128k-token vocabulary are
never held at once; with gradients, each chunk's logits are recomputed in the
backward pass instead of kept.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .. import modeling
from ..compiled import CompiledLayers, compile_choice, decoder_layers
from ..config import Config

POLICY, VALUE, REF = "policy", "value", "ref"
# logits per chunk of the LM head in token_logprobs: 2**26 fp32 numbers (256 MiB), e.g. 512 tokens of a 128k vocabulary
_LOGIT_CHUNK = 1 << 26


def _lora(cfg: Config, dropout: float = 0.0):
    from peft import LoraConfig

    return LoraConfig(r=cfg.ppo.lora_r, lora_alpha=cfg.ppo.lora_alpha, lora_dropout=dropout,
                      target_modules="all-linear", task_type="CAUSAL_LM")


def use_bf16(cfg: Config, device: torch.device) -> bool:
    """True where the PPO forwards run in bf16: ``ppo.precision='auto'`` on a GPU that has it.

    >>> from looper_utils.config import smoke
    >>> use_bf16(smoke(), torch.device("cpu"))
    False
    """
    return cfg.ppo.precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()


def load_policy_base(cfg: Config, device: torch.device, bf16: bool = False, adapter: str = POLICY):
    """(peft model with a ``policy`` adapter, tokenizer, ref_mode) built over the SFT checkpoint.

    ``bf16``: a fully fine-tuned fp32 SFT model, frozen here, is kept in bf16 (the adapters stay fp32).
    ``adapter``: the adapter's name (TRL's GRPOTrainer expects PEFT's ``default``)."""
    from peft import PeftModel, get_peft_model

    sft = modeling.sft_dir(cfg)
    state = modeling.read_state(sft)
    if state.get("format") == "adapter":
        base = modeling.load_adapter_base(cfg, device)
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(sft)
        modeling.ensure_pad_token(tokenizer, base, source=str(sft))
        model = PeftModel.from_pretrained(base, sft, adapter_name=adapter, is_trainable=True)
        return model, tokenizer, "adapter"
    base, tokenizer = modeling.load_checkpoint(sft, device, merge=False)
    for p in base.parameters():
        p.requires_grad_(False)
    if bf16 and next(base.parameters()).dtype == torch.float32:
        base.to(torch.bfloat16)
    model = get_peft_model(base, _lora(cfg), adapter_name=adapter)
    return model, tokenizer, "disabled"


class PolicyValue(nn.Module):
    """The shared-base PPO model: log-probs under policy or reference, values, generation."""

    def __init__(self, cfg: Config, device: torch.device):
        super().__init__()
        self.bf16 = use_bf16(cfg, device)
        model, tokenizer, ref_mode = load_policy_base(cfg, device, bf16=self.bf16)
        if ref_mode == "adapter":
            model.load_adapter(modeling.sft_dir(cfg), adapter_name=REF, is_trainable=False)
        self.shared_critic = cfg.ppo.critic == "shared"
        if not self.shared_critic:
            model.add_adapter(VALUE, _lora(cfg))
        model.set_adapter(POLICY)
        drop_adapter_dropout(model)
        self.model, self.tokenizer, self.ref_mode = model, tokenizer, ref_mode
        self.device = device
        from peft.tuners.tuners_utils import BaseTunerLayer

        self._adapted = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
        if cfg.ppo.gradient_checkpointing:
            # activations of an 8B model over a minibatch of long sequences do not fit otherwise; the
            # recomputed forward (in the backward pass, after autocast() has exited) runs with the same
            # settings as the first
            kw = {"use_reentrant": False, "context_fn": lambda: (self._kernels(), self._kernels())}
            if hasattr(model, "activation_checkpointing_enable"):  # transformers' name from 5.2x on
                model.activation_checkpointing_enable(activation_checkpointing_kwargs=kw)
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kw)
        # the decoder layers compiled for the update (ppo.compile, looper_utils.compiled; off by default): the
        # elementwise work of a `demo` minibatch fused, 73 -> 40 ms a step by itself (bench/train_step_floor.py),
        # but about two minutes of compiling in the first iterations (docs/benchmarks.md)
        four_bit = bool(getattr(model.get_base_model(), "is_loaded_in_4bit", False))
        on, self.compile_why = compile_choice(cfg.ppo.compile, "ppo.compile", device,
                                              checkpointing=cfg.ppo.gradient_checkpointing, quantized=four_bit)
        self.compiled = CompiledLayers(decoder_layers(model)) if on else None
        hidden = model.config.hidden_size
        self.value_head = nn.Linear(hidden, 1).to(device=device, dtype=torch.float32)
        nn.init.normal_(self.value_head.weight, std=1.0 / (hidden + 1) ** 0.5)
        nn.init.zeros_(self.value_head.bias)
        for name, p in model.named_parameters():
            p.requires_grad_(f".{POLICY}." in name or f".{VALUE}." in name)
        self._adapter_flags = [(p, p.requires_grad) for n, p in model.named_parameters()
                               if any(f".{a}." in n for a in (POLICY, VALUE, REF))]

    # -- parameters -----------------------------------------------------------
    def _set_trainable(self) -> None:
        """The policy and value adapters trainable, the rest frozen (PEFT's ``set_adapter`` freezes the
        inactive adapters and unfreezes the active one). Only the adapters' tensors are set, from a list made
        once: a walk over the 8B model's parameters costs milliseconds, and PPO switches adapters often."""
        for p, trainable in self._adapter_flags:
            if p.requires_grad != trainable:
                p.requires_grad_(trainable)

    def adapter_params(self, adapter: str) -> list[nn.Parameter]:
        return [p for n, p in self.model.named_parameters() if f".{adapter}." in n]

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Every trained tensor (both adapters and the value head), on the CPU."""
        sd = {f"model.{n}": p.detach().cpu().clone() for n, p in self.model.named_parameters()
              if f".{POLICY}." in n or f".{VALUE}." in n}
        sd.update({f"value_head.{k}": v.detach().cpu().clone() for k, v in self.value_head.state_dict().items()})
        return sd

    def load_trainable_state(self, sd: dict[str, torch.Tensor]) -> None:
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for k, v in sd.items():
                if k.startswith("model."):
                    params[k[len("model."):]].copy_(v)
        self.value_head.load_state_dict({k[len("value_head."):]: v for k, v in sd.items()
                                         if k.startswith("value_head.")})

    # -- forwards ---------------------------------------------------------------
    @property
    def value_adapter(self) -> str:
        """The adapter the critic runs with: its own, or the policy's when the critic is shared."""
        return POLICY if self.shared_critic else VALUE

    @contextlib.contextmanager
    def use(self, adapter: str):
        """Run the shared base with one role's weights (re-entrant).

        With gradient checkpointing the backward pass re-runs the forward, so a
        loss must be backpropagated inside the same ``use`` block as its forward.
        """
        if adapter == REF and self.ref_mode == "disabled":
            with self.model.disable_adapter():
                yield
            return
        prev = self.model.active_adapter
        if adapter == prev:  # already active: nothing to switch (PEFT's set_adapter walks the whole model)
            yield
            return
        self.model.set_adapter(adapter)
        self._set_trainable()  # set_adapter freezes inactive adapters; we train two
        try:
            yield
        finally:
            self.model.set_adapter(prev)
            self._set_trainable()

    @contextlib.contextmanager
    def _kernels(self):
        """The attention backends, and under bf16 autocast the adapters' input casts left out (not autocast
        itself: gradient checkpointing restores that on its own). Entered only by ``with``: checkpointing
        makes the recomputation's context at the first forward and enters it in the backward pass."""
        with attention_backends(self.device), (adapter_input_casts_off(self._adapted) if self.bf16
                                               else contextlib.nullcontext()):
            yield

    @contextlib.contextmanager
    def autocast(self):
        """A forward's settings: bf16 autocast where ``ppo.precision`` allows it, the attention backends, and, for
        a forward with gradients (the update's), the compiled decoder layers where ``ppo.compile`` chose them.

        Only the update runs compiled: the compiler makes a graph per setting it meets (gradients on or off, the
        adapter, train or eval mode), each compiled once per run, and the forward without gradients is a fifth of
        the update's time. Generation never comes here, and runs the layers' own forward."""
        compiled = self.compiled is not None and torch.is_grad_enabled()
        with self._kernels(), (self.compiled.active() if compiled else contextlib.nullcontext()):
            if self.bf16:
                with torch.autocast(self.device.type, dtype=torch.bfloat16):
                    yield
            else:
                yield

    def token_logprobs(self, adapter: str, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       with_entropy: bool = False, temperature: float = 1.0, mask: torch.Tensor | None = None,
                       right_padded: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """log p(token_t | prefix) for t >= 1, shape [B, L-1]; optionally the entropy at each position.

        ``temperature`` scales the logits as sampling did, so the probabilities are those of the policy
        that produced the tokens (PPO's ratio and the KL are taken on that distribution). ``mask``
        ([B, L-1], e.g. ``Batch.mask``) picks the positions computed, by default every position whose
        token is real (attention mask 1); the others are 0. ``right_padded``: see ``decoder_mask``.
        """
        logp, ent, _ = self.forward_roles(adapter, input_ids, attention_mask, with_entropy, temperature, mask,
                                          right_padded=right_padded)
        return logp, ent

    @staticmethod
    def decoder_mask(attention_mask: torch.Tensor, right_padded: bool) -> torch.Tensor | None:
        """The attention mask the decoder is given: none for right-padded rows (PPO's ``Batch``), where the
        causal mask alone keeps every real token from the padding after it. The decoder then builds no padding
        mask, and scaled-dot-product attention may take FlashAttention, which takes no mask; the real tokens'
        numbers are the same (positions are 0, 1, 2, ... either way), the padding's are not used."""
        return None if right_padded else attention_mask

    def forward_roles(self, adapter: str, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      with_entropy: bool = False, temperature: float = 1.0, mask: torch.Tensor | None = None,
                      with_values: bool = False, right_padded: bool = False
                      ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """``token_logprobs``, plus the values of the same forward when ``with_values`` (shared critic only:
        the value head reads the policy's hidden states). One pass over the base instead of two."""
        if with_values and not (self.shared_critic and adapter == POLICY):
            raise ValueError("log-probs and values come from one forward only with ppo.critic='shared' "
                             "and the policy adapter")
        with self.use(adapter), self.autocast():
            lm = self.model.get_base_model()
            hidden = lm.model(input_ids=input_ids, attention_mask=self.decoder_mask(attention_mask, right_padded),
                              use_cache=False).last_hidden_state
            sel = (mask if mask is not None else attention_mask[:, 1:]).bool()
            h, target = hidden[:, :-1][sel], input_ids[:, 1:][sel]
            chunk = max(1, _LOGIT_CHUNK // lm.config.vocab_size)
            recompute = torch.is_grad_enabled() and h.requires_grad and len(h) > chunk
            parts = []
            for s in range(0, len(h), chunk):
                args = (lm.lm_head, h[s:s + chunk], target[s:s + chunk], temperature, with_entropy)
                parts.append(checkpoint(_head_logprobs, *args, use_reentrant=False) if recompute
                             else _head_logprobs(*args))
        logp = torch.zeros(sel.shape, dtype=torch.float32, device=input_ids.device)
        logp = logp.masked_scatter(sel, torch.cat([p[0] for p in parts])) if parts else logp
        ent = None
        if with_entropy:
            ent = torch.zeros(sel.shape, dtype=torch.float32, device=input_ids.device)
            ent = ent.masked_scatter(sel, torch.cat([p[1] for p in parts])) if parts else ent
        values = self.value_head(hidden[:, :-1].float()).squeeze(-1) if with_values else None
        return logp, ent, values

    def values(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, right_padded: bool = False) -> torch.Tensor:
        """V(prefix) at the state before each token t >= 1, shape [B, L-1]."""
        with self.use(self.value_adapter), self.autocast():
            inner = self.model.get_base_model().model  # the decoder without the LM head
            hidden = inner(input_ids=input_ids, attention_mask=self.decoder_mask(attention_mask, right_padded),
                           use_cache=False).last_hidden_state
        return self.value_head(hidden[:, :-1].float()).squeeze(-1)


def attention_backends(device: torch.device):
    """On a GPU, scaled-dot-product attention limited to FlashAttention, the memory-efficient kernel and
    the math fallback (no cuDNN: its per-shape graph set-up costs 10-20 ms of CPU a call); else nothing."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


@contextlib.contextmanager
def adapter_input_casts_off(layers: list[nn.Module]):
    """PEFT's LoRA layers in ``layers`` take their input in its own dtype instead of the adapter's.

    For use under bf16 autocast only, where the adapter's products run in bf16 whatever their input: PEFT
    would cast a bf16 input up to the fp32 adapter and autocast would cast it back down, the same bf16
    values after two copies (and two more in the backward pass). PEFT's own
    ``peft.helpers.disable_input_dtype_casting`` does the same but walks the whole model each time it is
    entered, and gradient checkpointing enters this once per layer in every recomputed forward, so the
    layers are found once (``PolicyValue``) and passed in. Re-entrant; the flags are restored on exit."""
    before = [getattr(m, "cast_input_dtype_enabled", True) for m in layers]
    for m in layers:
        m.cast_input_dtype_enabled = False
    try:
        yield
    finally:
        for m, b in zip(layers, before):
            m.cast_input_dtype_enabled = b


def drop_adapter_dropout(model: nn.Module) -> int:
    """Replace every LoRA adapter's dropout by the identity (in place); returns how many were replaced.

    An SFT adapter keeps its ``lora_dropout`` when loaded; PPO's update runs in train mode, where that
    dropout would make the policy it trains differ from the one that computed the old log-probs."""
    n = 0
    for module in model.modules():
        drops = getattr(module, "lora_dropout", None)
        if isinstance(drops, nn.ModuleDict):
            for name, d in list(drops.items()):
                if not isinstance(d, nn.Identity):
                    drops[name] = nn.Identity()
                    n += 1
    return n


def _head_logprobs(head: nn.Module, h: torch.Tensor, target: torch.Tensor, temperature: float,
                   with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(target) and the entropy for hidden states ``h`` [N, H]: the LM head, then fp32 arithmetic."""
    logits = head(h).float()
    if temperature > 0 and temperature != 1.0:
        logits = logits / temperature
    lse = torch.logsumexp(logits, dim=-1)
    logp = logits.gather(-1, target[:, None]).squeeze(-1) - lse
    if not with_entropy:
        return logp, logp.new_zeros(())
    return logp, lse - (torch.softmax(logits, dim=-1) * logits).sum(-1)


def save_policy_adapter(pv: PolicyValue | Any, out_dir: Path, adapter: str = POLICY) -> None:
    """The policy adapter alone (PEFT format), what evaluation loads: ``pv``'s, or the adapter named
    ``adapter`` of a PEFT model (TRL's GRPO, ``ppo.trl_grpo``). The file holds no adapter name."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    sd = get_peft_model_state_dict(pv.model if isinstance(pv, PolicyValue) else pv, adapter_name=adapter)
    save_file({k: v.detach().cpu().contiguous() for k, v in sd.items()}, str(Path(out_dir) / modeling.PPO_ADAPTER_FILE))


def load_ppo_policy(cfg: Config, ckpt_dir: Path, device: torch.device | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) of a PPO checkpoint for generation: SFT + policy adapter, merged where possible."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    from ..artifacts import require

    device = device or modeling.resolve_device(cfg.device)
    path = require(Path(ckpt_dir) / modeling.PPO_ADAPTER_FILE, "05_ppo")
    model, tokenizer, _ = load_policy_base(cfg, device)
    set_peft_model_state_dict(model, load_file(str(path), device=str(device)), adapter_name=POLICY)
    model.set_adapter(POLICY)
    if not getattr(model.get_base_model(), "is_loaded_in_4bit", False):
        model = model.merge_and_unload()
    model.eval()
    return model, tokenizer
