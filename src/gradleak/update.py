"""The update a client shares: the one object between the client, the defenses and the attacks.

Kept in its own low module so that ``defenses`` (which transform it) and ``fl`` (which produces
it) need not import each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

__all__ = ["SharedUpdate"]


@dataclass(frozen=True)
class SharedUpdate:
    """What the client sends: per-parameter tensors keyed by parameter name.

    ``kind="gradient"`` holds dL/dW (FedSGD); ``kind="model_delta"`` holds W_local - W_global
    (FedAvg), which points *against* the summed gradients. It holds exactly what a real client
    uploads: the client's BN batch statistics are not part of it (see :class:`ClientRound`).
    """

    kind: Literal["gradient", "model_delta"]
    tensors: dict[str, torch.Tensor]
    num_samples: int

    def gradient_direction(self) -> dict[str, torch.Tensor]:
        """Tensors pointing along the (summed) loss gradient: a model delta is negated."""
        if self.kind == "gradient":
            return self.tensors
        return {k: -v for k, v in self.tensors.items()}

    def replace(self, tensors: dict[str, torch.Tensor]) -> SharedUpdate:
        return SharedUpdate(self.kind, tensors, self.num_samples)
