"""GIAS (Jeon et al., "Gradient Inversion with Generative Image Prior", NeurIPS 2021). GIA-L.

The paper's Def. 2: the dummy data are ``G(z)`` for a generator ``G`` pretrained on the client's
data distribution (level-2 knowledge; ``gradleak train-generator``), and the attack optimises
latents instead of pixels.

- Stage 1 (``attack.latent_iterations``): latents ``z [N, latent_dim]`` ~ N(0, I) are optimised
  through the frozen ``G`` (eval mode) with the shared GIA-O engine: cosine gradient matching,
  Adam (``attack.lr``), step decay, restarts ranked by the final gradient loss.
- Stage 2 (``attack.generator_iterations``): from the best restart, each image ``i`` gets its own
  copy ``theta_i`` of the generator's parameters; ``z`` and all ``theta_i`` are fine-tuned
  together with Adam at ``attack.generator_lr`` (smaller than the latent lr), same distance and
  priors. The reconstruction is ``[G_theta_i(z_i)]_i`` ``[N, C, H, W]`` in [0, 1].

A class-conditional generator receives the labels the attack uses (known or inferred).
``attack.iterations``, ``attack.init`` and ``attack.box`` are not used: latents start at N(0, I)
and are unconstrained; the generator's Sigmoid keeps images in [0, 1].
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from gradleak.attack_settings import GIASSettings, MatchingSettings, ObjectiveSettings
from gradleak.attacks import register_attack
from gradleak.attacks.base import AttackInfo, Observation, Reconstruction
from gradleak.attacks.optimization import GradientMatchingAttack, resolve_labels
from gradleak.attacks.simulate import batch_order
from gradleak.errors import GradleakError
from gradleak.models.generator import DCGANGenerator, load_generator
from gradleak.progress import tqdm
from gradleak.threat import Knowledge

GeneratorSpec = str | Path | DCGANGenerator | None


def attack_generator(spec: GeneratorSpec, obs: Observation, device: torch.device, *,
                     who: str) -> DCGANGenerator:
    """The generator of a GIA-L attack, frozen in eval mode, checked against the victim's input."""
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        raise GradleakError(f"attack {who!r} needs a pretrained generator: run `gradleak "
                            "train-generator --out DIR` on auxiliary data, then set "
                            "attack.generator=DIR/generator.pt")
    if isinstance(spec, DCGANGenerator):
        generator = copy.deepcopy(spec).to(device).eval()
    else:
        generator = load_generator(spec, map_location=device)
    for p in generator.parameters():
        p.requires_grad_(False)
    made = (generator.channels, generator.resolution, generator.resolution)
    if tuple(obs.input_shape) != made:
        c, h, w = obs.input_shape
        raise GradleakError(f"the generator makes {made[0]}x{made[1]}x{made[2]} images but the victim "
                            f"model takes {c}x{h}x{w}: train a generator with data.resolution={h} "
                            "on data of the same channels")
    if generator.conditional and generator.num_classes != obs.num_classes:
        raise GradleakError(f"the conditional generator knows {generator.num_classes} classes but the "
                            f"victim model has {obs.num_classes}")
    return generator


@register_attack("gias")
class GIAS(GradientMatchingAttack):
    """Two-stage GIA-L: latent search through ``G`` then per-image generator fine-tuning."""

    name = "gias"
    info = AttackInfo(paper="Jeon et al., NeurIPS 2021", strategy="GIA-L")
    requires = frozenset({Knowledge.BASIC, Knowledge.DATA_DISTRIBUTION})
    settings = GIASSettings
    config: GIASSettings

    def __init__(self, config: GIASSettings | None = None, *, generator: GeneratorSpec = None,
                 **values: Any) -> None:
        """``generator``: a ``generator.pt`` path (the ``attack.generator`` setting) or a
        :class:`DCGANGenerator` object, kept beside the settings (see ``Attack.__init__``)."""
        self.generator_module = generator if isinstance(generator, DCGANGenerator) else None
        if generator is not None and self.generator_module is None:
            values["generator"] = str(generator)
        super().__init__(config, **values)
        self._net: DCGANGenerator | None = None
        self._classes: torch.Tensor | None = None
        self._finals: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._stage1: tuple[GIASSettings, MatchingSettings] | None = None

    @property
    def engine(self) -> MatchingSettings:
        """Stage 1's loop settings, derived from :attr:`config` (not stored apart): its objective
        keys, ``iterations = latent_iterations``, no box; latents are drawn by :meth:`initial`."""
        if self._stage1 is None or self._stage1[0] is not self.config:
            shared = {k: getattr(self.config, k) for k in ObjectiveSettings.names()}
            stage1 = MatchingSettings(**shared, iterations=self.config.latent_iterations,
                                      init="normal", box=False)
            self._stage1 = (self.config, stage1)
        return self._stage1[1]

    @property
    def iterations(self) -> int:
        """Stage 1's iterations (``attack.latent_iterations``)."""
        return self.config.latent_iterations

    # -- the engine's hooks: the free variable is z [N, latent_dim] ------------------------------

    def initial(self, obs: Observation, model: nn.Module, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(obs.num_samples, self._net.latent_dim, generator=generator)

    def images(self, variable: torch.Tensor) -> torch.Tensor:
        images = self._net(variable, self._classes)
        if not torch.is_grad_enabled():
            # The engine maps each restart's final latent under no_grad: keep it for stage 2.
            self._finals.append((variable.detach().clone(), images.detach().clamp(0, 1).cpu()))
        return images

    # -- the two stages -------------------------------------------------------------------------

    def run(self, obs: Observation, *, seed: int, progress: bool) -> Reconstruction:
        device = next(obs.model.parameters()).device
        spec = self.generator_module if self.generator_module is not None else self.config.generator
        self._net = attack_generator(spec, obs, device, who=self.name)
        self._classes, self._finals = None, []
        if self._net.conditional:
            if self.config.learn_labels:
                raise GradleakError("attack.learn_labels=true cannot drive a class-conditional "
                                    "generator; set attack.labels to known or a label rule")
            self._classes = resolve_labels(obs, self.config.labels)[0].to(device)
        try:
            stage1 = super().run(obs, seed=seed, progress=progress)
            if self.config.generator_iterations == 0:
                return stage1
            best = next((z for z, img in self._finals if torch.equal(img, stage1.images)), None)
            if best is None:  # pragma: no cover - only if the engine stops mapping latents last
                raise GradleakError("gias: could not find the best stage-1 latent")
            return self._stage2(obs, stage1, best, seed=seed, progress=progress)
        finally:
            self._net, self._classes, self._finals = None, None, []

    def _stage2(self, obs: Observation, stage1: Reconstruction, z0: torch.Tensor, *, seed: int,
                progress: bool) -> Reconstruction:
        """Fine-tune ``z`` and a per-image generator copy from the best stage-1 latent."""
        net = self._net
        setup = self.matching_setup(obs)
        device, target = setup.device, setup.target
        labels = torch.tensor(stage1.labels, dtype=torch.long, device=device)
        order = (batch_order(obs.client, torch.Generator().manual_seed(seed))
                 if setup.simulate else None)
        s = self.config
        bn_prior = self._bn_prior(setup.model, obs) if s.bn > 0 else None

        def predict(images: torch.Tensor) -> list[torch.Tensor]:
            return self.predict(setup, obs, images, labels, order)

        buffers = dict(net.named_buffers())
        thetas = [{n: p.detach().clone().requires_grad_(True) for n, p in net.named_parameters()}
                  for _ in range(obs.num_samples)]
        z = z0.clone().to(device).requires_grad_(True)
        classes = self._classes

        def render() -> torch.Tensor:
            return torch.cat([functional_call(net, (theta, buffers),
                                              (z[i:i + 1], None if classes is None else classes[i:i + 1]))
                              for i, theta in enumerate(thetas)])

        free = [z] + [p for theta in thetas for p in theta.values()]
        opt = torch.optim.Adam(free, lr=s.generator_lr)
        steps = s.generator_iterations
        milestones = [math.floor(steps * f) for f in (3 / 8, 5 / 8, 7 / 8)] if s.lr_decay else []
        scheduler = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1)
        history = list(stage1.history)
        bar = tqdm(total=steps, disable=not progress, desc="attack gias stage 2", unit="it",
                   dynamic_ncols=True)
        try:
            for it in range(steps):
                images = render()
                if bn_prior is not None:
                    bn_prior.start()
                match = self.gradient_distance(predict(images), target)
                total = s.distance_scale * match + self.regularisers(images, bn_prior)
                grads = torch.autograd.grad(total, free)
                for v, g in zip(free, grads, strict=True):
                    v.grad = g
                opt.step()
                scheduler.step()
                if it % 10 == 0 or it == steps - 1:
                    history.append(float(match.detach()))
                    bar.set_postfix(grad_loss=f"{float(match.detach()):.4f}")
                bar.update(1)
        finally:
            bar.close()
            if bn_prior is not None:
                bn_prior.remove()
        with torch.no_grad():
            final = render().clamp(0, 1)
        check = final.clone().requires_grad_(True)
        loss = float(self.gradient_distance(predict(check), target).detach())
        # Stage 2 refines the best restart; the other restarts stay as further initialisations.
        candidates = torch.cat([final.cpu()[None], stage1.candidates[1:]])
        return Reconstruction(images=final.cpu(), candidates=candidates,
                              losses=[loss] + stage1.losses[1:], labels=stage1.labels,
                              iterations=self.engine.iterations + steps, label_source=stage1.label_source,
                              history=history)
