"""GradAttack's attack on MixUp and InstaHide (Huang et al., "Evaluating Gradient Inversion
Attacks and Defenses in Federated Learning", NeurIPS 2021), with the decode step of Carlini et
al. ("Is Private Learning Possible with Instance Encoding?", S&P 2021). GradAttack evaluates it
as an upper bound, with an attacker "who knows the encoding mapping and mixing coefficients":
here the explicit grant ``threat.knows_mixing`` (partners and coefficients, never InstaHide's
signs; :mod:`gradleak.fl.mixing`), plus the labels.

With the mixing matrix ``L [N, N]`` (``L[i, p_ij] = lambda_ij``, rows summing to 1):

- MixUp: the originals ``P [N, C, H, W]`` are the free variable and the dummy encodings are
  ``L P``, so Inverting Gradients' engine matches the gradient of the encodings (with their soft
  labels: the granted labels mixed by the plan) while its box and TV prior act on ``P``. This
  folds GradAttack's two steps into one. The decode alone (least squares of ``L P = E`` on
  recovered encodings) amplifies their error by up to cond(L): 45 on a 4-sample plan, where
  28.7 dB encodings decoded to 13.6 dB (box-constrained) or 7 dB (plain least squares).
- InstaHide: the unknown signs keep the encodings from being a function of ``P``. Step 1
  recovers the encodings (soft labels; box: the reflection of [0, 1] about the model's input
  mean m). Step 2 decodes them: the signs leave ``|E - m| = |L P - m|``, so Adam (lr 0.01,
  1000 steps, as GradAttack's decode) minimises ``mean((|L P - m| - |E - m|)^2)`` over ``P`` in
  [0, 1], from the least-squares solution of ``m + |E - m|``. GradAttack's extra saturation
  prior (0.05 mean(1 - |P|), for images in [-1, 1]) is left out.

FedSGD only: FedAvg's per-epoch mixing is not simulated. Without the plan the attack refuses;
the non-adaptive attack on a mixed update is any image attack (e.g. ``ig``), scored against the
originals.
"""

from __future__ import annotations

import dataclasses

import torch

from gradleak.attacks import register_attack
from gradleak.attacks.base import AttackInfo, Observation, Reconstruction
from gradleak.attacks.matching import MatchingSetup
from gradleak.attacks.optimization import GradientMatchingAttack
from gradleak.errors import GradleakError
from gradleak.fl.mixing import MixPlan, encoding_range, soft_labels
from gradleak.threat import Knowledge

DECODE_STEPS, DECODE_LR = 1000, 0.01


def mixing_matrix(plan: MixPlan) -> torch.Tensor:
    """``L [N, N]`` with ``L[i, p_ij] = lambda_ij``: encodings (before any sign flip) = L @ originals."""
    n = plan.partners.shape[0]
    matrix = torch.zeros(n, n, dtype=torch.float64)
    matrix.scatter_add_(1, plan.partners.cpu(), plan.coefficients.cpu().double())
    return matrix


def least_squares(encodings: torch.Tensor, plan: MixPlan) -> torch.Tensor:
    """The unconstrained least-squares originals ``[N, C, H, W]`` of ``L P = encodings``."""
    flat = encodings.detach().cpu().double().flatten(1)
    return torch.linalg.lstsq(mixing_matrix(plan), flat).solution.float().view_as(encodings)


def decode(encodings: torch.Tensor, plan: MixPlan, mean: torch.Tensor,
           steps: int = DECODE_STEPS, lr: float = DECODE_LR) -> torch.Tensor:
    """The originals ``[N, C, H, W]`` in [0, 1] whose mixes best match ``encodings``: MixUp
    ``(L P - E)^2``, InstaHide ``(|L P - m| - |E - m|)^2`` (blind to the signs), by Adam with a
    clamp to [0, 1] after each step, from the clamped least-squares solution. The box keeps an
    ill-conditioned ``L`` from amplifying the encodings' errors."""
    matrix = mixing_matrix(plan).float()
    encodings = encodings.detach().cpu().float()
    sign_blind = plan.kind == "instahide"
    target = (encodings - mean).abs() if sign_blind else encodings
    start = least_squares(mean + target if sign_blind else encodings, plan).clamp(0, 1)
    variable = start.clone().requires_grad_(True)
    optimiser = torch.optim.Adam([variable], lr=lr)
    for _ in range(steps):
        mixed = torch.einsum("nm,mchw->nchw", matrix, variable)
        fit = (mixed - mean).abs() if sign_blind else mixed
        loss = (fit - target).square().mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        with torch.no_grad():
            variable.clamp_(0, 1)
    return variable.detach()


@register_attack("mix-decode")
class MixDecode(GradientMatchingAttack):
    """Breaks MixUp/InstaHide given the mixing plan. GradAttack, Huang et al., NeurIPS 2021."""

    name = "mix-decode"
    info = AttackInfo(paper="Huang et al., NeurIPS 2021 (GradAttack's MixUp/InstaHide attack)",
                      strategy="GIA-O")
    encodes_inputs = True  # predict() mixes its inputs: no functional fast path
    _plan: MixPlan | None = None
    _mean: torch.Tensor | None = None
    _matrix: torch.Tensor | None = None  # L, built once per run (predict runs every iteration)

    def needs(self) -> frozenset[Knowledge]:
        return super().needs() | {Knowledge.MIXING, Knowledge.LABELS}

    def run(self, obs: Observation, *, seed: int, progress: bool) -> Reconstruction:
        self._plan, self._mean = _granted_plan(obs), _input_mean(obs)
        device = next(obs.model.parameters()).device
        self._matrix = mixing_matrix(self._plan).float().to(device)
        found = super().run(obs, seed=seed, progress=progress)
        # the candidates are the originals, in the client's order: their labels are the granted
        # ones (the engine reports the argmax of the soft labels it matched)
        found = dataclasses.replace(found, labels=[int(v) for v in obs.labels.tolist()])
        if self._plan.kind == "mixup":
            return dataclasses.replace(found, details=dict(
                found.details, mixing="mixup: originals matched through the granted plan"))
        candidates = torch.stack([decode(c, self._plan, self._mean) for c in found.candidates])
        details = dict(found.details, mixing="instahide: encodings matched, then decoded")
        return dataclasses.replace(found, images=candidates[0], candidates=candidates,
                                   details=details)

    def labels_for(self, obs: Observation, setup: MatchingSetup) -> tuple[torch.Tensor, str]:
        """The encodings' soft labels ``[N, classes]``: the granted labels mixed by the plan."""
        if obs.labels is None:
            raise GradleakError("attack mix-decode needs the labels (threat.knows_labels=true)")
        soft = soft_labels(obs.labels.cpu(), _granted_plan(obs), obs.num_classes)
        return soft.to(setup.device), "mixed by the granted plan"

    def predict(self, setup: MatchingSetup, obs: Observation, images: torch.Tensor,
                labels: torch.Tensor, order: list[torch.Tensor] | None) -> list[torch.Tensor]:
        """MixUp: the gradient of the originals' encodings ``L P``; InstaHide: of the encodings."""
        if self._plan is not None and self._plan.kind == "mixup":
            images = torch.einsum("nm,mchw->nchw", self._matrix.to(images.dtype), images)
        return super().predict(setup, obs, images, labels, order)

    def project(self, images: torch.Tensor) -> torch.Tensor:
        """The iterate clamped to [0, 1] (InstaHide's encodings: to their range)."""
        if self._plan is None or self._plan.kind != "instahide":
            return images.clamp(0, 1)
        low, high = encoding_range(self._mean.to(images.device))
        return torch.maximum(torch.minimum(images, high), low)


def _granted_plan(obs: Observation) -> MixPlan:
    if not obs.mixing:
        raise GradleakError("attack mix-decode needs the client's mixing plan: set client.mix="
                            "mixup or instahide and threat.knows_mixing=true")
    if obs.protocol != "fedsgd" or len(obs.mixing) != 1:
        raise GradleakError("attack mix-decode inverts one FedSGD gradient (client.protocol="
                            "fedsgd); FedAvg's per-epoch mixing is not simulated")
    return obs.mixing[0]


def _input_mean(obs: Observation) -> torch.Tensor:
    """The model's input mean ``[1, C, 1, 1]`` (0.5 for a model without one), on the CPU."""
    mean = getattr(obs.model, "input_mean", None)
    return torch.full((1, 1, 1, 1), 0.5) if mean is None else mean.detach().cpu().float()
