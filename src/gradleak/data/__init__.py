"""Dataset registry: ``build_dataset(cfg)`` returns an :class:`ImageDataset`.

Loaders register themselves with ``@DATASETS.register(name)``; each is a callable
``loader(cfg: DataConfig) -> ImageDataset``.
"""

from __future__ import annotations

from typing import Any

from gradleak.config import DataConfig
from gradleak.data.base import ImageDataset, TensorImageDataset, with_channels
from gradleak.registry import Registry

DATASETS: Registry = Registry("dataset")


def register_dataset(name: str):
    return DATASETS.register(name)


def build_dataset(cfg: DataConfig) -> ImageDataset:
    """Build the dataset named by ``cfg.dataset`` (see ``DATASETS.names()``), its images with
    ``cfg.channels`` channels (loaders that decode files do that themselves; the rest are
    converted here)."""
    return with_channels(DATASETS.get(cfg.dataset)(cfg), cfg.channels)


def describe_dataset(ds: ImageDataset) -> dict[str, Any]:
    """What a result records about the data: size, shape, classes, and what the loader did to
    the images (``transform``: crop, resize, scaling) and which part it is (``split``: e.g. a
    held-out part when the user's data had no test split), and the per-channel ``normalization``
    (mean/std) the model standardises with unless ``model.input_mean``/``input_std`` replace it.
    Loaders set ``transform_note`` and ``split_note``; loaders without them record ``null``."""
    if getattr(ds, "modality", None) == "text":
        return {"name": ds.name, "size": len(ds), "classes": ds.num_classes, "modality": "text",
                "max_length": getattr(ds, "max_length", None),
                "split": getattr(ds, "split_note", None)}
    return {
        "name": getattr(ds, "name", type(ds).__name__),
        "size": len(ds),
        "classes": len(ds.classes),
        "channels": ds.channels,
        "resolution": ds.resolution,
        "normalization": {"mean": [round(float(v), 6) for v in ds.mean],
                          "std": [round(float(v), 6) for v in ds.std]},
        "transform": getattr(ds, "transform_note", None),
        "split": getattr(ds, "split_note", None),
    }


# Importing the loader modules registers them.
from gradleak.data import cifar, fashion_mnist, folder, npz, personal, skimage_set, text_files, wordnet  # noqa: E402,F401  # noqa: E402,F401
from gradleak.data.text import TextDataset  # noqa: E402
from gradleak.data.torch_dataset import from_torch_dataset  # noqa: E402

__all__ = ["DATASETS", "ImageDataset", "TensorImageDataset", "TextDataset",
           "build_dataset", "describe_dataset",
           "from_torch_dataset", "register_dataset"]
