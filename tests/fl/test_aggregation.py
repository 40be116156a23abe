"""``fl.aggregation``: the server's data-weighted mean as a pure function, and its step."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradleak.fl.aggregation import aggregate, apply_update, server_step


def test_aggregate_is_the_sample_weighted_mean_per_tensor():
    a = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([0.5])}
    b = {"w": torch.tensor([4.0, -1.0]), "b": torch.tensor([1.5])}
    out = aggregate([a, b], [1, 3])
    torch.testing.assert_close(out["w"], torch.tensor([13 / 4, -1 / 4]), atol=0, rtol=0)
    torch.testing.assert_close(out["b"], torch.tensor([1.25]), atol=0, rtol=0)
    assert out["w"].dtype == torch.float32 and list(out) == ["w", "b"]
    # the plain mean differs: the weights matter
    assert not torch.allclose(out["w"], (a["w"] + b["w"]) / 2)


def test_aggregate_sums_in_float64():
    # 1e8 + 1 - 1e8 is 0 in float32 when summed naively; float64 accumulation keeps the 1.
    ups = [{"x": torch.tensor([1e8])}, {"x": torch.tensor([1.0])}, {"x": torch.tensor([-1e8])}]
    assert float(aggregate(ups, [1, 1, 1])["x"]) == pytest.approx(1 / 3, rel=1e-6)


def test_aggregate_refuses_mismatched_or_empty_input():
    with pytest.raises(ValueError, match="one weight per update"):
        aggregate([{"x": torch.zeros(1)}], [1, 2])
    with pytest.raises(ValueError, match="one weight per update"):
        aggregate([], [])
    with pytest.raises(ValueError, match="sum to > 0"):
        aggregate([{"x": torch.zeros(1)}], [0])


def test_server_step_moves_parameters_only():
    model = nn.BatchNorm1d(2)
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.bias.fill_(0.0)
    mean = {"weight": torch.tensor([0.5, -0.5]), "bias": torch.tensor([1.0, 1.0])}
    apply_update(model, mean, server_step("fedsgd", 0.1))  # W - lr * g
    torch.testing.assert_close(model.weight.data, torch.tensor([0.95, 1.05]))
    torch.testing.assert_close(model.bias.data, torch.tensor([-0.1, -0.1]))
    apply_update(model, {"bias": torch.tensor([0.1, 0.1])}, server_step("fedavg", 0.1))  # W + u
    torch.testing.assert_close(model.bias.data, torch.zeros(2))
    assert torch.equal(model.running_mean, torch.zeros(2))  # BN statistics are not federated
