"""DCGAN generator and discriminator (Radford et al. 2016) for the GIA-L attacks (``gias``, ``ggl``).

The generator maps latents ``z [B, latent_dim]`` (optionally with class labels ``[B]``, whose
embedding is concatenated to ``z``) to images ``[B, C, R, R]`` in [0, 1]: a transposed
convolution to 4x4, then stride-2 transposed convolutions doubling the side (4 -> 8 -> 16 -> 32
for R = 32), BatchNorm + ReLU between them and a Sigmoid at the end. ``R`` must be 4 * 2^k.

A generator file (``generator.pt``, written by ``gradleak train-generator``) is a
``torch.save``d dict ``{"state_dict": ..., "config": {"latent_dim", "channels", "resolution",
"num_classes", "conditional", "width"}}`` (``width`` optional, default 64); read it with
:func:`load_generator`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from gradleak.errors import GradleakError
from gradleak.io import atomic_write, load_weights

CONFIG_KEYS = ("latent_dim", "channels", "resolution", "num_classes", "conditional")


def _upsamplings(resolution: int) -> int:
    """k with resolution = 4 * 2^k (k >= 1)."""
    k, side = 0, 4
    while side < resolution:
        side, k = side * 2, k + 1
    if side != resolution or k < 1:
        raise GradleakError(f"generator resolution {resolution} is not supported; use 8, 16, 32, 64, ...")
    return k


class DCGANGenerator(nn.Module):
    """``z [B, latent_dim]`` (+ ``labels [B]`` if conditional) -> images ``[B, channels, R, R]``."""

    def __init__(self, latent_dim: int = 128, channels: int = 3, resolution: int = 32, *,
                 num_classes: int = 0, conditional: bool = False, width: int = 64) -> None:
        super().__init__()
        if conditional and num_classes < 1:
            raise GradleakError("a conditional generator needs num_classes >= 1")
        self.latent_dim, self.channels, self.resolution = latent_dim, channels, resolution
        self.num_classes, self.conditional, self.width = num_classes, conditional, width
        k = _upsamplings(resolution)
        self.embed = nn.Embedding(num_classes, latent_dim) if conditional else None
        in_dim = latent_dim * (2 if conditional else 1)
        ch = width * 2 ** (k - 1)
        layers: list[nn.Module] = [nn.ConvTranspose2d(in_dim, ch, 4, 1, 0, bias=False),
                                   nn.BatchNorm2d(ch), nn.ReLU(True)]
        for _ in range(k - 1):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch // 2),
                       nn.ReLU(True)]
            ch //= 2
        layers += [nn.ConvTranspose2d(ch, channels, 4, 2, 1), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)
        self.apply(_dcgan_init)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            if labels is None:
                raise GradleakError("this generator is class-conditional: pass labels")
            z = torch.cat([z, self.embed(labels)], dim=1)
        return self.net(z[:, :, None, None])

    def config(self) -> dict[str, Any]:
        return {"latent_dim": self.latent_dim, "channels": self.channels,
                "resolution": self.resolution, "num_classes": self.num_classes,
                "conditional": self.conditional, "width": self.width}


class DCGANDiscriminator(nn.Module):
    """``images [B, C, R, R]`` in [0, 1] -> real/fake logits ``[B]``.

    Conditional: a projection discriminator (Miyato & Koyama 2018), logit + <embed(y), features>.
    """

    def __init__(self, channels: int = 3, resolution: int = 32, *, num_classes: int = 0,
                 conditional: bool = False, width: int = 64) -> None:
        super().__init__()
        k = _upsamplings(resolution)
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        ch = width
        for _ in range(k - 1):
            layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch * 2),
                       nn.LeakyReLU(0.2, True)]
            ch *= 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Conv2d(ch, 1, 4, 1, 0)
        self.embed = nn.Embedding(num_classes, ch) if conditional else None
        self.apply(_dcgan_init)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = self.features(images * 2 - 1)
        out = self.head(h).flatten()
        if self.embed is not None:
            if labels is None:
                raise GradleakError("this discriminator is class-conditional: pass labels")
            out = out + (self.embed(labels) * h.sum(dim=(2, 3))).sum(dim=1)
        return out


def _dcgan_init(m: nn.Module) -> None:
    """DCGAN's N(0, 0.02) weights, BN scale N(1, 0.02)."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def save_generator(path: str | Path, generator: DCGANGenerator, **extra: Any) -> None:
    """Write ``{"state_dict", "config", **extra}`` atomically (loadable by :func:`load_generator`)."""
    blob = {"state_dict": {k: v.detach().cpu() for k, v in generator.state_dict().items()},
            "config": generator.config(), **extra}
    atomic_write(path, lambda p: torch.save(blob, p))


def load_generator(path: str | Path, *, map_location: str | torch.device = "cpu") -> DCGANGenerator:
    """The generator stored at ``path`` by :func:`save_generator`, in eval mode."""
    p = Path(path)
    if not p.is_file():
        raise GradleakError(f"generator file {str(p)!r} does not exist; run `gradleak train-generator "
                            "--out DIR` and pass DIR/generator.pt")
    blob = load_weights(p, f"generator file {str(p)!r}")
    if not (isinstance(blob, dict) and isinstance(blob.get("state_dict"), dict)
            and isinstance(blob.get("config"), dict)):
        raise GradleakError(f"generator file {str(p)!r} must hold a dict with 'state_dict' and "
                            "'config' (as written by `gradleak train-generator`)")
    cfg = blob["config"]
    missing = [k for k in CONFIG_KEYS if k not in cfg]
    if missing:
        raise GradleakError(f"generator file {str(p)!r}: config lacks {', '.join(missing)}")
    # The file's sizes decide how much memory is allocated: bound them before building.
    limits = {"latent_dim": (1, 8192), "channels": (1, 4), "resolution": (4, 1024),
              "num_classes": (0, 100_000), "width": (1, 2048)}
    for key, (low, high) in limits.items():
        value = cfg.get(key, 64)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise GradleakError(f"generator file {str(p)!r}: config {key}={value!r} is not an int in "
                                f"[{low}, {high}]")
    if not isinstance(cfg["conditional"], bool):
        raise GradleakError(f"generator file {str(p)!r}: config conditional must be true or false")
    try:
        generator = DCGANGenerator(cfg["latent_dim"], cfg["channels"], cfg["resolution"],
                                   num_classes=cfg["num_classes"], conditional=cfg["conditional"],
                                   width=cfg.get("width", 64))
    except (RuntimeError, TypeError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise GradleakError(f"generator file {str(p)!r} has an unusable config: {first}") from None
    from gradleak.models import check_state_dict

    check_state_dict(generator, blob["state_dict"], f"generator file {str(p)!r}")
    generator.load_state_dict(blob["state_dict"])
    return generator.to(map_location).eval()
