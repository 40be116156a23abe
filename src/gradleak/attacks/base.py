"""The attack interface: what the server observes, what an attack returns, and the base class."""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from gradleak.attack_settings import AttackSettings
from gradleak.config import attack_preset
from gradleak.errors import GradleakError
from gradleak.fl.client import ClientSetup
from gradleak.fl.mixing import MixPlan
from gradleak.threat import Knowledge, ThreatModel
from gradleak.update import SharedUpdate


@dataclass(frozen=True)
class Observation:
    """Everything the server may use: the update, the global model and what the threat grants.

    There is deliberately no field for the victim's images. ``labels`` is set only when the threat
    model grants the label multiset, ``client`` only with client training details (level 3),
    ``bn_statistics`` only with BN statistics (level 4), ``mixing`` (MixUp/InstaHide plans, one
    per local epoch) only with ``threat.knows_mixing``. The protocol and the BN mode are part of
    the training code the server ships, hence basic information. Build it with :func:`observe`.
    """

    model: nn.Module
    update: SharedUpdate
    threat: ThreatModel
    input_shape: tuple[int, int, int]
    num_classes: int
    protocol: str
    bn_mode: str
    labels: torch.Tensor | None = None
    client: ClientSetup | None = None
    bn_statistics: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    mixing: list[MixPlan] | None = None

    @property
    def num_samples(self) -> int:
        return self.update.num_samples


def observe(*, model: nn.Module, update: SharedUpdate, threat: ThreatModel, setup: ClientSetup,
            labels: torch.Tensor, input_shape: tuple[int, int, int], num_classes: int,
            bn_statistics: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
            mixing: list[MixPlan] | None = None) -> Observation:
    """What the server sees of a client round, filtered by the threat model: ``labels``, the
    client ``setup``, the client's ``bn_statistics`` and its ``mixing`` plans only when granted.
    The update itself is passed on as the client sent it (it carries no side information)."""
    return Observation(
        model=model,
        update=update,
        threat=threat,
        input_shape=input_shape,
        num_classes=num_classes,
        protocol=setup.protocol,
        bn_mode=setup.bn_mode,
        labels=labels.clone() if threat.grants(Knowledge.LABELS) else None,
        client=setup if threat.grants(Knowledge.CLIENT_TRAINING) else None,
        bn_statistics=([(m.clone(), v.clone()) for m, v in bn_statistics or []]
                       if threat.grants(Knowledge.BN_STATISTICS) else None),
        mixing=([m.granted() for m in mixing] if mixing and threat.grants(Knowledge.MIXING)
                else None),
    )


@dataclass
class Reconstruction:
    """An attack's output.

    ``images``: best reconstruction ``[N, C, H, W]`` in [0, 1] (text: the recovered batch
    ``[M, 2, L]`` of ids and attention mask, see :mod:`gradleak.models.text`); ``candidates``: one
    batch per attack initialisation ``[I, N, C, H, W]``, the best first; ``losses``: final
    gradient loss per initialisation (same order); ``labels``: the labels the attack used or
    inferred. ``bag``: the attack recovered a bag of tokens (one row of distinct ids), not
    sentences; ``details``: attack-specific diagnostics recorded in ``result.json`` (e.g. DAGER's
    span rank against the embedding width).
    """

    images: torch.Tensor
    candidates: torch.Tensor
    losses: list[float]
    labels: list[int]
    iterations: int
    label_source: str
    history: list[float] = field(default_factory=list)
    iterations_used: list[int] = field(default_factory=list)  # per restart (attack.stop may end one early)
    bag: bool = False
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AttackInfo:
    """The paper's Tab. 7 columns for one attack."""

    paper: str
    strategy: str  # GIA-O, GIA-L or GIA-A
    server: str = "honest-but-curious"
    capability: str = "passive"
    goal: str = "data and labels"
    modality: str = "image"


class Attack:
    """Base class: declare ``requires``, ``info`` and ``settings``; call the attack like a function.

    An instance holds its settings in one object, :attr:`config` (an instance of the family's
    :attr:`settings` dataclass, checked when built). For convenience each setting also reads and
    writes as an attribute (``attack.iterations``, ``attack.iterations = 5``): reading delegates
    to :attr:`config`, writing replaces it with a checked copy. There is no other copy of a
    setting, and the defaults are the dataclass's (plus the attack's preset, see ``__init__``).
    """

    name: ClassVar[str]
    info: ClassVar[AttackInfo]
    requires: ClassVar[frozenset[Knowledge]] = frozenset({Knowledge.BASIC})
    # The attack family's typed ``attack.*`` keys (a dataclass; see gradleak.attack_settings).
    settings: ClassVar[type[AttackSettings]] = AttackSettings
    config: AttackSettings

    def __init__(self, config: AttackSettings | None = None, **values: Any) -> None:
        """``config``: this family's settings (another settings object or config section is
        read into the family's class). Without it: the family's defaults and this attack's preset
        (``configs/attacks/<name>.yaml``), what ``gradleak attack attack.name=<name>`` starts
        from. ``values``, named after the settings' fields, are set on top and checked like the
        config keys; an unknown one is a one-line error."""
        if config is None:
            config = self.defaults()
        elif type(config) is not self.settings:
            config = self.settings.of(config)
        if values:
            config = config.replaced(getattr(self, "name", type(self).__name__), values)
        self.config = config

    @classmethod
    def defaults(cls) -> AttackSettings:
        """This attack's settings when nothing is set: the family's defaults with the attack's
        preset file on top (its keys this family has)."""
        name = getattr(cls, "name", None)
        if name is None:
            return cls.settings()
        preset = attack_preset(name).get("attack", {})
        keys = cls.settings.names()
        return cls.settings(**{k: v for k, v in preset.items() if k in keys}, name=name)

    def __getattr__(self, key: str) -> Any:
        # Only called when the normal lookup fails: a setting read as an attribute.
        config = self.__dict__.get("config")
        if config is not None and key in config.__dataclass_fields__:
            return getattr(config, key)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {key!r}")

    def __setattr__(self, key: str, value: Any) -> None:
        config = self.__dict__.get("config")
        if config is not None and key in config.__dataclass_fields__:
            self.config = dataclasses.replace(config, **{key: value})  # checked like the keyword
        else:
            object.__setattr__(self, key, value)

    @classmethod
    def from_config(cls, cfg: Any) -> Attack:
        """Build from the ``attack`` config section: read this family's :attr:`settings` from
        it, then :meth:`from_settings`."""
        return cls.from_settings(cls.settings.of(cfg))

    @classmethod
    def from_settings(cls, settings: AttackSettings) -> Attack:
        """The attack holding ``settings``. A plug-in whose constructor takes its keys one by one
        (no ``config`` parameter, the older style) gets them as keywords, but ``name`` and
        ``adaptive``."""
        if "config" not in inspect.signature(cls.__init__).parameters:
            return cls(**settings.values())
        return cls(settings)

    def needs(self) -> frozenset[Knowledge]:
        """Knowledge needed with the current settings (subclasses add setting-dependent needs)."""
        return self.requires

    def prepare_model(self, model: nn.Module, *, input_shape: tuple[int, int, int],
                      num_classes: int, seed: int) -> nn.Module:
        """The global model the server sends to the client. Honest servers send it unchanged; a
        malicious attack (level 5) may return a crafted or modified model here."""
        return model

    def adapt(self, defense: Any, observed: SharedUpdate, model: nn.Module) -> None:
        """The adaptive attacker (``attack.adaptive=true``): learn the client's post-processing
        ``defense`` (a :class:`~gradleak.config.DefenseConfig`) from the scenario, given the
        ``observed`` (defended) update and the global ``model``. Attacks with an adaptive mode
        override this; the others refuse in one line."""
        raise GradleakError(f"attack {self.name!r} has no adaptive mode; set attack.adaptive=false")

    def __call__(self, obs: Observation, *, seed: int = 0, progress: bool = False) -> Reconstruction:
        obs.threat.require(self.needs(), who=f"attack {self.name!r}")
        return self.run(obs, seed=seed, progress=progress)

    def run(self, obs: Observation, *, seed: int, progress: bool) -> Reconstruction:
        raise NotImplementedError
