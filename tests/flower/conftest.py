"""Spies on the Scenario steps the Flower guard and audit call."""

from __future__ import annotations

import pytest


@pytest.fixture
def observed(monkeypatch):
    """The Observations the attacks received (``Scenario.reconstruct`` spied on)."""
    from gradleak.scenario import Scenario

    seen, original = [], Scenario.reconstruct

    def spy(self, obs, **kwargs):
        seen.append(obs)
        return original(self, obs, **kwargs)

    monkeypatch.setattr(Scenario, "reconstruct", spy)
    return seen


@pytest.fixture
def leaked_flags(monkeypatch):
    """``leaked_flags(fn)``: ``Scenario.score`` as it is, but with ``per_sample["leaked"] =
    fn(score)``: the project's criterion, whatever it is, decides through these flags only."""
    from gradleak.scenario import Scenario

    original = Scenario.score

    def install(fn):
        def score(self, recon, **kwargs):
            s = original(self, recon, **kwargs)
            s.per_sample["leaked"] = fn(s)
            return s

        monkeypatch.setattr(Scenario, "score", score)

    return install
