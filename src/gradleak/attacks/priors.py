"""Image priors (the paper's level-1 knowledge), each a differentiable scalar of ``x [B, C, H, W]``."""

from __future__ import annotations

import torch

TV_BORDERS = ("none", "zero")


def total_variation(x: torch.Tensor, *, border: str = "none") -> torch.Tensor:
    """Anisotropic TV as mean absolute neighbour differences (Geiping et al. 2020).

    ``border="zero"`` is breaching 0.1.2's variant: a zero column and row are appended, so each
    right/bottom edge pixel's distance from 0 is penalised as well. That pulls edges towards 0
    (black in gradleak's pixel space), which costs PSNR and SSIM on bright images and helps
    LPIPS a little (docs/benchmarks.md).
    """
    if border == "zero":
        x = torch.nn.functional.pad(x, (0, 1, 0, 1))
        dx = (x[:, :, :-1, 1:] - x[:, :, :-1, :-1]).abs().mean()
        dy = (x[:, :, 1:, :-1] - x[:, :, :-1, :-1]).abs().mean()
        return dx + dy
    if border != "none":
        raise ValueError(f"bad TV border {border!r}; allowed: {', '.join(TV_BORDERS)}")
    dx = (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().mean()
    dy = (x[:, :, 1:, :] - x[:, :, :-1, :]).abs().mean()
    return dx + dy


def l2_norm(x: torch.Tensor) -> torch.Tensor:
    """Mean squared pixel value: the image-norm prior of GradInversion (Yin et al. 2021)."""
    return x.pow(2).mean()


def group_consistency(group: torch.Tensor, consensus: torch.Tensor) -> torch.Tensor:
    """GradInversion's group-consistency prior (Yin et al. 2021, Sec. 3.3): squared L2 distance of
    each member's reconstruction from the group consensus, averaged over members and samples.

    ``group [K, N, ...]`` holds K members optimised from different seeds; ``consensus [N, ...]``
    is their (detached) mean. Yin et al. register the members to each other (RANSAC-flow) before
    averaging; here the plain pixel mean is used, as the members match the same gradient and stay
    spatially aligned at these resolutions.
    """
    k, n = group.shape[:2]
    return (group - consensus.unsqueeze(0)).pow(2).sum() / (k * n)


class BatchNormStatistics:
    """GradInversion's BN prior (Yin et al. 2021): match each BN layer's dummy batch mean and
    variance to target statistics, sum over layers of ||mu - mu*||_2 + ||var - var*||_2.

    ``targets``: per BN layer ``(mean [C], var [C])`` of the client's batch (the paper's level-4
    knowledge), or None for the model's running statistics. Call :meth:`start` before each
    forward pass of the dummy batch and :meth:`loss` after it.
    """

    def __init__(self, model: torch.nn.Module,
                 targets: list[tuple[torch.Tensor, torch.Tensor]] | None) -> None:
        self.layers = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        if targets is None:
            targets = [(m.running_mean.detach().clone(), m.running_var.detach().clone())
                       for m in self.layers]
        if len(targets) != len(self.layers):
            raise ValueError(f"{len(targets)} BN targets for {len(self.layers)} BN layers")
        self.targets = targets
        self.captured: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._handles = [m.register_forward_hook(self._hook) for m in self.layers]

    def _hook(self, _m: torch.nn.Module, inputs: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
        x = inputs[0]
        # Only the first pass after start() counts (a WST replay runs several local steps).
        if len(self.captured) < len(self.layers):
            self.captured.append((x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=False)))

    def start(self) -> None:
        self.captured = []

    def loss(self) -> torch.Tensor:
        total = self.captured[0][0].new_zeros(())
        for (mu, var), (mu_t, var_t) in zip(self.captured, self.targets, strict=True):
            total = total + (mu - mu_t.to(mu)).norm() + (var - var_t.to(var)).norm()
        return total

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
