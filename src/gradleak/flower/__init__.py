"""Flower integration: defend and audit a Flower app with a few added lines.

* :func:`defense_mod` -- a client mod that post-processes the update a ClientApp sends with one of
  gradleak's defenses (QSGD, top-k, clipping, Gaussian noise, signSGD); BN running statistics and
  other buffers are kept, dropped or defended as ``buffers=`` says (:data:`BUFFER_POLICIES`).
* :func:`leakage_guard_mod` -- a client mod that attacks the client's own update before it leaves,
  measures the leakage against the client's own data and then defends, withholds or only reports.
* :class:`LeakageAuditStrategy` -- a server-side wrapper around any Flower strategy that attacks the
  updates of chosen clients, stores reconstructions and losses, and delegates aggregation unchanged.

Needs Flower (``pip install 'gradleak[flower]'``, flwr 1.41, its Message API). ``import gradleak``
works without it; only this package imports ``flwr``. See ``docs/flower.md``.
"""

from __future__ import annotations

try:
    import flwr  # noqa: F401
except ImportError:  # pragma: no cover - depends on the environment
    raise ImportError("gradleak.flower needs Flower: pip install 'gradleak[flower]' "
                      "(installs flwr[simulation]==1.41.0)") from None

from gradleak.flower.arrays import BUFFER_POLICIES, apply_update, array_update, message_seed
from gradleak.flower.audit import LeakageAuditStrategy
from gradleak.flower.guard import leakage_guard_mod
from gradleak.flower.mods import defense_mod

__all__ = ["BUFFER_POLICIES", "LeakageAuditStrategy", "apply_update", "array_update", "defense_mod",
           "leakage_guard_mod", "message_seed"]
