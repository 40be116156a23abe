"""The risk ladder: the user's setup attacked by servers of growing knowledge (paper Sec. 2.2).

Levels, budgets and the verdict rule are data (``configs/audit_ladder.yaml``). A level's config is
built in this order, later winning: the user's setup (every section but ``attack``/``threat``),
the budget's attack keys, the ``attack.*`` keys the user gave (``attack.iterations=...``), the
level's own keys, and the label rule (inferred from the update unless the level says ``known``).
A level's runs are *trials* (:func:`draw_trials`): trial ``i`` has seed ``seed + i`` (its own
independent client, defense and attack streams, :class:`gradleak.scenario.SeedStreams`) and its
own victim samples, drawn for all trials at once without replacement, so no two trials attack the
same sample. With ``data.indices`` fixed every trial attacks those samples: the runs then measure
the attack's success on those samples over the client's and the attack's randomness, not over
victims, and the audit says so.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from gradleak.config import ALIASES, Config, flatten, load_config, parse_override, unflatten
from gradleak.data.sampling import select_victim_samples
from gradleak.errors import GradleakError
from gradleak.scenario import SeedStreams

LADDER = "configs/audit_ladder.yaml"
LABELS_GRANTED = ("labels granted: the model has no linear layer to infer them from, so this "
                  "level is stronger than its title")
HONEST = (0, 1)  # the levels an honest-but-curious server reaches without extra assumptions
NOT_RUN = {
    "generator": "not run: needs a generator (gradleak train-generator --out DIR, then "
                 "attack.generator=DIR/generator.pt)",
    "fedavg": "not run: only meaningful for FedAvg (client.protocol=fedavg), where the client "
              "trains several local steps",
    "batchnorm": "not run: the model has no BatchNorm layer",
    "lm_prior": "not run: needs a language-model prior (gradleak train-lm --out DIR on auxiliary "
                "text, then attack.lm_prior=DIR)",
}


@dataclass(frozen=True)
class Level:
    """One rung: ``level`` (0-5), a folder-safe ``name``, a title and the keys it sets."""

    level: int
    name: str
    title: str
    server: str
    set: dict[str, Any]
    needs: str | None = None
    labels: str = "inferred"
    fedavg_set: dict[str, Any] = field(default_factory=dict)


@dataclass
class Ladder:
    """The packaged ladder file, read."""

    levels: list[Level]
    budgets: dict[str, dict[str, Any]]
    default_budget: str
    labels: dict[str, str]
    verdict: dict[str, Any]
    recommend: dict[str, Any]
    text_levels: list[Level] = field(default_factory=list)

    def for_setup(self, setup: Setup) -> Ladder:
        """The ladder for ``setup``: for a text model its ``text_levels`` and each budget's
        ``text_attack`` keys (the image ladder otherwise)."""
        if not setup.text:
            return self
        budgets = {n: {**b, "attack": b.get("text_attack", b.get("attack"))}
                   for n, b in self.budgets.items()}
        return replace(self, levels=list(self.text_levels), budgets=budgets)

    def budget(self, name: str | None) -> dict[str, Any]:
        """The named budget (one-line error when unknown)."""
        name = name or self.default_budget
        if name not in self.budgets:
            raise GradleakError(f"bad value {name!r} for --budget; allowed: "
                                f"{', '.join(self.budgets)}")
        return self.budgets[name]


def load_ladder() -> Ladder:
    """``configs/audit_ladder.yaml`` as a :class:`Ladder`."""
    data = yaml.safe_load(resources.files("gradleak").joinpath(LADDER).read_text())

    def levels(key: str) -> list[Level]:
        return [Level(level=int(x["level"]), name=x["name"], title=x["title"],
                      server=x["server"], set=dict(x.get("set") or {}), needs=x.get("needs"),
                      labels=x.get("labels", "inferred"),
                      fedavg_set=dict(x.get("fedavg_set") or {})) for x in data.get(key) or []]

    return Ladder(levels=levels("levels"), budgets=data["budgets"],
                  default_budget=data["default_budget"], labels=data["labels"],
                  verdict=data.get("verdict") or {}, recommend=data.get("recommend") or {},
                  text_levels=levels("text_levels"))


@dataclass
class Setup:
    """The user's setup: the resolved config and what the ladder needs to know about it."""

    cfg: Config
    user_attack: dict[str, Any]  # attack.* keys the user gave (except attack.name)
    user_fl: dict[str, Any]  # fl.* keys the user gave
    num_samples: int = 1
    has_bn: bool = False
    has_linear: bool = True  # label inference reads the last linear layer's gradient
    layers: list[tuple[str, int]] = field(default_factory=list)  # (module name, parameters)
    dataset: Any = None  # the victims' dataset, for drawing trials
    victims_fixed: bool = False  # data.indices given: every trial attacks the same samples
    text: bool = False  # a text model on text data: the ladder's text levels
    described: dict[str, Any] = field(default_factory=dict)  # model class, parameters, data

    def trials_note(self) -> str:
        """One line on what the runs are independent draws of."""
        if self.victims_fixed:
            return ("data.indices is fixed, so the runs are not independent victim draws: they "
                    "measure the attack on those samples over independent client, defense and "
                    "attack randomness")
        return "each run attacks its own victim samples, drawn without replacement"

    @property
    def fedavg(self) -> bool:
        return self.cfg.client.protocol == "fedavg"

    @property
    def generator(self) -> str | None:
        return self.user_attack.get("attack.generator")

    @property
    def lm_prior(self) -> str | None:
        return self.user_attack.get("attack.lm_prior")


def user_keys(config_file: str | None, overrides: list[str]) -> dict[str, Any]:
    """The dotted keys the user set, in order: the ``--config`` file, then ``key=value``."""
    keys: dict[str, Any] = {}
    if config_file is not None:
        keys.update(flatten(yaml.safe_load(Path(config_file).read_text()) or {}))
    keys.update(parse_override(item) for item in overrides)
    return keys


def read_setup(config_file: str | None, overrides: list[str]) -> Setup:
    """Resolve and validate the user's config, then build its scenario once to learn the victim's
    batch, whether the model has BatchNorm and its parameterised layers (data files, the user's
    model file and shapes are checked here, before any run)."""
    from torch import nn

    from gradleak.scenario import Scenario

    cfg = load_config(config_file, overrides)
    given = user_keys(config_file, overrides)
    setup = Setup(cfg=cfg,
                  user_attack={k: v for k, v in given.items()
                               if k.startswith("attack.") and k != "attack.name"},
                  user_fl={k: v for k, v in given.items() if k.startswith("fl.")})
    from gradleak.scenario_text import is_text_model_name

    base = _base(cfg)
    if is_text_model_name(cfg.model.name):  # probed with an attack of the model's kind
        base["attack.name"] = "token-set"
    probe = load_config(base=unflatten(base), trusted_base=True)  # no attack's needs
    sc = Scenario.from_config(probe)
    setup.num_samples = int(len(sc.labels))
    setup.dataset = sc.dataset
    setup.victims_fixed = cfg.data.indices is not None
    setup.text = bool(sc.text)
    setup.has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in sc.model.modules())
    setup.has_linear = any(isinstance(m, nn.Linear) for m in sc.model.modules())
    setup.layers = [(name, sum(p.numel() for p in m.parameters(recurse=False)))
                    for name, m in sc.model.named_modules()
                    if name and any(True for _ in m.parameters(recurse=False))]
    setup.described = describe_setup(sc)
    return setup


def describe_setup(sc: Any) -> dict[str, Any]:
    """What the audited model and data are, as the scenario built them: the model's class (the
    user's own module inside gradleak's input wrapper, a text model's Hugging Face class), its
    parameters, checkpoint and the data's description (source, size, channels, split)."""
    from gradleak.models import count_parameters

    inner = getattr(sc.model, "hf", None) or getattr(sc.model, "net", None) or sc.model
    cfg = sc.cfg
    return {"model_class": type(inner).__name__, "parameters": count_parameters(sc.model),
            "model_file": cfg.model.name if ".py:" in cfg.model.name else None,
            "checkpoint": cfg.model.checkpoint or (cfg.model.path or None),
            "data": sc.describe()["data"]}


def _base(cfg: Config) -> dict[str, Any]:
    """The user's setup without the attack, the threat model and the seed."""
    return {k: v for k, v in flatten(cfg.to_dict())
            if not k.startswith(("attack.", "threat.")) and k != "seed"}


def skipped(level: Level, setup: Setup) -> str | None:
    """Why ``level`` does not apply to ``setup`` (None: it runs)."""
    if level.needs == "generator" and not setup.generator:
        return NOT_RUN["generator"]
    if level.needs == "fedavg" and not setup.fedavg:
        return NOT_RUN["fedavg"]
    if level.needs == "batchnorm" and not setup.has_bn:
        return NOT_RUN["batchnorm"]
    if level.needs == "lm_prior" and not setup.lm_prior:
        return NOT_RUN["lm_prior"]
    return None


def level_config(ladder: Ladder, level: Level, setup: Setup, budget: dict[str, Any], *,
                 seed: int, extra: dict[str, Any] | None = None) -> Config:
    """The validated config of one run of ``level`` (``extra``: keys that win over all, e.g. a
    defense point or ``attack.layers``)."""
    items = _base(setup.cfg)
    items.update(flatten({"attack": budget.get("attack") or {}}))
    items.update(_keys_of(setup.user_attack, level.set.get("attack.name")))
    items.update(level.set)
    if setup.fedavg:
        items.update(level.fedavg_set)
    if level.labels != "known" and setup.has_linear:
        items["attack.labels"] = ladder.labels["one" if setup.num_samples == 1 else "many"]
    elif level.labels != "known":  # nothing to infer labels from: granted (see LABELS_GRANTED)
        items.update({"attack.labels": "known", "threat.knows_labels": True})
    items.update(extra or {})
    # The base holds both names of an aliased key (defense.dp_* and fl.dp_*): a key set here
    # sets its alias too, or the stale one could win when the tree is read back.
    items.update({ALIASES[k]: v for k, v in (extra or {}).items() if k in ALIASES})
    items["seed"] = seed
    try:
        return load_config(base=unflatten(items), trusted_base=True)  # the user's own input
    except GradleakError as exc:
        raise GradleakError(f"audit level {level.name}: {exc}") from None


def _keys_of(keys: dict[str, Any], attack: str | None) -> dict[str, Any]:
    """The user's ``attack.*`` keys that the level's attack has (a text ladder mixes families:
    ``attack.lm_prior`` is LAMP's, not DAGER's)."""
    import dataclasses

    from gradleak.attack_settings import section_class

    if attack is None:
        return dict(keys)
    names = {f.name for f in dataclasses.fields(section_class(attack))}
    return {k: v for k, v in keys.items() if k.split(".", 1)[1] in names}


def check_user_attack_keys(ladder: Ladder, setup: Setup) -> None:
    """One line when a user ``attack.*`` key is a setting of no attack of the ladder: every level
    would drop it (:func:`_keys_of`), so the audit would silently ignore what the user asked."""
    import dataclasses

    from gradleak.attack_settings import section_class

    attacks = [lv.set.get("attack.name") for lv in ladder.levels]
    if not setup.user_attack or any(a is None for a in attacks):
        return
    names = {f.name for a in dict.fromkeys(attacks) for f in dataclasses.fields(section_class(a))}
    for key in setup.user_attack:
        if key.split(".", 1)[1] not in names:
            raise GradleakError(f"{key} is a setting of none of this audit's attacks "
                                f"({', '.join(dict.fromkeys(attacks))}): every level would "
                                "ignore it; drop it (see `gradleak attacks`)")


@dataclass(frozen=True)
class Trial:
    """One independent trial: a scenario seed and its victim samples (None: ``data.indices``)."""

    seed: int
    victims: list[int] | None

    def keys(self) -> dict[str, Any]:
        return {} if self.victims is None else {"data.indices": list(self.victims)}


def draw_trials(setup: Setup, count: int) -> list[Trial]:
    """``count`` trials (fewer when the data runs out of distinct victims): seeds ``seed + i``,
    victims drawn in one draw of ``count x N`` samples without replacement from the victim seed
    stream of the audit's seed, with the victim selection's own rule (``data.distinct_labels``,
    whole photos first), then cut into consecutive groups of N."""
    base, n = setup.cfg.seed, setup.num_samples
    if setup.victims_fixed or setup.dataset is None:
        return [Trial(base + i, None) for i in range(count)]
    count = max(1, min(count, len(setup.dataset) // n))
    pool_cfg = replace(setup.cfg.data, num_samples=count * n, indices=None)
    with warnings.catch_warnings():  # labels may repeat across trials; within one they stay apart
        warnings.simplefilter("ignore")
        _, _, pool = select_victim_samples(setup.dataset, pool_cfg,
                                           seed=SeedStreams.from_seed(base).victim)
    return [Trial(base + i, pool[i * n:(i + 1) * n]) for i in range(count)]
