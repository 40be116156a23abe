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


@pytest.fixture
def server_identity():
    """A ServerApp process has a task identity; messages built outside one need it set."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved
