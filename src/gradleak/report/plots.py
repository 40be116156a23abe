"""The figures, each defined once and used by the HTML report and the commands alike.

* :func:`tradeoff_figure`: the paper's Fig. 11 scatter (attack LPIPS against accuracy drop, one
  colour per defense, the best trade-off per defense circled);
* :func:`stage_figure`: the paper's Fig. 7 panels (test accuracy, normalised IGSA, attack PSNR
  over FL rounds).

Each returns a matplotlib figure; :func:`save_png` writes one atomically and
:func:`png_data_uri` inlines a PNG file into a self-contained HTML page.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gradleak.config import DEFAULT_LPIPS_THRESHOLD
from gradleak.io import atomic_write


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Any, path: str | Path, *, dpi: int = 120) -> None:
    """Write ``fig`` to ``path`` atomically and close it."""
    plt = _pyplot()
    try:
        atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=dpi))
    finally:
        plt.close(fig)


def png_data_uri(path: str | Path) -> str:
    """``data:image/png;base64,...`` of a PNG file, so an HTML report needs no side files."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def tradeoff_figure(points: Sequence[dict[str, Any]], *,
                    lpips_threshold: float = DEFAULT_LPIPS_THRESHOLD,
                    max_drop: float = 5.0) -> Any | None:
    """Fig. 11: ``points`` are dicts with ``defense``, ``label`` (the strength, annotated),
    ``lpips``, ``accuracy_drop`` (points) and optionally ``best`` (circled). Points without LPIPS
    or accuracy drop are left out; None when nothing is left."""
    pts = [p for p in points if p.get("lpips") is not None and p.get("accuracy_drop") is not None]
    if not pts:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    colours = plt.get_cmap("tab10")
    for i, name in enumerate(dict.fromkeys(p["defense"] for p in pts)):
        mine = [p for p in pts if p["defense"] == name]
        ax.scatter([p["lpips"] for p in mine], [p["accuracy_drop"] for p in mine],
                   color=colours(i % 10), label=name, s=36, zorder=3)
        for p in mine:
            if p.get("label"):
                ax.annotate(str(p["label"]), (p["lpips"], p["accuracy_drop"]), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")
            if p.get("best"):
                ax.scatter([p["lpips"]], [p["accuracy_drop"]], s=150, facecolors="none",
                           edgecolors=colours(i % 10), linewidths=1.2, zorder=2)
    ax.axhline(max_drop, color="tab:blue", linestyle="--", linewidth=1,
               label=f"accuracy drop {max_drop:g} points")
    ax.axvline(lpips_threshold, color="tab:red", linestyle="--", linewidth=1,
               label=f"LPIPS leakage threshold {lpips_threshold:g}")
    ax.set_xlabel("LPIPS of the attack's reconstruction (higher = more private)")
    ax.set_ylabel("test accuracy drop vs no defense (points)")
    ax.set_title("Privacy-utility trade-off of post-processing defenses")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def stage_figure(rows: Sequence[dict[str, Any]], *, title: str) -> Any:
    """Fig. 7: three panels over FL rounds: test accuracy, normalised IGSA, attack PSNR. ``rows``
    hold ``round``, ``accuracy``, ``igsa_normalised`` and ``psnr``."""
    plt = _pyplot()
    rounds = [r["round"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for ax, key, label in zip(axes, ("accuracy", "igsa_normalised", "psnr"),
                              ("test accuracy", "IGSA (normalised)", "attack PSNR (dB)"),
                              strict=True):
        ax.plot(rounds, [float(r[key]) for r in rows], marker="o")
        ax.set_xlabel("FL round")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle(f"training-stage study: {title}")
    fig.tight_layout()
    return fig
