"""Partial updates: a client that trains (and so shares) only part of the model.

* ``model.frozen``: parameter-name prefixes the client does not train (``embeddings`` names a
  text model's word embedding; GPT-2's tied LM head is the same tensor, so it freezes too). The
  clients train and share exactly the parameters with ``requires_grad``
  (:mod:`gradleak.fl.client`), so a frozen tensor is absent from the update.
* ``model.lora_rank`` > 0: LoRA adapters (Hu et al., ICLR 2022) through Hugging Face ``peft``
  on ``model.lora_targets`` (default: the attention projections, GPT-2's fused ``c_attn``,
  BERT's ``query`` and ``value``), scaled by ``lora_alpha / rank``; the base model is frozen and
  the update holds the adapters only. ``peft`` starts ``B = 0``, so the first round's ``A``
  gradient is zero (``dL/dA = B^T dL/dY ...``): what an attack can read is ``dL/dB = dL/dY (A X)^T``,
  the layer inputs seen through the rank-r projection ``A``. The adapters' initial ``A`` is drawn
  from the model seed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from gradleak.errors import GradleakError

DEFAULT_TARGETS = {"gpt2": ["c_attn"], "bert": ["query", "value"]}
EMBEDDINGS = "embeddings"


def freeze(model: nn.Module, prefixes: list[str]) -> list[str]:
    """Set ``requires_grad=False`` on every parameter whose name starts with one of
    ``prefixes`` (``embeddings``: the input embedding matrix); the names frozen."""
    if not prefixes:
        return []
    names = dict(model.named_parameters())
    frozen: list[str] = []
    for prefix in prefixes:
        if prefix == EMBEDDINGS and hasattr(getattr(model, "hf", None), "get_input_embeddings"):
            weight = model.hf.get_input_embeddings().weight
            hits = [n for n, p in names.items() if p is weight]
        else:
            hits = [n for n in names if n == prefix or n.startswith(prefix.rstrip(".") + ".")]
        if not hits:
            raise GradleakError(f"model.frozen: {prefix!r} matches no parameter; names look like "
                                f"{', '.join(list(names)[:3])}, ... (or 'embeddings')")
        frozen += hits
    for n in frozen:
        names[n].requires_grad_(False)
    if not any(p.requires_grad for p in model.parameters()):
        raise GradleakError(f"model.frozen={prefixes} freezes every parameter: the client would "
                            "train and share nothing")
    return sorted(set(frozen))


def family_of(hf: Any) -> str | None:
    kind = getattr(getattr(hf, "config", None), "model_type", None)
    return kind if kind in DEFAULT_TARGETS else None


def add_lora(hf: nn.Module, *, rank: int, alpha: float, targets: list[str], seed: int) -> nn.Module:
    """``hf`` wrapped with LoRA adapters (a ``peft.PeftModel``); base weights frozen."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as err:  # the text extra installs it
        raise GradleakError("model.lora_rank needs the peft package: pip install 'gradleak[text]'"
                            ) from err
    family = family_of(hf)
    chosen = list(targets) or DEFAULT_TARGETS.get(family or "", [])
    if not chosen:
        raise GradleakError(f"model.lora_targets: give the module names to adapt for "
                            f"{type(hf).__name__} (e.g. q_proj,v_proj)")
    present = {name.rsplit(".", 1)[-1] for name, _ in hf.named_modules()}
    missing = [t for t in chosen if t not in present]
    if missing:
        raise GradleakError(f"model.lora_targets: no module named {missing[0]!r} in "
                            f"{type(hf).__name__}; e.g. {', '.join(sorted(present - {''})[:6])}")
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=chosen, lora_dropout=0.0,
                        fan_in_fan_out=family == "gpt2")  # GPT-2's Conv1D stores W transposed
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(hf, config)
