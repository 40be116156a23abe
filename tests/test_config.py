import pytest

from gradleak.config import Config, load_config, set_key, valid_keys
from gradleak.errors import GradleakError

CONTRACT_KEYS = [
    "data.dataset", "data.resolution", "data.num_samples", "data.root", "model.name",
    "client.protocol", "client.local_epochs", "client.batch_size", "client.lr", "attack.name",
    "attack.iterations", "attack.lr", "attack.tv", "attack.restarts", "attack.labels",
    "threat.knows_client_config", "defense.name", "seed", "device",
]


def test_contract_keys_exist():
    assert set(CONTRACT_KEYS) <= set(valid_keys())


def test_defaults():
    cfg = Config()
    assert cfg.data.dataset == "skimage"
    assert cfg.attack.name == "ig"
    assert cfg.defense.name == "none"


def test_overrides_are_typed():
    cfg = load_config(None, ["attack.iterations=12", "client.lr=0.5", "model.norm=none",
                             "threat.knows_client_config=true", "data.root=/tmp/x",
                             "model.hidden=[8, 4]", "client.batch_size=null"])
    assert cfg.attack.iterations == 12 and isinstance(cfg.attack.iterations, int)
    assert cfg.client.lr == 0.5
    assert cfg.threat.knows_client_config is True
    assert cfg.data.root == "/tmp/x"
    assert cfg.model.hidden == [8, 4]
    assert cfg.client.batch_size is None


@pytest.mark.parametrize("item, fragment", [
    ("attack.nope=1", "unknown config key 'attack.nope'"),
    ("attack.labels=psychic", "allowed: known, idlg, yin"),
    ("client.protocol=fedprox", "allowed: fedsgd, fedavg"),
    ("attack.iterations=many", "bad value 'many' for attack.iterations: expected int"),
    ("attack.iterations=0", "must be >= 1"),
    ("seed", "expected key=value"),
])
def test_bad_input_is_one_clear_line(item, fragment):
    with pytest.raises(GradleakError) as info:
        load_config(None, [item])
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_yaml_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("attack:\n  iterations: 7\n  tv: 0.01\nseed: 3\n")
    cfg = load_config(path, ["seed=4"])
    assert (cfg.attack.iterations, cfg.attack.tv, cfg.seed) == (7, 0.01, 4)


def test_missing_config_file():
    with pytest.raises(GradleakError, match="does not exist"):
        load_config("/nonexistent/c.yaml")


def test_digest_is_stable_and_sensitive():
    a, b = Config(), Config()
    assert a.digest() == b.digest()
    set_key(b, "seed", 1)
    assert a.digest() != b.digest()


def test_roundtrip_through_dict():
    cfg = load_config(None, ["model.name=mlp", "attack.restarts=3"])
    assert load_config(base=cfg.to_dict()).to_dict() == cfg.to_dict()
