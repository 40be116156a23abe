"""Image priors: TV borders against a convolutional reference, and their wiring into attacks."""

import pytest
import torch
import torch.nn.functional as F

from gradleak.attacks import build_attack
from gradleak.attacks.priors import total_variation
from gradleak.config import AttackConfig
from gradleak.errors import GradleakError
from tests.attacks.test_inverting_gradients import _observe


def _conv_tv(x: torch.Tensor) -> torch.Tensor:
    """Zero-padded forward differences by convolution, mean of |dx| + |dy| over every pixel."""
    c = x.shape[1]
    kx = torch.tensor([[0.0, 0, 0], [0, -1, 1], [0, 0, 0]], dtype=x.dtype)
    kernels = torch.stack([kx.T, kx]).unsqueeze(1).repeat(c, 1, 1, 1)
    diffs = F.conv2d(x, kernels, padding=1, groups=c).abs()
    return (diffs[:, 0::2] + diffs[:, 1::2]).mean()


def test_zero_border_tv_matches_the_padded_convolution():
    x = torch.rand(2, 3, 7, 5, dtype=torch.float64)
    assert float(total_variation(x, border="zero")) == pytest.approx(float(_conv_tv(x)), rel=1e-12)


def test_border_term_only_penalises_the_edges():
    flat = torch.full((1, 1, 4, 4), 0.5)
    assert float(total_variation(flat)) == 0.0
    # right column and bottom row each step down from 0.5 to the zero padding
    assert float(total_variation(flat, border="zero")) == pytest.approx(0.5 * 4 / 16 * 2)
    with pytest.raises(ValueError, match="allowed: none, zero"):
        total_variation(flat, border="wrap")


def test_attack_uses_the_chosen_border():
    _, obs = _observe()
    none = build_attack(AttackConfig(iterations=10, tv=0.2))(obs, seed=0)
    zero = build_attack(AttackConfig(iterations=10, tv=0.2, tv_border="zero"))(obs, seed=0)
    assert not torch.equal(none.images, zero.images)
    with pytest.raises(GradleakError, match="attack.tv_border"):
        build_attack(AttackConfig(tv_border="wrap"))
