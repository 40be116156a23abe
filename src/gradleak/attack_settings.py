"""Typed ``attack.*`` settings, one dataclass per attack family.

Each attack class names its family's dataclass (``Attack.settings``); the family declares the keys
it reads, with their defaults, allowed values and help. The families share their common keys by
inheritance::

    AttackSettings      name, labels, adaptive                    analytic
    ├─ ImprintSettings      + bins                                imprint
    ├─ SpanSettings         + span_tolerance, rank_tolerance      token-set (text)
    │  └─ DAGERSettings         + span_tolerance_2, max_candidates   dager (text)
    └─ SearchSettings       + restarts, layers, distance_scale
       ├─ GGLSettings           + generator, ggl_budget           ggl
       └─ ObjectiveSettings     + lr, distance, priors, ...
          ├─ GIASSettings           + generator, latent/generator iterations, generator_lr   gias
          └─ MatchingSettings       + iterations, init, box, engine options   dlg idlg ig gradinversion
             ├─ ROGSettings             + rog_scale, postprocess      rog
             └─ EmbeddingSettings       + vocabulary, LAMP's prior and discrete step   tag lamp (text)

A settings object checks itself when built (:meth:`AttackSettings.check`: each key's type,
choices and minimum, then the family's rules across keys), so the values an attack holds
(``Attack.config``) are checked once, whether they came from a config or from Python keywords.

The config's ``attack`` section is :class:`AttackConfig`, the union of the built-in image
families (so every such key is accepted whatever the attack, as it always was, and a config's
digest does not depend on which families exist). The text families (``SpanSettings``,
``DAGERSettings``, ``EmbeddingSettings``) stay out of that union, like a plug-in's: their keys
(all ``added``) are valid while ``attack.name`` names their attack, so stored configs keep their
digests. A plug-in attack whose settings add keys (or change a default) gets a section class
that extends :class:`AttackConfig` with them (:func:`section_class`); its keys are valid only
while ``attack.name`` names it. A plug-in may also ship a preset file
(:func:`register_settings`), like ``configs/attacks/<name>.yaml``.

"""

from __future__ import annotations

import dataclasses
import functools
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from gradleak.config_values import check_value, coerce, describe, option
from gradleak.errors import GradleakError

S = TypeVar("S", bound="AttackSettings")
LABEL_RULES = ("known", "idlg", "yin", "llg", "geng", "ilrg")


@dataclass
class AttackSettings:
    """Keys every attack has (analytic's whole family)."""

    name: str = option("ig", help="attack name, see `gradleak attacks`")
    labels: str = option("known", choices=LABEL_RULES)
    adaptive: bool = option(False, help="apply the known defense (or a surrogate) to trial gradients")

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Each value coerced to its field's type and checked against its ``option(...)`` (choices,
        minimum, the per-key rules of :mod:`gradleak.config_values`), as the config key would be.
        A family adds its cross-key rules by extending this (``super().check()`` first); it runs
        on every construction, so an attack built in Python is checked like one from a config."""
        check_fields(self)

    @classmethod
    def names(cls) -> list[str]:
        """The keys of this family, in declaration order."""
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def of(cls: type[S], section: Any) -> S:
        """This family's settings read from a config ``section`` (keys it lacks keep defaults)."""
        return cls(**{k: getattr(section, k) for k in cls.names() if hasattr(section, k)})

    def values(self, *, exclude: tuple[str, ...] = ("name", "adaptive")) -> dict[str, Any]:
        """The settings as constructor keywords (``name`` and ``adaptive`` are the scenario's);
        for plug-in attacks whose constructor takes its keys one by one."""
        return {k: getattr(self, k) for k in self.names() if k not in exclude}

    def replaced(self: S, who: str, values: dict[str, Any]) -> S:
        """A copy with ``values`` set and checked; a key this family lacks is a one-line error
        naming the keys of attack ``who``."""
        unknown = [k for k in values if k not in self.names()]
        if unknown:
            raise GradleakError(f"unknown setting {unknown[0]!r} for attack {who!r}; allowed: "
                                f"{', '.join(self.names())}")
        return dataclasses.replace(self, **values)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def check_fields(settings: AttackSettings) -> None:
    """Coerce and check every field of ``settings`` in place (see :meth:`AttackSettings.check`);
    the messages are those of ``attack.<key>=<value>`` on the command line."""
    hints = _hints(type(settings))
    for f in dataclasses.fields(settings):
        raw, key = getattr(settings, f.name), f"attack.{f.name}"
        try:
            value = coerce(raw, hints[f.name])
        except (TypeError, ValueError, OverflowError):
            kind = describe(hints[f.name])
            raise GradleakError(f"bad value {raw!r} for {key}: expected {kind}"
                                + (" (a finite number)" if "float" in kind else "")) from None
        check_value(key, raw, value, choices=f.metadata.get("choices"),
                    minimum=f.metadata.get("minimum"))
        setattr(settings, f.name, value)


@dataclass
class ImprintSettings(AttackSettings):
    bins: int = option(64, minimum=2, help="imprint: measurement bins k of the imprint module "
                       "(keep k well above N so that samples rarely share a bin)")


@dataclass
class SpanSettings(AttackSettings):
    """The span test of DAGER (Petrov et al., NeurIPS 2024) on a text model's first layer."""

    span_tolerance: float = option(1e-5, minimum=0.0, added=True, help="dager/token-set: a "
                                   "token's layer-0 input is in the gradient's span when its "
                                   "relative distance ||e - UU^T e|| / ||e|| is below this "
                                   "(DAGER's l1_span_thresh)")
    rank_tolerance: float | None = option(None, minimum=0.0, added=True, help="dager/token-set: "
                                          "singular values above this times the largest count "
                                          "in the span (null: the update's float eps; DAGER's "
                                          "code: max(shape) x eps)")


@dataclass
class DAGERSettings(SpanSettings):
    span_tolerance_2: float = option(1e-3, minimum=0.0, added=True, help="dager: the same test "
                                     "on layer 1's inputs of a candidate sequence (DAGER's "
                                     "l2_span_thresh)")
    max_candidates: int = option(10000, minimum=1, added=True, help="dager: candidate "
                                 "sequences checked per search step (live prefixes x tokens; "
                                 "an encoder length's combinations before beam search)")


@dataclass
class SearchSettings(AttackSettings):
    """Attacks that search for data whose gradient is close to the observed one."""

    restarts: int = option(1, minimum=1)
    layers: list[str] | None = option(None, help="match only parameters with these name prefixes")
    distance_scale: float = option(1.0, minimum=0.0, help="weight of the gradient distance")


@dataclass
class _GeneratorKey:
    generator: str | None = option(None, help="gias/ggl: generator.pt from `gradleak train-generator`")


@dataclass
class GGLSettings(_GeneratorKey, SearchSettings):
    ggl_budget: int = option(2000, minimum=1, help="ggl: CMA-ES loss evaluations per restart")


@dataclass
class ObjectiveSettings(SearchSettings):
    """A gradient-descent objective: gradient distance plus priors, and its optimiser."""

    lr: float = option(0.1, minimum=0.0)
    lr_decay: bool = option(True, help="step decay x0.1 at 3/8, 5/8, 7/8 of the run")
    distance: str = option("cosine", choices=("cosine", "l2"), help="gradient distance")
    optimizer: str = option("adam", choices=("adam", "lbfgs"))
    signed: bool = option(True, help="Adam on the sign of the image gradient (Geiping et al.)")
    tv: float = option(1e-4, minimum=0.0, help="total-variation prior weight")
    tv_border: str = option("none", choices=("none", "zero"),
                            help="none: Geiping et al.'s TV; zero: breaching's, which also pulls the "
                                 "right/bottom edge pixels towards 0")
    l2: float = option(0.0, minimum=0.0, help="image L2-norm prior weight")
    bn: float = option(0.0, minimum=0.0, help="BN-statistics prior weight (GradInversion)")
    bn_source: str = option("client", choices=("client", "running"),
                            help="BN prior targets: the client's batch statistics (level 4) or the "
                                 "model's running statistics")
    learn_labels: bool = option(False, help="optimise soft labels jointly (DLG)")


@dataclass
class GIASSettings(_GeneratorKey, ObjectiveSettings):
    latent_iterations: int = option(400, minimum=1, help="gias stage 1: latent search steps")
    generator_iterations: int = option(600, minimum=0,
                                       help="gias stage 2: per-image generator fine-tuning steps")
    generator_lr: float = option(1e-3, minimum=0.0, help="gias stage 2 learning rate")


@dataclass
class MatchingSettings(ObjectiveSettings):
    """The GIA-O engine (:class:`gradleak.attacks.optimization.GradientMatchingAttack`)."""

    iterations: int = option(2000, minimum=1)
    init: str = option("randn", choices=("randn", "rand", "gray", "normal"),
                       help="randn: mean + std * N(0, 1) in pixels; normal: N(0, 1) as in DLG")
    box: bool = option(True, help="clamp images to [0, 1] after each step")
    keep: str = option("last", choices=("last", "best"),
                       help="GIA-O: return each restart's last iterate or its lowest-gradient-loss one")
    group: int = option(1, minimum=1, help="GIA-O: members optimised jointly per restart from "
                        "different seeds, pulled to their consensus (GradInversion's group "
                        "consistency)")
    group_weight: float = option(0.01, minimum=0.0, help="weight of the group-consistency prior")
    group_every: int = option(100, minimum=1, help="iterations between consensus updates (the "
                              "first at this iteration: members start independent)")
    stop: bool = option(False, help="GIA-O: end a restart once it stops improving (a plateau "
                        "first brings the next lr decay forward; see stop_test, stop_window)")
    stop_tolerance: float = option(1e-3, minimum=0.0, help="attack.stop: settled: best-loss gain "
                                   "per window <= this x the first loss, image moved <= one step "
                                   "(or this, relative); loss: relative gain <= this")
    stop_window: int = option(100, minimum=1, help="attack.stop: iterations per plateau test "
                              "(settled compares two windows: never before twice this)")
    stop_test: str = option("settled", choices=("settled", "loss"), added=True, help="attack.stop: "
                            "settled (loss and image, two windows) or loss (the pre-issue-25 rule)")
    max_seconds: float | None = option(None, minimum=0.0, help="GIA-O: wall-clock budget, split "
                                       "over the restarts (race: eliminated shares pass on)")
    race: bool = option(False, added=True, help="GIA-O: successive halving over the restarts: keep "
                        "the best race_keep by gradient loss after race_first, double each round; "
                        "eliminated ones stay candidates as they stood (WSRR counts them so)")
    race_keep: float = option(0.5, added=True, help="attack.race: fraction of the restarts kept "
                              "per round, in (0, 1] (at least one; 1: none is eliminated)")
    race_first: int | None = option(None, minimum=1, added=True, help="attack.race: the first "
                                    "round's iterations (null: attack.iterations // 8); round k "
                                    "ends at race_first x 2^(k-1), the last at attack.iterations")
    compile: bool = option(False, help="GIA-O: torch.compile the functional objective (falls "
                           "back to the autograd path with a warning where it cannot)")
    batch_restarts: str = option("auto", choices=("auto", "on", "off"),
                                 help="GIA-O: run restarts as one vmapped problem; auto = on CUDA only")

    def check(self) -> None:
        super().check()
        if self.group > 1 and self.learn_labels:
            raise GradleakError("attack.group > 1 cannot be combined with attack.learn_labels=true "
                                "(the members would each need their own soft labels)")


@dataclass
class EmbeddingSettings(MatchingSettings):
    """TAG and LAMP: the GIA-O engine on a text model's input embeddings
    (:mod:`gradleak.attacks.text_matching`)."""

    distance: str = option("l1l2", choices=("cosine", "l2", "l1l2"), added=True, help="gradient "
                           "distance; l1l2: squared L2 plus l1_weight x L1 (TAG)")
    l1_weight: float = option(0.01, minimum=0.0, added=True, help="distance=l1l2: weight of the "
                              "L1 term (LAMP's TAG reimplementation: 0.01)")
    vocabulary: str = option("all", choices=("all", "bag"), added=True, help="tag/lamp: read "
                             "tokens out of the whole vocabulary, or of the token-set attack's "
                             "bag (LAMP's --use_embedding)")
    init_candidates: int = option(1, minimum=1, added=True, help="tag/lamp: random starts scored "
                                  "by gradient distance per restart, then as many permutations of "
                                  "the best (LAMP: 500)")
    norm_weight: float = option(0.0, minimum=0.0, added=True, help="lamp: weight of the "
                                "embedding-norm regulariser (mean norm - vocabulary mean norm)^2")
    lm_weight: float = option(0.0, minimum=0.0, added=True, help="lamp: weight of the language "
                              "model prior's log-perplexity in the discrete step")
    lm_prior: str | None = option(None, added=True, help="lamp: the prior, a `gradleak train-lm` "
                                  "directory (a causal LM with its tokenizer)")
    swap_every: int = option(75, minimum=1, added=True, help="lamp: iterations between "
                             "discrete steps")
    swap_burnin: float = option(0.1, minimum=0.0, added=True, help="lamp: fraction of the run "
                                "before the first discrete step")
    swap_candidates: int = option(0, minimum=0, added=True, help="lamp: reorderings scored per "
                                  "sentence in a discrete step (0: no discrete step; LAMP: 200)")
    lr_scale: float | None = option(None, minimum=0.0, added=True, help="tag/lamp: factor on "
                                    "attack.lr and on init=normal's N(0, 1) (null: the model's "
                                    "mean embedding norm / 1.4, BERT-base's, which the published "
                                    "settings were tuned at)")
    lr_step: int = option(50, minimum=1, added=True, help="tag/lamp: iterations per lr decay "
                          "step (with lr_gamma < 1)")
    lr_gamma: float = option(1.0, minimum=0.0, added=True, help="tag/lamp: lr factor every "
                             "lr_step iterations (LAMP: 0.89; 1: no step decay)")

    def check(self) -> None:
        super().check()
        if self.swap_burnin > 1:
            raise GradleakError(f"bad value {self.swap_burnin} for attack.swap_burnin: a fraction "
                                "of the run, in [0, 1]")


@dataclass
class ROGSettings(MatchingSettings):
    rog_scale: int = option(4, minimum=1, help="rog: the optimised image is H/scale x W/scale")
    postprocess: str | None = option(None, help="rog: post-processing network file (TorchScript)")


@dataclass
class AttackConfig(ROGSettings, GIASSettings, GGLSettings, ImprintSettings):
    """The ``attack`` config section: every built-in family's keys (see the module docstring).

    Each key is checked on its own here; the rules across keys are the chosen family's, checked
    when the config is resolved (``settings_for(name).of(section)``), so a sweep may set a key
    globally that only some of its attacks read."""

    def check(self) -> None:
        check_fields(self)


# --- which settings each attack name has ----------------------------------------------------

# The built-in attacks' families, known without importing the attacks (and torch), so that a bad
# key fails before any heavy import; gradleak.attacks registers the same classes (and checks).
_SETTINGS: dict[str, type[AttackSettings]] = {
    "analytic": AttackSettings, "imprint": ImprintSettings, "ggl": GGLSettings,
    "gias": GIASSettings, "rog": ROGSettings, "dlg": MatchingSettings, "idlg": MatchingSettings,
    "ig": MatchingSettings, "gradinversion": MatchingSettings,
    "token-set": SpanSettings, "dager": DAGERSettings, "tag": EmbeddingSettings,
    "lamp": EmbeddingSettings,
}
_PRESETS: dict[str, Path] = {}
_HINTS = typing.get_type_hints(AttackConfig)


def register_settings(name: str, settings: type[AttackSettings],
                      preset: str | Path | None = None) -> None:
    """Declare attack ``name``'s settings class and, optionally, its preset YAML file (a mapping
    of ``attack.*`` keys without the prefix). Called by ``register_attack``."""
    if not (isinstance(settings, type) and issubclass(settings, AttackSettings)
            and dataclasses.is_dataclass(settings)):
        raise GradleakError(f"attack {name!r}: settings must be a dataclass subclassing "
                            "gradleak.attack_settings.AttackSettings")
    known = _SETTINGS.get(name)
    if known is not None and known is not settings:
        raise GradleakError(f"attack {name!r} already has settings {known.__name__}")
    if preset is not None and not Path(preset).is_file():
        raise GradleakError(f"attack {name!r}: preset file {str(preset)!r} does not exist")
    _SETTINGS[name] = settings
    if preset is not None:
        _PRESETS[name] = Path(preset)


def settings_for(name: str) -> type[AttackSettings]:
    """The settings class of attack ``name`` (the full :class:`AttackConfig` if unknown)."""
    return _SETTINGS.get(name, AttackConfig)


def preset_file(name: str) -> Path | None:
    """A plug-in's preset file for attack ``name``, if it declared one."""
    return _PRESETS.get(name)


def section_class(name: str) -> type[AttackConfig]:
    """The config section class while ``attack.name`` is ``name``: :class:`AttackConfig`, or a
    subclass with the keys (and changed defaults) of a plug-in's settings."""
    return _section_class(name, settings_for(name))


@functools.cache
def _section_class(name: str, settings: type[AttackSettings]) -> type[AttackConfig]:
    base = {f.name: f for f in dataclasses.fields(AttackConfig)}
    hints = typing.get_type_hints(settings)
    own = [f for f in dataclasses.fields(settings) if f.name not in base
           or _default(f) != _default(base[f.name]) or hints[f.name] != _HINTS[f.name]]
    if not own:
        return AttackConfig
    qualname = f"AttackConfig_{name}"
    cls = dataclasses.make_dataclass(
        qualname, [(f.name, hints[f.name], _copy(f)) for f in own], bases=(AttackConfig,),
        namespace={"__module__": __name__})
    setattr(sys.modules[__name__], qualname, cls)  # so that pickle finds it by name
    return cls



def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _copy(f: dataclasses.Field) -> dataclasses.Field:
    if f.default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=f.default_factory, metadata=f.metadata)
    return dataclasses.field(default=f.default, metadata=f.metadata)


def retype(section: Any, name: str) -> Any:
    """``section`` as the section class of attack ``name``: keys both classes have keep their
    values where they differ from the old class's defaults; the rest take the new defaults."""
    cls = section_class(name)
    if type(section) is cls:
        return section
    old = {f.name: f for f in dataclasses.fields(section)}
    values = {f.name: getattr(section, f.name) for f in dataclasses.fields(cls)
              if f.name in old and getattr(section, f.name) != _default(old[f.name])}
    return cls(**{**values, "name": name})


def unknown_key(name: str, key: str) -> GradleakError:
    """The one-line error for ``attack.<key>`` that attack ``name`` does not have."""
    owners = sorted(n for n, s in _SETTINGS.items() if key in s.names())
    where = f" (a setting of attack {', '.join(owners)})" if owners else ""
    allowed = settings_for(name).names()
    return GradleakError(f"unknown config key 'attack.{key}' for attack {name!r}{where}; "
                         f"allowed for {name}: {', '.join(allowed)} (and the other built-in "
                         "attacks' keys)")
