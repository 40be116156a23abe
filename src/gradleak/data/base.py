"""The dataset interface every loader returns."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset


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
