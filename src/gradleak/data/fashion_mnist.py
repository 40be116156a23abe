"""Fashion-MNIST read from its idx files (gzip or plain), e.g. Debian's dataset-fashion-mnist."""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from gradleak.config import DataConfig
from gradleak.data import register_dataset
from gradleak.data.base import ImageDataset, empty_batch
from gradleak.data.cifar import resize_batch
from gradleak.errors import GradleakError

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
           "Sneaker", "Bag", "Ankle boot")
# Training-split statistics.
MEAN = (0.2860,)
STD = (0.3530,)

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IMAGES_MAGIC, _LABELS_MAGIC = 2051, 2049
_CHUNK = 4096  # images converted at once by tensors(): bounds the float copies before a resize

# (path, size, mtime) of both files -> (images uint8 [N, 28, 28], labels int64 [N]).
_CACHE: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _find(root: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    return None


def missing_files(root: Path = DEFAULT_ROOT) -> list[str]:
    """The idx files of both splits (each ``.gz`` or plain) that ``root`` lacks."""
    return [stem for pair in _FILES.values() for stem in pair if _find(root, stem) is None]


def read_idx(path: str | Path, magic: int) -> np.ndarray:
    """Parse an idx file (gzip detected from its content): ``uint8`` array of the header's shape.

    ``magic`` is 2051 for images (``[N, rows, cols]``) and 2049 for labels (``[N]``).
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as exc:
        raise GradleakError(f"cannot read {path}: {exc}; replace the file") from None
    ndim = magic - 2048  # idx magic: 0x0000 08 ndim, 08 = unsigned byte
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise GradleakError(f"{path} is truncated ({len(raw)} bytes); replace the file")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise GradleakError(
            f"{path} is not an idx file of the expected kind (magic {found}, expected {magic}); "
            "replace the file"
        )
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    size = int(np.prod(shape))
    if len(raw) - header != size:
        raise GradleakError(
            f"{path} holds {len(raw) - header} data bytes but its header says {shape} "
            f"({size} bytes); replace the file"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _load_split(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    img_stem, lbl_stem = _FILES[split]
    img_path, lbl_path = _find(root, img_stem), _find(root, lbl_stem)
    if img_path is None or lbl_path is None:
        missing = img_stem if img_path is None else lbl_stem
        raise GradleakError(
            f"Fashion-MNIST files not found in {root} (no {missing}.gz): install Debian's "
            "dataset-fashion-mnist (apt-get install dataset-fashion-mnist) or set data.root "
            f"to a folder with {img_stem}.gz and {lbl_stem}.gz"
        )
    key = tuple((str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns)
                for p in (img_path, lbl_path))
    if key not in _CACHE:
        images = read_idx(img_path, _IMAGES_MAGIC)
        labels = read_idx(lbl_path, _LABELS_MAGIC)
        if len(images) != len(labels):
            raise GradleakError(
                f"{img_path} has {len(images)} images but {lbl_path} has {len(labels)} labels; "
                "use files from the same release"
            )
        if labels.size and labels.max() >= len(CLASSES):
            raise GradleakError(
                f"{lbl_path} has label {int(labels.max())}, expected 0-{len(CLASSES) - 1}; "
                "replace the file"
            )
        _CACHE[key] = (torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64)))
    return _CACHE[key]


class FashionMNISTDataset(ImageDataset):
    """Fashion-MNIST held as ``uint8 [N, 28, 28]``; items are ``[1, R, R]`` floats in [0, 1]."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, resolution: int) -> None:
        self.name = "fashion_mnist"
        self.images = images
        self.labels = labels
        self.classes = CLASSES
        self.channels = 1
        self.resolution = resolution
        self.mean = MEAN
        self.std = STD

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = self.images[index].float().div_(255.0)[None, None]
        return resize_batch(img, self.resolution)[0], int(self.labels[index])

    def targets(self) -> list[int]:
        return self.labels.tolist()

    def tensors(self, indices: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images [n, 1, R, R] in [0, 1], labels [n])``: the same values as stacking
        ``self[i]``, converted and resized in chunks of ``_CHUNK`` images."""
        n = len(self)
        idx = torch.arange(n) if indices is None else torch.as_tensor(
            [int(i) for i in indices], dtype=torch.long)
        if len(idx) == 0:
            return empty_batch(self.channels, self.resolution)
        if bool(((idx < -n) | (idx >= n)).any()):
            bad = int(idx[(idx < -n) | (idx >= n)][0])
            raise IndexError(f"index {bad} out of range for {self.name} ({n} samples)")
        chunks = [resize_batch(self.images[part].float().div_(255.0)[:, None], self.resolution)
                  for part in idx.split(_CHUNK)]
        return torch.cat(chunks), self.labels[idx]


@register_dataset("fashion_mnist")
def load_fashion_mnist(cfg: DataConfig) -> FashionMNISTDataset:
    """Fashion-MNIST from ``cfg.root`` (default ``/usr/share/datasets/fashion-mnist``)."""
    root = Path(cfg.root).expanduser() if cfg.root else DEFAULT_ROOT
    images, labels = _load_split(root, cfg.split)
    return FashionMNISTDataset(images, labels, cfg.resolution)
