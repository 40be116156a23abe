import pytest
import torch

from gradleak.config import ModelConfig
from gradleak.errors import GradleakError
from gradleak.models import MODELS, build_model, count_parameters


def _build(**kw):
    return build_model(ModelConfig(**kw), num_classes=10, channels=3, resolution=32,
                       mean=(0.5,) * 3, std=(0.25,) * 3)


@pytest.mark.parametrize("name", ["convnet", "mlp", "resnet18", "lenet"])
def test_forward_backward(name):
    model = _build(name=name)
    out = model(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 10)
    out.sum().backward()
    assert count_parameters(model) > 0
    assert all(p.grad is not None for p in model.parameters())


def test_registry_lists_models_and_rejects_unknown():
    assert {"convnet", "mlp", "resnet18", "lenet"} <= set(MODELS.names())
    with pytest.raises(GradleakError, match="unknown model 'vgg99'"):
        _build(name="vgg99")


def test_convnet_switches():
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in _build(norm="none").modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in _build(norm="batch").modules())
    assert not any(n.endswith("bias") for n, _ in _build(bias=False, norm="none").named_parameters())
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in _build(pooling="none").modules())
    assert not any(isinstance(m, torch.nn.ReLU) for m in _build(activation="none").modules())
    wide, narrow = _build(width=16), _build(width=8)
    assert count_parameters(wide) > count_parameters(narrow)


def test_uniform_init_bounds():
    model = _build(name="lenet", init="uniform")
    for p in model.parameters():
        assert p.min() >= -0.5 and p.max() <= 0.5


def test_checkpoint_roundtrip(tmp_path):
    model = _build(name="mlp")
    path = tmp_path / "m.pt"
    torch.save(model.state_dict(), path)
    again = _build(name="mlp", checkpoint=str(path))
    for a, b in zip(model.parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(GradleakError, match="does not fit"):
        _build(name="convnet", checkpoint=str(path))
