"""gradleak works without Flower; gradleak.flower says how to get it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"

BLOCKED = """
import sys
sys.path.insert(0, {src!r})
sys.modules["flwr"] = None  # as if Flower were not installed
import gradleak, gradleak.cli, gradleak.scenario, gradleak.defenses, gradleak.attacks
assert not any(m == "flwr" or m.startswith("flwr.") for m in sys.modules if sys.modules[m])
try:
    import gradleak.flower
except ImportError as exc:
    print(exc)
"""


def test_gradleak_imports_without_flower_and_the_flower_package_says_what_to_install():
    out = subprocess.run([sys.executable, "-c", BLOCKED.format(src=str(SRC))], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "pip install 'gradleak[flower]'" in out.stdout
