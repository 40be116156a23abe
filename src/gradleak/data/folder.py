"""An ImageNet-style folder tree ``root/<split>/<class>/*.jpg|png``, decoded lazily with PIL."""

from __future__ import annotations

import warnings
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
_UPSCALE_WARNED: set[int] = set()  # one warning per resolution and process, not per image


def load_square(path: str | Path, resolution: int) -> torch.Tensor:
    """Decode ``path`` as RGB, centre-crop to a square and resize: ``[3, R, R]`` in [0, 1]."""
    try:
        with warnings.catch_warnings():
            # Over PIL's MAX_IMAGE_PIXELS (~89 Mpx) PIL only warns; treat it as the bomb it may be.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
        with im:
            w, h = im.size
            s = min(w, h)
            if s < 4:
                raise GradleakError(f"image {path} is {w}x{h} pixels: too small to be a sample "
                                    "(at least 4x4); remove or replace it")
            if s < resolution and resolution not in _UPSCALE_WARNED:
                _UPSCALE_WARNED.add(resolution)
                warnings.warn(f"images smaller than data.resolution={resolution} are upscaled "
                              f"(first: {path}, {w}x{h}); reconstructions of them look blurred",
                              stacklevel=2)
            im = im.convert("RGB")
            left, top = (w - s) // 2, (h - s) // 2
            # PIL's bicubic resize widens its filter when shrinking, i.e. it is anti-aliased.
            im = im.resize((resolution, resolution), Image.Resampling.BICUBIC,
                           box=(left, top, left + s, top + s))
            arr = np.asarray(im, dtype=np.uint8).copy()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise GradleakError(f"image {path} is too large to decode safely ({exc}); "
                            "remove or shrink it") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
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
