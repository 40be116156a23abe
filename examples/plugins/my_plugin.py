"""A gradleak plug-in: one attack, one defense, one model and one dataset of your own.

Use it with ``gradleak --plugin examples/plugins/my_plugin.py ...`` (or GRADLEAK_PLUGINS); see
docs/extending.md. Every name registered here becomes a valid config value.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from gradleak.attack_settings import AttackSettings
from gradleak.attacks import register_attack
from gradleak.attacks.base import Attack, AttackInfo, Observation, Reconstruction
from gradleak.attacks.labels import infer_labels
from gradleak.config import DataConfig, ModelConfig
from gradleak.config_values import option
from gradleak.data import register_dataset
from gradleak.data.base import TensorImageDataset
from gradleak.defenses import map_tensors, register_defense
from gradleak.errors import GradleakError
from gradleak.models import register_model
from gradleak.threat import Knowledge
from gradleak.update import SharedUpdate


@dataclass
class FlatGuessSettings(AttackSettings):
    """The attack's own ``attack.*`` keys (beside the shared ``name``, ``labels``, ``adaptive``):
    usable as ``attack.level=0.25`` on the command line, in YAML files and in sweeps."""

    level: float = option(0.5, minimum=0.0, help="flat_guess: the grey level guessed, in [0, 1]")

    def check(self) -> None:  # run on every construction: config resolution and FlatGuess(...)
        super().check()  # each key's type, choices and minimum
        if not 0.0 <= self.level <= 1.0:
            raise GradleakError(f"bad value {self.level} for attack.level: a grey level in [0, 1]")


# Presets are data: flat_guess.yaml beside this file sets attack.labels=llg for this attack.
@register_attack("flat_guess", settings=FlatGuessSettings,
                 preset=Path(__file__).with_name("flat_guess.yaml"))
class FlatGuess(Attack):
    """The null baseline: guess a flat image of one grey level for every sample.

    It reads nothing from the update but the number of samples (and infers labels with iDLG /
    LLG), so its scores tell what a reconstruction must beat to show any leakage.
    Output: ``[N, C, H, W]`` images at ``level``. Its settings are ``self.config`` (a
    ``FlatGuessSettings``; ``self.level`` reads the same value): ``FlatGuess(level=0.25)`` in
    Python starts from the preset file, like ``attack.name=flat_guess`` on the command line.
    """

    name = "flat_guess"
    info = AttackInfo(paper="baseline (no paper)", strategy="GIA-O")
    requires = frozenset({Knowledge.BASIC})
    config: FlatGuessSettings

    def needs(self) -> frozenset[Knowledge]:
        known = self.config.labels == "known"
        return self.requires | {Knowledge.LABELS} if known else self.requires

    def run(self, obs: Observation, *, seed: int, progress: bool) -> Reconstruction:
        n, rule = obs.num_samples, self.config.labels
        images = torch.full((n, *obs.input_shape), self.config.level)
        labels = (obs.labels.tolist() if obs.labels is not None else
                  infer_labels(rule, obs.model, obs.update.gradient_direction(), n,
                               input_shape=obs.input_shape, seed=seed))
        return Reconstruction(images, images[None], [0.0], [int(c) for c in labels], 0,
                              "known" if obs.labels is not None else rule)


@register_defense("round_to_bound")
def round_to_bound(update: SharedUpdate, *, generator: torch.Generator | None = None,
                   bound: float = 0.1) -> SharedUpdate:
    """Deterministic uniform quantisation: every float entry rounded to a multiple of ``bound``
    (``defense.bound``); integer buffers pass unchanged."""

    def rounded(v: torch.Tensor) -> torch.Tensor:
        return torch.round(v / bound) * bound if v.is_floating_point() else v

    return map_tensors(update, rounded)


@register_model("tiny_cnn")
def tiny_cnn(cfg: ModelConfig, *, num_classes: int, channels: int, resolution: int) -> nn.Module:
    """Two 3x3 convolutions (``model.width`` channels) and a linear head."""
    w = cfg.width
    return nn.Sequential(nn.Conv2d(channels, w, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(w, w, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(w * resolution * resolution, num_classes))


@register_dataset("stripes")
def stripes(cfg: DataConfig) -> TensorImageDataset:
    """Synthetic stripes: class c has stripes of period c + 2 at a seeded random phase."""
    r, per_class, classes = cfg.resolution, 16, 4
    g = torch.Generator().manual_seed(0 if cfg.split == "train" else 1)
    images, labels = [], []
    for c in range(classes):
        for _ in range(per_class):
            phase = torch.rand(1, generator=g) * 6.3
            wave = torch.sin(torch.arange(r) * 6.283 / (c + 2) + phase) * 0.5 + 0.5
            colour = torch.rand(3, 1, 1, generator=g)
            images.append(colour * wave.expand(r, r)[None])
            labels.append(c)
    return TensorImageDataset("stripes", torch.stack(images), torch.tensor(labels),
                              tuple(f"period {c + 2}" for c in range(classes)))
