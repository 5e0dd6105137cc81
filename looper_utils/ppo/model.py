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
  hidden state;
- reference = the SFT weights, frozen: the adapters disabled over a fully
  fine-tuned SFT model, or a frozen copy of the SFT adapter (``ref``).

Only the adapters and the value head are trained and saved, so a PPO
checkpoint is a few MB whatever the base.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import modeling
from ..config import Config

POLICY, VALUE, REF = "policy", "value", "ref"


def _lora(cfg: Config, dropout: float = 0.0):
    from peft import LoraConfig

    return LoraConfig(r=cfg.ppo.lora_r, lora_alpha=cfg.ppo.lora_alpha, lora_dropout=dropout,
                      target_modules="all-linear", task_type="CAUSAL_LM")


def _load_policy_base(cfg: Config, device: torch.device):
    """(peft model with a ``policy`` adapter, tokenizer, ref_mode) built over the SFT checkpoint."""
    from peft import PeftModel, get_peft_model

    sft = modeling.sft_dir(cfg)
    state = modeling.read_state(sft)
    if state.get("format") == "adapter":
        if cfg.model.name_or_path == "scratch":
            base, _ = modeling.load_checkpoint(modeling.base_dir(cfg), device, merge=False)
        else:
            base, _ = modeling.load_base(cfg, device)
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(sft)
        modeling.ensure_pad_token(tokenizer, base, source=str(sft))
        model = PeftModel.from_pretrained(base, sft, adapter_name=POLICY, is_trainable=True)
        return model, tokenizer, "adapter"
    base, tokenizer = modeling.load_checkpoint(sft, device, merge=False)
    for p in base.parameters():
        p.requires_grad_(False)
    model = get_peft_model(base, _lora(cfg), adapter_name=POLICY)
    return model, tokenizer, "disabled"


class PolicyValue(nn.Module):
    """The shared-base PPO model: log-probs under policy or reference, values, generation."""

    def __init__(self, cfg: Config, device: torch.device):
        super().__init__()
        model, tokenizer, ref_mode = _load_policy_base(cfg, device)
        if ref_mode == "adapter":
            model.load_adapter(modeling.sft_dir(cfg), adapter_name=REF, is_trainable=False)
        model.add_adapter(VALUE, _lora(cfg))
        model.set_adapter(POLICY)
        self.model, self.tokenizer, self.ref_mode = model, tokenizer, ref_mode
        if cfg.ppo.gradient_checkpointing:
            # activations of an 8B model over a minibatch of long sequences do not fit otherwise
            if hasattr(model, "activation_checkpointing_enable"):  # transformers' name from 5.2x on
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        hidden = model.config.hidden_size
        self.value_head = nn.Linear(hidden, 1).to(device=device, dtype=torch.float32)
        nn.init.normal_(self.value_head.weight, std=1.0 / (hidden + 1) ** 0.5)
        nn.init.zeros_(self.value_head.bias)
        self.device = device
        self._set_trainable()

    # -- parameters -----------------------------------------------------------
    def _set_trainable(self) -> None:
        for name, p in self.model.named_parameters():
            p.requires_grad_(f".{POLICY}." in name or f".{VALUE}." in name)

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
        self.model.set_adapter(adapter)
        self._set_trainable()  # set_adapter freezes inactive adapters; we train two
        try:
            yield
        finally:
            self.model.set_adapter(prev)
            self._set_trainable()

    def token_logprobs(self, adapter: str, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       with_entropy: bool = False, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor | None]:
        """log p(token_t | prefix) for t >= 1, shape [B, L-1]; optionally the entropy at each position.

        ``temperature`` scales the logits as sampling did, so the probabilities are those of the policy
        that produced the tokens (PPO's ratio and the KL are taken on that distribution).
        """
        from .losses import entropy_from_logits

        with self.use(adapter):
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        logits = logits[:, :-1].float()
        if temperature > 0 and temperature != 1.0:
            logits = logits / temperature
        logp = torch.log_softmax(logits, dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
        ent = entropy_from_logits(logits) if with_entropy else None
        return logp, ent

    def values(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """V(prefix) at the state before each token t >= 1, shape [B, L-1]."""
        with self.use(VALUE):
            inner = self.model.get_base_model().model  # the decoder without the LM head
            hidden = inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        return self.value_head(hidden[:, :-1].float()).squeeze(-1)


def save_policy_adapter(pv: PolicyValue, out_dir: Path) -> None:
    """The policy adapter alone (PEFT format), what evaluation loads."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    sd = get_peft_model_state_dict(pv.model, adapter_name=POLICY)
    save_file({k: v.detach().cpu().contiguous() for k, v in sd.items()}, str(Path(out_dir) / modeling.PPO_ADAPTER_FILE))


def load_ppo_policy(cfg: Config, ckpt_dir: Path, device: torch.device | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) of a PPO checkpoint for generation: SFT + policy adapter, merged where possible."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    from ..artifacts import require

    device = device or modeling.resolve_device(cfg.device)
    path = require(Path(ckpt_dir) / modeling.PPO_ADAPTER_FILE, "05_ppo")
    model, tokenizer, _ = _load_policy_base(cfg, device)
    set_peft_model_state_dict(model, load_file(str(path), device=str(device)), adapter_name=POLICY)
    model.set_adapter(POLICY)
    if not getattr(model.get_base_model(), "is_loaded_in_4bit", False):
        model = model.merge_and_unload()
    model.eval()
    return model, tokenizer
