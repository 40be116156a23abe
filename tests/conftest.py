"""Shared fixtures: tiny models and real photos at 16-32 px so the suite stays fast on 2 cores."""

from __future__ import annotations

import os

import pytest
import skimage.data
import skimage.transform
import torch

# One thread: OpenMP spin-waiting makes 2 threads catastrophically slow on a shared, noisy box.
torch.set_num_threads(1)
# The audit's default of 2 jobs spawns a worker pool per sweep: seconds of start-up each, more
# than a tiny test run takes. Tests that need workers pass --jobs / jobs= themselves.
os.environ.setdefault("GRADLEAK_JOBS", "1")


def photo(name: str, size: int = 32) -> torch.Tensor:
    """A scikit-image photo as ``[1, 3, size, size]`` in [0, 1]."""
    img = getattr(skimage.data, name)()
    side = min(img.shape[:2])
    img = img[:side, :side, :3]
    img = skimage.transform.resize(img, (size, size), anti_aliasing=True)
    return torch.tensor(img, dtype=torch.float32).permute(2, 0, 1)[None]


@pytest.fixture
def photos() -> torch.Tensor:
    """Four distinct photos ``[4, 3, 32, 32]``."""
    return torch.cat([photo(n) for n in ("astronaut", "chelsea", "coffee", "rocket")])
