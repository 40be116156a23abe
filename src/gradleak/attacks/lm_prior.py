"""LAMP's language-model prior: a causal LM trained on auxiliary text scores candidate sentences.

The prior is a ``gradleak train-lm`` directory (or any Hugging Face causal LM directory; loaded
from safetensors only, :mod:`gradleak.models.hf_load`). Its tokenizer need not be the victim's:
candidates are decoded with the victim's tokenizer and re-encoded with the prior's. At level 2
the attacker knows the data distribution, not the victim's data:
:func:`prior_overlap` warns when the prior was trained on the split the victims come from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from gradleak.errors import GradleakError
from gradleak.models.text import IGNORE_INDEX, TextModel


class LanguagePrior:
    """``nll(texts)``: the mean next-token negative log-likelihood (log-perplexity) of texts."""

    def __init__(self, path: str, *, device: torch.device | str = "cpu") -> None:
        from gradleak.config import ModelConfig
        from gradleak.models.hf import build_text_model

        if not Path(path).is_dir():
            raise GradleakError(f"attack.lm_prior={path!r} is not a directory; give a "
                                "`gradleak train-lm --out DIR` folder")
        model = build_text_model(ModelConfig(name="hf", path=path, task="causal_lm"),
                                 num_classes=0, seed=0)
        self.model: TextModel = model.to(device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.path = path
        self.max_length = int(self.model.max_positions or 128)

    @torch.no_grad()
    def nll(self, texts: list[str]) -> float:
        """Mean NLL per real next token over ``texts`` (each ends with the prior's EOS)."""
        x = self.model.tokenizer.encode(texts, max_length=self.max_length)
        x = x[:, :, : max(2, int(x[:, 1].sum(1).max()))].to(next(self.model.parameters()).device)
        target = self.model.targets(x, None)
        count = int((target != IGNORE_INDEX).sum())
        if count == 0:
            return 0.0
        return float(F.cross_entropy(self.model(x), target, reduction="sum")) / count


def prior_overlap(cfg: Any) -> list[str]:
    """A warning when the LAMP prior's ``training.json`` says it was trained on the split (train)
    of the very dataset the victims are drawn from: it may have seen them."""
    path = getattr(cfg.attack, "lm_prior", None)
    if not path or getattr(cfg.attack, "lm_weight", 0) == 0:
        return []
    try:
        data = json.loads((Path(path) / "training.json").read_text()).get("data") or {}
    except (OSError, ValueError, AttributeError):
        return []
    same = all(data.get(k) == getattr(cfg.data, k, None) for k in ("dataset", "root"))
    if not same or cfg.data.split != "train":
        return []
    return [f"the language-model prior {path!r} was trained on the train split of "
            f"data.dataset={cfg.data.dataset!r}, the split the victims come from: it may have "
            "seen them, so the LAMP result is optimistic; take victims from data.split=test or "
            "train the prior on other text"]
