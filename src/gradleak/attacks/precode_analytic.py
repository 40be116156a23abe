"""The analytic attack that breaks PRECODE (Balunović et al., ICLR 2022, "Bayesian framework for
gradient leakage", Sec. on PRECODE): invert the fully connected layer in front of the bottleneck.

PRECODE's bottleneck (:mod:`gradleak.models.precode`) starts with a linear encoder
``s = W h + b`` on the features ``h``. Whatever the sampling after it, ``dL/dW_i = dL/db_i * h``
for one sample, so ``h = (dL/dW)_i / (dL/db)_i`` for any row with ``dL/db_i != 0`` (least squares
over all rows, as :mod:`gradleak.attacks.analytic`). The KL term only adds to ``dL/ds``; the
rank-one structure stays. What that implies for the image:

* the encoder reads the flattened (normalised) image itself, e.g. ``model.name=mlp
  model.hidden=[] model.precode=true``: ``h`` IS the image, exact for N = 1 up to float rounding;
* otherwise ``h`` is the representation, and the image is found by feature inversion: optimise
  ``x`` in [0, 1] (Adam, ``attack.iterations`` steps of ``attack.lr``, ``attack.tv``) so that the
  attacker's model (eval mode: the bottleneck is not sampled) maps it to ``h``. Not exact.

Needs: the observed update's encoder weight and bias gradients (``model.bias`` is irrelevant:
the encoder always has a bias) and the global model; labels only to report them. N > 1: the N
rows of largest |bias gradient|, mixtures unless the rows separate the samples.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from gradleak.attack_settings import MatchingSettings
from gradleak.attacks import register_attack
from gradleak.attacks.analytic import explained_residual, first_learnable_layer, gradient_ratio, to_pixels
from gradleak.attacks.base import Attack, AttackInfo, Observation, Reconstruction
from gradleak.attacks.matching import resolve_labels
from gradleak.attacks.priors import total_variation
from gradleak.errors import GradleakError
from gradleak.fl.client import set_bn_mode
from gradleak.models.precode import find_bottleneck
from gradleak.threat import Knowledge


def recovered_features(weight: torch.Tensor, bias: torch.Tensor, n: int) -> torch.Tensor:
    """The encoder's inputs ``[n, d]`` from its weight ``[R, d]`` and bias ``[R]`` gradients."""
    if not bool((bias != 0).any()):
        raise GradleakError("attack 'precode-analytic': every bias gradient of the PRECODE "
                            "encoder is zero; nothing to invert")
    if n == 1:  # argmin_h sum_i |g_i - b_i h|^2
        return (bias @ weight / bias.square().sum())[None]
    rows = bias.abs().argsort(descending=True)[:n]
    return gradient_ratio(weight[rows], bias[rows])[torch.arange(n) % len(rows)]


def reads_the_image(model: nn.Module, encoder: nn.Linear, input_shape: tuple[int, ...]) -> bool:
    """Whether the encoder is the model's first learnable layer and reads the flattened input."""
    return first_learnable_layer(model)[1] is encoder and encoder.in_features == math.prod(input_shape)


@register_attack("precode-analytic", settings=MatchingSettings)
class PrecodeAnalytic(Attack):
    """Breaks PRECODE: the bottleneck encoder's input in closed form, then the image (exact when
    the encoder reads the image; feature inversion otherwise). Balunović et al., ICLR 2022."""

    name = "precode-analytic"
    info = AttackInfo(paper="Balunović et al., ICLR 2022 (breaking PRECODE)", strategy="GIA-A")
    config: MatchingSettings

    def needs(self) -> frozenset[Knowledge]:
        needs = set(self.requires) | ({Knowledge.LABELS} if self.config.labels == "known" else set())
        return frozenset(needs | ({Knowledge.PRIORS} if self.config.tv > 0 else set()))

    def prepare_model(self, model: nn.Module, *, input_shape: tuple[int, int, int],
                      num_classes: int, seed: int) -> nn.Module:
        find_bottleneck(model)  # refuses before the client trains
        return model

    def run(self, obs: Observation, *, seed: int, progress: bool) -> Reconstruction:
        name, bottleneck = find_bottleneck(obs.model)
        direction = obs.update.gradient_direction()
        weight = direction[f"{name}.encoder.weight"].detach().cpu().double()  # [2K, d]
        bias = direction[f"{name}.encoder.bias"].detach().cpu().double()  # [2K]
        features = recovered_features(weight, bias, obs.num_samples)
        exact = reads_the_image(obs.model, bottleneck.encoder, obs.input_shape)
        if exact:
            images = to_pixels(features, obs.model, obs.input_shape)
        else:
            images = self.invert(obs, name, features.float(), seed)
        labels, source = resolve_labels(obs, self.config.labels)
        return Reconstruction(images=images, candidates=images[None],
                              losses=[explained_residual(weight, bias, features)],
                              labels=labels.tolist(), iterations=0 if exact else self.config.iterations,
                              label_source=source, details={"precode_encoder": f"{name}.encoder",
                                                            "reads_the_image": exact})

    def invert(self, obs: Observation, name: str, target: torch.Tensor, seed: int) -> torch.Tensor:
        """Images ``[N, C, H, W]`` whose bottleneck input under the attacker's model is ``target``."""
        model = copy.deepcopy(obs.model)
        set_bn_mode(model, obs.bn_mode, dropout=False)
        device = next(model.parameters()).device
        target = target.to(device)
        captured: list[torch.Tensor] = []
        handle = model.get_submodule(name).register_forward_hook(
            lambda _m, args, _out: captured.append(args[0].flatten(1)))
        g = torch.Generator().manual_seed(seed)
        x = (0.5 + 0.1 * torch.randn((obs.num_samples, *obs.input_shape), generator=g)).to(device)
        x.requires_grad_(True)
        opt = torch.optim.Adam([x], lr=self.config.lr)
        try:
            for _ in range(self.config.iterations):
                captured.clear()
                opt.zero_grad()
                model(x)
                loss = (captured[0] - target).square().sum() / target.square().sum().clamp_min(1e-12)
                if self.config.tv > 0:
                    loss = loss + self.config.tv * total_variation(x)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    x.clamp_(0, 1)
        finally:
            handle.remove()
        return x.detach().cpu()
