"""What decides whether float kernels round exactly as on a recording machine: the torch build,
the architecture, the CPU's vector capability and its model. Golden tests compare bit for bit
only when all match, and within a tolerance otherwise (another CPU takes other MKL/oneDNN paths:
differences of ~1e-8 seen between two x86_64 machines with the same torch wheel)."""

from __future__ import annotations

import platform
from pathlib import Path

import torch


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def signature() -> dict[str, str]:
    return {"torch": str(torch.__version__), "machine": platform.machine(),
            "cpu_capability": str(torch.backends.cpu.get_cpu_capability()), "cpu": cpu_model()}


def same_build(recorded: dict) -> bool:
    """True when ``recorded`` (a golden file's header) was made on a build like this one; a file
    without the CPU fields counts as another build."""
    return all(recorded.get(k) == v for k, v in signature().items())
