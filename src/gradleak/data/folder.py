"""An ImageNet-style folder tree ``root/<split>/<class>/*.jpg|png``, decoded lazily with PIL.

The test split is ``data.test_root``, else ``root/test`` or ``root/val``; without any of them a
stratified part of the images (``data.holdout``) is held out as the test split and removed from
the train split, so utility is never measured on training images (``split_note`` says which).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image, UnidentifiedImageError

from gradleak.config import DataConfig
from gradleak.data import register_dataset
from gradleak.data.base import ImageDataset
from gradleak.data.holdout import holdout_indices, holdout_note
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
                 resolution: int, *, split_note: str = "") -> None:
        self.name = "imagefolder"
        self.root = root
        self.samples = samples
        self.classes = classes
        self.channels = 3
        self.resolution = resolution
        self.mean = IMAGENET_MEAN
        self.std = IMAGENET_STD
        self.split_note = split_note or f"all {len(samples)} images under {root}"
        self.transform_note = (f"decoded as RGB, centre-cropped to the largest square and resized "
                               f"to {resolution}x{resolution} px (PIL bicubic, anti-aliased); "
                               "normalised with ImageNet's mean/std")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        return load_square(path, self.resolution), label

    def targets(self) -> list[int]:
        return [label for _, label in self.samples]


def _split_dir(root: Path, split: str) -> Path | None:
    """The folder of ``split`` under ``root``; ``None`` for a test split that does not exist."""
    for name in _SPLIT_DIRS[split]:
        if (root / name).is_dir():
            return root / name
    if split == "test":
        return None
    # Without a train folder the tree is root/<class>/... -- unless it has a test folder (just
    # not this one), which would otherwise be mistaken for a class.
    others = [d for d in _SPLIT_DIRS["test"] if (root / d).is_dir()]
    if others:
        raise GradleakError(
            f"no train folder for data.split=train in {root} (found {', '.join(others)}); "
            "add it or set data.split=test"
        )
    return root


def _scan(path: Path) -> torchvision.datasets.ImageFolder:
    try:
        ds = torchvision.datasets.ImageFolder(str(path))
    except FileNotFoundError as exc:  # no class folders, or a class folder without images
        msg = str(exc).splitlines()[0] if str(exc) else "no images"
        raise GradleakError(f"no usable images in {path} ({msg}): {_LAYOUT}") from None
    if not ds.samples:
        raise GradleakError(f"no images in {path}: {_LAYOUT}")
    return ds


def _test_root(cfg: DataConfig) -> Path | None:
    if not cfg.test_root:
        return None
    path = Path(cfg.test_root).expanduser()
    if not path.is_dir():
        raise GradleakError(f"data.test_root {str(path)!r} is not a folder: expected "
                            "test_root/<class>/*.jpg|png")
    return path


@register_dataset("imagefolder")
def load_imagefolder(cfg: DataConfig) -> ImageFolderDataset:
    """Folder tree data.root/<class>/*.jpg|png; test split: data.test_root, test/, val/ or held out.

    Classes are the sorted sub-folder names; without a test folder ``data.holdout`` of each class
    is held out as the test split and removed from the train split.
    """
    if not cfg.root:
        raise GradleakError(f"dataset imagefolder needs data.root: {_LAYOUT}")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise GradleakError(f"image folder {root} does not exist: {_LAYOUT}")
    test_dir = _test_root(cfg) or _split_dir(root, "test")
    if cfg.split == "test" and test_dir is not None:
        ds = _scan(test_dir)
        return ImageFolderDataset(test_dir, list(ds.samples), tuple(ds.classes), cfg.resolution,
                                  split_note=f"test split: all {len(ds.samples)} images under "
                                             f"{test_dir}")
    path = _split_dir(root, "train")
    ds = _scan(path)
    samples, classes = list(ds.samples), tuple(ds.classes)
    if test_dir is not None:  # a real test split exists: train on everything here
        return ImageFolderDataset(path, samples, classes, cfg.resolution)
    keep = holdout_indices([y for _, y in samples], cfg.holdout, cfg.split)
    if not keep:
        raise GradleakError(
            f"{path} has no test folder and data.holdout={cfg.holdout} holds out no images "
            "(a class needs >= 2 images to give one); set data.test_root or data.holdout > 0"
        )
    note = holdout_note(cfg.holdout, str(path), cfg.split, len(keep)) if cfg.holdout > 0 else ""
    return ImageFolderDataset(path, [samples[i] for i in keep], classes, cfg.resolution,
                              split_note=note)
