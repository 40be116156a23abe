import torch

from gradleak.attacks import build_attack, observe
from gradleak.config import AttackConfig, ClientConfig, ModelConfig, ThreatConfig
from gradleak.fl.client import ClientSetup, client_update
from gradleak.models import build_model
from gradleak.threat import ThreatModel
from tests.conftest import photo


def _psnr(a, b):
    return float(10 * torch.log10(1 / ((a - b) ** 2).mean()))


def _run(attack_cfg, *, model="mlp", images=None, labels=None, client=None, threat=None,
         size=16):
    images = photo("astronaut", size) if images is None else images
    labels = torch.tensor([3]) if labels is None else labels
    torch.manual_seed(0)
    net = build_model(ModelConfig(name=model, hidden=[128], width=8, norm="none"),
                      num_classes=10, channels=3, resolution=size, mean=(0.5,) * 3,
                      std=(0.25,) * 3)
    setup = ClientSetup.from_config(client or ClientConfig(), len(labels))
    update = client_update(net, images, labels, setup, seed=0)
    obs = observe(model=net, update=update, threat=ThreatModel.from_config(threat or
                  ThreatConfig()), setup=setup, labels=labels, input_shape=images.shape[1:],
                  num_classes=10)
    return images, build_attack(attack_cfg)(obs, seed=0)


def test_ig_recovers_a_photo_through_an_mlp():
    images, rec = _run(AttackConfig(iterations=300))
    assert rec.images.shape == images.shape
    assert _psnr(rec.images, images) > 30


def test_ig_is_deterministic_under_a_seed():
    _, a = _run(AttackConfig(iterations=20))
    _, b = _run(AttackConfig(iterations=20))
    assert torch.equal(a.images, b.images)


def test_restarts_are_ranked_by_final_gradient_loss():
    images, rec = _run(AttackConfig(iterations=30, restarts=3))
    assert rec.candidates.shape == (3, *images.shape)
    assert rec.losses == sorted(rec.losses)
    assert torch.equal(rec.images, rec.candidates[0])
    assert rec.images.min() >= 0 and rec.images.max() <= 1


def test_ig_infers_labels_when_not_known():
    _, rec = _run(AttackConfig(iterations=5, labels="idlg"), threat=ThreatConfig(
        knows_labels=False))
    assert rec.labels == [3] and rec.label_source == "idlg"


def test_fedavg_bst_and_wst_both_run_and_wst_is_better():
    """Against U = 4 local steps, simulating the client's SGD (WST) beats one-step BST."""
    images = torch.cat([photo("astronaut", 16), photo("chelsea", 16)])
    labels = torch.tensor([3, 5])
    client = ClientConfig(protocol="fedavg", local_epochs=2, batch_size=1, lr=0.5)
    cfg = AttackConfig(iterations=200)
    _, bst = _run(cfg, images=images, labels=labels, client=client)
    _, wst = _run(cfg, images=images, labels=labels, client=client,
                  threat=ThreatConfig(knows_client_config=True))

    def best(rec):  # match each reconstruction to its closest ground truth
        return max(_psnr(rec.images, images), _psnr(rec.images.flip(0), images))

    assert best(wst) > best(bst)
