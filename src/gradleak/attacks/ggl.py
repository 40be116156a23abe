"""GGL (Li et al., "Auditing Privacy Defenses in Federated Learning via Generative Gradient
Leakage", CVPR 2022). GIA-L, gradient-free.

CMA-ES (the ``cma`` package) searches the latent space of a generator pretrained on the client's
data distribution (level 2; best a class-conditional one from ``gradleak train-generator
--conditional``, which then receives the labels). For a batch of N samples it searches the
concatenated latent ``x = [z_1; ...; z_N]`` of dimension ``N * latent_dim`` and renders
``G(z_i, y_i)``. The fitness of a candidate is

    distance_scale * (1/L) * sum_l ||g_l(G(z)) - g*_l||^2  +  0.1 * KL(z)
    KL(z) = (1/N) sum_i 0.5 * (m_i^2 + v_i - 1 - log v_i)

with ``m_i``, ``v_i`` the mean and (biased) variance of the entries of ``z_i``: the KL divergence
of N(m_i, v_i) from the latent prior N(0, 1), as in GGL's code. Labels come from iDLG (the
paper) or any ``attack.labels`` rule / known labels. Trial gradients need no double backward,
so each evaluation costs about one training step.

Adaptive mode (``attack.adaptive=true``): GGL applies the client's known defense to each trial
gradient before comparing it. An attack built from ``AttackConfig`` alone does not see the
scenario's defense: pass it as ``GGL(defense=callable)`` or call :meth:`GGL.use_defense`
(e.g. ``attack.use_defense(build_defense(cfg.defense))``) before running.

Defaults (``configs/attacks/ggl.yaml``): 2 000 evaluations per restart, CMA's default
population ``4 + 3 ln(n)``, start at z = 0 with step size 1. GGL's paper uses 500 rounds x 50
samples (raise ``attack.ggl_budget`` to 25 000 for that).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gradleak.attack_settings import GGLSettings
from gradleak.attacks import register_attack
from gradleak.attacks.base import Attack, AttackInfo, Observation, Reconstruction
from gradleak.attacks.gias import attack_generator
from gradleak.attacks.losses import l2_distance
from gradleak.attacks.optimization import resolve_labels, select_layers
from gradleak.attacks.simulate import batch_order, simulated_delta
from gradleak.defenses import apply_defense
from gradleak.errors import GradleakError
from gradleak.fl.client import set_bn_mode
from gradleak.models.generator import DCGANGenerator
from gradleak.progress import tqdm
from gradleak.threat import Knowledge
from gradleak.update import SharedUpdate

KL_WEIGHT = 0.1


def latent_kl(z: torch.Tensor) -> torch.Tensor:
    """GGL's KL regulariser of latents ``z [..., N, d]`` -> ``[...]`` (see the module docstring)."""
    mean = z.mean(dim=-1)
    var = z.var(dim=-1, unbiased=False).clamp_min(1e-8)
    return (0.5 * (mean.pow(2) + var - 1 - var.log())).mean(dim=-1)


@register_attack("ggl")
class GGL(Attack):
    """CMA-ES in a generator's latent space; see the module docstring."""

    name = "ggl"
    info = AttackInfo(paper="Li et al., CVPR 2022", strategy="GIA-L")
    requires = frozenset({Knowledge.BASIC, Knowledge.DATA_DISTRIBUTION})
    settings = GGLSettings

    config: GGLSettings

    def __init__(self, config: GGLSettings | None = None, *,
                 generator: str | Path | DCGANGenerator | None = None, kl: float = KL_WEIGHT,
                 sigma: float = 1.0, popsize: int | None = None,
                 defense: Callable[..., SharedUpdate] | None = None, **values: Any) -> None:
        """Beside the settings (see ``Attack.__init__``): ``generator`` as a path (the
        ``attack.generator`` setting) or a :class:`DCGANGenerator` object; the KL weight, CMA's
        initial step ``sigma`` and population; the scenario's ``defense`` (adaptive mode)."""
        self.generator_module = generator if isinstance(generator, DCGANGenerator) else None
        if generator is not None and self.generator_module is None:
            values["generator"] = str(generator)
        super().__init__(config, **values)
        self.kl, self.sigma, self.popsize, self.defense = kl, sigma, popsize, defense

    def use_defense(self, defense: Callable[..., SharedUpdate]) -> None:
        """Give the attack the scenario's defense (``defense(update, generator=...)``)."""
        self.defense = defense

    def adapt(self, defense: Any, observed: SharedUpdate, model: nn.Module) -> None:
        """Gradient-free search applies the client's real defense to its trial gradients."""
        from gradleak.defenses import build_defense

        self.use_defense(build_defense(defense))

    def _search(self, fitness: Callable, dim: int, popsize: int, generations: int, *, seed: int,
                progress: bool) -> tuple[list[torch.Tensor], list[float], list[float]]:
        """CMA-ES restarts over ``dim`` latent coordinates: each restart's best images, their
        gradient distances and the best distance after every generation."""
        import cma

        candidates, losses, history = [], [], []
        restarts = self.config.restarts
        bar = tqdm(total=generations * popsize * restarts, disable=not progress,
                   desc=f"attack {self.name}", unit="eval", dynamic_ncols=True)
        try:
            for restart in range(restarts):
                # A fixed number of generations: CMA's own stopping rules are not consulted.
                es = cma.CMAEvolutionStrategy(np.zeros(dim), self.sigma, {
                    "popsize": popsize, "seed": (seed * 1000 + restart) % (2**32 - 1) + 1,
                    "verbose": -9})
                best = (math.inf, math.inf, None)
                for _ in range(generations):
                    xs = es.ask()
                    totals, matches, images = fitness(np.stack(xs))
                    es.tell(xs, totals)
                    k = int(np.argmin(totals))
                    if totals[k] < best[0]:
                        best = (totals[k], matches[k], images[k].clamp(0, 1).cpu())
                    history.append(best[1])
                    bar.update(popsize)
                    bar.set_postfix(grad_loss=f"{best[1]:.4g}")
                candidates.append(best[2])
                losses.append(best[1])
        finally:
            bar.close()
        return candidates, losses, history

    def needs(self) -> frozenset[Knowledge]:
        return self.requires | ({Knowledge.LABELS} if self.config.labels == "known" else frozenset())

    def run(self, obs: Observation, *, seed: int, progress: bool) -> Reconstruction:
        try:
            import cma  # noqa: F401
        except ImportError:  # pragma: no cover - cma is a dependency
            raise GradleakError("attack 'ggl' needs the cma package: pip install 'cma>=3.3'") from None
        s = self.config
        if s.adaptive and self.defense is None:
            raise GradleakError("attack.adaptive=true needs the scenario's defense, which this run did "
                                "not pass to the attack; from Python use GGL(defense=...)")
        model = copy.deepcopy(obs.model)
        set_bn_mode(model, obs.bn_mode, dropout=False)
        device = next(model.parameters()).device
        spec = self.generator_module if self.generator_module is not None else s.generator
        net = attack_generator(spec, obs, device, who=self.name)
        names = [n for n, _ in model.named_parameters() if n in obs.update.tensors]
        params = [p.requires_grad_(True) for n, p in model.named_parameters() if n in names]
        chosen = select_layers(names, s.layers)
        label_t, source = resolve_labels(obs, s.labels)
        label_t = label_t.to(device)
        classes = label_t if net.conditional else None
        simulate = obs.protocol == "fedavg" and obs.client is not None
        observed = obs.update.tensors if simulate else obs.update.gradient_direction()
        target = [observed[names[i]].to(device) for i in chosen]
        n, d = obs.num_samples, net.latent_dim
        noise = torch.Generator().manual_seed(seed)
        order = batch_order(obs.client, noise) if simulate else None
        weights = [1.0 / len(chosen)] * len(chosen)

        def trial(images: torch.Tensor) -> list[torch.Tensor]:
            if simulate:
                grads = [g.detach() for g in simulated_delta(model, names, images, label_t,
                                                             obs.client, order)]
            else:
                loss = F.cross_entropy(model(images), label_t)
                grads = list(torch.autograd.grad(loss, params))
            if self.defense is not None:
                kind = "model_delta" if simulate else "gradient"
                # A training-time defense (Soteria, Outpost) runs on the attacker's own trial
                # images and the global model, as the client would on its data.
                shared = apply_defense(self.defense,
                                       SharedUpdate(kind, dict(zip(names, grads, strict=True)), n),
                                       generator=noise, model=model, inputs=images)
                grads = [shared.tensors[k] for k in names]
            return [grads[i] for i in chosen]

        def fitness(batch: np.ndarray) -> tuple[list[float], list[float], torch.Tensor]:
            """Fitness and gradient distance of candidates ``[P, n * d]``; their images."""
            z = torch.as_tensor(batch, dtype=torch.float32, device=device).view(-1, n, d)
            with torch.no_grad():
                images = net(z.reshape(-1, d), None if classes is None else classes.repeat(len(z)))
            images = images.view(len(z), n, *images.shape[1:])
            reg = latent_kl(z)
            matches = [float(l2_distance(trial(x), target, weights)) for x in images]
            totals = [s.distance_scale * m + self.kl * float(r) for m, r in zip(matches, reg, strict=True)]
            return totals, matches, images

        popsize = self.popsize or 4 + int(3 * math.log(n * d))
        generations = max(1, s.ggl_budget // popsize)
        candidates, losses, history = self._search(fitness, n * d, popsize, generations, seed=seed,
                                                   progress=progress)
        ranking = sorted(range(len(losses)), key=lambda i: (math.isnan(losses[i]), losses[i]))
        stacked = torch.stack([candidates[i] for i in ranking])
        return Reconstruction(images=stacked[0], candidates=stacked, losses=[losses[i] for i in ranking],
                              labels=label_t.tolist(), iterations=generations * popsize,
                              label_source=source, history=history)
