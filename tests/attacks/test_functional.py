"""The functional objective (attack.compile, attack.batch_restarts) agrees with the autograd
one to float tolerance, and falls back with a warning where it has no functional form."""

from __future__ import annotations

import warnings

import pytest
import torch

from gradleak.attacks import functional
from gradleak.attacks.restart import Restart
from tests.attacks.engine_cases import make_case


def _pieces(case: str, compiled: bool, batched: bool = False):
    attack, obs = make_case(case, 0)
    setup = attack.matching_setup(obs)
    ctx = attack.context(setup, obs, obs.labels, None)
    restart = Restart(ctx, torch.Generator().manual_seed(0))
    fn = functional.objective_gradient(ctx, batched=batched, compiled=compiled)
    return restart, fn


def _eager(restart):
    total, match = restart.objective()
    (grad,) = torch.autograd.grad(total, restart.free)
    return grad, match


@pytest.mark.parametrize("case", ["ig", "rog", "ig-convnet-b2"])
def test_functional_objective_matches_autograd(case):
    restart, fn = _pieces(case, compiled=False)
    want_grad, want = _eager(restart)
    grad, match = fn(restart.free[0])
    torch.testing.assert_close(match, want.detach(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grad, want_grad, rtol=1e-4, atol=1e-7)


def test_batched_restarts_agree_with_sequential_ones():
    kwargs = dict(iterations=15, restarts=3)
    results = {}
    for mode in ("off", "on"):
        attack, obs = make_case("ig", 1)
        for key, value in {**kwargs, "batch_restarts": mode}.items():
            setattr(attack, key, value)
        results[mode] = attack(obs, seed=1)
    off, on = results["off"], results["on"]
    assert on.iterations_used == off.iterations_used == [15] * 3
    torch.testing.assert_close(torch.tensor(on.losses), torch.tensor(off.losses), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(on.candidates, off.candidates, rtol=0, atol=1e-3)


def test_no_functional_form_warns_and_keeps_the_autograd_path():
    attack, obs = make_case("gradinversion", 0)  # BN prior: hooks, no functional form
    attack.iterations, attack.compile = 3, True
    with pytest.warns(UserWarning, match="BN-statistics prior"):
        rec = attack(obs, seed=0)
    assert rec.iterations_used == [3]


def test_a_failing_compiler_falls_back_with_one_warning(monkeypatch):
    def broken(fn, **_kwargs):
        def call(*_args):
            raise RuntimeError("backend exploded\nsecond line")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    functional._CACHE.clear()
    restart, fn = _pieces("ig", compiled=True)
    want_grad, _ = _eager(restart)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        grad, _ = fn(restart.free[0])
        fn(restart.free[0])
    functional._CACHE.clear()
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "backend exploded" in messages[0] and "\n" not in messages[0]
    torch.testing.assert_close(grad, want_grad, rtol=1e-4, atol=1e-7)


@pytest.mark.slow
def test_compiled_objective_matches_autograd_and_is_cached():
    functional._CACHE.clear()
    restart, fn = _pieces("ig", compiled=True)
    want_grad, want = _eager(restart)
    grad, match = fn(restart.free[0])
    torch.testing.assert_close(match, want.detach(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grad, want_grad, rtol=1e-4, atol=1e-7)
    _, again = _pieces("ig", compiled=True)  # a second run with the same shapes
    assert len(functional._CACHE) == 1
    torch.testing.assert_close(again(restart.free[0])[0], grad)
