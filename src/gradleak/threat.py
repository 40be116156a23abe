"""The threat model: what the server knows, as the paper's assumption levels (Sec. 2.2, Tab. 7).

An attack declares the :class:`Knowledge` it needs; :meth:`ThreatModel.require` refuses to run it
when the scenario does not grant that knowledge.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from gradleak.config import ThreatConfig
from gradleak.errors import GradleakError


class Knowledge(Enum):
    """One piece of adversary knowledge; ``level`` is the paper's assumption level (0 = basic)."""

    BASIC = ("basic information", 0, "gradient, model, data dimension, number of samples")
    PRIORS = ("priors", 1, "established image priors, e.g. total variation")
    DATA_DISTRIBUTION = ("data distribution", 2, "auxiliary data of the client's distribution")
    CLIENT_TRAINING = ("client training details", 3, "local epochs, batch size, learning rate")
    BN_STATISTICS = ("BN statistics", 4, "the client's batch-norm batch statistics")
    MALICIOUS = ("malicious behaviour", 5, "the server crafts or modifies model parameters")
    LABELS = ("labels", None, "the victim's label multiset (not a paper level: an explicit grant)")
    MIXING = ("mixing plan", None, "MixUp/InstaHide: the client's mixing partners, coefficients and "
              "signs (an explicit grant; GradAttack's upper-bound attacker)")

    def __init__(self, title: str, level: int | None, description: str) -> None:
        self.title = title
        self.level = level
        self.description = description

    @property
    def config_key(self) -> str | None:
        return _CONFIG_KEYS.get(self)


_CONFIG_KEYS = {
    Knowledge.PRIORS: "threat.knows_priors",
    Knowledge.DATA_DISTRIBUTION: "threat.knows_data_distribution",
    Knowledge.CLIENT_TRAINING: "threat.knows_client_config",
    Knowledge.BN_STATISTICS: "threat.knows_bn_statistics",
    Knowledge.MALICIOUS: "threat.malicious",
    Knowledge.LABELS: "threat.knows_labels",
    Knowledge.MIXING: "threat.knows_mixing",
}


@dataclass(frozen=True)
class ThreatModel:
    """What the server is granted in a scenario. Basic information is always granted."""

    granted: frozenset[Knowledge]

    @classmethod
    def from_config(cls, cfg: ThreatConfig) -> ThreatModel:
        flags = {
            Knowledge.PRIORS: cfg.knows_priors,
            Knowledge.DATA_DISTRIBUTION: cfg.knows_data_distribution,
            Knowledge.CLIENT_TRAINING: cfg.knows_client_config,
            Knowledge.BN_STATISTICS: cfg.knows_bn_statistics,
            Knowledge.MALICIOUS: cfg.malicious,
            Knowledge.LABELS: cfg.knows_labels,
            Knowledge.MIXING: cfg.knows_mixing,
        }
        return cls(frozenset({Knowledge.BASIC} | {k for k, on in flags.items() if on}))

    def grants(self, knowledge: Knowledge) -> bool:
        return knowledge in self.granted

    def require(self, needed: Iterable[Knowledge], *, who: str) -> None:
        """Raise a one-line :class:`GradleakError` if any of ``needed`` is not granted."""
        missing = [k for k in needed if k not in self.granted]
        if missing:
            parts = [
                f"{k.title} (level {k.level}; set {k.config_key}=true)" if k.level is not None
                else f"{k.title} (set {k.config_key}=true)"
                for k in missing
            ]
            raise GradleakError(f"{who} needs knowledge the threat model does not grant: "
                                + "; ".join(parts))

    @property
    def highest_level(self) -> int:
        return max(k.level for k in self.granted if k.level is not None)

    @property
    def server_trust(self) -> str:
        """The paper's server trust column: malicious servers are detectable by clients."""
        return "malicious" if Knowledge.MALICIOUS in self.granted else "honest-but-curious"

    def describe(self) -> dict[str, object]:
        return {
            "server": self.server_trust,
            "highest_level": self.highest_level,
            "granted": sorted(k.title for k in self.granted),
        }
