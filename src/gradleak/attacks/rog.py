"""ROG (Yue et al., "Gradient Obfuscation Gives a False Sense of Security in Federated
Learning", USENIX Security 2023). GIA-O.

The free variable is a low-resolution image ``v [N, C, H/s, W/s]`` (``s = attack.rog_scale``,
4 in the paper); the dummy images are its bicubic upsampling ``clamp(up_s(v), 0, 1)``
``[N, C, H, W]``, so the search space is s^2 times smaller and the result is smooth, which is
what makes ROG robust to gradient obfuscation (quantisation, sparsification, ...). L2 gradient
distance, Adam lr 0.05 with cosine annealing over the run (``attack.lr_decay=true``; the shared
engine's step decay is replaced here), box constraint on ``v``.

Optional post-processing (``attack.postprocess``): a network the user trained to denoise or
sharpen ROG's outputs (the paper uses a learned super-resolution/denoising net), applied to the
final images ``[N, C, H, W]`` in [0, 1] and clamped to [0, 1]. The file holds only an architecture
name from :data:`gradleak.attacks.postprocess.POSTPROCESS` and its weights (never code; see that
module). Reported gradient losses are those before post-processing.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gradleak.attack_settings import ROGSettings
from gradleak.attacks import register_attack
from gradleak.attacks.base import AttackInfo, Observation, Reconstruction
from gradleak.attacks.optimization import GradientMatchingAttack
from gradleak.attacks.postprocess import load_postprocess
from gradleak.errors import GradleakError


@register_attack("rog")
class ROG(GradientMatchingAttack):
    """Optimises a ``1/scale``-resolution image upsampled bicubically; optional post-processing."""

    name = "rog"
    info = AttackInfo(paper="Yue et al., USENIX Security 2023", strategy="GIA-O")
    settings = ROGSettings
    config: ROGSettings

    def __init__(self, config: ROGSettings | None = None, *,
                 postprocess: str | Path | nn.Module | None = None, **values: Any) -> None:
        """``postprocess``: a file (the ``attack.postprocess`` setting) or an ``nn.Module``, user
        code kept beside the settings (see ``Attack.__init__``)."""
        self.postprocess_module = postprocess if isinstance(postprocess, nn.Module) else None
        if postprocess is not None and self.postprocess_module is None:
            values["postprocess"] = str(postprocess)
        super().__init__(config, **values)
        self._size: tuple[int, int] | None = None

    def initial(self, obs: Observation, model: nn.Module, generator: torch.Generator) -> torch.Tensor:
        (c, h, w), scale = obs.input_shape, self.config.rog_scale
        if h % scale or w % scale:
            raise GradleakError(f"attack.rog_scale={scale} must divide the image size {h}x{w}")
        self._size = (h, w)
        low = dataclasses.replace(obs, input_shape=(c, h // scale, w // scale))
        return super().initial(low, model, generator)

    def images(self, variable: torch.Tensor) -> torch.Tensor:
        """``v [N, C, h, w]`` -> ``clamp(bicubic(v), 0, 1) [N, C, h * scale, w * scale]``."""
        scale = self.config.rog_scale
        size = self._size or (variable.shape[-2] * scale, variable.shape[-1] * scale)
        return F.interpolate(variable, size=size, mode="bicubic", align_corners=False).clamp(0, 1)

    def images_key(self) -> tuple:
        return (self.config.rog_scale, self._size)

    def run(self, obs: Observation, *, seed: int, progress: bool) -> Reconstruction:
        post = self.postprocess_module
        if post is None and self.config.postprocess is not None:
            device = next(obs.model.parameters()).device
            post = load_postprocess(self.config.postprocess, map_location=device)
        recon = super().run(obs, seed=seed, progress=progress)
        if post is None:
            return recon
        candidates = torch.stack([self._apply(post, c) for c in recon.candidates])
        return dataclasses.replace(recon, images=candidates[0], candidates=candidates)

    @staticmethod
    def _apply(post: nn.Module, images: torch.Tensor) -> torch.Tensor:
        device = next(itertools.chain(post.parameters(), post.buffers()), images).device
        with torch.no_grad():
            out = post(images.to(device))
        if not isinstance(out, torch.Tensor) or out.shape != images.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise GradleakError(f"attack.postprocess must map images {tuple(images.shape)} to the same "
                                f"shape, got {got}")
        return out.clamp(0, 1).cpu()

    def lr_schedule(self, opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        """Cosine annealing over the run (ROG) instead of the engine's step decay."""
        if not self.config.lr_decay:
            return super().lr_schedule(opt)
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, self.config.iterations))
