"""The table as a figure: top-1 against GMACs (measured and published points, one colour per family) and, beside
it, each row's gain over its baseline (measured, with its spread over seeds, and published).

matplotlib is an optional extra (``pip install 'scnet-pytorch[plot]'``): only this figure needs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..viz import pyplot
from .spec import Table


def _published_gmacs(table: Table, row_name: str, measured: float | None) -> float | None:
    """Where a published point sits on the GMACs axis: the published MAdds, else the release's counted MACs,
    else the row's measured MACs (the same architecture)."""
    row = next((r for r in table.rows if r.row == row_name.removesuffix("@release")), None)
    published = row.published if row is not None else None
    if published is not None and published.madds_g is not None:
        return float(published.madds_g)
    if published is not None and published.counted_gmacs is not None:
        return float(published.counted_gmacs)
    return measured


def _draw_gains(ax: Any, records: list[dict[str, Any]], colours: dict[str, Any]) -> int:
    """Horizontal bars of each row's measured gain (error bar: the std of the paired differences) and the published
    gain as a hollow square; returns how many rows have either."""
    rows = [r for r in records if r["gain_top1"] is not None or r["published_gain_top1"] is not None]
    for y, r in enumerate(rows):
        colour = colours[r["family"]]
        if r["gain_top1"] is not None:
            ax.barh(y, r["gain_top1"], xerr=r["gain_std"] or 0.0, color=colour, alpha=0.7, capsize=3)
            if r["significant"] is False:
                ax.annotate("n.s.", (r["gain_top1"], y), textcoords="offset points", xytext=(4, -3), fontsize=7)
        if r["published_gain_top1"] is not None:
            ax.scatter(r["published_gain_top1"], y, facecolors="none", edgecolors=colour, marker="s", zorder=3)
    ax.set_yticks(range(len(rows)), [f"{r['row']} vs {r['baseline_row']}" for r in rows], fontsize=7)
    ax.axvline(0.0, color="grey", linewidth=0.8)
    ax.set_xlabel("top-1 gain over the baseline (points)")
    ax.set_title("bars: measured (± std over seeds); squares: published", fontsize=8)
    ax.grid(True, axis="x", alpha=0.3)
    return len(rows)


def draw(table: Table, records: list[dict[str, Any]], path: Path) -> Path | None:
    """Save the figure to ``path``; None when no row has a point to draw yet.

    Raises:
        MissingMatplotlib: matplotlib is not installed.
    """
    plt = pyplot()

    families = list(dict.fromkeys(r["family"] for r in records))
    colours = {f: plt.get_cmap("tab10")(i % 10) for i, f in enumerate(families)}
    has_gains = any(r["gain_top1"] is not None or r["published_gain_top1"] is not None for r in records)
    if has_gains:
        fig, (ax, gains_ax) = plt.subplots(1, 2, figsize=(13.0, 5.0), gridspec_kw={"width_ratios": [3, 2]})
    else:
        fig, ax = plt.subplots(figsize=(7.5, 5.0))
    drawn = 0
    for r in records:
        colour = colours[r["family"]]
        if r["top1"] is not None and r["gmacs"] is not None:
            ax.scatter(r["gmacs"], r["top1"], color=colour, marker="o", zorder=3)
            ax.annotate(r["row"], (r["gmacs"], r["top1"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
            drawn += 1
        x = _published_gmacs(table, r["row"], r["gmacs"])
        if r["published_top1"] is not None and x is not None and not r["row"].endswith("@release"):
            ax.scatter(x, r["published_top1"], facecolors="none", edgecolors=colour, marker="s", zorder=2)
            drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    for family, colour in colours.items():
        ax.scatter([], [], color=colour, label=family)
    ax.scatter([], [], color="grey", marker="o", label="measured here")
    ax.scatter([], [], facecolors="none", edgecolors="grey", marker="s", label="published (ImageNet)")
    ax.set_xlabel("GMACs")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(table.title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    if has_gains:
        _draw_gains(gains_ax, records, colours)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
