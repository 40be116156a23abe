import dataclasses

import pytest
import torch

from gradleak.attacks import build_attack, observe
from gradleak.config import AttackConfig, ClientConfig, ModelConfig, ThreatConfig
from gradleak.errors import GradleakError
from gradleak.fl.client import ClientSetup, client_update
from gradleak.models import build_model
from gradleak.threat import Knowledge, ThreatModel


def _scenario(threat_cfg: ThreatConfig, protocol: str = "fedsgd"):
    torch.manual_seed(0)
    images = torch.rand(2, 3, 16, 16)
    labels = torch.tensor([1, 3])
    model = build_model(ModelConfig(name="mlp", hidden=[16]), num_classes=5, channels=3,
                        resolution=16, mean=(0.5,) * 3, std=(0.25,) * 3)
    setup = ClientSetup.from_config(ClientConfig(protocol=protocol, batch_size=1), 2)
    update = client_update(model, images, labels, setup, seed=0)
    obs = observe(model=model, update=update, threat=ThreatModel.from_config(threat_cfg),
                  setup=setup, labels=labels, input_shape=(3, 16, 16), num_classes=5)
    return images, labels, obs


def test_basic_always_granted_and_levels():
    threat = ThreatModel.from_config(ThreatConfig(knows_priors=False, knows_labels=False))
    assert threat.granted == {Knowledge.BASIC}
    assert threat.highest_level == 0
    assert ThreatModel.from_config(ThreatConfig(malicious=True)).server_trust == "malicious"


def test_require_names_what_is_missing():
    threat = ThreatModel.from_config(ThreatConfig())
    with pytest.raises(GradleakError, match=r"client training details \(level 3; set "
                                            r"threat.knows_client_config=true\)"):
        threat.require([Knowledge.CLIENT_TRAINING], who="attack 'x'")


def test_attack_refuses_without_label_grant():
    _, _, obs = _scenario(ThreatConfig(knows_labels=False))
    attack = build_attack(AttackConfig(iterations=1, labels="known"))
    with pytest.raises(GradleakError, match="labels"):
        attack(obs)


def test_attack_refuses_tv_prior_without_priors():
    _, _, obs = _scenario(ThreatConfig(knows_priors=False))
    with pytest.raises(GradleakError, match="priors"):
        build_attack(AttackConfig(iterations=1, tv=0.1))(obs)
    # Without the prior the same attack is allowed.
    build_attack(AttackConfig(iterations=1, tv=0.0))(obs)


def _tensors(obj, seen=None):
    """Every tensor reachable from an object's fields, dicts, lists and module state."""
    seen = seen if seen is not None else set()
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, torch.nn.Module):
        yield from obj.state_dict().values()
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield from _tensors(getattr(obj, f.name), seen)
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v, seen)
    elif isinstance(obj, (list, tuple, frozenset, set)):
        for v in obj:
            yield from _tensors(v, seen)


@pytest.mark.parametrize("protocol", ["fedsgd", "fedavg"])
def test_ground_truth_never_reaches_the_attacker(protocol):
    images, labels, obs = _scenario(ThreatConfig(knows_labels=False), protocol)
    assert obs.labels is None and obs.client is None and obs.bn_statistics is None
    for t in _tensors(obs):
        for img in images:
            assert not (t.shape == img.shape and torch.equal(t, img)), "an image leaked"
            assert not (t.numel() == img.numel() and torch.equal(t.flatten(), img.flatten()))
    assert not any(f.name in ("images", "truth", "data") for f in dataclasses.fields(obs))


def test_grants_pass_only_what_is_granted():
    _, labels, obs = _scenario(ThreatConfig(knows_labels=True, knows_client_config=True),
                               "fedavg")
    assert torch.equal(obs.labels, labels)
    assert obs.client is not None and obs.client.local_updates == 2
    assert obs.bn_statistics is None
