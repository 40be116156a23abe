"""Choosing the victim client's samples from a dataset."""

from __future__ import annotations

import warnings

import torch

from gradleak.config import DataConfig
from gradleak.data.base import ImageDataset
from gradleak.errors import GradleakError


def select_victim_samples(dataset: ImageDataset, cfg: DataConfig, *,
                          seed: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """The victim's ``N = cfg.num_samples`` samples: ``(images [N, C, H, W], labels [N], indices)``.

    * ``cfg.indices`` given: exactly those samples, in that order.
    * ``cfg.distinct_labels``: the classes are put in a random order drawn from ``seed`` and one
      sample is taken per class in that order, wrapping around (a second sample per class, ...)
      when N exceeds the number of classes. Within a class, a dataset's
      ``preferred_indices`` (one per class, e.g. the whole photos of ``skimage``, which sit at
      ``c * per_class``) come first and the other samples follow in random order, so small-N
      audits on ``skimage`` show whole photos rather than crops.
    * otherwise: N distinct indices drawn uniformly without replacement.

    Draws use ``torch.Generator().manual_seed(seed)``, so the same seed gives the same samples.
    """
    n = cfg.num_samples
    total = len(dataset)
    name = getattr(dataset, "name", type(dataset).__name__)
    if cfg.indices is not None:
        indices = [int(i) for i in cfg.indices]
        repeated = sorted({i for i in indices if indices.count(i) > 1})
        if repeated:
            raise GradleakError(f"data.indices repeats {repeated}: the victim's samples must be "
                                "distinct")
        if len(indices) != n:
            raise GradleakError(
                f"data.indices has {len(indices)} entries but data.num_samples={n}; "
                "give exactly num_samples indices"
            )
        for i in indices:
            if not 0 <= i < total:
                raise GradleakError(
                    f"data.indices entry {i} is out of range for dataset {name} "
                    f"(split {cfg.split}): valid indices are 0-{total - 1}"
                )
    else:
        if n > total:
            raise GradleakError(
                f"data.num_samples={n} exceeds the {total} samples of dataset {name} "
                f"(split {cfg.split}); lower data.num_samples"
            )
        gen = torch.Generator().manual_seed(seed)
        if cfg.distinct_labels:
            indices = _distinct_label_indices(dataset, n, gen)
        else:
            indices = torch.randperm(total, generator=gen)[:n].tolist()
    images, labels = dataset.tensors(indices)
    return images, labels, indices


def _distinct_label_indices(dataset: ImageDataset, n: int, gen: torch.Generator) -> list[int]:
    """Round-robin over a seeded class order, one sample per class per round."""
    targets = torch.as_tensor(dataset.targets(), dtype=torch.long)
    classes = torch.unique(targets)  # only the classes that have samples
    if n > len(classes):
        warnings.warn(f"data.distinct_labels=true but data.num_samples={n} exceeds the "
                      f"{len(classes)} classes with samples: labels repeat (round-robin)",
                      stacklevel=3)
    order = classes[torch.randperm(len(classes), generator=gen)].tolist()
    preferred = set(getattr(dataset, "preferred_indices", None) or ())
    queues: list[list[int]] = []
    for c in order:
        members = torch.nonzero(targets == c).flatten()
        members = members[torch.randperm(len(members), generator=gen)].tolist()
        if preferred:  # stable sort: preferred samples first, the rest keep their random order
            members.sort(key=lambda i: i not in preferred)
        queues.append(members)
    indices: list[int] = []
    depth = 0
    while len(indices) < n:  # terminates: n <= len(dataset) == total queue length
        for queue in queues:
            if depth < len(queue):
                indices.append(queue[depth])
                if len(indices) == n:
                    break
        depth += 1
    return indices
