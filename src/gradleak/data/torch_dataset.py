"""Any ``torch.utils.data.Dataset`` of ``(image, label)`` as an :class:`ImageDataset`.

Items may be tensors ``[C, H, W]`` (float in [0, 1] or uint8), PIL images or numpy arrays
``[H, W, C]`` / ``[H, W]`` (uint8 or float in [0, 1]); labels ints or 0-d tensors. Images that
are not square are centre-cropped, and resized when ``resolution`` differs from their size.
Conversion happens per item, on access.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from gradleak.data.base import ImageDataset
from gradleak.data.cifar import resize_batch
from gradleak.errors import GradleakError

_STAT_ITEMS = 256  # items (evenly spaced) used to estimate mean/std when none are given
_ITEMS = ("expected items (image, label): image a [C, H, W] tensor in [0, 1] (or uint8), a PIL "
          "image or an [H, W, C] array; label an int")


def to_image_tensor(image: Any, where: str) -> torch.Tensor:
    """One item's image as ``[C, H, W]`` float in [0, 1]."""
    if hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image
        image = np.asarray(image.convert("RGB" if image.mode not in ("L", "1") else "L"))
    if isinstance(image, np.ndarray):
        arr = image[..., None] if image.ndim == 2 else image
        if arr.ndim != 3:
            raise GradleakError(f"{where}: image array has shape {image.shape}; {_ITEMS}")
        t = torch.from_numpy(np.array(arr)).permute(2, 0, 1)  # a copy: PIL arrays are read-only
    elif isinstance(image, torch.Tensor):
        t = image[None] if image.ndim == 2 else image
        if t.ndim != 3:
            raise GradleakError(f"{where}: image tensor has shape {tuple(image.shape)}; {_ITEMS}")
    else:
        raise GradleakError(f"{where}: image is a {type(image).__name__}; {_ITEMS}")
    if t.dtype == torch.uint8:
        return t.float().div_(255.0)
    if not t.is_floating_point():
        raise GradleakError(f"{where}: image has dtype {t.dtype}; {_ITEMS}")
    lo, hi = float(t.min()), float(t.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise GradleakError(f"{where}: image values lie in [{lo:.3g}, {hi:.3g}], not [0, 1]; "
                            "drop Normalize from its transform (gradleak normalises inside the "
                            "model, see model.normalize / prepare_user_model)")
    return t.float().clamp(0, 1)


def _label(label: Any, where: str) -> int:
    if isinstance(label, torch.Tensor) and label.numel() == 1:
        label = label.item()
    if isinstance(label, (np.integer,)):
        label = int(label)
    if not isinstance(label, int) or isinstance(label, bool) or label < 0:
        raise GradleakError(f"{where}: label {label!r} is not a class index >= 0; {_ITEMS}")
    return label


def _square(img: torch.Tensor, resolution: int) -> torch.Tensor:
    h, w = img.shape[-2:]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return resize_batch(img[None, :, top:top + s, left:left + s], resolution)[0]


class TorchImageDataset(ImageDataset):
    """A user's dataset behind gradleak's :class:`ImageDataset` interface (items converted lazily)."""

    def __init__(self, source: Dataset, *, name: str, classes: tuple[str, ...], channels: int,
                 resolution: int, mean: tuple[float, ...], std: tuple[float, ...],
                 transform_note: str, labels: list[int] | None) -> None:
        self.source = source
        self.name = name
        self.classes = classes
        self.channels = channels
        self.resolution = resolution
        self.mean, self.std = mean, std
        self.transform_note = transform_note
        self.split_note = f"all {len(source)} items of the given {type(source).__name__}"
        self._labels = labels

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.source[index][:2]
        where = f"{self.name}[{index}]"
        img = _square(to_image_tensor(image, where), self.resolution)
        if img.shape[0] != self.channels:
            raise GradleakError(f"{where}: image has {img.shape[0]} channels, the first had "
                                f"{self.channels}")
        return img, _label(label, where)

    def targets(self) -> list[int]:
        if self._labels is None:
            self._labels = [_label(self.source[i][1], f"{self.name}[{i}]") for i in range(len(self))]
        return list(self._labels)


def _known_labels(ds: Dataset) -> list[int] | None:
    targets = getattr(ds, "targets", None)
    if targets is None or callable(targets):
        return None
    try:
        return [int(t) for t in (targets.tolist() if hasattr(targets, "tolist") else targets)]
    except (TypeError, ValueError):
        return None


def from_torch_dataset(ds: Dataset, *, name: str = "user", classes: Sequence[str] | None = None,
                       num_classes: int | None = None, resolution: int | None = None,
                       mean: Sequence[float] | None = None,
                       std: Sequence[float] | None = None) -> ImageDataset:
    """Wrap ``ds`` (items ``(image, label)``) as an :class:`ImageDataset`.

    ``classes``: names (else ``ds.classes``, else ``num_classes`` or the largest label + 1);
    ``resolution``: image side (else the first item's shorter side); ``mean``/``std``: the
    per-channel statistics used by ``model.normalize`` (else estimated from up to 256 items).
    An :class:`ImageDataset` is returned unchanged.
    """
    if isinstance(ds, ImageDataset):
        return ds
    if not hasattr(ds, "__getitem__") or not hasattr(ds, "__len__"):
        raise GradleakError(f"data must be a map-style torch Dataset with __len__, got "
                            f"{type(ds).__name__}")
    if len(ds) == 0:
        raise GradleakError("the given dataset is empty")
    first = ds[0]
    if not isinstance(first, (tuple, list)) or len(first) < 2:
        raise GradleakError(f"{name}[0] is a {type(first).__name__}; {_ITEMS}")
    img0 = to_image_tensor(first[0], f"{name}[0]")
    side = min(img0.shape[-2:])
    res = int(resolution or side)
    labels = _known_labels(ds)
    names = tuple(classes) if classes is not None else tuple(getattr(ds, "classes", ()) or ())
    if not names:
        if num_classes is None:
            labels = labels if labels is not None else [
                _label(ds[i][1], f"{name}[{i}]") for i in range(len(ds))]
            num_classes = max(labels) + 1
        names = tuple(str(i) for i in range(num_classes))
    wrapped = TorchImageDataset(ds, name=name, classes=names, channels=img0.shape[0],
                                resolution=res, mean=(), std=(), transform_note="",
                                labels=labels)
    steps = []
    if img0.shape[-1] != img0.shape[-2]:
        steps.append("centre-cropped to a square")
    if res != side:
        steps.append(f"resized from {side}x{side} to {res}x{res} px (bilinear, anti-aliased)")
    est_mean, est_std = (None, None)
    if mean is None or std is None:
        est_mean, est_std = _estimate(wrapped)
        steps.append(f"mean/std estimated from {min(len(ds), _STAT_ITEMS)} items")
    ch = img0.shape[0]
    wrapped.mean = _per_channel(mean, ch, "mean") if mean is not None else est_mean
    wrapped.std = _per_channel(std, ch, "std") if std is not None else est_std
    wrapped.transform_note = "; ".join(steps) if steps else "items used as given"
    return wrapped


def _per_channel(values: Sequence[float], channels: int, what: str) -> tuple[float, ...]:
    out = tuple(float(v) for v in values)
    out = out * channels if len(out) == 1 else out
    if len(out) != channels or (what == "std" and min(out) <= 0):
        raise GradleakError(f"bad {what} {list(values)}: needs 1 or {channels} numbers (one per "
                            f"channel){', all > 0' if what == 'std' else ''}")
    return out


def _estimate(ds: TorchImageDataset) -> tuple[tuple[float, ...], tuple[float, ...]]:
    idx = np.linspace(0, len(ds) - 1, num=min(len(ds), _STAT_ITEMS)).round().astype(int)
    batch = torch.stack([ds[int(i)][0] for i in np.unique(idx)]).double()
    return (tuple(batch.mean(dim=(0, 2, 3)).tolist()),
            tuple(batch.std(dim=(0, 2, 3)).nan_to_num(1.0).clamp_min(1e-3).tolist()))
