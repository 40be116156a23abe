"""`gradleak train-lm`: gpt2-tiny trained on WordNet sentences, saved as a loadable HF directory,
resumed exactly, and bad input refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
if not Path("/usr/share/wordnet/data.noun").is_file():
    pytest.skip("WordNet 3.0 (wordnet-base) is not installed", allow_module_level=True)

from gradleak.cli import main  # noqa: E402
from gradleak.config import DataConfig, ModelConfig  # noqa: E402
from gradleak.models import train_lm as train_lm_module  # noqa: E402
from gradleak.models.train_lm import STATE, LMTraining, train_lm  # noqa: E402

DATA = DataConfig(dataset="wordnet-examples")
TINY = dict(batch_size=8, max_length=24, hidden_size=32, layers=1, heads=2, warmup=5, lr=3e-3)
TINY_CLI = ["--batch-size", "8", "--max-length", "24", "--hidden-size", "32", "--layers", "1",
            "--heads", "2", "--warmup", "2", "--quiet"]


@pytest.fixture(scope="module", autouse=True)
def home(tmp_path_factory):
    """One GRADLEAK_HOME for the module: the WordNet BPE trains once."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRADLEAK_HOME", str(tmp_path_factory.mktemp("home")))
        yield


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("lm")
    return train_lm(DATA, out, LMTraining(steps=30, checkpoint_every=10, **TINY), progress=False)


def test_training_lowers_the_loss_and_reports(trained):
    report = trained.report
    assert trained.start_step == 0 and trained.step == 30
    assert report["loss_final"] < report["loss_first"] - 0.5
    assert report["loss_first"] == pytest.approx(torch.log(torch.tensor(8192.0)).item(), abs=0.3)
    assert 0 < report["heldout"]["perplexity"] < 8192 / 2
    assert report["heldout"]["sentences"] == 256 and report["heldout"]["tokens"] > 256
    on_disk = json.loads((trained.out / "training.json").read_text())
    assert on_disk["settings"]["hidden_size"] == 32 and on_disk["steps"] == 30
    assert on_disk["data"]["dataset"] == "wordnet-examples" and "transformers" in on_disk["versions"]


def test_saved_directory_loads_with_the_trained_weights(trained):
    from transformers import GPT2LMHeadModel

    from gradleak.models.hf import build_text_model
    from gradleak.models.hf_load import check_model_dir

    out = trained.out
    check_model_dir(out)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    assert not list(out.glob(".*")), "temporary files left behind"
    model = trained.model.eval()
    x = model.tokenizer.encode(["the dog barked at the mailman", "a cat"], max_length=16)
    with torch.no_grad():
        want = model(x)
        hf = GPT2LMHeadModel.from_pretrained(str(out)).eval()
        logits = hf(input_ids=x[:, 0], attention_mask=x[:, 1]).logits[:, :-1].transpose(1, 2)
        assert torch.equal(logits, want)
        for cfg in (ModelConfig(name="gpt2-tiny", path=str(out)), ModelConfig(name=f"hf:{out}")):
            loaded = build_text_model(cfg, num_classes=2, seed=1).eval()
            assert loaded.task == "causal_lm"
            assert torch.equal(loaded.tokenizer.encode(["a cat"], max_length=16),
                               model.tokenizer.encode(["a cat"], max_length=16))
            assert torch.equal(loaded(x), want)


def test_a_finished_run_does_nothing_more(trained):
    again = train_lm(DATA, trained.out, LMTraining(steps=30, checkpoint_every=10, **TINY),
                     progress=False)
    assert again.start_step == again.step == 30
    assert again.report["loss_final"] == trained.report["loss_final"]


def test_interrupted_run_resumes_bit_identically(tmp_path, monkeypatch):
    settings = LMTraining(steps=20, checkpoint_every=5, **TINY)
    whole = train_lm(DATA, tmp_path / "whole", settings, progress=False)

    real_step, calls = train_lm_module._step, []

    def crash_at_13(*args, **kwargs):
        calls.append(1)
        if len(calls) == 13:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train_lm_module, "_step", crash_at_13)
    with pytest.raises(KeyboardInterrupt):
        train_lm(DATA, tmp_path / "cut", settings, progress=False)
    monkeypatch.setattr(train_lm_module, "_step", real_step)
    assert not (tmp_path / "cut" / "config.json").exists()

    resumed = train_lm(DATA, tmp_path / "cut", settings, progress=False)
    assert resumed.start_step == 10 and resumed.step == 20
    a, b = whole.model.hf.state_dict(), resumed.model.hf.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.report["loss_final"] == whole.report["loss_final"]


def test_other_settings_refuse_to_resume(trained, tmp_path):
    from gradleak.errors import GradleakError

    with pytest.raises(GradleakError, match=r"lr 0\.003 -> 0\.01"):
        train_lm(DATA, trained.out, LMTraining(steps=30, **{**TINY, "lr": 1e-2}), progress=False)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / STATE).write_bytes(b"not a checkpoint")
    with pytest.raises(GradleakError, match="--fresh"):
        train_lm(DATA, bad, LMTraining(steps=2, **TINY), progress=False)


def test_cli_trains_and_says_how_to_use_it(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["train-lm", "--out", str(out), "--steps", "3", *TINY_CLI]) == 0
    printed = capsys.readouterr().out
    assert f"use: model.name=gpt2-tiny model.path={out}" in printed
    assert json.loads((out / "training.json").read_text())["steps"] == 3


@pytest.mark.parametrize("args, fragment", [
    (["--steps", "0"], "--steps"),
    (["model.name=x"], "only data.* keys"),
    (["--hidden-size", "32", "--heads", "3"], "must divide"),
    (["data.max_length=64"], "--max-length"),
    (["data.split=test"], "train split"),
    (["data.dataset=nosuch"], "nosuch"),
])
def test_cli_bad_input_exits_2_with_one_line(tmp_path, capsys, args, fragment):
    assert main(["train-lm", "--out", str(tmp_path / "x"), "--quiet", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "x").exists()
