"""CIFAR-10 and CIFAR-100 through torchvision, converted to tensors one item at a time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision

from gradleak.config import DataConfig
from gradleak.data import register_dataset
from gradleak.data.base import ImageDataset
from gradleak.errors import GradleakError

DEFAULT_ROOT = Path("~/.cache/gradleak/data")

# Per-channel statistics of the training splits (the values used across the FL-leakage papers).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


def resize_batch(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """Resize ``[B, C, H, W]`` in [0, 1] to ``[B, C, R, R]`` (bilinear, anti-aliased)."""
    if images.shape[-1] == resolution and images.shape[-2] == resolution:
        return images
    out = F.interpolate(images, size=(resolution, resolution), mode="bilinear",
                        align_corners=False, antialias=True)
    return out.clamp_(0, 1)


class CifarDataset(ImageDataset):
    """A torchvision CIFAR dataset as an :class:`ImageDataset`: items ``[3, R, R]`` in [0, 1].

    torchvision keeps the split as one ``uint8 [N, 32, 32, 3]`` array; each item is converted
    (and resized when ``R != 32``) only when it is accessed.
    """

    def __init__(self, name: str, data: np.ndarray, targets: list[int],
                 classes: tuple[str, ...], resolution: int, mean: tuple[float, ...],
                 std: tuple[float, ...]) -> None:
        self.name = name
        self._data = data
        self._targets = list(targets)
        self.classes = classes
        self.channels = 3
        self.resolution = resolution
        self.mean = mean
        self.std = std

    def __len__(self) -> int:
        return len(self._targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {self.name} ({len(self)} samples)")
        img = torch.from_numpy(np.ascontiguousarray(self._data[index])).permute(2, 0, 1)
        img = resize_batch(img.float().div_(255.0)[None], self.resolution)[0]
        return img, int(self._targets[index])

    def targets(self) -> list[int]:
        return list(self._targets)


def _load(cfg: DataConfig, name: str, tv_cls: type, folder: str, mean: tuple[float, ...],
          std: tuple[float, ...]) -> CifarDataset:
    root = Path(cfg.root).expanduser() if cfg.root else DEFAULT_ROOT.expanduser()
    train = cfg.split == "train"
    if not cfg.download and not (root / folder).is_dir():
        # Checked here so that a missing folder never reaches torchvision's download code.
        raise GradleakError(
            f"{name} files not found in {root / folder}: set data.download=true when online, "
            f"or put {folder} (the python version of {name}) under {root}"
        )
    try:
        ds = tv_cls(root=str(root), train=train, download=cfg.download)
    except RuntimeError:  # torchvision: "Dataset not found or corrupted"
        raise GradleakError(
            f"{name} files in {root / folder} are missing or corrupt: delete the folder "
            f"and set data.download=true when online, or put an intact {folder} under {root}"
        ) from None
    except OSError as exc:  # network failure (URLError is an OSError) or unwritable root
        raise GradleakError(
            f"could not download {name} to {root}: {exc}; when offline put {folder} under "
            f"{root} and set data.download=false"
        ) from None
    return CifarDataset(name, ds.data, ds.targets, tuple(ds.classes), cfg.resolution, mean, std)


@register_dataset("cifar10")
def load_cifar10(cfg: DataConfig) -> CifarDataset:
    """CIFAR-10 (50 000 train / 10 000 test images, 10 classes), ``[3, R, R]`` items."""
    return _load(cfg, "cifar10", torchvision.datasets.CIFAR10, "cifar-10-batches-py",
                 CIFAR10_MEAN, CIFAR10_STD)


@register_dataset("cifar100")
def load_cifar100(cfg: DataConfig) -> CifarDataset:
    """CIFAR-100 (50 000 train / 10 000 test images, 100 fine classes), ``[3, R, R]`` items."""
    return _load(cfg, "cifar100", torchvision.datasets.CIFAR100, "cifar-100-python",
                 CIFAR100_MEAN, CIFAR100_STD)
