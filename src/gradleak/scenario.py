"""One scenario end to end, built once: data -> model -> client -> defense -> attack -> metrics.

:class:`Scenario` owns everything a run needs (the breaching ``construct_case`` idea, done once):
the dataset and the victim's samples, the global model, the client's setup, the threat model, the
attack and the defense. It is built from a :class:`~gradleak.config.Config` or from the user's own
objects (``model=`` an ``nn.Module``, ``data=`` a dataset), and exposes the pipeline's steps one by
one so that every command, experiment kind, analysis and integration calls the same code::

    sc = Scenario.from_config(cfg)                  # or Scenario.from_config(cfg, model=m, data=d)
    rnd = sc.client_round()                         # ClientRound: SharedUpdate + BN statistics
    obs = sc.observe(sc.defend(rnd.update), bn_statistics=rnd.bn_statistics)
    score = sc.score(sc.reconstruct(obs))           # Score: psnr, ssim, lpips, brr, wsrr, ...

or ``sc.run()`` for all of it. The threat check happens once, when the scenario is built.
Randomness comes from independent streams derived from ``cfg.seed`` (:class:`SeedStreams`): the
victim selection, the client's local training, the defense's noise and the attack's
initialisation never share a generator, and the attack only ever sees its own seed.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from gradleak import metrics
from gradleak import scenario_text as text_steps
from gradleak.attacks import build_attack, observe
from gradleak.attacks.base import Attack, Observation, Reconstruction
from gradleak.attacks.overlap import generator_overlap
from gradleak.config import Config
from gradleak.data import DATASETS, build_dataset, describe_dataset, from_torch_dataset
from gradleak.data.base import ImageDataset, with_channels
from gradleak.data.sampling import select_victim_samples
from gradleak.defenses import apply_defense, build_defense, defense_details
from gradleak.errors import GradleakError
from gradleak.fl.client import ClientRound, ClientSetup, client_round
from gradleak.fl.dp import dp_client_round, dp_settings
from gradleak.metrics.baselines import reference_pool
from gradleak.models import (
    MODELS,
    Classifier,
    build_model,
    count_parameters,
    is_user_model,
    recorded_model_config,
    unknown_model_message,
)
from gradleak.models.text import is_text_model
from gradleak.models.user import check_finite, prepare_user_model
from gradleak.provenance import git_commit, seed_everything, versions
from gradleak.scenario_text import TextScore
from gradleak.threat import ThreatModel
from gradleak.update import SharedUpdate


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N``; one-line error when unknown or unavailable."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise GradleakError(f"bad value {name!r} for device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GradleakError(f"bad value {name!r} for device: CUDA is not available here; use cpu")
    return device


STREAMS = ("victim", "client", "defense", "attack", "baseline")


@dataclass(frozen=True)
class SeedStreams:
    """Independent seeds for the parties of one scenario, derived from the scenario seed with
    ``numpy.random.SeedSequence(seed).spawn``: knowing one stream's seed tells nothing about the
    others, so the attack (given only ``attack``) cannot regenerate the client's shuffling, the
    defense's noise or the victim selection."""

    victim: int
    client: int
    defense: int
    attack: int
    baseline: int  # the metrics' reference pool (never seen by the attack)

    @classmethod
    def from_seed(cls, seed: int) -> SeedStreams:
        children = np.random.SeedSequence(int(seed)).spawn(len(STREAMS))
        return cls(*(int(c.generate_state(1, dtype=np.uint32)[0]) for c in children))


@dataclass
class Score:
    """An attack's reconstruction scored against the ground truth (after optimal matching).

    Batch means ``mse``/``psnr``/``ssim``/``lpips`` of the best initialisation; ``brr``/``wsrr``
    the paper's leakage rates (App. C); ``None`` with a reason in ``warnings`` when a metric cannot
    be computed. ``matched``: the reconstruction reordered to the truth's order ``[N, C, H, W]``.
    """

    mse: float
    psnr: float
    ssim: float
    lpips: float | None
    brr: float | None
    wsrr: float | None
    label_accuracy: float | None
    per_sample: dict[str, list]
    thresholds: dict[str, float]
    wsrr_initializations: int
    matching: list[int]
    matched: torch.Tensor
    warnings: list[str] = field(default_factory=list)
    baselines: dict[str, Any] = field(default_factory=dict)  # update-free baselines' scores

    def metrics(self) -> dict[str, Any]:
        """The ``metrics`` block of ``result.json``."""
        return {"mse": self.mse, "psnr": self.psnr, "ssim": self.ssim, "lpips": self.lpips,
                "label_accuracy": self.label_accuracy, "brr": self.brr, "wsrr": self.wsrr}


@dataclass
class RunOutput:
    """A finished run: the JSON-ready ``result``, the victim's images and the reconstruction."""

    result: dict[str, Any]
    truth: torch.Tensor
    reconstruction: Reconstruction
    matched: torch.Tensor  # reconstruction reordered to the ground truth's order
    update: SharedUpdate  # what the client shared, after the defense
    client_update: SharedUpdate | None = None  # the client's update before the defense


def as_image_dataset(data: Dataset) -> ImageDataset:
    """A user's dataset as an :class:`ImageDataset` (``(image [C, H, W] in [0, 1], label)`` items)."""
    return data if isinstance(data, ImageDataset) else from_torch_dataset(data)


def _threat_and_attack(cfg: Config) -> tuple[ThreatModel, Attack]:
    """The threat model and the attack; refuses (one line) an attack needing more than the
    scenario grants, before any expensive work."""
    threat = ThreatModel.from_config(cfg.threat)
    attack = build_attack(cfg.attack)
    threat.require(attack.needs(), who=f"attack {cfg.attack.name!r}")
    return threat, attack


def preflight(cfg: Config, *, data: bool = False) -> None:
    """Check what :meth:`Scenario.from_config` would refuse, without its work: the attack's name
    and settings, the knowledge it needs against the threat model's grants, the defense, the
    model (a registered name, or the user's file exists) and the dataset name. ``data=True``
    also loads the dataset once (its files must exist; skipped with ``data.download=true``,
    where the run fetches them). Sweeps call this for every run before launching any."""
    _, attack = _threat_and_attack(cfg)
    build_defense(cfg.defense)
    if text_steps.check_attack_model(cfg, text_steps.modality_of(attack)):
        pass  # a text model: built (and its files checked) with the scenario
    elif not is_user_model(cfg.model.name) and cfg.model.name not in MODELS:
        raise GradleakError(unknown_model_message(cfg.model.name))
    elif (file := cfg.model.name.rpartition(":")[0]).endswith(".py") and not Path(file).is_file():
        raise GradleakError(f"model.name={cfg.model.name}: file {file!r} does not exist")
    DATASETS.get(cfg.data.dataset)
    if data and not cfg.data.download:
        build_dataset(cfg.data)


def _image_model(cfg: Config, dataset: ImageDataset,
                 model: nn.Module | None) -> tuple[nn.Module, str | None]:
    """The global image model: ``cfg.model``'s, or the user's module with its input statistics
    (then also its record name ``instance:<class>``)."""
    if model is None:
        return build_model(cfg.model, num_classes=dataset.num_classes, channels=dataset.channels,
                           resolution=dataset.resolution, mean=dataset.mean, std=dataset.std), None
    if isinstance(model, Classifier):
        return model, None
    return prepare_user_model(  # the user's module: inputs as model.normalize says
        model, mean=cfg.model.input_mean or dataset.mean, std=cfg.model.input_std or dataset.std,
        normalize=cfg.model.normalize, num_classes=dataset.num_classes,
        channels=dataset.channels, resolution=dataset.resolution), f"instance:{type(model).__name__}"


class Scenario:
    """Everything one run needs, built once; see the module docstring. Use :meth:`from_config`."""

    def __init__(self, cfg: Config, *, dataset: ImageDataset, images: torch.Tensor,
                 labels: torch.Tensor, indices: list[int], model: nn.Module, setup: ClientSetup,
                 threat: ThreatModel, attack: Attack, seeds: SeedStreams,
                 device: torch.device) -> None:
        self.cfg, self.dataset, self.device, self.seeds = cfg, dataset, device, seeds
        self.images, self.labels, self.indices = images, labels, indices
        self.model, self.setup, self.threat, self.attack = model, setup, threat, attack
        self.defense = build_defense(cfg.defense)
        self.user_model: str | None = None  # "instance:<class>" when built from the user's module
        self.text = is_text_model(model)

    @classmethod
    def from_config(cls, cfg: Config, *, model: nn.Module | None = None,
                    data: Dataset | None = None,
                    victim: tuple[torch.Tensor, torch.Tensor] | None = None,
                    victim_indices: list[int] | None = None) -> Scenario:
        """The scenario of ``cfg``; ``model``/``data`` replace what ``cfg`` would build,
        ``victim=(images [N, C, H, W], labels [N])`` the victim selection, ``victim_indices``
        their dataset rows (which the leak criterion's reference pool never draws)."""
        device = resolve_device(cfg.device)
        seeds = SeedStreams.from_seed(cfg.seed)
        seed_everything(cfg.seed)  # the global RNG initialises the model (server side)
        threat, attack = _threat_and_attack(cfg)
        dataset = build_dataset(cfg.data) if data is None else data
        text = text_steps.is_text_dataset(dataset)
        text_steps.check_modalities(cfg, text_data=text, attack_modality=text_steps.modality_of(attack),
                                    text_model=None if model is None else is_text_model(model))
        if text:  # the model brings the tokenizer through which the client sees its text
            model = text_steps.build_text_model_for(cfg, dataset, model)
            dataset = dataset.tokenized(model.tokenizer, cfg.data.max_length)
        elif data is not None:
            dataset = with_channels(as_image_dataset(dataset), cfg.data.channels)
        if victim is None:
            images, labels, indices = select_victim_samples(dataset, cfg.data, seed=seeds.victim)
        else:
            images, labels, indices = victim[0], victim[1].long(), list(victim_indices or [])
        setup = ClientSetup.from_config(cfg.client, num_samples=len(labels))
        user_model = None
        if not text:
            model, user_model = _image_model(cfg, dataset, model)
            check_finite(model, images, repr(user_model or cfg.model.name))
        model = attack.prepare_model(model, input_shape=tuple(images.shape[1:]),
                                     num_classes=dataset.num_classes, seed=seeds.attack).to(device)
        sc = cls(cfg, dataset=dataset, images=images, labels=labels, indices=indices,
                 model=model, setup=setup, threat=threat, attack=attack, seeds=seeds,
                 device=device)
        sc.user_model = user_model
        return sc

    # --- the steps ---------------------------------------------------------------------------

    def client_round(self) -> ClientRound:
        """The victim's local training on the global model (client seed stream); DP-SGD
        training with ``defense.name=dpsgd`` or ``fl.dp=true``."""
        images, labels = self.images.to(self.device), self.labels.to(self.device)
        if self.text:  # the loss targets: class labels, or a causal LM's next tokens
            labels = self.model.targets(images, labels)
        dp = dp_settings(self.cfg)
        if dp is not None:
            return dp_client_round(self.model, images, labels, self.setup, dp, seed=self.seeds.client)
        return client_round(self.model, images, labels, self.setup, seed=self.seeds.client)

    def defend(self, update: SharedUpdate, *, round_: int = 1) -> SharedUpdate:
        """The defense, with its own generator (a training-time one: with the client's round)."""
        return apply_defense(self.defense, update, model=self.model, inputs=self.images.to(
            self.device), round_=round_, generator=torch.Generator().manual_seed(self.seeds.defense))

    def observe(self, update: SharedUpdate, *, bn_statistics: list | None = None,
                labels: torch.Tensor | None = None, setup: ClientSetup | None = None,
                mixing: list | None = None) -> Observation:
        """What the server sees of ``update``, filtered by the threat model: ``labels`` (default:
        the victim's), ``setup`` (the victim's) and the round's MixUp/InstaHide ``mixing``."""
        return observe(model=self.model, update=update, threat=self.threat,
                       setup=setup or self.setup,
                       labels=self.labels if labels is None else labels,
                       bn_statistics=bn_statistics or [], mixing=mixing,
                       input_shape=tuple(self.images.shape[1:]),
                       num_classes=self.dataset.num_classes)

    def reconstruct(self, obs: Observation, *, progress: bool = False) -> Reconstruction:
        """Run the attack on ``obs`` (attack seed stream). With ``attack.adaptive`` the attack is
        first told the client's defense (the real one or its differentiable surrogate)."""
        if self.cfg.attack.adaptive:
            self.attack.adapt(self.cfg.defense, obs.update, obs.model)
        return self.attack.run(obs, seed=self.seeds.attack, progress=progress)

    def score(self, recon: Reconstruction, *, images: torch.Tensor | None = None,
              labels: torch.Tensor | None = None) -> Score | TextScore:
        """Score ``recon`` against the victim's samples (or the given ground truth)."""
        truth = (self.images if images is None else images).cpu()
        true_labels = self.labels if labels is None else labels
        if self.text:
            return text_steps.score_text_reconstruction(
                recon, truth, model=self.model, dataset=self.dataset,
                indices=self.indices if images is None else [],
                reference=text_steps.text_reference(self.dataset, list(self.indices),
                                         size=self.cfg.metrics.baseline_pool,
                                         seed=self.seeds.baseline), cfg=self.cfg)
        m = self.cfg.metrics
        s = metrics.score(recon.candidates, truth, lpips_net=m.lpips_net,
                          psnr_threshold=m.psnr_threshold, lpips_threshold=m.lpips_threshold,
                          reference=self.reference_pool(truth, true_labels))
        return Score(mse=s["mse"], psnr=s["psnr"], ssim=s["ssim"], lpips=s["lpips"], brr=s["brr"],
                     wsrr=s["wsrr"],
                     label_accuracy=metrics.label_accuracy(recon.labels, true_labels.tolist()),
                     per_sample=s["per_sample"], thresholds=s["thresholds"],
                     wsrr_initializations=s["wsrr_initializations"], matching=s["matching"],
                     matched=recon.images[torch.tensor(s["matching"])], warnings=list(s["warnings"]),
                     baselines=s["baselines"])

    def reference_pool(self, truth: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
        """``metrics.baseline_pool`` other samples of the dataset for the leak criterion's
        baselines (baseline seed stream): never the victim's indices, nor a sample equal to a
        victim image, nor, where the dataset's class is the private source itself
        (``class_is_source``, e.g. one photo and its crops), a sample of a victim's class."""
        size = self.cfg.metrics.baseline_pool
        own = sorted({int(c) for c in labels.tolist()}) if getattr(
            self.dataset, "class_is_source", False) else []
        pool = reference_pool(self.dataset, list(self.indices), own, size=size + len(truth),
                              seed=self.seeds.baseline)
        if pool is None:
            return None
        flat_pool, flat_truth = pool.flatten(1), truth.flatten(1).to(pool.dtype)
        same = torch.cdist(flat_pool, flat_truth).min(dim=1).values == 0
        pool = pool[~same][:size]
        return pool if len(pool) else None

    def run(self, *, progress: bool = False) -> RunOutput:
        """Every step: client round, defense, observation, attack, scoring -> :class:`RunOutput`."""
        started = time.perf_counter()
        rnd = self.client_round()
        shared = self.defend(rnd.update)
        obs = self.observe(shared, bn_statistics=rnd.bn_statistics, mixing=rnd.mixing)
        attack_started = time.perf_counter()
        recon = self.reconstruct(obs, progress=progress)
        attack_seconds = time.perf_counter() - attack_started
        score = self.score(recon)
        for message in score.warnings:
            warnings.warn(message, stacklevel=2)
        result = self._result(recon, score, seconds=time.perf_counter() - started,
                              attack_seconds=attack_seconds)
        return RunOutput(result=result, truth=self.images.cpu(), reconstruction=recon,
                         matched=score.matched, update=shared, client_update=rnd.update)

    # --- reporting ---------------------------------------------------------------------------

    def notes(self) -> list[str]:
        """Scenario-level warnings (e.g. Thm. 4.3: more data dimensions than parameters)."""
        if self.text:
            return text_steps.text_notes(self.model, self.images, self.cfg)
        notes = []
        params, data_dim = count_parameters(self.model), int(self.images.numel())
        if data_dim > params:
            notes.append(f"data dimension {data_dim} exceeds the {params} model parameters: by "
                         "the paper's Thm. 4.3 another input yields the same gradient")
        notes += generator_overlap(self.cfg)
        asked = self.cfg.client.batch_size
        if self.setup.protocol == "fedavg" and asked is not None and asked > self.setup.batch_size:
            notes.append(f"client.batch_size={asked} exceeds the victim's {self.setup.num_samples} "
                         f"samples: the client trains on batches of {self.setup.batch_size}")
        return notes

    def describe(self) -> dict[str, Any]:
        """The ``scenario`` block of ``result.json``."""
        data = text_steps.describe_text_data(self.dataset) if self.text else describe_dataset(self.dataset)
        return {"dataset": self.dataset.name, "data": data,
                "victim_indices": self.indices,
                "protocol": self.setup.protocol, "local_updates": self.setup.local_updates,
                "model_parameters": count_parameters(self.model),
                "data_dimension": int(self.images.numel()), "threat": self.threat.describe()}

    def _model_record(self) -> dict[str, Any]:
        record = recorded_model_config(self.cfg.model)
        if self.text and self.cfg.model.name != "hf":  # a user's TextModel instance
            return record
        if self.user_model is None:
            return record
        return {"name": self.user_model, **{k: record.get(k) for k in
                                            ("normalize", "input_mean", "input_std")}}

    def _result(self, recon: Reconstruction, score: Score | TextScore, *, seconds: float,
                attack_seconds: float) -> dict[str, Any]:
        cfg = self.cfg
        extra = {"text": text_steps.text_record(self.model, score)} if self.text else {}
        if recon.details:
            extra["attack_details"] = recon.details
        extra.update({"defense_details": d} if (d := defense_details(self.defense, self.model)) else {})
        return {**extra,
            "metrics": score.metrics(),
            "labels": {"true": self.labels.tolist(), "inferred": recon.labels,
                       "source": recon.label_source},
            "per_sample": score.per_sample,
            "baselines": score.baselines,
            "thresholds": score.thresholds,
            "wsrr_initializations": score.wsrr_initializations,
            "iterations": recon.iterations,
            "iterations_used": recon.iterations_used,
            "seconds": round(seconds, 3),
            "attack_seconds": round(attack_seconds, 3),
            "attack_losses": recon.losses,
            "loss_history": recon.history,
            "scenario": self.describe(),
            "warnings": [*score.warnings, *self.notes()],
            "config": {**cfg.to_dict(), "model": self._model_record()},
            "config_digest": cfg.digest(),
            "versions": versions(),
            "git_commit": git_commit(),
            "seed": cfg.seed,
            "seed_streams": dataclasses.asdict(self.seeds),
        }
