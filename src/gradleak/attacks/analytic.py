"""Analytic attacks (the paper's GIA-A, Sec. 2.3): closed-form inputs from a linear layer's gradient.

For a fully connected layer ``h = W x + b`` and one sample, ``dL/dW_i = (dL/dh_i) x^T`` and
``dL/db_i = dL/dh_i``, so ``x = (dL/dW_i) / (dL/db_i)`` for any row with a nonzero bias gradient
(Phong et al. 2017; the paper's Lemma 4.1 / Eq. 14). Both attacks read that ratio in the model's
normalised input space and map it back to pixels: ``x * std + mean``, reshaped to ``[C, H, W]``
and clamped to [0, 1].

* ``analytic`` (honest-but-curious): the first learnable layer must be ``nn.Linear`` with bias
  (our ``mlp``). Exact for one sample. For N > 1 it returns the ratio of the N rows with the
  largest |bias gradient|; a row's ratio is the dL/dh-weighted mean of the samples that activate
  that neuron, so these images are mixtures unless the neurons happen to separate the samples.
* ``imprint`` (malicious, Fowl et al. 2021, "Robbing the Fed"): the server inserts a module that
  makes neurons separate the samples by binning a measurement of the input (see
  :class:`ImprintBlock`), then reads each sample off the difference of consecutive bins.

FedAvg: the ratio is scale-free (the -lr cancels), so a delta after one local step (U = 1: E = 1,
B = N) is as good as a gradient, up to the float32 rounding of the delta. For ONE sample
``analytic`` stays exact even for U > 1: the first layer's input is that sample at every step, so
each step adds a multiple of the same x to every row. Otherwise U > 1 breaks both attacks: with
several samples, mini-batches taken at changing weights mix into every row, and the imprint's
equal rows drift apart after the first step (measured on 8 photos: most samples lost at U = 2-4).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from gradleak.attack_settings import ImprintSettings
from gradleak.attacks import register_attack
from gradleak.attacks.base import Attack, AttackInfo, Observation, Reconstruction
from gradleak.attacks.optimization import resolve_labels
from gradleak.errors import GradleakError
from gradleak.threat import Knowledge

IMPRINT_GAIN = 1e-2
"""Weight of the imprint block's map back to the input: the rest of the model sees
``x + IMPRINT_GAIN * sum_i relu(h_i)`` (a small uniform shift; the ratio does not depend on it)."""

IMPRINT_FLOOR = 10.0
"""Cutoff of the imprint's first neuron (in measurement units, where the data is ~N(0, 1))."""


def _normalisation(model: nn.Module, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The Classifier's input ``(mean, std)`` as ``[1, C, 1, 1]`` (0 and 1 without one)."""
    mean = getattr(model, "input_mean", None)
    std = getattr(model, "input_std", None)
    mean = torch.zeros(1, channels, 1, 1) if mean is None else mean.detach().cpu()
    std = torch.ones(1, channels, 1, 1) if std is None else std.detach().cpu()
    return mean.double(), std.double()


def to_pixels(flat: torch.Tensor, model: nn.Module, input_shape: tuple[int, ...]) -> torch.Tensor:
    """Normalised flat inputs ``[N, D]`` -> images ``[N, C, H, W]`` in [0, 1] (float32)."""
    mean, std = _normalisation(model, input_shape[0])
    images = flat.detach().cpu().double().reshape(-1, *input_shape) * std + mean
    return images.clamp(0, 1).float()


def gradient_ratio(weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Row-wise ``weight [R, D] / bias [R]`` in float64; rows with a zero bias give zeros."""
    bias = bias.double()
    safe = torch.where(bias == 0, torch.ones_like(bias), bias)
    return torch.where((bias == 0)[:, None], 0.0, weight.double() / safe[:, None])


def explained_residual(weight: torch.Tensor, bias: torch.Tensor, inputs: torch.Tensor) -> float:
    """``||G - b x_(i)^T|| / ||G||`` where each row i uses the best of the recovered ``inputs
    [N, D]``: 0 when the recovered inputs explain the layer's gradient exactly."""
    g, b, x = weight.double(), bias.double(), inputs.double()
    # ||g_i - b_i x_j||^2 = |g_i|^2 - 2 b_i g_i.x_j + b_i^2 |x_j|^2, for all rows i and inputs j.
    err = (g.square().sum(1, keepdim=True) - 2 * b[:, None] * (g @ x.T)
           + b[:, None].square() * x.square().sum(1)[None])
    total = float(g.square().sum())
    if total == 0:
        return 0.0
    return math.sqrt(max(float(err.min(dim=1).values.clamp_min(0).sum()), 0.0) / total)


def first_learnable_layer(model: nn.Module) -> tuple[str, nn.Module]:
    """Name and module of the first module (registration order) that owns parameters."""
    for name, module in model.named_modules():
        if any(True for _ in module.parameters(recurse=False)):
            return name, module
    raise GradleakError(f"model {type(model).__name__} has no learnable layer")


def _check_linear_first(model: nn.Module, input_shape: tuple[int, ...], who: str) -> tuple[str, nn.Linear]:
    name, layer = first_learnable_layer(model)
    net = type(getattr(model, "net", model)).__name__
    bias = getattr(layer, "bias", None)
    what = type(layer).__name__ + ("" if isinstance(bias, torch.Tensor) else " without bias")
    if not isinstance(layer, nn.Linear) or layer.bias is None:
        raise GradleakError(
            f"attack {who!r} needs a model whose first learnable layer is nn.Linear with bias "
            f"(model.name=mlp with model.bias=true), but this model ({net}) starts with {what} "
            f"at {name!r}")
    if layer.in_features != math.prod(input_shape):
        raise GradleakError(
            f"attack {who!r} needs the first linear layer to read the flattened input "
            f"({math.prod(input_shape)} values), but {name!r} has {layer.in_features} inputs")
    return name, layer


def _label_needs(base: frozenset[Knowledge], labels: str) -> frozenset[Knowledge]:
    return base | {Knowledge.LABELS} if labels == "known" else base


@register_attack("analytic")
class AnalyticLinear(Attack):
    """Closed-form reconstruction of the first fully connected layer's input (Phong et al. 2017)."""

    name = "analytic"
    info = AttackInfo(paper="Phong et al., IEEE TIFS 2018 (arXiv 2017)", strategy="GIA-A")

    def needs(self) -> frozenset[Knowledge]:
        return _label_needs(self.requires, self.config.labels)

    def prepare_model(self, model: nn.Module, *, input_shape: tuple[int, int, int],
                      num_classes: int, seed: int) -> nn.Module:
        # Honest server: unchanged model; checking here refuses before the client trains.
        _check_linear_first(model, input_shape, self.name)
        return model

    def run(self, obs: Observation, *, seed: int, progress: bool) -> Reconstruction:
        name, _ = _check_linear_first(obs.model, obs.input_shape, self.name)
        direction = obs.update.gradient_direction()
        weight = direction[f"{name}.weight"].detach().cpu().double()  # [H, D]
        bias = direction[f"{name}.bias"].detach().cpu().double()  # [H]
        if not bool((bias != 0).any()):
            raise GradleakError(f"attack 'analytic': every bias gradient of {name!r} is zero "
                                "(no active neuron or a defense removed it); nothing to invert")
        n = obs.num_samples
        if n == 1:
            # Least squares over all rows: argmin_x sum_i |g_i - b_i x|^2 = sum_i b_i g_i / |b|^2.
            flat = (bias @ weight / bias.square().sum())[None]
        else:
            rows = bias.abs().argsort(descending=True)[:n]
            flat = gradient_ratio(weight[rows], bias[rows])
            if len(rows) < n:  # fewer neurons than samples: repeat the strongest rows
                flat = flat[torch.arange(n) % len(rows)]
        images = to_pixels(flat, obs.model, obs.input_shape)
        labels, source = resolve_labels(obs, self.config.labels)
        loss = explained_residual(weight, bias, flat)
        return Reconstruction(images=images, candidates=images[None], losses=[loss],
                              labels=labels.tolist(), iterations=0, label_source=source)


class ImprintBlock(nn.Module):
    """Fowl et al. 2021's imprint module, placed after the input normalisation.

    ``imprint = Linear(D -> k)``: every row is the same unit measurement vector ``v`` (a seeded
    random Gaussian direction) and the biases are ``-q_0 < ... < -q_(k-1)``: ``q_0`` is a floor
    (``-IMPRINT_FLOOR``) and ``q_i`` the ``i / k`` quantile of N(0, 1). For inputs normalised per
    pixel to unit variance, ``v . x`` is roughly standard normal, so the k bins
    ``(q_i, q_(i+1)]`` (the last one open) are about equally likely. Neuron i fires iff
    ``v . x > q_i``. ``expand = Linear(k -> D)`` with all weights equal adds
    ``gain * sum_i relu(h_i)`` to every input value, so the rest of the model keeps its input
    (up to that shift). Input and output ``[B, C, H, W]``.
    """

    def __init__(self, input_shape: tuple[int, ...], bins: int, *, generator: torch.Generator,
                 gain: float = IMPRINT_GAIN) -> None:
        super().__init__()
        dim = math.prod(input_shape)
        self.bins = bins
        self.imprint = nn.Linear(dim, bins)
        self.expand = nn.Linear(bins, dim)
        measurement = torch.randn(dim, generator=generator, dtype=torch.float64)
        measurement /= measurement.norm()
        quantiles = torch.arange(1, bins, dtype=torch.float64) / bins
        normal = math.sqrt(2) * torch.erfinv(2 * quantiles - 1)  # standard normal quantiles
        # The first neuron's cutoff is a floor far below the data, so the lowest bin is not lost.
        cutoffs = torch.cat([torch.tensor([-IMPRINT_FLOOR], dtype=torch.float64), normal])
        with torch.no_grad():
            self.imprint.weight.copy_(measurement.expand(bins, dim))
            self.imprint.bias.copy_(-cutoffs)
            # Equal weights make dL/dh_i the same for every active neuron i of one sample, which
            # is what lets consecutive bins cancel everything but the samples between them.
            self.expand.weight.fill_(gain)
            self.expand.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        return (flat + self.expand(torch.relu(self.imprint(flat)))).view(x.shape)


def find_imprint(model: nn.Module) -> tuple[str, ImprintBlock]:
    for name, module in model.named_modules():
        if isinstance(module, ImprintBlock):
            return name, module
    raise GradleakError("attack 'imprint' reads the imprint module its prepare_model inserts, but "
                        "the observed model has none; send the model returned by "
                        "attack.prepare_model(...) to the client")


@register_attack("imprint")
class Imprint(Attack):
    """Robbing the Fed (Fowl et al. 2021): a malicious imprint module separates a batch's samples
    into measurement bins; each sample is the ratio of consecutive bins' gradient differences.

    Returns the N bins with the largest |bias-gradient difference|, in that order. Samples that
    share a bin come back as one mixture. ``bins`` (``attack.bins``) defaults to the constant 64
    because the model is crafted before the server sees N; keep it well above N: a sample shares
    its bin with probability about ``1 - (1 - 1/k)^(N-1)`` (10% at N = 8, k = 64).
    """

    name = "imprint"
    info = AttackInfo(paper="Fowl et al., ICLR 2022 (arXiv 2021)", strategy="GIA-A",
                      server="malicious", capability="active: crafts parameters (detectable)",
                      goal="data")
    requires = frozenset({Knowledge.BASIC, Knowledge.MALICIOUS})
    settings = ImprintSettings
    config: ImprintSettings

    def needs(self) -> frozenset[Knowledge]:
        return _label_needs(self.requires, self.config.labels)

    def prepare_model(self, model: nn.Module, *, input_shape: tuple[int, int, int],
                      num_classes: int, seed: int) -> nn.Module:
        """A copy of ``model`` whose network starts with an :class:`ImprintBlock`."""
        crafted = copy.deepcopy(model)
        block = ImprintBlock(tuple(input_shape), self.config.bins,
                             generator=torch.Generator().manual_seed(seed))
        device = next(model.parameters()).device
        if isinstance(getattr(crafted, "net", None), nn.Module):
            crafted.net = nn.Sequential(block, crafted.net)
            return crafted.to(device)
        return nn.Sequential(block, crafted).to(device)

    def run(self, obs: Observation, *, seed: int, progress: bool) -> Reconstruction:
        name, _ = find_imprint(obs.model)
        direction = obs.update.gradient_direction()
        weight = direction[f"{name}.imprint.weight"].detach().cpu().double()  # [k, D]
        bias = direction[f"{name}.imprint.bias"].detach().cpu().double()  # [k]
        # Neuron i fires for samples above cutoff i; the next neuron's gradient removes those
        # above cutoff i + 1, leaving the samples of bin i. The top bin has no successor.
        d_weight = weight - torch.cat([weight[1:], torch.zeros_like(weight[:1])])
        d_bias = bias - torch.cat([bias[1:], torch.zeros_like(bias[:1])])
        n = obs.num_samples
        ranked = d_bias.abs().argsort(descending=True)[:n]
        if len(ranked) < n:
            ranked = ranked[torch.arange(n) % len(ranked)]
        flat = gradient_ratio(d_weight[ranked], d_bias[ranked])
        # Bins whose difference is rounding noise hold no sample: return the mean image there.
        empty = d_bias[ranked].abs() <= 1e-6 * d_bias.abs().max().clamp_min(1e-300)
        flat[empty] = 0.0
        images = to_pixels(flat, obs.model, obs.input_shape)
        labels, source = resolve_labels(obs, self.config.labels)
        loss = explained_residual(d_weight, d_bias, flat)
        return Reconstruction(images=images, candidates=images[None], losses=[loss],
                              labels=labels.tolist(), iterations=0, label_source=source)
