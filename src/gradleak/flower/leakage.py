"""The attack and scoring steps the guard and the audit share, on the Scenario API.

A Flower app brings its own model (``model_fn`` building the ``nn.Module`` whose ``state_dict``
keys are the ArrayRecord keys) and, on the client, its own samples. :func:`scenario_for` puts them
into a :class:`~gradleak.scenario.Scenario`; the attack then sees what the configured threat model
grants of the update (``Scenario.observe``) and nothing else.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord
from torch import nn

from gradleak.attacks import build_attack
from gradleak.attacks.base import Reconstruction
from gradleak.config import Config, flatten, load_config, parse_override, unflatten
from gradleak.data.base import TensorImageDataset
from gradleak.errors import GradleakError
from gradleak.fl.client import SharedUpdate
from gradleak.flower.arrays import to_tensors
from gradleak.metrics import METRICS
from gradleak.models.base import Classifier
from gradleak.models.user import prepare_user_model
from gradleak.scenario import Scenario, Score
from gradleak.threat import Knowledge, ThreatModel

ConfigSpec = Mapping[str, Any] | Sequence[str] | None


def probe_config(attack: str, budget: int | None, config: ConfigSpec, *,
                 base: dict[str, Any] | None = None) -> Config:
    """The gradleak config of a guard or audit: ``base`` defaults, then ``attack``/``budget``
    (= ``attack.iterations``), then the user's ``config``: sections as a mapping
    (``{"threat": {"knows_labels": True}}``) or ``"key=value"`` overrides. Validated up front."""
    items = flatten({k: dict(v) for k, v in (base or {}).items()})
    items.append(("attack.name", attack))
    if budget is not None:
        items.append(("attack.iterations", budget))
    if isinstance(config, Mapping):
        items += flatten(dict(config))
    elif config is not None:
        if isinstance(config, str):
            raise GradleakError(f"bad config {config!r}: a mapping of sections or a list of key=value")
        items += [parse_override(item) for item in config]
    cfg = load_config(base=unflatten(items))
    threat = ThreatModel.from_config(cfg.threat)
    if threat.grants(Knowledge.MALICIOUS):
        raise GradleakError("threat.malicious=true: the Flower guard and audit model a passive "
                            "(honest-but-curious) server that sends the global model unchanged")
    # Unknown attacks and attacks needing ungranted knowledge are refused now, not in round 1.
    threat.require(build_attack(cfg.attack).needs(), who=f"attack {cfg.attack.name!r}")
    return cfg


@contextmanager
def private_rng():
    """Run without disturbing the app's global random state (Scenario seeds the global RNGs)."""
    py, npy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


@dataclass
class GlobalModel:
    """The model the server sent: ``module`` (a :class:`Classifier`) takes images in [0, 1];
    ``prefix`` maps an ArrayRecord key to its parameter name in ``module`` (``"net."`` when the
    app's module was wrapped: with ``mean``/``std`` as its input normalisation, else raw pixels)."""

    module: nn.Module
    prefix: str

    @classmethod
    def load(cls, model_fn: Callable[[], nn.Module], arrays: ArrayRecord, *,
             mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> GlobalModel:
        with private_rng():  # building the app's model must not move the app's random state
            net = model_fn()
        try:
            net.load_state_dict(to_tensors(arrays))
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise GradleakError(f"the arrays do not fit model_fn's model: {first}") from None
        if isinstance(net, Classifier):  # a gradleak model: it normalises its inputs itself
            if mean is not None or std is not None:
                raise GradleakError("model_fn builds a gradleak Classifier, which normalises its "
                                    "inputs itself: drop mean/std")
            return cls(net, "")
        if (mean is None) != (std is None):
            raise GradleakError("give both mean and std (the input normalisation), or neither")
        # Wrapped here, so the Scenario receives a model on [0, 1] pixels and keeps it as it is.
        wrapped = prepare_user_model(net, mean=mean, std=std, normalize=mean is not None)
        return cls(wrapped, "net.")

    def parameter_update(self, update: SharedUpdate) -> SharedUpdate:
        """The update restricted to the model's trainable parameters, keyed by parameter name
        (buffers such as BN running statistics and counters are dropped)."""
        names = [n for n, p in self.module.named_parameters() if p.requires_grad]
        tensors = {self.prefix + k: t for k, t in update.tensors.items()}
        missing = [n for n in names if n not in tensors]
        if missing:
            raise GradleakError(f"the update has no array for model parameter {missing[0]!r}")
        return update.replace({n: tensors[n].float() for n in names})

    def num_classes(self, input_shape: Sequence[int]) -> int:
        was_training = self.module.training
        self.module.eval()
        with torch.no_grad():
            width = self.module(torch.zeros(1, *input_shape)).shape[-1]
        self.module.train(was_training)
        return int(width)


def scenario_for(cfg: Config, model: GlobalModel, images: torch.Tensor, labels: torch.Tensor,
                 *, num_classes: int | None = None) -> Scenario:
    """A Scenario on the app's model and the given samples ``images [N, C, H, W]`` in [0, 1]."""
    num_classes = num_classes or model.num_classes(images.shape[1:])
    dataset = TensorImageDataset("flower-client", images, labels,
                                 tuple(str(c) for c in range(num_classes)))
    return Scenario.from_config(cfg, model=model.module, data=dataset, victim=(images, labels))


@dataclass
class Measurement:
    """One attack on one update: the reconstruction, and its score when the truth is known.

    ``leak_rate``: the BRR (share of samples with PSNR >= and LPIPS <= the thresholds), or, when
    LPIPS cannot be computed, the share with PSNR >= its threshold (``criterion`` says which)."""

    recon: Reconstruction
    score: Score | None
    leak_rate: float | None
    criterion: str | None
    seconds: float

    @property
    def loss(self) -> float:
        return float(self.recon.losses[0]) if self.recon.losses else float("nan")


def attack_update(cfg: Config, model: GlobalModel, update: SharedUpdate, *,
                  input_shape: Sequence[int], truth: tuple[torch.Tensor, torch.Tensor] | None,
                  num_classes: int | None = None) -> Measurement:
    """Reconstruct ``update`` as the configured server would; score it if ``truth`` is given.

    Without the truth, the samples are unknown: the Scenario gets zero images of the data
    dimension (basic server knowledge) as shape carriers, and labels are never passed on (the
    caller refuses ``threat.knows_labels`` without a truth)."""
    started = time.perf_counter()
    shared = model.parameter_update(update)
    n = shared.num_samples
    if truth is None:
        images, labels = torch.zeros(n, *input_shape), torch.zeros(n, dtype=torch.long)
    else:
        images, labels = truth[0].float().cpu(), truth[1].long().cpu()
        if images.shape[0] != n:
            raise GradleakError(f"the ground truth holds {images.shape[0]} samples but the update "
                                f"declares num-examples={n}")
    with private_rng():
        sc = scenario_for(cfg, model, images, labels, num_classes=num_classes)
        obs = sc.observe(shared, labels=labels)
        recon = sc.reconstruct(obs)
        score = None if truth is None else sc.score(recon, images=images, labels=labels)
    rate, criterion = leak_rate(score, cfg) if score is not None else (None, None)
    return Measurement(recon, score, rate, criterion, time.perf_counter() - started)


def leak_rate(score: Score, cfg: Config) -> tuple[float, str]:
    if score.brr is not None:
        return float(score.brr), "brr"
    psnrs = score.per_sample["psnr"]
    hits = sum(METRICS["psnr"].passes(p, cfg.metrics.psnr_threshold) for p in psnrs)
    return hits / max(1, len(psnrs)), "psnr"
