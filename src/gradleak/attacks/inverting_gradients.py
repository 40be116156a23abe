"""Inverting Gradients (Geiping et al., "Inverting Gradients - How easy is it to break privacy in
federated learning?", NeurIPS 2020). GIA-O.

Minimises 1 - cosine similarity between the dummy gradient and the observed one over all layers
jointly, plus a total-variation prior, with Adam on the *sign* of the image gradient, a box
constraint to [0, 1] after each step and step decay x0.1 at 3/8, 5/8 and 7/8 of the run.
Restarts keep the lowest final gradient loss. Dummy images ``[N, C, H, W]``.

Against a FedAvg update: without client training details the update is treated as one gradient
step (BST; the delta is negated); with them the local SGD is simulated (WST).
"""

from __future__ import annotations

import copy
import math

import torch
from tqdm.auto import tqdm

from gradleak.attacks import register_attack
from gradleak.attacks.base import Attack, AttackInfo, Observation, Reconstruction
from gradleak.attacks.labels import infer_labels
from gradleak.attacks.losses import DISTANCES
from gradleak.attacks.priors import total_variation
from gradleak.attacks.simulate import batch_order, dummy_gradient, simulated_delta
from gradleak.config import AttackConfig
from gradleak.errors import GradleakError
from gradleak.fl.client import set_bn_mode
from gradleak.threat import Knowledge


def resolve_labels(obs: Observation, rule: str) -> tuple[torch.Tensor, str]:
    """The labels an attack uses: the granted multiset, or inferred by ``rule``."""
    if rule == "known":
        if obs.labels is None:  # guarded by needs(); kept for direct library use
            raise GradleakError("attack.labels=known needs threat.knows_labels=true")
        return obs.labels.clone(), "known"
    inferred = infer_labels(rule, obs.model, obs.update.gradient_direction(), obs.num_samples)
    return torch.tensor(inferred, dtype=torch.long), rule


@register_attack("ig")
class InvertingGradients(Attack):
    name = "ig"
    info = AttackInfo(paper="Geiping et al., NeurIPS 2020", strategy="GIA-O")

    def __init__(self, *, iterations: int = 4800, lr: float = 0.1, tv: float = 1e-4,
                 restarts: int = 1, labels: str = "known", init: str = "randn",
                 lr_decay: bool = True, distance: str = "cosine", signed: bool = True) -> None:
        if distance not in DISTANCES:
            raise GradleakError(f"bad distance {distance!r}; allowed: {', '.join(DISTANCES)}")
        self.iterations = iterations
        self.lr = lr
        self.tv = tv
        self.restarts = restarts
        self.labels = labels
        self.init = init
        self.lr_decay = lr_decay
        self.distance = DISTANCES[distance]
        self.signed = signed

    @classmethod
    def from_config(cls, cfg: AttackConfig) -> InvertingGradients:
        return cls(iterations=cfg.iterations, lr=cfg.lr, tv=cfg.tv, restarts=cfg.restarts,
                   labels=cfg.labels, init=cfg.init, lr_decay=cfg.lr_decay)

    def needs(self) -> frozenset[Knowledge]:
        needs = set(self.requires)
        if self.tv > 0:
            needs.add(Knowledge.PRIORS)
        if self.labels == "known":
            needs.add(Knowledge.LABELS)
        return frozenset(needs)

    def _initial(self, obs: Observation, model: torch.nn.Module,
                 generator: torch.Generator) -> torch.Tensor:
        shape = (obs.num_samples, *obs.input_shape)
        if self.init == "rand":
            return torch.rand(shape, generator=generator)
        if self.init == "gray":
            return torch.full(shape, 0.5) + 0.01 * torch.randn(shape, generator=generator)
        # Geiping's N(0, 1) in normalised space, i.e. mean + std * N(0, 1) in pixel space.
        mean = getattr(model, "input_mean", torch.tensor(0.5)).cpu()
        std = getattr(model, "input_std", torch.tensor(0.25)).cpu()
        return (mean + std * torch.randn(shape, generator=generator)).clamp(0, 1)

    def run(self, obs: Observation, *, seed: int, progress: bool) -> Reconstruction:
        model = copy.deepcopy(obs.model)
        set_bn_mode(model, obs.bn_mode, dropout=False)
        device = next(model.parameters()).device
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        params = [p for p in model.parameters() if p.requires_grad]
        labels, source = resolve_labels(obs, self.labels)
        labels = labels.to(device)
        generator = torch.Generator().manual_seed(seed)

        simulate = obs.protocol == "fedavg" and obs.client is not None
        if simulate:
            target = [obs.update.tensors[n].to(device) for n in names]
        else:
            direction = obs.update.gradient_direction()
            target = [direction[n].to(device) for n in names]

        candidates, losses, history = [], [], []
        bar = tqdm(total=self.iterations * self.restarts, disable=not progress,
                   desc="attack ig", unit="it", dynamic_ncols=True)
        for _ in range(self.restarts):
            x = self._initial(obs, model, generator).to(device).requires_grad_(True)
            optimizer = torch.optim.Adam([x], lr=self.lr)
            milestones = [math.floor(self.iterations * f) for f in (3 / 8, 5 / 8, 7 / 8)]
            scheduler = torch.optim.lr_scheduler.MultiStepLR(
                optimizer, milestones=milestones if self.lr_decay else [], gamma=0.1)
            order = batch_order(obs.client, generator) if simulate else None

            def predict(images: torch.Tensor, order=order) -> list[torch.Tensor]:
                if simulate:
                    return simulated_delta(model, names, images, labels, obs.client, order)
                return dummy_gradient(model, names, params, images, labels)

            for it in range(self.iterations):
                match = self.distance(predict(x), target)
                total = match + self.tv * total_variation(x) if self.tv > 0 else match
                (grad_x,) = torch.autograd.grad(total, x)
                x.grad = grad_x.sign() if self.signed else grad_x
                optimizer.step()
                scheduler.step()
                with torch.no_grad():
                    x.clamp_(0, 1)
                if it % 10 == 0 or it == self.iterations - 1:
                    history.append(float(match.detach()))
                    bar.set_postfix(grad_loss=f"{history[-1]:.4f}")
                bar.update(1)
            # Rank restarts by the gradient loss of the final, box-constrained images.
            final = x.detach().requires_grad_(True)
            losses.append(float(self.distance(predict(final), target).detach()))
            candidates.append(x.detach().cpu())
        bar.close()
        ranking = sorted(range(len(losses)), key=lambda i: losses[i])
        stacked = torch.stack([candidates[i] for i in ranking])
        return Reconstruction(images=stacked[0], candidates=stacked,
                              losses=[losses[i] for i in ranking], labels=labels.tolist(),
                              iterations=self.iterations, label_source=source, history=history)
