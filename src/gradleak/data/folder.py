"""An ImageNet-style folder tree ``root/<split>/<class>/*.jpg|png``, decoded lazily with PIL."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image, UnidentifiedImageError

from gradleak.config import DataConfig
from gradleak.data import register_dataset
from gradleak.data.base import ImageDataset
from gradleak.errors import GradleakError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_LAYOUT = "expected root/<split>/<class>/*.jpg|png or root/<class>/*.jpg|png"
# Folder names tried for each split, in order ("val" is ImageNet's name for its test split).
_SPLIT_DIRS = {"train": ("train",), "test": ("test", "val")}


def load_square(path: str | Path, resolution: int) -> torch.Tensor:
    """Decode ``path`` as RGB, centre-crop to a square and resize: ``[3, R, R]`` in [0, 1]."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            s = min(w, h)
            left, top = (w - s) // 2, (h - s) // 2
            # PIL's bicubic resize widens its filter when shrinking, i.e. it is anti-aliased.
            im = im.resize((resolution, resolution), Image.Resampling.BICUBIC,
                           box=(left, top, left + s, top + s))
            arr = np.asarray(im, dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError) as exc:
        raise GradleakError(f"cannot read image {path}: {exc}; remove or replace it") from None
    return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)


class ImageFolderDataset(ImageDataset):
    """Images listed by :class:`torchvision.datasets.ImageFolder`, decoded on access."""

    def __init__(self, root: Path, samples: list[tuple[str, int]], classes: tuple[str, ...],
                 resolution: int) -> None:
        self.name = "imagefolder"
        self.root = root
        self.samples = samples
        self.classes = classes
        self.channels = 3
        self.resolution = resolution
        self.mean = IMAGENET_MEAN
        self.std = IMAGENET_STD

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        return load_square(path, self.resolution), label

    def targets(self) -> list[int]:
        return [label for _, label in self.samples]


def _split_dir(root: Path, split: str) -> Path:
    for name in _SPLIT_DIRS[split]:
        if (root / name).is_dir():
            return root / name
    # Without a folder for this split, the tree is root/<class>/... -- unless it does have
    # split folders (just not this one), which would otherwise be mistaken for classes.
    others = [d for names in _SPLIT_DIRS.values() for d in names if (root / d).is_dir()]
    if others:
        raise GradleakError(
            f"no {'/'.join(_SPLIT_DIRS[split])} folder for data.split={split} in {root} "
            f"(found {', '.join(others)}); add it or set data.split to another split"
        )
    return root


@register_dataset("imagefolder")
def load_imagefolder(cfg: DataConfig) -> ImageFolderDataset:
    """Folder tree under ``cfg.root``; classes are the sorted sub-folder names."""
    if not cfg.root:
        raise GradleakError(f"dataset imagefolder needs data.root: {_LAYOUT}")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise GradleakError(f"image folder {root} does not exist: {_LAYOUT}")
    path = _split_dir(root, cfg.split)
    try:
        ds = torchvision.datasets.ImageFolder(str(path))
    except FileNotFoundError as exc:  # no class folders, or a class folder without images
        msg = str(exc).splitlines()[0] if str(exc) else "no images"
        raise GradleakError(f"no usable images in {path} ({msg}): {_LAYOUT}") from None
    if not ds.samples:
        raise GradleakError(f"no images in {path}: {_LAYOUT}")
    return ImageFolderDataset(path, list(ds.samples), tuple(ds.classes), cfg.resolution)
