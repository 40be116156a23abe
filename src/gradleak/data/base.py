"""The dataset interface every loader returns."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from gradleak.errors import GradleakError

# ITU-R 601-2 luma weights: PIL's "L" conversion, so every loader turns RGB grey the same way.
LUMA = (0.299, 0.587, 0.114)


class ImageDataset(Dataset):
    """A labelled image dataset with images as float tensors in [0, 1].

    ``dataset[i]`` is ``(image, label)`` with ``image`` of shape ``[C, H, W]`` (H = W =
    ``resolution``) and ``label`` an ``int`` in ``range(len(classes))``.
    """

    name: str
    classes: tuple[str, ...]
    channels: int
    resolution: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    # True where a class is one private source (one photo and its crops): its other samples are
    # then the victim's own content, never update-free knowledge of an attacker.
    class_is_source: bool = False

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:  # pragma: no cover
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def targets(self) -> list[int]:
        """All labels in index order (loaders override this when they can avoid decoding images)."""
        return [self[i][1] for i in range(len(self))]

    def tensors(self, indices: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images [n, C, R, R] float32 in [0, 1], labels [n] int64)`` of ``indices`` (all
        samples if None), in that order: the one way every caller (FL clients, test sets, victim
        sampling) turns a dataset into model input. The default stacks ``self[i]``; loaders that
        hold their split in memory override it with a vectorised version giving the same values.
        """
        idx = _index_list(self, indices)
        if not idx:
            return empty_batch(self.channels, self.resolution)
        items = [self[i] for i in idx]
        return (torch.stack([x for x, _ in items]).float(),
                torch.tensor([y for _, y in items], dtype=torch.long))


def empty_batch(channels: int, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of no samples: ``([0, C, R, R] float32, [0] int64)``."""
    return torch.zeros(0, channels, resolution, resolution), torch.zeros(0, dtype=torch.long)


def _index_list(dataset: ImageDataset, indices: Sequence[int] | None) -> list[int]:
    n = len(dataset)
    if indices is None:
        return list(range(n))
    idx = [int(i) for i in indices]
    bad = next((i for i in idx if not -n <= i < n), None)
    if bad is not None:
        raise IndexError(f"index {bad} out of range for {dataset.name} ({n} samples)")
    return idx


class TensorImageDataset(ImageDataset):
    """An :class:`ImageDataset` held in memory: ``images [N, C, H, W]`` in [0, 1], ``labels [N]``."""

    def __init__(self, name: str, images: torch.Tensor, labels: torch.Tensor,
                 classes: tuple[str, ...], *, mean: tuple[float, ...] | None = None,
                 std: tuple[float, ...] | None = None) -> None:
        if images.ndim != 4 or images.shape[-1] != images.shape[-2]:
            raise ValueError(f"images must be [N, C, H, H], got {tuple(images.shape)}")
        self.name = name
        self.images = images.float().clamp(0, 1)
        self.labels = labels.long()
        self.classes = tuple(classes)
        self.channels = images.shape[1]
        self.resolution = images.shape[-1]
        self.mean = mean or tuple(self.images.mean(dim=(0, 2, 3)).tolist())
        self.std = std or tuple(self.images.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist())

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])

    def targets(self) -> list[int]:
        return self.labels.tolist()

    def tensors(self, indices: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.as_tensor(_index_list(self, indices), dtype=torch.long)
        return self.images[t], self.labels[t]  # copies: callers may not alias the dataset


def convert_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """``[..., C, H, W]`` images with ``channels`` channels: grey repeated to RGB, RGB to luminance."""
    have = images.shape[-3]
    if have == channels:
        return images
    if have == 1 and channels == 3:
        return images.repeat_interleave(3, dim=-3)
    if have == 3 and channels == 1:
        w = torch.tensor(LUMA, dtype=images.dtype, device=images.device).view(3, 1, 1)
        return (images * w).sum(dim=-3, keepdim=True).clamp_(0, 1)
    raise GradleakError(f"cannot give {have}-channel images as data.channels={channels}; "
                        "allowed: 1 or 3 (from 1- or 3-channel images)")


def convert_statistics(values: tuple[float, ...], channels: int) -> tuple[float, ...]:
    """Per-channel mean (or std) of images converted by :func:`convert_channels`. A luminance
    std is the luma-weighted sum: exact when the channels move together, an upper bound else."""
    if len(values) == channels:
        return tuple(values)
    if channels == 3:
        return tuple(values) * 3
    return (sum(w * v for w, v in zip(LUMA, values, strict=True)),)


class ChannelView(ImageDataset):
    """``base`` with its images given as ``channels`` channels (``data.channels``), its mean/std
    converted to fit; every other attribute is the base dataset's."""

    def __init__(self, base: ImageDataset, channels: int) -> None:
        self.base = base
        self.name, self.classes, self.resolution = base.name, base.classes, base.resolution
        self.channels = channels
        self.mean = convert_statistics(tuple(base.mean), channels)
        self.std = convert_statistics(tuple(base.std), channels)
        self.class_is_source = base.class_is_source
        how = "repeated to 3 channels" if channels == 3 else "converted to luminance (PIL L weights)"
        note = getattr(base, "transform_note", None)
        self.transform_note = f"{note + '; ' if note else ''}{how} (data.channels={channels})"

    def __getattr__(self, key: str):  # per_class, split_note, preferred_indices, ...
        if key == "base":
            raise AttributeError(key)
        return getattr(self.base, key)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.base[index]
        return convert_channels(image, self.channels), label

    def targets(self) -> list[int]:
        return self.base.targets()

    def tensors(self, indices: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = self.base.tensors(indices)
        return convert_channels(images, self.channels), labels


def with_channels(dataset: ImageDataset, channels: int | None) -> ImageDataset:
    """``dataset`` as ``channels`` channels (``data.channels``; ``None``: as it is)."""
    if channels is None or getattr(dataset, "modality", None) == "text":
        return dataset
    if dataset.channels == channels:
        return dataset
    return ChannelView(dataset, channels)
