"""`gradleak report`: the sweep's HTML page, checked as text and rendered in headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest
import yaml

from gradleak.commands.report import report_folder as render_report
from gradleak.errors import GradleakError
from gradleak.experiments.catalog import make_plan
from gradleak.runs.sweep import run_sweep

SPEC = {
    "title": "Tiny table", "tests": "LPIPS against N", "insight": "(Insight X) more samples leak less",
    "kind": "attack",
    "base": {"data.resolution": 16, "model.name": "mlp", "model.hidden": [16],
             "attack.iterations": 8, "attack.name": "ig"},
    "grid": {"data.num_samples": [1, 2]},
    "variants": {"O": {}},
    "seeds": [0, 1],
    "table": {"cols": "data.num_samples", "metric": "lpips", "also": ["psnr"]},
    "plot": {"x": "data.num_samples", "y": "lpips"},
    "verdict": {"rule": "trend", "metric": "lpips", "along": "data.num_samples",
                "direction": "increasing"},
    "paper": {"source": "Tab. 99, LPIPS", "columns": ["GIA", "N=1", "N=2"],
              "rows": [["O", 0.0123, 0.4567]]},
}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(SPEC))
    result = run_sweep(make_plan(str(path), "quick"), root / "sweep", progress=False)
    assert len(result.ok) == 4
    return root / "sweep"


def test_report_has_tables_paper_numbers_verdict_plot_and_images(sweep):
    page = render_report(sweep).read_text()
    assert "<h2 id='tiny'>Tiny table</h2>" in page
    assert "(Insight X) more samples leak less" in page
    assert "Our data:" in page and "Spearman" in page
    assert "0.4567" in page and "Tab. 99, LPIPS" in page  # the paper's numbers beside ours
    assert "data.num_samples=1" in page and "±" in page
    assert page.count("<table") >= 3  # ours (lpips, psnr) + the paper's
    assert len(re.findall(r"src='data:image/png;base64,", page)) >= 3  # plot + reconstructions
    assert "http://" not in page and "https://" not in page  # nothing fetched: opens offline
    assert "Evidence: 2 seeds" in page  # every verdict states its seeds, effect and interval
    found = json.loads((sweep / "verdicts.json").read_text())
    assert found[0]["experiment"] == "tiny" and found[0]["verdicts"][0]["seeds"] == 2


def test_report_of_a_folder_without_store_is_one_line_error(tmp_path):
    with pytest.raises(GradleakError, match="no results store"):
        render_report(tmp_path)


def test_report_renders_in_headless_chromium(sweep, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("GRADLEAK_REQUIRE_CHROMIUM"):
            pytest.fail("chromium is required here (make test installs Debian's chromium)")
        pytest.skip("chromium not installed")
    page = render_report(sweep)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([chromium, *flags, "--virtual-time-budget=5000", "--dump-dom",
                          page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    body = re.search(r"<body([^>]*)>", dom)
    assert body, dom[:500]
    loaded = int(re.search(r'data-images-loaded="(\d+)"', body.group(1)).group(1))
    tables = int(re.search(r'data-tables="(\d+)"', body.group(1)).group(1))
    assert loaded == len(re.findall(r"<img ", dom)) >= 3, "some image did not decode"
    assert tables >= 3
    shot = tmp_path / "page.png"
    subprocess.run([chromium, *flags, "--window-size=1000,1400", f"--screenshot={shot}",
                    page.as_uri()], capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 10_000  # a blank page compresses to ~2 kB


def test_tradeoff_plot_is_the_one_figure_definition(tmp_path, monkeypatch):
    """The HTML report's Fig. 11 is plots.tradeoff_figure, fed from the rows it was handed (the
    report reads no store), with the runs' own LPIPS threshold."""
    from gradleak.report import experiments as report_module
    from gradleak.report import plots

    seen = {}

    def spy(points, **kwargs):
        seen["points"], seen["kwargs"] = list(points), kwargs
        return plots.tradeoff_figure(points, **kwargs)

    monkeypatch.setattr(report_module, "tradeoff_figure", spy)
    (tmp_path / "plans").mkdir()
    plan = {"spec": {"plot": {"kind": "tradeoff"}, "table": {"cols": "variant", "metric": "lpips"}},
            "title": "trade-off", "runs": []}
    (tmp_path / "plans" / "t-quick.yaml").write_text(yaml.safe_dump(plan))
    rows = [{"run_id": f"r{i}", "experiment": "t", "profile": "quick", "status": "ok",
             "variant": v, "seed": 0, "labels": {}, "defense.name": d, "lpips": lp,
             "accuracy_drop": drop, "metrics.lpips_threshold": 0.15}
            for i, (v, d, lp, drop) in enumerate([("none", "none", 0.05, 0.0),
                                                   ("topk 0.9", "topk", 0.2, 1.5),
                                                   ("topk 0.99", "topk", 0.4, 6.0)])]
    page = report_module.render_report(tmp_path, rows).read_text()
    assert seen["kwargs"]["lpips_threshold"] == 0.15
    assert [(p["defense"], p["label"]) for p in seen["points"]][1] == ("topk", "topk 0.9")
    assert "alt='plot of t'" in page


def test_accuracy_drops_are_against_the_variant_named_none():
    from gradleak.report.experiments import derive

    rows = [{"variant": "none", "defense.name": "none", "seed": 0, "final_accuracy": 0.7},
            {"variant": "PRECODE", "defense.name": "none", "seed": 0, "final_accuracy": 0.5},
            {"variant": "top-k", "defense.name": "topk", "seed": 0, "final_accuracy": 0.6}]
    derive(rows)
    assert [round(r["accuracy_drop"], 3) for r in rows] == [0.0, 20.0, 10.0]
