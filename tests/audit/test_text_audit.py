"""The audit for text (issue 27): a ladder of Sec. 7's attacks on the user's language model,
verdicts by the same rule and the same verdict.json schema as the image audit."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")

from gradleak.cli import main  # noqa: E402

TEXT = ["data.dataset=personal", "data.max_length=8", "model.name=gpt2-tiny",
        "model.hidden_size=64", "model.heads=2"]
IMAGE = ["model.name=mlp", "model.hidden=[16]", "data.resolution=8", "attack.iterations=20"]


def _audit(out, *args):
    return main(["audit", "--out", str(out), "--budget", "quick", "--seeds", "3",
                 "--max-seeds", "3", "--quiet", "--no-recommend", *args])


@pytest.fixture(scope="module")
def text_audit(tmp_path_factory):
    out = tmp_path_factory.mktemp("text")
    code = _audit(out, *TEXT, "attack.iterations=40", "--fail-on-leak")
    return code, out, json.loads((out / "verdict.json").read_text())


def test_dager_level_leaks_and_the_gate_fails(text_audit):
    code, _, verdict = text_audit
    levels = {lv["name"]: lv for lv in verdict["levels"]}
    assert [lv["level"] for lv in verdict["levels"]] == [0, 1, 2, 3]
    assert levels["L0-dager"]["verdict"] == "leaks" and levels["L0-dager"]["runs_leaked"] == 3
    assert verdict["verdict"] == "leaks" and code == 1
    assert levels["L2-lamp"]["verdict"] == "not run" and "lm_prior" in levels["L2-lamp"]["reason"]
    assert levels["L3-replay"]["verdict"] == "not run"  # FedSGD
    best = levels["L0-dager"]["best"]
    assert best["rouge1"] == 1.0 and best["original"] == best["reconstruction"]
    assert verdict["thresholds"] == {"rouge1": 0.9, "semantic": 0.9}
    assert verdict["setup"]["modality"] == "text" and verdict["setup"]["max_length"] == 8


def test_the_report_shows_the_sentences(text_audit):
    _, out, _ = text_audit
    md = (out / "report.md").read_text()
    assert "A sentence is *leaked* when ROUGE-1 >= 0.9" in md
    assert "best ROUGE-1 / semantic" in md and "original (recovered words in bold)" in md
    assert "Audited: model gpt2-tiny, dataset personal, max_length 8" in md


def test_the_verdict_schema_is_the_image_audits(text_audit, tmp_path):
    _, _, text = text_audit
    _audit(tmp_path / "image", *IMAGE)
    image = json.loads((tmp_path / "image" / "verdict.json").read_text())
    assert set(text) == set(image)
    ran = [lv for lv in image["levels"] if lv["verdict"] != "not run"]
    text_ran = [lv for lv in text["levels"] if lv["verdict"] != "not run"]
    assert {k for lv in text_ran for k in lv} == {k for lv in ran for k in lv}
    assert set(text["budget"]) == set(image["budget"]) and set(text["rule"]) == set(image["rule"])


def test_lora_configurations_are_searched_below_the_clients_own_rank():
    from types import SimpleNamespace

    from gradleak.audit.search import LORA, defense_keys, lora_points

    assert [p.value for p in lora_points([4, 64, 16], 0)] == [64, 16, 4]  # weakest first
    assert [p.value for p in lora_points([64, 16, 4], 16)] == [4]
    assert lora_points([64, 16, 4], 4) == []
    (point,) = lora_points([8], 0)
    assert point.defense == LORA and point.key == "lora-rank=8"
    setup = SimpleNamespace(fedavg=False)
    assert defense_keys(point, setup) == {"defense.name": "none", "model.lora_rank": 8}


def test_the_ladder_lists_lora_ranks_for_text_and_an_audit_accepts_them():
    from gradleak.audit.ladder import load_ladder
    from gradleak.config import load_config

    rec = load_ladder().recommend
    assert rec["lora_ranks"] == [64, 16, 4] and rec["grids"]["quick"]["lora"] == [16, 4]
    cfg = load_config(None, [*TEXT, "model.lora_rank=16"])  # each rank is a valid model config
    assert cfg.model.lora_rank == 16


def test_a_user_attack_key_no_level_uses_is_refused_not_dropped():
    from types import SimpleNamespace

    from gradleak.audit.ladder import check_user_attack_keys, load_ladder
    from gradleak.errors import GradleakError

    ladder = load_ladder().for_setup(SimpleNamespace(text=True))
    check_user_attack_keys(ladder, SimpleNamespace(user_attack={"attack.rank_tolerance": 0.1,
                                                                "attack.lm_weight": 0.2}))
    with pytest.raises(GradleakError, match="attack.bogus is a setting of none of this audit's "
                                            "attacks"):
        check_user_attack_keys(ladder, SimpleNamespace(user_attack={"attack.bogus": 1}))


def test_gradleak_report_rerenders_an_audit_folder(text_audit):
    _, out, verdict = text_audit
    (out / "index.html").unlink()
    assert main(["report", str(out)]) == 0
    assert f"gradleak audit: {verdict['verdict']}" in (out / "index.html").read_text()
