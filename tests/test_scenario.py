"""The Scenario pipeline: user objects, the step API, seed streams and the threat boundary."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
from torch import nn

from gradleak.attacks import ATTACKS
from gradleak.config import load_config
from gradleak.data.base import TensorImageDataset
from gradleak.scenario import Scenario, SeedStreams

TINY = ["data.resolution=16", "attack.iterations=3"]
MLP = ["model.name=mlp", "model.hidden=[16]"]
TEXT = ["data.dataset=personal", "data.max_length=8", "model.name=gpt2-tiny",
        "model.hidden_size=32", "model.layers=2", "model.heads=2"]
BN_CONV = ["model.name=convnet", "model.width=4", "model.depth=2", "model.norm=batch"]


def _walk(obj, seen=None, depth=0):
    """Every object reachable from ``obj``: fields, attributes, containers, module state."""
    seen = set() if seen is None else seen
    if id(obj) in seen or depth > 12:
        return
    seen.add(id(obj))
    yield obj
    if isinstance(obj, torch.Tensor | str | bytes | int | float | bool):
        return
    if isinstance(obj, nn.Module):
        children = [*obj.state_dict(keep_vars=True).values(), *vars(obj).values()]
    elif isinstance(obj, dict):
        children = [*obj.keys(), *obj.values()]
    elif isinstance(obj, list | tuple | set | frozenset):
        children = list(obj)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        children = [getattr(obj, f.name) for f in dataclasses.fields(obj)]
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        children = list(vars(obj).values())
    else:
        return
    for child in children:
        yield from _walk(child, seen, depth + 1)


def _same_values(t: torch.Tensor, secret: torch.Tensor) -> bool:
    return t.numel() == secret.numel() and t.numel() > 0 and torch.equal(
        t.detach().flatten().to(secret.dtype).cpu(), secret.flatten().cpu())


def _assert_unreachable(sc: Scenario, obs, rnd, *, labels: bool, client: bool, bn: bool) -> None:
    reachable = list(_walk(obs)) + list(_walk(sc.attack))
    ids = {id(o) for o in reachable}
    tensors = [o for o in reachable if isinstance(o, torch.Tensor)]
    ints = {o for o in reachable if isinstance(o, int) and not isinstance(o, bool)}
    for img in sc.images:  # by identity and by value
        assert id(img) not in ids and id(sc.images) not in ids
        assert not any(_same_values(t, img) for t in tensors), "a victim image is reachable"
    assert (id(sc.labels) in ids) is False, "the victim's own label tensor object is reachable"
    if not labels:
        assert obs.labels is None
        assert not any(t.dtype == torch.long and _same_values(t, sc.labels) for t in tensors)
    if not client:
        assert obs.client is None
    if not bn:
        assert obs.bn_statistics is None
        for mean, var in rnd.bn_statistics:
            assert not any(_same_values(t, mean) or _same_values(t, var) for t in tensors)
    # The client's, defense's and victim selection's random state is not reachable either.
    for secret in (sc.seeds.client, sc.seeds.defense, sc.seeds.victim):
        assert secret not in ints, f"seed {secret} is reachable"
    assert not any(isinstance(o, torch.Generator) for o in reachable)


@pytest.mark.parametrize("protocol, model", [("fedsgd", MLP), ("fedavg", MLP),
                                             ("fedsgd", BN_CONV), ("fedavg", BN_CONV)])
@pytest.mark.parametrize("labels, client, bn", list(itertools.product([False, True], repeat=3)))
def test_no_ground_truth_or_private_state_reaches_the_attacker(protocol, model, labels, client, bn):
    cfg = load_config(None, [*TINY, *model, "data.num_samples=2", f"client.protocol={protocol}",
                             "client.local_epochs=2", "client.batch_size=1", "attack.labels=idlg",
                             "defense.name=gaussian", f"threat.knows_labels={labels}",
                             f"threat.knows_client_config={client}",
                             f"threat.knows_bn_statistics={bn}", "seed=3"])
    sc = Scenario.from_config(cfg)
    before = {k: v.clone() for k, v in sc.model.state_dict().items()}
    rnd = sc.client_round()
    assert all(torch.equal(before[k], v) for k, v in sc.model.state_dict().items()), \
        "the client's training changed the server's global model (e.g. BN running stats)"
    obs = sc.observe(sc.defend(rnd.update), bn_statistics=rnd.bn_statistics)
    assert not hasattr(obs.update, "bn_statistics")
    if bn and model is BN_CONV:
        assert obs.bn_statistics and obs.bn_statistics[0][0] is not rnd.bn_statistics[0][0]
    _assert_unreachable(sc, obs, rnd, labels=labels, client=client, bn=bn)


MODEL_NEEDS = {"precode-analytic": ["model.precode=true"],  # attacks made for a model switch
               "mix-decode": ["client.mix=mixup", "client.mix_k=1", "client.mix_upper=1",
                              "threat.knows_mixing=true"]}  # or for a training change


@pytest.mark.parametrize("name", ATTACKS.names())
def test_every_attack_family_sees_no_ground_truth(name, tmp_path):
    grants = ["threat.knows_labels=true", "threat.knows_data_distribution=true",
              "threat.knows_bn_statistics=true", "threat.malicious=true"]
    setup = [*TINY, *MLP] if ATTACKS.get(name).info.modality == "image" else TEXT
    setup += MODEL_NEEDS.get(name, [])
    cfg = load_config(None, [*setup, "data.num_samples=1", f"attack.name={name}", *grants])
    sc = Scenario.from_config(cfg)
    rnd = sc.client_round()
    obs = sc.observe(sc.defend(rnd.update), bn_statistics=rnd.bn_statistics, mixing=rnd.mixing)
    _assert_unreachable(sc, obs, rnd, labels=True, client=False, bn=True)


def test_seed_streams_are_independent_and_reproducible():
    a, b = SeedStreams.from_seed(0), SeedStreams.from_seed(0)
    assert a == b
    values = dataclasses.astuple(a)
    assert len(set(values)) == 5 and 0 not in values and 1 not in values
    assert SeedStreams.from_seed(1) != a


def test_attack_cannot_regenerate_the_defense_noise():
    # The defense's noise comes from its own stream: regenerating it from the scenario seed
    # (what an attacker given that seed would try) does not cancel it.
    cfg = load_config(None, [*TINY, *MLP, "defense.name=gaussian", "defense.noise_multiplier=1",
                             "seed=0"])
    sc = Scenario.from_config(cfg)
    raw = sc.client_round().update
    shared = sc.defend(raw)
    for guess_seed in (cfg.seed, cfg.seed + 1, sc.seeds.attack):
        guess = sc.defense(raw, generator=torch.Generator().manual_seed(guess_seed))
        assert not all(torch.equal(guess.tensors[k], shared.tensors[k]) for k in raw.tensors)


def test_user_module_and_dataset():
    torch.manual_seed(0)
    data = TensorImageDataset("mine", torch.rand(6, 3, 16, 16), torch.tensor([0, 1, 2, 0, 1, 2]),
                              ("a", "b", "c"))
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 8), nn.ReLU(), nn.Linear(8, 3))
    cfg = load_config(None, [*TINY, "data.num_samples=1", "attack.iterations=5"])
    sc = Scenario.from_config(cfg, model=model, data=data)
    assert sc.model.net is model and sc.dataset is data  # normalised in front (model.normalize)
    torch.testing.assert_close(sc.model.input_mean.flatten(), torch.tensor(data.mean))
    run = sc.run()
    assert run.result["scenario"]["dataset"] == "mine"
    assert run.result["config"]["model"]["name"] == "instance:Sequential"
    assert run.result["scenario"]["model_parameters"] == sum(p.numel() for p in model.parameters())
    assert set(run.result["metrics"]) >= {"psnr", "lpips", "brr"}


def test_steps_compose_to_run():
    cfg = load_config(None, [*TINY, *MLP, "attack.iterations=8"])
    whole = Scenario.from_config(cfg).run()
    sc = Scenario.from_config(cfg)
    rnd = sc.client_round()
    score = sc.score(sc.reconstruct(sc.observe(sc.defend(rnd.update),
                                               bn_statistics=rnd.bn_statistics)))
    assert score.metrics() == whole.result["metrics"]
    assert whole.result["seed_streams"] == dataclasses.asdict(sc.seeds)
