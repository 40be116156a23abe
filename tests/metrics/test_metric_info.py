"""METRICS is the one definition of each metric's direction and leakage threshold: the config
defaults, the leakage rates, the verdict rules and the report all follow it."""

from __future__ import annotations

import inspect

import pytest
import torch

from gradleak import metrics
from gradleak.config import MetricsConfig
from gradleak.metrics import METRICS, leakage
from gradleak.report import experiments as report
from gradleak.report.verdicts import HIGHER_LEAKS, threshold


def test_thresholds_are_the_papers_and_defined_once():
    # SoK App. C: a sample leaks at PSNR >= 18 dB and LPIPS <= 0.1.
    assert (METRICS["psnr"].threshold, METRICS["lpips"].threshold) == (18.0, 0.1)
    cfg = MetricsConfig()
    assert cfg.psnr_threshold == METRICS["psnr"].threshold
    assert cfg.lpips_threshold == METRICS["lpips"].threshold
    for fn in (leakage.leaked, leakage.batch_reconstruction_rate,
               leakage.worst_sample_reconstruction_rate, metrics.score):
        params = inspect.signature(fn).parameters
        assert params["psnr_threshold"].default == METRICS["psnr"].threshold, fn
        assert params["lpips_threshold"].default == METRICS["lpips"].threshold, fn
    for name, info in METRICS.items():
        if info.threshold is not None:
            section, key = info.threshold_key.split(".")
            assert getattr(cfg, key) == info.threshold and section == "metrics", name


def test_directions_match_what_the_metrics_compute():
    g = torch.Generator().manual_seed(0)
    truth = torch.rand(2, 3, 16, 16, generator=g)
    close = (truth + 0.01 * torch.randn(truth.shape, generator=g)).clamp(0, 1)
    far = torch.rand(2, 3, 16, 16, generator=g)
    for name, fn in (("psnr", metrics.psnr), ("ssim", metrics.ssim), ("mse", metrics.mse)):
        closer_is_higher = float(fn(close, truth).mean()) > float(fn(far, truth).mean())
        assert METRICS[name].higher_is_better == closer_is_higher, name
    from gradleak.metrics.text import TEXT_METRICS

    every = {**METRICS, **TEXT_METRICS}  # the reports read image and text runs alike
    assert {n: i.higher_is_better for n, i in every.items()} == HIGHER_LEAKS
    assert METRICS["lpips"].direction == "lower" and METRICS["brr"].direction == "higher"


@pytest.mark.parametrize(("psnr", "lpips"), [(18.0, 0.1), (17.99, 0.05), (25.0, 0.11), (30.0, 0.0)])
def test_passes_agrees_with_the_leakage_indicator(psnr, lpips):
    flag = leakage.leaked(torch.tensor([psnr]), torch.tensor([lpips]))
    assert bool(flag[0]) == (METRICS["psnr"].passes(psnr) and METRICS["lpips"].passes(lpips))
    assert METRICS["psnr"].passes(17.0, 16.0) and not METRICS["lpips"].passes(0.3, 0.2)
    with pytest.raises(ValueError):
        METRICS["ssim"].passes(0.5)


def test_report_uses_the_runs_thresholds_and_directions():
    rows = [{"variant": "a", "seed": 0, "lpips": 0.3, "psnr": 12.0, "metrics.lpips_threshold": 0.2}]
    assert threshold(rows, "lpips") == 0.2
    assert threshold([{"lpips": 0.3}], "lpips") == METRICS["lpips"].threshold
    assert threshold(rows, "psnr") == METRICS["psnr"].threshold and threshold(rows, "ssim") is None
    lines = []
    report._threshold_line(lambda v, **_: lines.append(v), rows, "lpips")
    report._threshold_line(lambda v, **_: lines.append(v), rows, "ssim")
    assert lines == [0.2]
    table = {"cols": "variant"}
    assert "lower = more leakage" in report._pivot(rows, table, "lpips", {})
    assert "higher = more leakage" in report._pivot(rows, table, "psnr", {})
