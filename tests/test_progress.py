"""Progress output off a terminal: whole lines, a few of them, never carriage-return redraws."""

from __future__ import annotations

import io

from gradleak.cli import format_metrics
from gradleak.progress import LogFriendlyTqdm


def test_progress_to_a_log_writes_few_whole_lines():
    log = io.StringIO()
    bar = LogFriendlyTqdm(total=10_000, file=log, desc="attack")
    for _ in range(10_000):
        bar.update(1)
    bar.close()
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert 2 <= len(lines) <= 4, lines  # start, (maybe one timed update), the final state
    assert lines[-1].startswith("attack: 100%") and "10000/10000" in lines[-1]


def test_progress_on_a_terminal_is_a_normal_bar():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    bar = LogFriendlyTqdm(total=3, file=tty, mininterval=0)
    for _ in range(3):
        bar.update(1)
    bar.close()
    assert "\r" in tty.getvalue()


def test_disabled_progress_writes_nothing():
    log = io.StringIO()
    with LogFriendlyTqdm(total=3, file=log, disable=True) as bar:
        bar.update(3)
    assert log.getvalue() == ""


def test_metrics_are_printed_with_four_significant_digits():
    text = format_metrics({"psnr": 18.3456789, "ssim": 0.123456, "lpips": None,
                           "label_accuracy": 1.0})
    assert text == "psnr=18.35 ssim=0.1235 lpips=null label_accuracy=1"


def test_outside_a_notebook_the_drop_in_is_the_log_friendly_bar():
    import gradleak.progress

    assert gradleak.progress.tqdm is LogFriendlyTqdm
