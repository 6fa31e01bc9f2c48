"""A table's records rendered as Markdown, CSV and JSON (the figure is :mod:`scnet.tables.figure`).

The records come from :func:`scnet.tables.records.collect`; this module only formats and writes them.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from ..models.published import sources
from ..runtime.files import write_text_atomic
from .records import COLUMNS, RUN_FILE, collect, read_json
from .spec import Table

COLUMN_TITLES = (
    "row, model, seeds, top-1, top-5, baseline, gain, gain (published), published top-1, Δ top-1, params (M), "
    "GMACs, train img/s, GPU-h, status"
)


def _cell(value: Any, digits: int = 2) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _signed(value: float | None) -> str:
    return "" if value is None else f"{value:+.2f}"


def _top1(r: dict[str, Any]) -> str:
    """``76.12 ± 0.15`` over several seeds, ``76.12`` for one."""
    if r["top1"] is None:
        return ""
    return f"{r['top1']:.2f}" + (f" ± {r['top1_std']:.2f}" if r["top1_std"] is not None else "")


def _gain(r: dict[str, Any]) -> str:
    """``+0.52 ± 0.20``; ``(n.s.)`` when the gain is not larger than its spread."""
    if r["gain_top1"] is None:
        return ""
    text = _signed(r["gain_top1"]) + (f" ± {r['gain_std']:.2f}" if r["gain_std"] is not None else "")
    return text + (" (n.s.)" if r["significant"] is False else "")


def _published(r: dict[str, Any], marks: dict[str, int], imagenet: bool) -> str:
    if r["published_top1"] is None:
        return "not published"
    return f"{r['published_top1']:.2f}" + ("" if imagenet else " (ImageNet)") + f" [{marks[r['published_source']]}]"


def _row_cells(r: dict[str, Any], marks: dict[str, int], imagenet: bool) -> list[str]:
    published_gain = _signed(r["published_gain_top1"])
    if published_gain and not imagenet:
        published_gain += " (ImageNet)"
    speed = r["train_images_per_second"]
    return [
        r["row"],
        r["model"] or "",
        _cell(r["seeds"]) if r["seeds"] else "",
        _top1(r),
        _cell(r["top5"]),
        r["baseline_row"] or "",
        _gain(r),
        published_gain,
        _published(r, marks, imagenet),
        _signed(r["delta_top1"]),
        f"{r['params'] / 1e6:.2f}" if r["params"] else "",
        _cell(r["gmacs"]),
        _cell(speed, 0 if (speed or 0) >= 100 else 1),
        _cell(r["gpu_hours"], 1),
        r["status"],
    ]


def to_markdown(table: Table, records: list[dict[str, Any]], run: dict[str, Any] | None = None) -> str:
    """The table as Markdown: one line a row, published numbers with numbered sources, then the notes."""
    cited = [key for key in dict.fromkeys(r["published_source"] for r in records) if key]
    marks = {key: i + 1 for i, key in enumerate(cited)}
    imagenet = all(r.get("imagenet") is not False for r in records)
    head = "| " + " | ".join(COLUMN_TITLES.split(", ")) + " |"
    lines = [f"# {table.title}", "", table.description + ".", ""]
    if run:
        lines += [_run_line(run), ""]
    lines += [head, "|" + "---|" * head.count(" | ") + "---|"]
    lines += ["| " + " | ".join(_row_cells(r, marks, imagenet)) + " |" for r in records]
    lines.append("")
    all_sources = sources()
    for key in cited:
        s = all_sources[key]
        lines.append(f"[{marks[key]}] {s.title}" + (f" ({s.url})" if s.url else "") + f": {s.protocol}.")
    notes = [f"- {r['row']}: {r['note']}" for r in records if r.get("note")]
    if notes:
        lines += ["", "Notes:", *notes]
    sizes = sorted({r["image_size"] for r in records if r.get("image_size")})
    lines += [
        "",
        "top-1/top-5: our evaluation of each row's best checkpoint"
        + (f" at {', '.join(f'{s} px' for s in sizes)}" if sizes else "")
        + ", the mean over the seeds (± their standard deviation, with two or more); seeds: how many are "
        "evaluated. gain: top-1 minus the baseline row's, paired by seed (mean ± standard deviation of the "
        "per-seed differences); (n.s.): not significant, a gain no larger than its spread. gain (published): "
        "the difference of the published numbers, from different recipes where the sources differ. GMACs "
        "measured at that size; GPU-h: training process-hours on GPUs; empty cells: not measured yet, or no "
        "published number in our sources.",
    ]
    if not imagenet:
        lines += [
            "",
            "(ImageNet): these data are not ImageNet-1k (its 1000 classes and 50,000 val images), so the published "
            "numbers are ImageNet references only and no Δ top-1 is computed against them.",
        ]
    return "\n".join(lines) + "\n"


def _run_line(run: dict[str, Any]) -> str:
    parts = [f"data: `{run.get('data')}`"]
    if run.get("overrides"):
        parts.append("overrides: `" + " ".join(run["overrides"]) + "`")
    if run.get("seeds"):
        parts.append(f"{run['seeds']} seed(s) per row")
    if run.get("nproc_per_node"):
        parts.append(f"{run['nproc_per_node']} process(es) per row")
    return "Run with " + ", ".join(parts) + "; each row's recipe is its config (configs/)."


def to_csv(records: list[dict[str, Any]]) -> str:
    """The records as CSV, one column per :data:`~scnet.tables.records.COLUMNS` entry."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(COLUMNS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return buffer.getvalue()


def write_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` (its folder made if needed) so that readers never see half a file."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, text)


def write_reports(table: Table, out: Path) -> list[dict[str, Any]]:
    """Write ``<out>/<table>.md``, ``.csv`` and ``.json`` from what the runs hold; return the records."""
    records = collect(table, out)
    run = read_json(Path(out) / table.name / RUN_FILE)
    write_atomic(Path(out) / f"{table.name}.md", to_markdown(table, records, run))
    write_atomic(Path(out) / f"{table.name}.csv", to_csv(records))
    write_atomic(Path(out) / f"{table.name}.json", json.dumps(records, indent=2) + "\n")
    return records
