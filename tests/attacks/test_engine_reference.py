"""The refactored GIA-O engine reproduces the outputs recorded before the refactor, bit for bit
(``torch.equal``), with the new options (stopping, compile, batched restarts) off."""

from __future__ import annotations

import pytest
import torch

from tests.attacks.engine_cases import CASES, REFERENCE, SEEDS, run_case

_REF = torch.load(REFERENCE, weights_only=True)


def _identical(a: torch.Tensor, b: torch.Tensor) -> bool:
    """torch.equal, with NaN equal to NaN (a diverged L-BFGS run records a NaN loss)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point():
        return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0))
    return torch.equal(a, b)


@pytest.mark.parametrize("case", list(CASES))
def test_engine_reproduces_the_recorded_run(case):
    if _REF["torch"] != str(torch.__version__):
        pytest.skip(f"reference recorded with torch {_REF['torch']}, this is {torch.__version__}: "
                    "kernels may round differently (re-record with python -m tests.attacks.engine_cases)")
    for seed in SEEDS:
        want, got = _REF["runs"][f"{case}/{seed}"], run_case(case, seed)
        for key, value in want.items():
            assert _identical(got[key], value), f"{case} seed {seed}: {key} differs"
