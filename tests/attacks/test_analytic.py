"""Analytic GIA-A attacks: exact first-layer inversion and the malicious imprint module."""

import json

import pytest
import torch

from gradleak.attacks import build_attack, observe
from gradleak.attacks.analytic import ImprintBlock
from gradleak.cli import main
from gradleak.config import AttackConfig, ClientConfig, DataConfig, ModelConfig, ThreatConfig
from gradleak.data import build_dataset
from gradleak.data.sampling import select_victim_samples
from gradleak.errors import GradleakError
from gradleak.fl.client import ClientSetup, client_update
from gradleak.metrics import match_reconstructions, psnr
from gradleak.models import build_model
from gradleak.threat import ThreatModel
from tests.conftest import photo


def _model(name="mlp", size=32, mean=(0.5,) * 3, std=(0.25,) * 3):
    torch.manual_seed(0)
    return build_model(ModelConfig(name=name, hidden=[128], width=8, norm="none"),
                       num_classes=10, channels=3, resolution=size, mean=mean, std=std)


def _attack(cfg, model, images, labels, *, client=None, threat=None):
    attack = build_attack(cfg)
    model = attack.prepare_model(model, input_shape=tuple(images.shape[1:]), num_classes=10,
                                 seed=0)
    setup = ClientSetup.from_config(client or ClientConfig(), len(labels))
    update = client_update(model, images, labels, setup, seed=0)
    obs = observe(model=model, update=update, threat=ThreatModel.from_config(threat or ThreatConfig()),
                  setup=setup, labels=labels, input_shape=tuple(images.shape[1:]), num_classes=10)
    return attack(obs, seed=0)


@pytest.mark.parametrize("client", [
    ClientConfig(),
    ClientConfig(protocol="fedavg", local_epochs=1, batch_size=None, lr=0.1),  # U = 1
])
def test_analytic_recovers_one_photo_exactly(client):
    x, y = photo("astronaut", 32), torch.tensor([3])
    rec = _attack(AttackConfig(name="analytic"), _model(), x, y, client=client)
    assert rec.images.shape == x.shape
    assert float(psnr(rec.images, x)) >= 60
    assert rec.losses[0] < 1e-4 and rec.labels == [3]


def test_analytic_stays_exact_for_one_sample_over_several_local_steps():
    """The first layer's input is the sample itself at every step, so the ratio still holds."""
    x, y = photo("chelsea", 32), torch.tensor([5])
    client = ClientConfig(protocol="fedavg", local_epochs=3, lr=0.1)
    rec = _attack(AttackConfig(name="analytic"), _model(), x, y, client=client)
    assert float(psnr(rec.images, x)) >= 60


def test_analytic_infers_the_label_when_not_granted():
    x, y = photo("astronaut", 32), torch.tensor([7])
    rec = _attack(AttackConfig(name="analytic", labels="idlg"), _model(), x, y,
                  threat=ThreatConfig(knows_labels=False))
    assert rec.labels == [7] and rec.label_source == "idlg"


def test_analytic_batch_returns_mixtures_not_samples(photos):
    rec = _attack(AttackConfig(name="analytic"), _model(), photos, torch.tensor([0, 1, 2, 3]))
    assert rec.images.shape == photos.shape
    assert rec.images.min() >= 0 and rec.images.max() <= 1
    # Each row's ratio mixes the samples that activate it, so the N images do not explain the
    # layer's gradient (documented: exact only for one sample).
    assert rec.losses[0] > 1e-3


def test_analytic_refuses_a_convnet_in_one_line():
    x, y = photo("astronaut", 32), torch.tensor([3])
    with pytest.raises(GradleakError, match="first learnable layer is nn.Linear with bias") as err:
        _attack(AttackConfig(name="analytic"), _model("convnet"), x, y)
    assert "\n" not in str(err.value) and "Conv2d" in str(err.value)


@pytest.fixture(scope="module")
def victims():
    cfg = DataConfig(num_samples=8)
    dataset = build_dataset(cfg)
    images, labels, _ = select_victim_samples(dataset, cfg, seed=0)
    return dataset, images, labels


def test_imprint_recovers_most_of_a_batch_of_eight(victims):
    dataset, images, labels = victims
    model = _model(mean=dataset.mean, std=dataset.std)
    rec = _attack(AttackConfig(name="imprint"), model, images, labels,
                  threat=ThreatConfig(malicious=True))
    assert rec.images.shape == images.shape
    perm = match_reconstructions(rec.images, images)
    scores = psnr(rec.images[perm], images)
    assert int((scores >= 40).sum()) >= 6, scores


def test_imprint_refuses_an_honest_server(victims):
    dataset, images, labels = victims
    with pytest.raises(GradleakError, match="threat.malicious=true"):
        _attack(AttackConfig(name="imprint"), _model(), images[:2], labels[:2])


def test_imprint_model_trains_and_keeps_the_original_intact(victims):
    _, images, labels = victims
    model = _model()
    before = {n: p.clone() for n, p in model.named_parameters()}
    crafted = build_attack(AttackConfig(name="imprint", bins=16)).prepare_model(
        model, input_shape=(3, 32, 32), num_classes=10, seed=0)
    block = next(m for m in crafted.modules() if isinstance(m, ImprintBlock))
    assert block.imprint.out_features == 16
    out = crafted(images)
    assert out.shape == (8, 10)
    torch.nn.functional.cross_entropy(out, labels).backward()
    assert all(p.grad is not None for p in crafted.parameters())
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    # The block hands the rest of the network its input, up to a small uniform shift.
    x = torch.randn(2, 3, 32, 32)
    shift = block(x) - x
    assert torch.allclose(shift, shift.flatten(1)[:, :1].view(2, 1, 1, 1).expand_as(x), atol=1e-5)


def test_imprint_needs_the_crafted_model(victims):
    _, images, labels = victims
    model = _model()
    setup = ClientSetup.from_config(ClientConfig(), 2)
    update = client_update(model, images[:2], labels[:2], setup, seed=0)
    obs = observe(model=model, update=update, threat=ThreatModel.from_config(
        ThreatConfig(malicious=True)), setup=setup, labels=labels[:2], input_shape=(3, 32, 32),
        num_classes=10)
    with pytest.raises(GradleakError, match="prepare_model"):
        build_attack(AttackConfig(name="imprint"))(obs)


def test_imprint_through_the_cli(tmp_path):
    code = main(["attack", "attack.name=imprint", "threat.malicious=true", "model.name=mlp",
                 "data.num_samples=4", "--quiet", "--out", str(tmp_path)])
    assert code == 0
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["metrics"]["psnr"] > 40
