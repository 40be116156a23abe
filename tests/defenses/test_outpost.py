"""Outpost (Wang et al., INFOCOM 2023; Plato's example): its perturbation probability decays over
rounds as 1 / (1 + beta * t), it prunes each tensor's smallest prune-percent entries and adds
risk-scaled noise only where the Fisher information is in the top phi percent."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradleak.attacks.adaptive import build_transform
from gradleak.config import DefenseConfig
from gradleak.defenses import apply_defense, build_defense
from gradleak.defenses.outpost import outpost, perturb_probability
from gradleak.errors import GradleakError
from gradleak.update import SharedUpdate


def _setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 10), nn.Linear(10, 5))
    g = torch.Generator().manual_seed(1)
    tensors = {n: torch.randn(p.shape, generator=g) for n, p in model.named_parameters()}
    return model, SharedUpdate("gradient", tensors, 1)


def _perturbed(update: SharedUpdate, out: SharedUpdate) -> bool:
    return any(not torch.equal(update.tensors[n], out.tensors[n]) for n in update.tensors)


def test_perturbation_probability_decays_over_rounds():
    model, update = _setup()
    defense = build_defense(DefenseConfig(name="outpost"))
    rates = []
    for round_ in (1, 8, 40):
        hits = sum(_perturbed(update, apply_defense(defense, update, model=model, round_=round_,
                                                    generator=torch.Generator().manual_seed(s)))
                   for s in range(300))
        rates.append(hits / 300)
    expected = [perturb_probability(0.125, t) for t in (1, 8, 40)]  # 0.889, 0.5, 0.167
    assert rates[0] > rates[1] > rates[2]
    for got, want in zip(rates, expected, strict=True):
        assert abs(got - want) < 0.08, (rates, expected)


def test_prunes_the_stated_share_and_noises_only_high_fisher_entries():
    model, update = _setup()
    always = {"outpost_beta": 0.0, "model": model}  # probability 1
    # No noise (outpost_noise=0; phi=0 still noises the top entry, as Plato's `fim < thresh` does).
    pruned = outpost(update, generator=torch.Generator().manual_seed(0), outpost_noise=0.0, **always)
    for n, t in update.tensors.items():
        zero = pruned.tensors[n] == 0
        assert int(zero.sum()) == int((t.abs() < torch.quantile(t.abs().flatten(), 0.8)).sum())
        assert torch.equal(pruned.tensors[n][~zero], t[~zero])  # the rest unchanged
        assert abs(zero.float().mean().item() - 0.8) <= 1 / t.numel() + 1e-6
    noised = outpost(update, generator=torch.Generator().manual_seed(0), outpost_prune=0.0,
                     outpost_phi=40.0, **always)
    fim = {n: t.pow(2).mean(0) for n, t in update.tensors.items()}
    tau = torch.quantile(torch.cat([f.flatten() for f in fim.values()]).double(), 0.6)
    changed = total = 0
    for n, t in update.tensors.items():
        high = (fim[n].double() >= tau).expand(t.shape)
        diff = noised.tensors[n] - t
        assert bool((diff[~high] == 0).all()) and bool((diff[high] != 0).all()), n
        changed, total = changed + int(high.sum()), total + t.numel()
    assert 0.2 < changed / total < 0.8  # broadcast over rows, so not exactly 40 % of entries
    # Noise std = 0.8 * min(var(W), 1): the first weight's risk.
    w = model[0].weight
    assert w.var().item() < 1
    diff = (noised.tensors["0.weight"] - update.tensors["0.weight"])
    std = diff[diff != 0].std().item()
    assert 0.5 * 0.8 * w.var().item() < std < 1.5 * 0.8 * w.var().item()


def test_refuses_without_the_model_and_surrogate_masks_observed_zeros():
    _, update = _setup()
    with pytest.raises(GradleakError, match="training-time defense"):
        outpost(update, generator=torch.Generator())
    with pytest.raises(GradleakError, match="defense.outpost_phi: must be a percentage"):
        outpost(update, model=nn.Linear(1, 1), outpost_phi=120.0)
    observed = [torch.tensor([0.0, 2.0, 0.0])]
    out = build_transform("outpost", {}, observed)([torch.tensor([1.0, 1.0, 1.0])])
    assert out[0].tolist() == [0.0, 1.0, 0.0]
