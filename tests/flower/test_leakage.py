"""The app's own model enters the Scenario on [0, 1] pixels, wrapped once, keys mapped."""

from __future__ import annotations

import pytest

pytest.importorskip("flwr")

import torch  # noqa: E402
from flwr.app import ArrayRecord  # noqa: E402
from torch import nn  # noqa: E402

from gradleak.errors import GradleakError  # noqa: E402
from gradleak.fl.client import SharedUpdate  # noqa: E402
from gradleak.flower.leakage import GlobalModel, probe_config, scenario_for  # noqa: E402


def plain_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))


def test_a_plain_module_takes_raw_pixels_and_its_keys_map_to_parameters():
    arrays = ArrayRecord(plain_net().state_dict())
    model = GlobalModel.load(plain_net, arrays)
    x = torch.rand(2, 3, 4, 4)
    assert torch.allclose(model.module(x), plain_net()(x))
    update = SharedUpdate("model_delta", dict(plain_net().state_dict()), 2)
    assert list(model.parameter_update(update).tensors) == ["net.1.weight", "net.1.bias"]
    sc = scenario_for(probe_config("ig", 1, None), model, x, torch.tensor([0, 1]))
    assert sc.model is model.module  # the Scenario does not wrap (or re-normalise) it again
    assert [n for n, _ in sc.model.named_parameters()] == ["net.1.weight", "net.1.bias"]


def test_mean_and_std_are_the_apps_input_normalisation():
    arrays = ArrayRecord(plain_net().state_dict())
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    model = GlobalModel.load(plain_net, arrays, mean=mean, std=std)
    x = torch.rand(2, 3, 4, 4)
    normalised = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(model.module(x), plain_net()(normalised), atol=1e-6)
    with pytest.raises(GradleakError, match="both mean and std"):
        GlobalModel.load(plain_net, arrays, mean=mean)


def test_arrays_that_do_not_fit_the_model_fail_in_one_line():
    arrays = ArrayRecord({"w": torch.zeros(3)})
    with pytest.raises(GradleakError, match="do not fit"):
        GlobalModel.load(plain_net, arrays)
