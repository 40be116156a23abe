"""Text datasets: sentences with labels, and the same sentences seen through a model's tokenizer.

:class:`TextDataset` holds raw text (``dataset[i] -> (text, label)``); the scenario tokenises it
with the model's own tokenizer (:meth:`TextDataset.tokenized`), which gives the
:class:`TokenizedTextDataset` that victim sampling and the metrics' reference pool use like an
image dataset: ``tensors(indices) -> (x [n, 2, L] int64, labels [n])`` (ids and attention mask,
:mod:`gradleak.models.text`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import Dataset

from gradleak.errors import GradleakError

if TYPE_CHECKING:  # annotations only: data must not import models at run time (models use data)
    from gradleak.models.text import TextTokenizer


class TextDataset(Dataset):
    """Labelled sentences. ``critical[i]``: the private strings (names, numbers, dates, places)
    of sentence ``i``, exact substrings of it; ``None`` when the dataset has none."""

    modality = "text"
    class_is_source = False

    def __init__(self, name: str, texts: list[str], labels: list[int], classes: tuple[str, ...],
                 *, critical: list[list[str]] | None = None, split_note: str | None = None,
                 transform_note: str | None = None) -> None:
        if not texts:
            raise GradleakError(f"dataset {name}: no sentences (after dropping empty lines)")
        self.name, self.texts, self.labels, self.classes = name, texts, labels, tuple(classes)
        self.critical, self.split_note, self.transform_note = critical, split_note, transform_note

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> tuple[str, int]:
        return self.texts[index], self.labels[index]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def targets(self) -> list[int]:
        return list(self.labels)

    def critical_of(self, index: int) -> list[str]:
        return [] if self.critical is None else list(self.critical[index])

    def tokenized(self, tokenizer: TextTokenizer, max_length: int) -> TokenizedTextDataset:
        return TokenizedTextDataset(self, tokenizer, max_length)


class TokenizedTextDataset:
    """A :class:`TextDataset` through ``tokenizer`` at ``max_length`` tokens (see the module
    docstring); encodes on demand."""

    modality = "text"
    class_is_source = False

    def __init__(self, source: TextDataset, tokenizer: TextTokenizer, max_length: int) -> None:
        limit = getattr(tokenizer.hf, "model_max_length", None)
        if isinstance(limit, int) and limit < 1_000_000 and max_length > limit:
            raise GradleakError(f"bad value {max_length} for data.max_length: the tokenizer's "
                                f"model takes at most {limit} tokens")
        self.source, self.tokenizer, self.max_length = source, tokenizer, max_length
        self.name, self.classes = source.name, source.classes
        self.texts, self.critical = source.texts, source.critical
        self.sequence_length = max_length

    def __len__(self) -> int:
        return len(self.source)

    @property
    def num_classes(self) -> int:
        return self.source.num_classes

    def targets(self) -> list[int]:
        return self.source.targets()

    def text_of(self, index: int) -> str:
        return self.source.texts[index]

    def critical_of(self, index: int) -> list[str]:
        return self.source.critical_of(index)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.tokenizer.encode([self.texts[index]], max_length=self.max_length)[0], \
            self.source.labels[index]

    def tensors(self, indices: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x [n, 2, L] int64, labels [n] int64)`` of ``indices`` (all if None), in order."""
        n = len(self)
        idx = list(range(n)) if indices is None else [int(i) for i in indices]
        bad = next((i for i in idx if not 0 <= i < n), None)
        if bad is not None:
            raise IndexError(f"index {bad} out of range for {self.name} ({n} sentences)")
        x = self.tokenizer.encode([self.texts[i] for i in idx], max_length=self.max_length)
        return x, torch.tensor([self.source.labels[i] for i in idx], dtype=torch.long)


def _fraction(text: str) -> float:
    """A stable pseudo-random number in [0, 1) of the text itself (the split's coin)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2**64


def split_texts(texts: list[str], labels: list[int], critical: list[list[str]] | None, *,
                split: str, holdout: float) -> dict[str, Any]:
    """The ``split`` part of a corpus: duplicates dropped (first kept), then a sentence goes to
    ``test`` iff the hash of its text falls below ``holdout``, so train and test never share a
    sentence and the split does not depend on the order or on any seed."""
    if not 0.0 < holdout < 1.0:
        raise GradleakError(f"bad value {holdout} for data.holdout: a share in (0, 1)")
    seen: set[str] = set()
    keep: list[int] = []
    for i, t in enumerate(texts):
        if t not in seen and ((_fraction(t) < holdout) == (split == "test")):
            keep.append(i)
        seen.add(t)
    return {"texts": [texts[i] for i in keep], "labels": [labels[i] for i in keep],
            "critical": None if critical is None else [critical[i] for i in keep],
            "split_note": f"{split}: {'held-out' if split == 'test' else 'the rest after'} "
                          f"{holdout:.0%} of distinct sentences by text hash"}
