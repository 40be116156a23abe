"""The attack and scoring steps the guard and the audit share, on the Scenario API.

A Flower app brings its own model (``model_fn`` building the ``nn.Module`` whose ``state_dict``
keys are the ArrayRecord keys) and, on the client, its own samples. :func:`scenario_for` puts them
into a :class:`~gradleak.scenario.Scenario`; the attack then sees what the configured threat model
grants of the update (``Scenario.observe``) and nothing else, plus the BN batch statistics the
reply's buffers reveal (:mod:`gradleak.flower.bn`): the server holds those, so they are granted
(level 4) and feed the attack's BN prior. Whether a sample leaked is decided once, by the project's
criterion: the ``leaked`` flags of the :class:`~gradleak.scenario.Score` (``gradleak.metrics.score``).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from logging import WARNING
from typing import Any

import torch
from flwr.app import ArrayRecord
from flwr.common import log
from torch import nn

from gradleak.attack_settings import settings_for
from gradleak.attacks import build_attack
from gradleak.attacks.base import Reconstruction
from gradleak.config import Config, flatten, load_config, parse_override, set_key, unflatten
from gradleak.data.base import TensorImageDataset
from gradleak.errors import GradleakError
from gradleak.fl.client import ClientSetup
from gradleak.flower.arrays import private_rng, to_tensors  # noqa: F401 (re-exported)
from gradleak.flower.bn import BNStatistics, reply_bn_statistics
from gradleak.flower.text import load_arrays as load_text_arrays
from gradleak.flower.text import placeholder_batch, text_scenario
from gradleak.models.base import Classifier
from gradleak.models.text import is_text_model
from gradleak.models.user import prepare_user_model
from gradleak.scenario import Scenario, Score
from gradleak.threat import Knowledge, ThreatModel
from gradleak.update import SharedUpdate

ConfigSpec = Mapping[str, Any] | Sequence[str] | None
DEFAULT_BN_PRIOR = 0.1  # GradInversion's BN-prior weight (its attack preset; configs/audit_ladder)
LEAK_CRITERION = "leaked"  # Score.per_sample["leaked"], the project's one leak criterion


def configured_keys(config: ConfigSpec) -> set[str]:
    """The dotted keys the user's ``config`` sets (to tell a chosen value from a default)."""
    if isinstance(config, Mapping):
        return {k for k, _ in flatten(dict(config))}
    return {parse_override(item)[0] for item in config or ()}


def with_bn_statistics(cfg: Config, *, explicit_weight: bool) -> tuple[Config, float]:
    """``cfg`` for a reply whose BN buffers gave the client's batch statistics: level 4 granted
    (``threat.knows_bn_statistics``), the attack's BN prior on (weight ``attack.bn``, or
    :data:`DEFAULT_BN_PRIOR` unless the user set it) and ``client.bn_mode=train`` unless set (moving
    running statistics show the client trained BN in train mode). Returns it and the prior weight
    on the client's statistics (0: the attack has no BN prior, or ``attack.bn_source=running``)."""
    cfg = copy.deepcopy(cfg)
    set_key(cfg, "threat.knows_bn_statistics", True)
    if cfg.client.bn_mode == "auto":
        set_key(cfg, "client.bn_mode", "train")
    if "bn" not in settings_for(cfg.attack.name).names():
        return cfg, 0.0
    if not explicit_weight and cfg.attack.bn == 0:
        set_key(cfg, "attack.bn", DEFAULT_BN_PRIOR)
    return cfg, float(cfg.attack.bn) if cfg.attack.bn_source == "client" else 0.0


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
        if is_text_model(net):  # a TextModel: token ids in, the arrays may be a trainable subset
            if mean is not None or std is not None:
                raise GradleakError("model_fn builds a text model: mean/std are image settings")
            load_text_arrays(net, arrays)
            return cls(net, "")
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

    def trainable_keys(self) -> frozenset[str]:
        """The record keys of the model's trainable parameters."""
        return frozenset(n[len(self.prefix):] for n, p in self.module.named_parameters()
                         if p.requires_grad and n.startswith(self.prefix))

    def bn_statistics(self, cfg: Config, incoming: ArrayRecord, outgoing: ArrayRecord, *,
                      num_samples: int, input_shape: Sequence[int]) -> BNStatistics | None:
        """The client's BN batch statistics the reply ``outgoing`` reveals (``None``: no BN)."""
        setup = ClientSetup.from_config(cfg.client, num_samples=num_samples)
        return reply_bn_statistics(self.module, self.prefix, incoming, outgoing,
                                   input_shape=input_shape, batch_size=setup.batch_size,
                                   steps_hint=setup.local_updates)

    def num_classes(self, input_shape: Sequence[int]) -> int:
        if is_text_model(self.module):
            return self.module.num_classes
        was_training = self.module.training
        self.module.eval()
        with torch.no_grad():
            width = self.module(torch.zeros(1, *input_shape)).shape[-1]
        self.module.train(was_training)
        return int(width)


def scenario_for(cfg: Config, model: GlobalModel, images: torch.Tensor, labels: torch.Tensor,
                 *, num_classes: int | None = None, reference: Sequence[str] | None = None,
                 known: bool = True) -> Scenario:
    """A Scenario on the app's model and the given samples ``images [N, C, H, W]`` in [0, 1]
    (a text model: token batches ``[N, 2, L]``, ``reference`` the server's public sentences,
    ``known`` whether the samples are real or placeholders)."""
    if is_text_model(model.module):
        return text_scenario(cfg, model.module, images, labels, reference=reference, known=known)
    num_classes = num_classes or model.num_classes(images.shape[1:])
    dataset = TensorImageDataset("flower-client", images, labels,
                                 tuple(str(c) for c in range(num_classes)))
    return Scenario.from_config(cfg, model=model.module, data=dataset, victim=(images, labels))


@dataclass
class Measurement:
    """One attack on one update: the reconstruction, and its score when the truth is known.

    ``leak_rate``: the share of samples the Score flags as leaked (``per_sample["leaked"]``, the
    project's criterion; ``criterion`` = ``"leaked"``), ``None`` without a truth or when the flags
    cannot be computed (no LPIPS weights). ``bn``: the BN statistics read off the reply (``None``
    for a model without BN); ``bn_prior``: the BN-prior weight the attack put on them (0: unused)."""

    recon: Reconstruction
    score: Score | None
    leak_rate: float | None
    criterion: str | None
    seconds: float
    bn: BNStatistics | None = None
    bn_prior: float = 0.0

    @property
    def loss(self) -> float:
        return float(self.recon.losses[0]) if self.recon.losses else float("nan")

    @property
    def bn_used(self) -> bool:
        """Whether the attack used the client's BN statistics from the reply."""
        return self.bn is not None and self.bn.granted and self.bn_prior > 0


def attack_update(cfg: Config, model: GlobalModel, update: SharedUpdate, *,
                  input_shape: Sequence[int], truth: tuple[torch.Tensor, torch.Tensor] | None,
                  num_classes: int | None = None, bn: BNStatistics | None = None,
                  bn_cfg: tuple[Config, float] | None = None,
                  reference: Sequence[str] | None = None) -> Measurement:
    """Reconstruct ``update`` as the configured server would; score it if ``truth`` is given.

    Without the truth, the samples are unknown: the Scenario gets zero images of the data
    dimension (basic server knowledge) as shape carriers, and labels are never passed on (the
    caller refuses ``threat.knows_labels`` without a truth). ``bn``: the BN statistics the reply
    revealed; when granted, the attack runs with ``bn_cfg`` (:func:`with_bn_statistics`) and them.
    A text model: ``input_shape`` is ``(2, L)``, ``truth`` token batches, ``reference`` the
    server's public sentences for the leak criterion's baseline (:mod:`gradleak.flower.text`)."""
    started = time.perf_counter()
    stats, weight = None, 0.0
    if bn is not None and bn.granted and bn_cfg is not None:
        (cfg, weight), stats = bn_cfg, bn.statistics
    shared = model.parameter_update(update)
    n = shared.num_samples
    text = is_text_model(model.module)
    if truth is None:
        images = placeholder_batch(n, input_shape) if text else torch.zeros(n, *input_shape)
        labels = torch.zeros(n, dtype=torch.long)
    else:
        images, labels = truth[0].cpu(), truth[1].long().cpu()
        images = images.long() if text else images.float()
        if images.shape[0] != n:
            raise GradleakError(f"the ground truth holds {images.shape[0]} samples but the update "
                                f"declares num-examples={n}")
    with private_rng():
        sc = scenario_for(cfg, model, images, labels, num_classes=num_classes,
                          reference=reference, known=truth is not None)
        obs = sc.observe(shared, labels=labels, bn_statistics=stats)
        recon = sc.reconstruct(obs)
        score = None if truth is None else sc.score(recon, images=images, labels=labels)
    rate, criterion = leak_rate(score) if score is not None else (None, None)
    if score is not None and rate is None:
        why = "; ".join(score.warnings) or "the score has no per-sample leaked flags"
        log(WARNING, "gradleak: no leak rate (the project's leak criterion needs LPIPS): %s", why)
    return Measurement(recon, score, rate, criterion, time.perf_counter() - started, bn=bn,
                       bn_prior=weight if stats is not None else 0.0)


def leak_rate(score: Score, cfg: Config | None = None) -> tuple[float | None, str | None]:
    """The share of samples ``score`` flags as leaked (``per_sample["leaked"]``, set by
    ``gradleak.metrics.score`` with the project's one criterion) and the criterion's name;
    ``(None, None)`` when there are no flags (LPIPS unavailable). ``cfg`` is not used (kept for
    callers of the former signature): the thresholds live in the Score."""
    flags = score.per_sample.get("leaked")
    if flags is None:
        return None, None
    return sum(bool(f) for f in flags) / max(1, len(flags)), LEAK_CRITERION
