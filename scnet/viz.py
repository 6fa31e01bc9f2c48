"""Figures: the one matplotlib guard (:func:`pyplot`), the Grad-CAM figure (the input image, then one heat map
per model, side by side), and a training run's curves (loss and accuracy by epoch, from its metrics.jsonl).

matplotlib is an optional extra (``pip install 'scnet-pytorch[plot]'``), imported only when a figure is drawn.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

INSTALL_HINT = "the figure needs matplotlib: pip install 'scnet-pytorch[plot]' (or pip install matplotlib)"
PANEL_INCHES, TITLE_INCHES, DPI = 3.0, 0.7, 100
HEAT_ALPHA = 0.5  # the heat map over the image: both stay readable
CURVES_INCHES = (10.0, 3.8)
# The accuracy panel's series: metrics.jsonl key -> legend label, line style.
ACCURACY_SERIES = {
    "top1": ("val top-1", "-"),
    "top5": ("val top-5", ":"),
    "ema_top1": ("EMA val top-1", "--"),
}


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


def _series(lines: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(epochs, values) of the lines that hold a finite number under ``key`` (validation may skip epochs)."""
    points = [(int(m["epoch"]), float(m[key])) for m in lines if isinstance(m.get(key), int | float)]
    points = [(e, v) for e, v in points if math.isfinite(v)]
    return [e for e, _ in points], [v for _, v in points]


def save_curves_figure(
    lines: Sequence[Mapping[str, Any]], path: str | Path, title: str = "", chance: float | None = None
) -> Path | None:
    """Draw a run's curves from its metrics.jsonl ``lines`` and save them to ``path``; None when no line has an
    epoch to draw.

    Left: the training loss by epoch, and the learning rate (the schedule) on a second axis. Right: validation
    top-1 and top-5 (and the EMA weights' top-1 when the run kept them), in percent, the best top-1 marked, and
    ``chance`` (in percent) as a dotted line. The file is replaced whole (written aside, then renamed).

    Raises:
        MissingMatplotlib: matplotlib is not installed.
        OSError: ``path`` cannot be written.
    """
    lines = [m for m in lines if isinstance(m, Mapping) and isinstance(m.get("epoch"), int)]
    if not lines:
        return None
    plt = pyplot()
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=CURVES_INCHES, dpi=DPI)
    try:
        loss_ax.plot(*_series(lines, "train_loss"), "o-", color="tab:blue", label="train loss")
        loss_ax.set_xlabel("epoch")
        loss_ax.set_ylabel("training loss")
        lr_ax = loss_ax.twinx()
        lr_ax.plot(*_series(lines, "lr"), "--", color="grey", alpha=0.6, label="lr (end of epoch)")
        lr_ax.set_ylabel("learning rate", color="grey")
        handles = loss_ax.get_legend_handles_labels()[0] + lr_ax.get_legend_handles_labels()[0]
        loss_ax.legend(handles=handles, fontsize=8)
        for key, (label, style) in ACCURACY_SERIES.items():
            epochs, values = _series(lines, key)
            if epochs:
                acc_ax.plot(epochs, values, style, marker="o", label=label)
        epochs, top1 = _series(lines, "top1")
        if top1:
            best = max(range(len(top1)), key=top1.__getitem__)
            acc_ax.annotate(
                f"best {top1[best]:.1f}% (epoch {epochs[best]})",
                (epochs[best], top1[best]),
                textcoords="offset points",
                xytext=(0, -14),
                ha="center",
                fontsize=8,
            )
        if chance is not None:
            acc_ax.axhline(chance, color="grey", linestyle=":", linewidth=1, label=f"chance ({chance:.3g}%)")
        acc_ax.set_ylim(0, 100)
        acc_ax.set_xlabel("epoch")
        acc_ax.set_ylabel("accuracy (%)")
        acc_ax.legend(fontsize=8, loc="lower right")
        for ax in (loss_ax, acc_ax):
            ax.grid(True, alpha=0.3)
            ax.xaxis.get_major_locator().set_params(integer=True)
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Whole or not at all: a run killed while drawing leaves the previous figure, not half of a new one.
        temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            fig.savefig(temp, dpi=DPI, format="png")
            os.replace(temp, path)
        finally:
            temp.unlink(missing_ok=True)
    finally:
        plt.close(fig)
    return path
