"""Text models: the shipped MiniLM, the tiny GPT-2, and the user's own Hugging Face directory,
loaded from safetensors only and never with remote code; bad directories get one line."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from gradleak.cli import main
from gradleak.config import ModelConfig, load_config
from gradleak.errors import GradleakError
from gradleak.models.hf import TEXT_MODELS, build_text_model, check_max_length, is_text_model_name
from gradleak.scenario import Scenario

SMALL = {"hidden_size": 32, "layers": 2, "heads": 2}


def _cfg(name: str, **kw) -> ModelConfig:
    return ModelConfig(name=name, **{**SMALL, **kw})


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory):
    """A user's causal LM directory, as ``save_pretrained`` writes it (safetensors + tokenizer)."""
    model = build_text_model(_cfg("gpt2-tiny"), num_classes=2, seed=4)
    out = tmp_path_factory.mktemp("hf") / "my-lm"
    model.hf.save_pretrained(out, safe_serialization=True)
    model.tokenizer.hf.save_pretrained(out)
    return out, model


def test_registry_lists_the_text_models():
    assert {"minilm", "gpt2-tiny", "hf"} <= set(TEXT_MODELS.names())
    assert is_text_model_name("hf:/some/dir") and not is_text_model_name("convnet")


def test_minilm_is_the_pretrained_encoder_with_a_seeded_head():
    a = build_text_model(ModelConfig(name="minilm"), num_classes=3, seed=0)
    b = build_text_model(ModelConfig(name="minilm"), num_classes=3, seed=0)
    assert a.task == "classification" and a.hidden_size == 384 and a.num_classes == 3
    assert torch.equal(a.hf.classifier.weight, b.hf.classifier.weight)  # same seed, same head
    x = a.tokenizer.encode(["a cat sat on the mat", "hi"], max_length=10)
    assert a(x).shape == (2, 3)


def test_gpt2_tiny_is_seeded_and_takes_causal_lm_batches():
    a = build_text_model(_cfg("gpt2-tiny"), num_classes=2, seed=1)
    b = build_text_model(_cfg("gpt2-tiny"), num_classes=2, seed=1)
    c = build_text_model(_cfg("gpt2-tiny"), num_classes=2, seed=2)
    assert a.task == "causal_lm" and a.hf.config.tie_word_embeddings
    sd_a, sd_b, sd_c = (m.hf.state_dict() for m in (a, b, c))
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    assert not torch.equal(sd_a["transformer.h.0.attn.c_attn.weight"],
                           sd_c["transformer.h.0.attn.c_attn.weight"])
    x = a.tokenizer.encode(["the dog runs", "a bird"], max_length=8)
    logits, targets = a(x), a.targets(x, torch.zeros(2, dtype=torch.long))
    assert logits.shape == (2, a.tokenizer.vocab_size, 7) and targets.shape == (2, 7)
    assert (targets[x[:, 1, 1:] == 0] == -100).all()


def test_the_users_directory_loads_the_same_weights(user_dir):
    path, original = user_dir
    for cfg in (ModelConfig(name=f"hf:{path}"), ModelConfig(name="hf", path=str(path)),
                ModelConfig(name="gpt2-tiny", path=str(path))):
        loaded = build_text_model(cfg, num_classes=2, seed=9)
        assert loaded.task == "causal_lm"
        x = loaded.tokenizer.encode(["a quiet river", "the end"], max_length=8)
        assert torch.allclose(loaded(x), original(x), atol=1e-6)


def test_the_users_directory_as_a_classifier_gets_a_new_head(user_dir):
    path, _ = user_dir
    model = build_text_model(ModelConfig(name=f"hf:{path}", task="classification"),
                             num_classes=4, seed=0)
    assert model.task == "classification" and model.num_classes == 4


def _broken(src, tmp_path, name):
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("case, fragment", [
    ("no-safetensors", "no *.safetensors"),
    ("pickle-only", "found pytorch_model.bin"),
    ("auto-map", "auto_map"),
    ("no-tokenizer", "no tokenizer"),
    ("unknown-type", "model_type"),
    ("no-config", "no config.json"),
    ("missing", "is not a folder"),
])
def test_bad_model_directories_are_refused_in_one_line(user_dir, tmp_path, case, fragment):
    path = _broken(user_dir[0], tmp_path, case)
    if case in ("no-safetensors", "pickle-only"):
        for f in path.glob("*.safetensors"):
            f.unlink()
        if case == "pickle-only":
            (path / "pytorch_model.bin").write_bytes(b"not loaded")
    elif case in ("auto-map", "unknown-type"):
        config = json.loads((path / "config.json").read_text())
        if case == "auto-map":
            config["auto_map"] = {"AutoModel": "evil.Model"}
        else:
            config["model_type"] = "my-own-arch"
        (path / "config.json").write_text(json.dumps(config))
    elif case == "no-tokenizer":
        for f in path.iterdir():
            if "token" in f.name or f.name in ("vocab.json", "merges.txt"):
                f.unlink()
    elif case == "no-config":
        (path / "config.json").unlink()
    else:
        shutil.rmtree(path)
    with pytest.raises(GradleakError) as err:
        build_text_model(ModelConfig(name=f"hf:{path}"), num_classes=2, seed=0)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_a_tokenizer_with_remote_code_is_refused(user_dir, tmp_path):
    path = _broken(user_dir[0], tmp_path, "tok-auto-map")
    tc = json.loads((path / "tokenizer_config.json").read_text())
    tc["auto_map"] = {"AutoTokenizer": ["evil.Tok", None]}
    (path / "tokenizer_config.json").write_text(json.dumps(tc))
    with pytest.raises(GradleakError, match="auto_map"):
        build_text_model(ModelConfig(name=f"hf:{path}"), num_classes=2, seed=0)


def test_sequence_length_over_the_models_positions_is_refused():
    model = build_text_model(_cfg("gpt2-tiny"), num_classes=2, seed=0)
    check_max_length(model, 128)
    with pytest.raises(GradleakError, match="data.max_length"):
        check_max_length(model, 129)


@pytest.mark.parametrize("args, fragment", [
    (["model.name=hf:/nonexistent/model"], "/nonexistent/model"),
    (["model.name=hf"], "model.path=DIR"),
    (["model.name=gpt2-tiny", "data.max_length=4096"], "data.max_length"),
    (["model.name=minilm", "model.task=causal_lm"], "model.task"),
])
def test_cli_bad_text_models_exit_2_in_one_line(tmp_path, capsys, args, fragment):
    code = main(["attack", "--quiet", "--out", str(tmp_path / "o"), "data.dataset=personal",
                 "attack.name=token-set", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and fragment in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_scenario_from_config_with_the_users_directory(user_dir):
    path, _ = user_dir
    cfg = load_config(None, ["data.dataset=personal", f"model.name=hf:{path}",
                             "attack.name=dager", "data.num_samples=2", "data.max_length=12"])
    out = Scenario.from_config(cfg).run()
    assert out.result["scenario"]["dataset"] == "personal"
    assert out.result["metrics"]["rouge1"] == 1.0
