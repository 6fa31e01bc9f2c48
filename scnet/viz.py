"""Figures: the one matplotlib guard (:func:`pyplot`), and the Grad-CAM figure (the input image, then one heat
map per model, side by side).

matplotlib is an optional extra (``pip install 'scnet-pytorch[plot]'``), imported only when a figure is drawn.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

INSTALL_HINT = "the figure needs matplotlib: pip install 'scnet-pytorch[plot]' (or pip install matplotlib)"
PANEL_INCHES, TITLE_INCHES, DPI = 3.0, 0.7, 100
HEAT_ALPHA = 0.5  # the heat map over the image: both stay readable


class MissingMatplotlib(ImportError):
    """matplotlib is not installed; the message says how to install it."""


@dataclass(frozen=True)
class CamPanel:
    """One model's panel: the image as that model saw it, its map, and the title above it."""

    image: torch.Tensor  # (3, H, W) uint8
    cam: torch.Tensor  # (H, W) in [0, 1]
    title: str


def require_matplotlib() -> None:
    """Fail early, before any model runs, when the figure cannot be drawn.

    Raises:
        MissingMatplotlib: matplotlib is not installed; the message says how to install it.
    """
    pyplot()


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only); :class:`MissingMatplotlib` when it is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise MissingMatplotlib(INSTALL_HINT) from e
    return plt


def save_cam_figure(image: torch.Tensor, panels: list[CamPanel], path: str | Path, image_title: str = "") -> Path:
    """Draw ``image`` then each panel's heat map over its image, in one row, and save it to ``path``.

    The figure is ``PANEL_INCHES`` wide per panel at ``DPI`` (no tight cropping, so its size is known).

    Raises:
        MissingMatplotlib: matplotlib is not installed.
        OSError: ``path`` cannot be written.
    """
    plt = pyplot()
    count = 1 + len(panels)
    fig, axes = plt.subplots(
        1, count, figsize=(PANEL_INCHES * count, PANEL_INCHES + TITLE_INCHES), dpi=DPI, squeeze=False
    )
    try:
        axes = axes[0]
        axes[0].imshow(image.permute(1, 2, 0).cpu().numpy())
        axes[0].set_title(image_title, fontsize=8)
        for ax, panel in zip(axes[1:], panels, strict=True):
            ax.imshow(panel.image.permute(1, 2, 0).cpu().numpy())
            ax.imshow(panel.cam.cpu().float().numpy(), cmap="jet", alpha=HEAT_ALPHA, vmin=0.0, vmax=1.0)
            ax.set_title(panel.title, fontsize=8)
        for ax in axes:
            ax.set_axis_off()
        fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=PANEL_INCHES / (PANEL_INCHES + TITLE_INCHES))
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=DPI)
    finally:
        plt.close(fig)
    return path
