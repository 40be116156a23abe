"""``ImageDataset.tensors``: the one way every dataset becomes ``[N, C, R, R]`` float input."""

from __future__ import annotations

import pytest
import torch

from gradleak.data.base import ImageDataset, TensorImageDataset


class _Lazy(ImageDataset):
    """A dataset with only ``__getitem__``: the base class's default must serve it."""

    def __init__(self) -> None:
        self.name, self.classes, self.channels, self.resolution = "lazy", ("a", "b"), 2, 4
        self.mean, self.std = (0.5, 0.5), (0.2, 0.2)

    def __len__(self) -> int:
        return 3

    def __getitem__(self, index: int):
        return torch.full((2, 4, 4), index / 4.0, dtype=torch.float64), index % 2


def test_default_stacks_items_as_float32_in_order():
    x, y = _Lazy().tensors([2, 0, 2])
    assert x.shape == (3, 2, 4, 4) and x.dtype == torch.float32
    assert x[:, 0, 0, 0].tolist() == [0.5, 0.0, 0.5] and y.tolist() == [0, 0, 0]
    assert _Lazy().tensors()[0].shape == (3, 2, 4, 4)
    empty_x, empty_y = _Lazy().tensors([])
    assert empty_x.shape == (0, 2, 4, 4) and empty_y.shape == (0,) and empty_y.dtype == torch.long
    with pytest.raises(IndexError, match="index 3 out of range for lazy"):
        _Lazy().tensors([3])


def test_in_memory_dataset_returns_copies():
    ds = TensorImageDataset("t", torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 0, 1]), ("a", "b"))
    x, y = ds.tensors([1, 3])
    assert torch.equal(x, ds.images[[1, 3]]) and y.tolist() == [1, 1]
    x.zero_()
    assert ds.images[1].abs().sum() > 0  # the caller's batch does not alias the dataset
    assert torch.equal(ds.tensors()[0], ds.images)
