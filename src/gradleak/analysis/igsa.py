"""Input-Gradient Smoothness Analysis (IGSA, paper Sec. 5.1, Eq. 10): how smooth x -> dL/dW is.

The paper's Eq. 10 lost its symbols in our copy; the surviving text fixes its parts: the
"input-gradient" function ``G(x) = grad_W L(f(x), y)``, its Jacobian w.r.t. the input estimated
from samples "located within a radius around x", per-layer norms averaged with a weight vector
"that assigns higher weights to the shallow layers", and "a higher IGSA value indicates ... a
greater degree of smoothness". Our reading, for samples ``x_1..x_N`` with labels ``y_i``:

    S_l(x)   = 1/M sum_m || G_l(x'_m) - G_l(x) ||_2 / || x'_m - x ||_2,   x'_m ~ U(B_2(x, r))
    S(x)     = sum_l w_l S_l(x),   w_l = (1/l) / sum_j (1/j)   (l = 1 is the shallowest layer)
    IGSA     = 1 / (1/N sum_i S(x_i))      (per sample: IGSA(x_i) = 1 / S(x_i))

where ``G_l`` is layer l's part of ``G(x) / ||G(x)||`` (default, see "Relative" below) or of
``G(x)`` itself (``relative=False``).

``S_l`` is a finite-difference estimate of the norm of the Jacobian ``dG_l/dx`` along random
directions (``||J u||`` for unit ``u``; its mean square is ``||J||_F^2 / d``), averaged over the
ball, so it also sees non-smoothness (ReLU kinks, saturation) within the radius. Choices:

* Ball: L2 (not L-inf) in pixel space ([0, 1] images, the space attacks optimise in), uniform
  (Gaussian direction, radius ``r U^(1/d)``, i.e. nearly on the sphere for large ``d``); points
  are not clamped to [0, 1] so the ball stays a ball.
* Radius: default ``r = 0.25 sqrt(d)`` (``d = C H W``), an RMS change of 0.25 per pixel: the
  scale of the distance between an attack's random initialisation and the truth, i.e. the region
  the attack has to cross (the paper's value was lost). ``M = 16`` points by default.
* Layers: the model's parameterised modules in registration order (= depth order for the
  zoo's models), each layer's weight and bias gradients concatenated (norm layers count as
  layers: their parameters are part of the shared update).
* Samples: ``S`` is averaged over samples before inverting (a harmonic mean of the per-sample
  IGSA), so one sample whose gradient happens to be flat cannot dominate.
* Relative (default): every gradient is divided by its full norm first, ``G / ||G||`` (all
  layers by the same number), so IGSA is the smoothness of the gradient's *direction*. The
  paper's baseline attack (Geiping et al.) matches gradients by cosine distance, which ignores
  their scale; and a fitted sample's cross-entropy gradient shrinks towards 0 everywhere nearby,
  so the raw difference would call a well-trained model "smooth" for that reason alone, the
  opposite of the paper's Fig. 7 (measured in ``docs/igsa.md``). ``relative=False`` gives the
  raw formula above.
* Labels: the given (true) labels, fixed for all ``x'``, since the victim's gradient uses them;
  without labels, the model's prediction at ``x``.
* Mode: the model is evaluated in ``eval()`` mode (BN running statistics, no dropout), so each
  sample's gradient is its own and deterministic; the previous modes are restored afterwards.
* Loss: cross-entropy of one sample (``loss_fn(logits [1, K], labels [1])`` may replace it).
* ``S = 0`` (a locally constant gradient) is clamped to the smallest positive float64.

Draws come from ``torch.Generator().manual_seed(seed)``: same seed, same value. Normalise a
training run per model with :func:`normalise_stages` (min-max over the recorded stages), as the
paper does before plotting Fig. 7.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gradleak.errors import GradleakError

DEFAULT_RMS = 0.25
DEFAULT_POINTS = 16

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class IGSAResult:
    """``value``: IGSA of the batch; ``per_sample``: IGSA(x_i); ``sensitivity``: per layer S_l
    averaged over samples (same order as ``layers`` and ``weights``); ``radius``: the L2 radius."""

    value: float
    per_sample: list[float]
    layers: list[str]
    weights: list[float]
    sensitivity: list[float]
    labels: list[int]
    label_source: str
    radius: float
    num_points: int
    seed: int
    relative: bool

    def to_dict(self) -> dict:
        return asdict(self)


def parameter_layers(model: nn.Module) -> list[tuple[str, list[nn.Parameter]]]:
    """``(module name, its trainable parameters)`` per parameterised module, in registration order."""
    groups: dict[str, list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault(name.rpartition(".")[0], []).append(p)
    return list(groups.items())


def default_radius(input_shape: tuple[int, ...]) -> float:
    """``DEFAULT_RMS * sqrt(d)``: an L2 radius whose RMS per input value is ``DEFAULT_RMS``."""
    return DEFAULT_RMS * math.sqrt(math.prod(input_shape))


def shallow_weights(num_layers: int) -> torch.Tensor:
    """``w_l = (1/l) / sum_j (1/j)`` for ``l = 1..L``: favours shallow layers, sums to 1."""
    w = 1.0 / torch.arange(1, num_layers + 1, dtype=torch.float64)
    return w / w.sum()


def sample_l2_ball(center: torch.Tensor, radius: float, num: int,
                   generator: torch.Generator) -> torch.Tensor:
    """``num`` points uniform in the L2 ball of ``radius`` around ``center``: ``[num, *center.shape]``."""
    d = center.numel()
    direction = torch.randn(num, d, generator=generator, dtype=torch.float64)
    direction /= direction.norm(dim=1, keepdim=True)
    scale = radius * torch.rand(num, 1, generator=generator, dtype=torch.float64) ** (1.0 / d)
    offset = (direction * scale).to(center.dtype).view(num, *center.shape)
    return center.unsqueeze(0) + offset.to(center.device)


def _layer_gradients(model: nn.Module, layers: list[tuple[str, list[nn.Parameter]]],
                     x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn,
                     relative: bool) -> list[torch.Tensor]:
    params = [p for _, group in layers for p in group]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    flat, i = [], 0
    for _, group in layers:
        parts = [(torch.zeros_like(p) if g is None else g).detach().flatten().double()
                 for p, g in zip(group, grads[i:i + len(group)], strict=True)]
        flat.append(torch.cat(parts))
        i += len(group)
    if relative:
        total = max(math.sqrt(sum(float(g.square().sum()) for g in flat)), torch.finfo(torch.float64).tiny)
        flat = [g / total for g in flat]
    return flat


def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, labels)


def igsa(model: nn.Module, images: torch.Tensor, labels: torch.Tensor | Sequence[int] | None = None,
         *, radius: float | None = None, num_points: int = DEFAULT_POINTS, seed: int = 0,
         loss_fn: LossFn | None = None, relative: bool = True) -> IGSAResult:
    """IGSA of ``model`` at ``images [N, C, H, W]`` (pixels) with ``labels [N]`` (see module doc)."""
    if radius is None:
        radius = default_radius(tuple(images.shape[1:]))
    if radius <= 0:
        raise GradleakError(f"bad IGSA radius {radius}: must be > 0")
    if num_points < 1:
        raise GradleakError(f"bad IGSA number of points {num_points}: must be >= 1")
    if images.ndim < 2 or len(images) == 0:
        raise GradleakError("IGSA needs a batch of at least one sample, [N, ...]")
    loss_fn = loss_fn or _cross_entropy
    layers = parameter_layers(model)
    if not layers:
        raise GradleakError(f"model {type(model).__name__} has no trainable parameters")
    weights = shallow_weights(len(layers))
    device = next(model.parameters()).device
    images = images.detach().to(device)
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        if labels is None:
            with torch.no_grad():
                y_all = model(images).argmax(-1)
            source = "predicted"
        else:
            y_all = torch.as_tensor(labels, dtype=torch.long, device=device).view(-1)
            source = "given"
            if len(y_all) != len(images):
                raise GradleakError(f"IGSA got {len(images)} images but {len(y_all)} labels")
        generator = torch.Generator().manual_seed(seed)
        tiny = torch.finfo(torch.float64).tiny
        per_sample, totals, sens = [], [], torch.zeros(len(layers), dtype=torch.float64)
        for x, y in zip(images, y_all, strict=True):
            y1 = y.view(1)
            base = _layer_gradients(model, layers, x[None], y1, loss_fn, relative)
            s = torch.zeros(len(layers), dtype=torch.float64)
            for point in sample_l2_ball(x, radius, num_points, generator):
                dist = float((point - x).double().norm())
                grads = _layer_gradients(model, layers, point[None], y1, loss_fn, relative)
                s += torch.stack([(g - b).norm() for g, b in zip(grads, base, strict=True)]) / dist
            s /= num_points
            sens += s
            totals.append(float((weights * s).sum()))
            per_sample.append(1.0 / max(totals[-1], tiny))
    finally:
        for m, mode in modes:
            m.train(mode)
    return IGSAResult(
        value=1.0 / max(sum(totals) / len(totals), tiny), per_sample=per_sample,
        layers=[name for name, _ in layers], weights=weights.tolist(),
        sensitivity=(sens / len(per_sample)).tolist(), labels=y_all.tolist(), label_source=source,
        radius=radius, num_points=num_points, seed=seed, relative=relative)


def normalise_stages(values: Sequence[float]) -> list[float]:
    """Min-max normalise one model's IGSA values over the recorded training stages to [0, 1]
    (a constant series maps to zeros)."""
    vals = [float(v) for v in values]
    if not vals:
        return []
    if any(not math.isfinite(v) for v in vals):
        raise GradleakError("IGSA values must be finite to normalise")
    lo, hi = min(vals), max(vals)
    if hi == lo:
        return [0.0] * len(vals)
    return [(v - lo) / (hi - lo) for v in vals]
