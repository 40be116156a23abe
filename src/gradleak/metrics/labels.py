"""Accuracy of inferred batch labels, order-free (labels can repeat within a batch)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch

from gradleak.errors import GradleakError

__all__ = ["label_accuracy"]


def _as_int_list(labels: Sequence[int] | torch.Tensor, name: str) -> list[int]:
    if isinstance(labels, torch.Tensor):
        bad_dtype = labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool
        if labels.ndim != 1 or bad_dtype:
            raise GradleakError(
                f"{name} must be a 1-D integer tensor, got {labels.dtype} shape "
                f"{tuple(labels.shape)}"
            )
        return [int(v) for v in labels.tolist()]
    values = list(labels)
    for v in values:
        if isinstance(v, bool) or not hasattr(v, "__index__"):
            raise GradleakError(f"{name} must hold integer class labels, got {v!r}")
    return [int(v) for v in values]


def label_accuracy(inferred: Sequence[int] | torch.Tensor, true: Sequence[int] | torch.Tensor
                   ) -> float:
    """Fraction of the batch's labels recovered, ignoring order.

    Multiset overlap: ``sum_c min(#c in inferred, #c in true) / len(true)``; e.g. true
    ``[1, 1, 2]`` and inferred ``[1, 2, 2]`` give 2/3. Attacks infer the label multiset of a batch
    (iDLG, LLG, iLRG ...), not which sample has which label, so position is not compared.
    """
    inf, tru = _as_int_list(inferred, "inferred"), _as_int_list(true, "true")
    if len(inf) != len(tru):
        raise GradleakError(
            f"inferred and true labels must have the same length, got {len(inf)} and {len(tru)}"
        )
    if not tru:
        raise GradleakError("label_accuracy needs at least one label, got none")
    counts_inf, counts_true = Counter(inf), Counter(tru)
    overlap = sum(min(n, counts_inf[c]) for c, n in counts_true.items())
    return overlap / len(tru)
