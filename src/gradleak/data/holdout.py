"""A held-out test split for user data that has none (ImageFolder without ``test/``, .npz).

Without it, "test" accuracy would be measured on the training images. The split is stratified
per class, drawn from a fixed seed (so the train and test splits of two separate loads agree),
and keeps at least one image of every class for training.
"""

from __future__ import annotations

import torch

from gradleak.errors import GradleakError

HOLDOUT_SEED = 0


def holdout_indices(targets: list[int], fraction: float, split: str) -> list[int]:
    """Indices of ``split`` ("train" or "test") when ``fraction`` of each class is held out.

    A class of n >= 2 images holds out ``round(fraction * n)`` of them, at least 1 and at most
    n - 1; a class with one image keeps it for training.
    """
    if not 0.0 <= fraction < 1.0:
        raise GradleakError(f"bad value {fraction} for data.holdout: must be in [0, 1)")
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(targets):
        by_class.setdefault(int(y), []).append(i)
    g = torch.Generator().manual_seed(HOLDOUT_SEED)
    test: list[int] = []
    for label in sorted(by_class):
        members = by_class[label]
        n = len(members)
        k = 0 if n < 2 or fraction == 0 else min(n - 1, max(1, round(fraction * n)))
        perm = torch.randperm(n, generator=g).tolist()
        test += [members[j] for j in perm[:k]]
    held = set(test)
    if split == "test":
        return sorted(test)
    return [i for i in range(len(targets)) if i not in held]


def holdout_note(fraction: float, source: str, split: str, count: int) -> str:
    """What :func:`holdout_indices` did, for the dataset's ``describe()``."""
    pct = f"{100 * fraction:g}%"
    if split == "test":
        return (f"test split: {count} images ({pct} of each class of {source}, fixed seed) held "
                "out and never used for training, because there is no separate test data "
                "(data.test_root)")
    return (f"train split: {count} images of {source}; {pct} of each class is held out as the "
            "test split (no separate test data)")
