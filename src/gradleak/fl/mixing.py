"""MixUp and InstaHide as client training, as in GradAttack (Huang et al., "Evaluating Gradient
Inversion Attacks and Defenses in Federated Learning", NeurIPS 2021; InstaHide: Huang et al.,
ICML 2020).

Every local epoch the client draws a :class:`MixPlan` over its own N samples. Sample i's
encoding mixes k distinct samples of the client's set: i itself first, then one entry from each
of k - 1 random permutations of the N samples; a row with a repeat is redrawn. The coefficients
are lambda_i ~ Dirichlet(3, 1, ..., 1), redrawn until each lies in [lower, upper]. GradAttack
draws all k columns from permutations; column 0 being i itself relabels the same distribution
(the client shuffles its batches anyway), and it makes encoding i the one dominated by sample i.

The client trains on x~_i = sum_j lambda_ij x_{p_ij} with the soft label
y~_i = sum_j lambda_ij onehot(y_{p_ij}) (cross-entropy on probabilities). InstaHide then flips
the sign of each pixel of x~_i - mean at random: GradAttack flips the normalised tensor, which in
pixel space is a reflection about the model's input mean. GradAttack's defaults (its CIFAR-10
scripts): k = 4, lower 0, upper 0.65.

Shapes: images ``[N, C, H, W]`` in pixel space; ``partners`` and ``coefficients`` ``[N, k]``;
``signs`` ``[N, C, H, W]`` of +-1 (InstaHide) or None.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gradleak.errors import GradleakError

MIXES = ("none", "mixup", "instahide")
MAX_DRAWS = 10_000  # coefficient redraws per row before the bounds are called infeasible


@dataclass(frozen=True)
class MixPlan:
    """One epoch's mixing: partners, coefficients and (InstaHide) the pixel signs."""

    kind: str
    partners: torch.Tensor
    coefficients: torch.Tensor
    signs: torch.Tensor | None = None

    def granted(self) -> MixPlan:
        """What ``threat.knows_mixing`` grants: partners and coefficients, not the signs
        (GradAttack's attacker knows "the encoding mapping and mixing coefficients")."""
        return MixPlan(self.kind, self.partners.clone(), self.coefficients.clone(), None)

    def to(self, device: torch.device | str) -> MixPlan:
        signs = None if self.signs is None else self.signs.to(device)
        return MixPlan(self.kind, self.partners.to(device), self.coefficients.to(device), signs)


def check_mixing(kind: str, k: int, lower: float, upper: float, num_samples: int) -> None:
    """One line for a mixing setting that cannot be drawn."""
    if kind not in MIXES:
        raise GradleakError(f"bad value {kind!r} for client.mix; allowed: {', '.join(MIXES)}")
    if kind == "none":
        return
    if k < 1:
        raise GradleakError(f"bad value {k} for client.mix_k: must be >= 1")
    if k > num_samples:
        raise GradleakError(f"client.mix_k={k} needs at least {k} samples on the client (it mixes "
                            f"k distinct ones of its own), got {num_samples}")
    if not 0.0 <= lower <= upper <= 1.0:
        raise GradleakError(f"client.mix_lower={lower} and client.mix_upper={upper}: need "
                            "0 <= mix_lower <= mix_upper <= 1")
    if k > 1 and not lower <= 1.0 / k <= upper:
        raise GradleakError(f"client.mix_lower={lower} / client.mix_upper={upper} admit no "
                            f"{k} coefficients summing to 1: need mix_lower <= 1/{k} <= mix_upper")


def draw_plan(kind: str, num_samples: int, k: int, lower: float, upper: float,
              shape: tuple[int, ...], generator: torch.Generator) -> MixPlan:
    """One epoch's plan for ``num_samples`` samples of ``shape`` (C, H, W), drawn from the
    client's private mixing ``generator``."""
    check_mixing(kind, k, lower, upper, num_samples)
    n = num_samples
    columns = [torch.arange(n)] + [torch.randperm(n, generator=generator) for _ in range(k - 1)]
    partners = torch.stack(columns, dim=1)
    for i in range(n):
        while len(set(partners[i].tolist())) != k:  # enforce k distinct samples, i first
            partners[i, 1:] = torch.randint(0, n, (k - 1,), generator=generator)
    alpha = torch.ones(k, dtype=torch.float64)
    alpha[0] = 3.0
    coefficients = torch.stack([_coefficients(alpha, lower, upper, generator) for _ in range(n)])
    signs = None
    if kind == "instahide":
        signs = torch.randint(0, 2, (n, *shape), generator=generator).float() * 2 - 1
    return MixPlan(kind, partners, coefficients.float(), signs)


def _coefficients(alpha: torch.Tensor, lower: float, upper: float,
                  generator: torch.Generator) -> torch.Tensor:
    """One Dirichlet(alpha) draw within [lower, upper], by rejection (as GradAttack). Gamma
    draws normalised (torch's Dirichlet sampler takes no generator)."""
    if len(alpha) == 1:
        return torch.ones(1, dtype=torch.float64)
    for _ in range(MAX_DRAWS):
        gammas = torch._standard_gamma(alpha.expand(1, -1).contiguous(), generator=generator)[0]
        lam = gammas / gammas.sum()
        if lam.max() <= upper and lam.min() >= lower:
            return lam
    raise GradleakError(f"client.mix_lower={lower} / client.mix_upper={upper}: no Dirichlet draw "
                        f"within the bounds in {MAX_DRAWS} tries; widen them")


def encode(images: torch.Tensor, plan: MixPlan, mean: torch.Tensor | float) -> torch.Tensor:
    """The encodings ``[N, C, H, W]`` the client trains on (``mean``: the model's input mean,
    broadcastable to the images; InstaHide reflects about it)."""
    lam = plan.coefficients.to(images.dtype)
    mixed = torch.einsum("nk,nkchw->nchw", lam, images[plan.partners])
    if plan.signs is None:
        return mixed
    return mean + plan.signs.to(images.dtype) * (mixed - mean)


def soft_labels(labels: torch.Tensor, plan: MixPlan, num_classes: int) -> torch.Tensor:
    """The mixed labels ``[N, num_classes]``: each row the coefficients on its partners' classes."""
    onehot = F.one_hot(labels.long(), num_classes).to(plan.coefficients.dtype)
    return torch.einsum("nk,nkc->nc", plan.coefficients, onehot[plan.partners])


def encoding_range(mean: torch.Tensor | float) -> tuple[torch.Tensor | float, torch.Tensor | float]:
    """The pixel range of an InstaHide encoding of [0, 1] images: the reflection about ``mean``
    of [0, 1] (per channel)."""
    reach = torch.maximum(torch.as_tensor(mean), 1 - torch.as_tensor(mean))
    return torch.as_tensor(mean) - reach, torch.as_tensor(mean) + reach
