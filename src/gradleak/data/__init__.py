"""Dataset registry: ``build_dataset(cfg)`` returns an :class:`ImageDataset`.

Loaders register themselves with ``@DATASETS.register(name)``; each is a callable
``loader(cfg: DataConfig) -> ImageDataset``.
"""

from __future__ import annotations

from gradleak.config import DataConfig
from gradleak.data.base import ImageDataset, TensorImageDataset
from gradleak.registry import Registry

DATASETS: Registry = Registry("dataset")


def register_dataset(name: str):
    return DATASETS.register(name)


def build_dataset(cfg: DataConfig) -> ImageDataset:
    """Build the dataset named by ``cfg.dataset`` (see ``DATASETS.names()``)."""
    return DATASETS.get(cfg.dataset)(cfg)


# Importing the loader modules registers them.
from gradleak.data import cifar, fashion_mnist, folder, skimage_set  # noqa: E402,F401

__all__ = ["DATASETS", "ImageDataset", "TensorImageDataset", "build_dataset", "register_dataset"]
