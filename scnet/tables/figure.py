"""The table as a figure: top-1 against GMACs, measured and published points, one colour per family.

matplotlib is an optional extra (``pip install 'scnet[plot]'``): only this figure needs it.
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


def draw(table: Table, records: list[dict[str, Any]], path: Path) -> Path | None:
    """Save the figure to ``path``; None when no row has a point to draw yet.

    Raises:
        MissingMatplotlib: matplotlib is not installed.
    """
    plt = pyplot()

    families = list(dict.fromkeys(r["family"] for r in records))
    colours = {f: plt.get_cmap("tab10")(i % 10) for i, f in enumerate(families)}
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
    ax.scatter([], [], facecolors="none", edgecolors="grey", marker="s", label="published")
    ax.set_xlabel("GMACs")
    ax.set_ylabel("ImageNet top-1 (%)")
    ax.set_title(table.title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
