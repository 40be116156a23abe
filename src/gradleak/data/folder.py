"""An ImageNet-style folder tree ``root/<split>/<class>/*.jpg|png``, decoded lazily with PIL.

The test split is ``data.test_root``, else ``root/test`` or ``root/val``; without any of them a
stratified part of the images (``data.holdout``) is held out as the test split and removed from
the train split, so utility is never measured on training images (``split_note`` says which).
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image, UnidentifiedImageError

from gradleak.config import DataConfig
from gradleak.data import register_dataset
from gradleak.data.base import ImageDataset, convert_statistics
from gradleak.data.holdout import holdout_indices, holdout_note
from gradleak.errors import GradleakError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_LAYOUT = "expected root/<split>/<class>/*.jpg|png or root/<class>/*.jpg|png"
# Folder names tried for each split, in order ("val" is ImageNet's name for its test split).
_SPLIT_DIRS = {"train": ("train",), "test": ("test", "val")}
_UPSCALE_WARNED: set[int] = set()  # one warning per resolution and process, not per image
_GREY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F")
_PROBED = 16  # images whose mode decides the channels of data.channels=null


def load_square(path: str | Path, resolution: int, channels: int = 3) -> torch.Tensor:
    """Decode ``path`` as RGB (``channels=3``) or luminance (PIL "L", ``channels=1``), centre-crop
    to a square and resize: ``[channels, R, R]`` in [0, 1]."""
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
            im = im.convert("RGB" if channels == 3 else "L")
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
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)


def stored_channels(samples: list[tuple[str, int]]) -> int:
    """1 when the probed images (up to ``_PROBED``, evenly spaced) are all grey, else 3: what
    ``data.channels=null`` keeps. Only headers are read; an unreadable file fails when decoded."""
    step = max(1, len(samples) // _PROBED)
    for path, _ in samples[::step][:_PROBED]:
        try:
            with Image.open(path) as im:
                if im.mode not in _GREY_MODES:
                    return 3
        except (OSError, ValueError, Image.DecompressionBombError):
            continue
    return 1


class ImageFolderDataset(ImageDataset):
    """Images listed by :class:`torchvision.datasets.ImageFolder`, decoded on access."""

    def __init__(self, root: Path, samples: list[tuple[str, int]], classes: tuple[str, ...],
                 resolution: int, *, split_note: str = "", channels: int | None = None) -> None:
        self.name = "imagefolder"
        self.root = root
        self.samples = samples
        self.classes = classes
        self.channels = channels or stored_channels(samples)
        self.resolution = resolution
        # ImageNet's statistics; for grey images their luminance (see convert_statistics).
        self.mean = convert_statistics(IMAGENET_MEAN, self.channels)
        self.std = convert_statistics(IMAGENET_STD, self.channels)
        self.split_note = split_note or f"all {len(samples)} images under {root}"
        decoded = "RGB" if self.channels == 3 else "grey (PIL L)"
        self.transform_note = (f"decoded as {decoded}, centre-cropped to the largest square and "
                               f"resized to {resolution}x{resolution} px (PIL bicubic, "
                               "anti-aliased); normalised with ImageNet's mean/std"
                               + (" as luminance" if self.channels == 1 else ""))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        return load_square(path, self.resolution, self.channels), label

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


def _same_classes(train: Path, test: Path) -> None:
    """Labels are class indices in sorted folder order: both trees must name the same classes."""
    try:
        a, b = (tuple(torchvision.datasets.folder.find_classes(str(p))[0]) for p in (train, test))
    except FileNotFoundError:  # no class folders: _scan names the layout
        return
    if a != b:
        only = sorted(set(a) ^ set(b)) or ["the same names"]
        raise GradleakError(f"ImageFolder train classes in {train} ({len(a)}) and test classes in "
                            f"{test} ({len(b)}) differ (e.g. {', '.join(only[:3])}); labels "
                            "would not match: give both trees the same class folders")


@register_dataset("imagefolder")
def load_imagefolder(cfg: DataConfig) -> ImageFolderDataset:
    """Folder tree data.root/<class>/*.jpg|png; test split: data.test_root, test/, val/ or held out.

    Classes are the sorted sub-folder names; without a test folder ``data.holdout`` of each class
    is held out as the test split and removed from the train split. Images are decoded with
    ``data.channels`` channels (null: grey when the probed images are grey, else RGB).
    """
    if not cfg.root:
        raise GradleakError(f"dataset imagefolder needs data.root: {_LAYOUT}")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise GradleakError(f"image folder {root} does not exist: {_LAYOUT}")
    test_dir = _test_root(cfg) or _split_dir(root, "test")
    if cfg.split == "test" and test_dir is not None:
        train_dir = None
        with contextlib.suppress(GradleakError):  # only a test folder: nothing to compare with
            train_dir = _split_dir(root, "train")
        if train_dir is not None:
            _same_classes(train_dir, test_dir)
        ds = _scan(test_dir)
        return ImageFolderDataset(test_dir, list(ds.samples), tuple(ds.classes), cfg.resolution,
                                  split_note=f"test split: all {len(ds.samples)} images under "
                                             f"{test_dir}", channels=cfg.channels)
    path = _split_dir(root, "train")
    if test_dir is not None:
        _same_classes(path, test_dir)
    ds = _scan(path)
    samples, classes = list(ds.samples), tuple(ds.classes)
    if test_dir is not None:  # a real test split exists: train on everything here
        return ImageFolderDataset(path, samples, classes, cfg.resolution, channels=cfg.channels)
    keep = holdout_indices([y for _, y in samples], cfg.holdout, cfg.split)
    if not keep:
        raise GradleakError(
            f"{path} has no test folder and data.holdout={cfg.holdout} holds out no images "
            "(a class needs >= 2 images to give one); set data.test_root or data.holdout > 0"
        )
    note = holdout_note(cfg.holdout, str(path), cfg.split, len(keep)) if cfg.holdout > 0 else ""
    # Channels probed on the whole tree, so both parts of a held-out split decode alike.
    channels = cfg.channels or stored_channels(samples)
    return ImageFolderDataset(path, [samples[i] for i in keep], classes, cfg.resolution,
                              split_note=note, channels=channels)
