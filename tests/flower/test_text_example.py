"""The Flower text example (examples/flower_text): 2 clients, 1 round of LoRA fine-tuning of the
tiny GPT-2 in Flower's simulation engine, audited by DAGER through LeakageAuditStrategy."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("flwr")
pytest.importorskip("ray")
pytest.importorskip("peft")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "flower_text"
NAMES = ("task", "client_app", "server_app", "run")  # the image example uses the same names


def test_the_text_example_runs_and_its_audit_reads_every_sentence(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", "")
    monkeypatch.setenv("EXAMPLE_CLIENTS", "2")  # run.main sets it; restored afterwards
    for name in NAMES:
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.syspath_prepend(str(EXAMPLE))
    try:
        import run

        records = run.main(["--clients", "2", "--rounds", "1", "--out", str(tmp_path), "--cpus", "1"])
    finally:
        for name in NAMES:
            sys.modules.pop(name, None)
    assert len(records) == 2 and all(r["rouge1"] == 1.0 and r["leak_rate"] == 1.0 for r in records)
    out = capsys.readouterr().out
    assert "round 1 (Flower's train metrics): 2 of 2 updates leak text, ROUGE-1 1.00" in out
    assert "held-out perplexity" in out
    assert len(list(tmp_path.glob("*/round_0001/*.txt"))) == 2
