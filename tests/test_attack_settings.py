"""Typed attack settings: each family declares its keys; built-in keys, defaults and config digests
stay what they were; a plug-in's own keys work from the CLI, presets and sweeps, and only there."""

from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path

import pytest

from gradleak import attack_settings
from gradleak.attack_settings import (
    AttackConfig,
    AttackSettings,
    GGLSettings,
    GIASSettings,
    ImprintSettings,
    MatchingSettings,
    ROGSettings,
    register_settings,
)
from gradleak.attacks import ATTACKS, build_attack
from gradleak.cli import main
from gradleak.config import Config, config_from_dict, load_config, set_key
from gradleak.errors import GradleakError
from gradleak.plugins import load_plugins

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "plugins" / "my_plugin.py"

# Digests of resolved configs: sweeps resume on them. Recorded at 18a9afe (before typed settings),
# re-recorded when metrics.baseline_pool joined the config (issue 21): a run scored with the old
# leak criterion (thresholds only, no update-free baselines) must not be reused as a new one.
KNOWN_DIGESTS = {
    (): "17d10550bf0462d2",
    ("attack.name=rog",): "9915f88e73bc25f6",
    ("attack.name=gias", "attack.generator=g.pt"): "540aae154a0ba2ac",
    ("attack.name=ggl",): "5a26dfb2274cecb5",
    ("attack.name=imprint", "model.name=mlp"): "e4878d5d812fcc46",
    ("attack.name=dlg", "data.num_samples=2"): "28900c7c0ec4cf87",
    ("attack.name=analytic",): "06d494a4d1aa2abd",
    ("attack.name=gradinversion",): "9450ee831b53e4ac",
}

# Every attack.* key that existed before, with its default (contract: same key, same meaning).
LEGACY_DEFAULTS = {
    "name": "ig", "iterations": 2000, "lr": 0.1, "tv": 1e-4, "tv_border": "none", "restarts": 1,
    "labels": "known", "init": "randn", "lr_decay": True, "bins": 64, "distance": "cosine",
    "distance_scale": 1.0, "optimizer": "adam", "signed": True, "box": True, "l2": 0.0, "bn": 0.0,
    "bn_source": "client", "layers": None, "learn_labels": False, "keep": "last", "group": 1,
    "group_weight": 0.01, "group_every": 100, "stop": False, "stop_tolerance": 1e-3,
    "stop_window": 100, "max_seconds": None, "compile": False, "batch_restarts": "auto",
    "generator": None, "latent_iterations": 400, "generator_iterations": 600,
    "generator_lr": 1e-3, "ggl_budget": 2000, "adaptive": False, "rog_scale": 4,
    "postprocess": None,
}
# Keys added since, marked ``added`` (at their default they stay out of the config digest).
ADDED_DEFAULTS = {"stop_test": "settled", "race": False, "race_keep": 0.5, "race_first": None}


@pytest.fixture(scope="module")
def plugin():
    load_plugins([str(EXAMPLE)], env=False)


@pytest.mark.parametrize("overrides", sorted(KNOWN_DIGESTS))
def test_known_config_digests_are_unchanged(overrides):
    assert load_config(None, list(overrides)).digest() == KNOWN_DIGESTS[overrides]


def test_the_attack_section_keeps_every_key_and_default():
    assert dataclasses.asdict(AttackConfig()) == LEGACY_DEFAULTS | ADDED_DEFAULTS
    assert Config().to_dict()["attack"] == LEGACY_DEFAULTS | ADDED_DEFAULTS
    fields = {f.name: f for f in dataclasses.fields(AttackConfig)}
    assert all(fields[k].metadata["added"] for k in ADDED_DEFAULTS)


def test_each_builtin_family_declares_exactly_the_keys_it_reads():
    families = {"analytic": AttackSettings, "imprint": ImprintSettings, "ggl": GGLSettings,
                "gias": GIASSettings, "rog": ROGSettings, "ig": MatchingSettings,
                "dlg": MatchingSettings, "idlg": MatchingSettings, "gradinversion": MatchingSettings}
    assert set(ATTACKS.names()) >= set(families)
    for name, settings in families.items():
        assert ATTACKS.get(name).settings is settings
    assert "bins" not in MatchingSettings.names() and "iterations" not in GIASSettings.names()
    assert set(ROGSettings.names()) - set(MatchingSettings.names()) == {"rog_scale", "postprocess"}
    union = set().union(*(s.names() for s in families.values()))
    assert union == set(LEGACY_DEFAULTS) | set(ADDED_DEFAULTS)


def test_rog_passes_every_engine_option():
    cfg = load_config(None, ["attack.name=rog", "attack.rog_scale=2", "attack.stop=true",
                             "attack.stop_window=7", "attack.max_seconds=5",
                             "attack.batch_restarts=off", "attack.keep=best", "attack.group=2"])
    rog = build_attack(cfg.attack)
    assert (rog.rog_scale, rog.stop, rog.stop_window, rog.max_seconds) == (2, True, 7, 5.0)
    assert (rog.batch_restarts, rog.keep, rog.group, rog.lr) == ("off", "best", 2, 0.05)


def test_families_build_from_their_settings():
    ggl = build_attack(load_config(None, ["attack.name=ggl", "attack.ggl_budget=33",
                                          "attack.adaptive=true"]).attack)
    assert (ggl.ggl_budget, ggl.labels, ggl.adaptive) == (33, "idlg", True)
    gias = build_attack(load_config(None, ["attack.name=gias", "attack.latent_iterations=9"]).attack)
    assert (gias.iterations, gias.generator_iterations, gias.signed) == (9, 600, False)
    assert build_attack(load_config(None, ["attack.name=imprint", "attack.bins=5"]).attack).bins == 5
    with pytest.raises(GradleakError, match="group consistency"):
        build_attack(load_config(None, ["attack.name=gias", "attack.group=2"]).attack)


def test_unknown_attack_key_names_the_key_and_the_attacks_keys():
    with pytest.raises(GradleakError) as err:
        load_config(None, ["attack.name=imprint", "attack.nope=1"])
    msg = str(err.value)
    assert "'attack.nope'" in msg and "for attack 'imprint'" in msg
    assert "allowed for imprint: name, labels, adaptive, bins" in msg and "\n" not in msg


def test_plugin_keys_from_cli_preset_and_python(plugin, tmp_path, capsys):
    cfg = load_config(None, ["attack.level=0.25", "attack.name=flat_guess"])  # order is free
    assert cfg.attack.level == 0.25 and cfg.attack.labels == "llg"  # llg: the plug-in's preset
    assert build_attack(cfg.attack).level == 0.25
    assert load_config(None, ["attack.name=flat_guess"]).attack.level == 0.5
    assert config_from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()
    assert pickle.loads(pickle.dumps(cfg)).attack.level == 0.25
    assert cfg.digest() != load_config(None, ["attack.name=flat_guess"]).digest()
    with pytest.raises(GradleakError, match="attack.level"):
        load_config(None, ["attack.name=flat_guess", "attack.level=2"])
    assert main(["config", "attack.name=flat_guess", "attack.level=0.75"]) == 0
    assert "level: 0.75" in capsys.readouterr().out
    # The same key without the plug-in's attack: one line, exit 2, naming the attack that has it.
    assert main(["attack", "--out", str(tmp_path / "x"), "attack.level=0.3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'attack.level' for attack 'ig'" in err
    assert "a setting of attack flat_guess" in err and "allowed for ig:" in err


def test_changing_the_attack_name_retypes_the_section(plugin):
    cfg = Config()
    set_key(cfg, "attack.iterations", 7)
    set_key(cfg, "attack.name", "flat_guess")
    assert cfg.attack.level == 0.5 and cfg.attack.iterations == 7
    set_key(cfg, "attack.level", 0.1)
    set_key(cfg, "attack.name", "ig")
    assert not hasattr(cfg.attack, "level") and type(cfg.attack) is AttackConfig


def test_plugin_keys_in_a_sweep(plugin, tmp_path):
    spec = tmp_path / "levels.yaml"
    spec.write_text(
        'title: "grey levels"\ntests: "attack.level reaches the runs"\ninsight: "none"\n'
        "kind: attack\nbase: {attack.name: flat_guess, model.name: tiny_cnn, model.width: 4,\n"
        "       data.dataset: stripes, data.resolution: 16, threat.knows_labels: false}\n"
        "grid: {attack.level: [0.0, 1.0]}\nseeds: [0]\n"
        "profiles: {quick: {seeds: [0]}, paper: {seeds: [0]}}\n")
    out = tmp_path / "sweep"
    assert main(["experiment", "run", str(spec), "--out", str(out), "--quiet"]) == 0
    from gradleak.runs.store import ResultStore

    with ResultStore(out) as store:
        rows = store.rows(status="ok")
    assert sorted(r["attack.level"] for r in rows) == [0.0, 1.0]
    psnr = {r["attack.level"]: r["psnr"] for r in rows}
    assert psnr[0.0] != psnr[1.0]  # the setting changed what the attack did
    bad = tmp_path / "bad.yaml"
    bad.write_text(spec.read_text().replace("attack.name: flat_guess, ", ""))
    assert main(["experiment", "run", str(bad), "--out", str(tmp_path / "b"), "--quiet"]) == 2


def test_register_settings_refuses_bad_or_conflicting_settings(tmp_path):
    with pytest.raises(GradleakError, match="dataclass"):
        register_settings("x_bad", dict)  # type: ignore[arg-type]
    with pytest.raises(GradleakError, match="already has settings"):
        register_settings("ig", ROGSettings)
    with pytest.raises(GradleakError, match="does not exist"):
        register_settings("x_missing", AttackSettings, preset=tmp_path / "none.yaml")
    assert "x_bad" not in attack_settings._SETTINGS
    json.dumps(Config().to_dict())  # the section stays plain data


def test_presets_set_only_their_familys_keys():
    """Presets stay data and name only keys their attack reads. ggl.yaml's distance and tv are
    unused by GGL but stay: removing them would change every stored GGL run's config digest."""
    from gradleak.config import attack_preset

    kept_for_digests = {"ggl": {"distance", "tv"}}
    for name in ATTACKS.names():
        preset = set(attack_preset(name).get("attack", {}))
        stray = preset - set(ATTACKS.get(name).settings.names()) - kept_for_digests.get(name, set())
        assert not stray, f"{name}.yaml sets keys {name} does not read: {sorted(stray)}"


# -- the settings object an attack holds ----------------------------------------------------------


def test_an_attack_holds_one_checked_settings_object():
    from gradleak.attacks.optimization import GradientMatchingAttack

    ig = ATTACKS.get("ig")(iterations=5, tv=0.0)
    assert type(ig.config) is MatchingSettings and (ig.iterations, ig.tv) == (5, 0.0)
    assert ig.config.lr == MatchingSettings().lr  # the dataclass's defaults, no constructor's
    ig.iterations = 7  # an attribute write replaces the settings with a checked copy
    assert ig.config.iterations == 7 and "iterations" not in vars(ig)
    with pytest.raises(GradleakError, match=r"attack.keep; allowed: last, best"):
        ig.keep = "bogus"
    for bad, match in [({"keep": "bogus"}, "bad value 'bogus' for attack.keep; allowed: last, best"),
                       ({"group": 0}, "attack.group: must be >= 1"),
                       ({"lr": 0.0}, "attack.lr: expected a finite number > 0"),
                       ({"iterations": "many"}, "attack.iterations: expected int"),
                       ({"group": 2, "learn_labels": True}, "cannot be combined"),
                       ({"bins": 8}, "unknown setting 'bins' for attack 'GradientMatchingAttack'")]:
        with pytest.raises(GradleakError, match=match) as err:
            GradientMatchingAttack(**bad)
        assert "\n" not in str(err.value)
    with pytest.raises(GradleakError, match="bad value 1 for attack.bins: must be >= 2"):
        ATTACKS.get("imprint")(bins=1)
    with pytest.raises(GradleakError, match="attack.rog_scale: must be >= 1"):
        ATTACKS.get("rog")(rog_scale=0)


def test_keyword_construction_starts_from_the_attacks_preset():
    """``DLG()`` in Python is the DLG of ``gradleak attack attack.name=dlg``."""
    for name in ("dlg", "idlg", "gradinversion", "rog", "gias", "ggl", "ig", "analytic", "imprint"):
        cls = ATTACKS.get(name)
        built = build_attack(load_config(None, [f"attack.name={name}"]).attack).config
        assert cls().config == built == cls.from_settings(built).config, name
    dlg = ATTACKS.get("dlg")(iterations=3)
    assert (dlg.optimizer, dlg.distance, dlg.iterations, dlg.config.name) == ("lbfgs", "l2", 3, "dlg")


def test_from_config_reads_the_family_and_checks_its_rules():
    cfg = AttackConfig(name="ig", group=2, learn_labels=True)  # the section accepts any mix ...
    with pytest.raises(GradleakError, match="cannot be combined"):
        build_attack(cfg)  # ... the family refuses it
    with pytest.raises(GradleakError, match="cannot be combined"):
        load_config(None, ["attack.group=2", "attack.learn_labels=true"])
    gias = ATTACKS.get("gias").from_config(AttackConfig(name="gias", group=2, learn_labels=True,
                                                        latent_iterations=3))
    assert type(gias.config) is GIASSettings and gias.engine.iterations == 3
    assert (gias.engine.box, gias.engine.group) == (False, 1)


def test_the_engine_has_no_keyword_per_setting_constructor():
    import inspect

    from gradleak.attacks.optimization import GradientMatchingAttack

    builtin = ("analytic", "imprint", "ggl", "gias", "rog", "dlg", "idlg", "ig", "gradinversion")
    for cls in (GradientMatchingAttack, *(ATTACKS.get(n) for n in builtin)):
        params = set(inspect.signature(cls.__init__).parameters) - {"self", "config", "values"}
        assert not params & set(cls.settings.names()) - {"generator", "postprocess"}, cls


def test_plugin_attacks_hold_settings_or_take_keywords(plugin):
    flat = ATTACKS.get("flat_guess")(level=0.25)
    assert (flat.config.level, flat.labels) == (0.25, "llg")  # llg: the plug-in's preset
    with pytest.raises(GradleakError, match="bad value 2.0 for attack.level"):
        ATTACKS.get("flat_guess")(level=2.0)

    from gradleak.attacks.base import Attack

    class Legacy(Attack):  # the older style: a keyword per setting
        name = "x_legacy"

        def __init__(self, *, labels: str = "known") -> None:
            self.rule = labels

    assert Legacy.from_config(AttackConfig(labels="yin")).rule == "yin"
