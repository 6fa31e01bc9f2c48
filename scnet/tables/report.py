"""A table's results from what its run folder holds, rendered as Markdown, CSV, JSON and a top-1/GMACs figure.

Everything here only reads: ``<out>/<table>/<row>/`` holds the row's training run (``config.yaml``,
``metrics.jsonl``, checkpoints) and, once evaluated, ``eval.json``; ``<out>/<table>/<row>@release/eval.json``
holds a released checkpoint's evaluation. A row that is still training shows its progress, so
``scnet-table show`` can watch a sweep fill in.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import yaml

from ..models.published import sources
from ..runtime.files import write_text_atomic
from ..train.output import BEST, CONFIG, LAST, read_metrics
from .spec import Row, Table

EVAL_FILE = "eval.json"
RUN_FILE = "run.json"
RELEASE_SUFFIX = "@release"
# The JSON/CSV columns, in order (the JSON holds at least these; see row_record).
COLUMNS = (
    "row",
    "model",
    "family",
    "status",
    "top1",
    "top5",
    "images",
    "skipped",
    "ema_top1",
    "real_top1",
    "v2_top1",
    "params",
    "gmacs",
    "image_size",
    "published_top1",
    "delta_top1",
    "published_source",
    "train_images_per_second",
    "gpu_hours",
    "train_hours",
    "epochs_done",
    "epochs",
    "checkpoint",
    "note",
)


def row_dir(out: Path, table: Table, row: str) -> Path:
    """Where a row's run lives: ``<out>/<table>/<row>``."""
    return Path(out) / table.name / row


def read_json(path: Path) -> Any:
    """The JSON at ``path``, or None when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def planned_epochs(folder: Path, row: Row) -> int | None:
    """``train.epochs`` of the run in ``folder`` (its saved config), else of the row's config file."""
    for path in (Path(folder) / CONFIG, row.config):
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):
            continue
        epochs = (data or {}).get("train", {}).get("epochs") if isinstance(data, dict) else None
        if epochs is not None:
            return int(epochs)
    return None


def is_trained(folder: Path, epochs: int) -> bool:
    """True when the run's last epoch is done. The trainer writes ``metrics.jsonl``'s line for an epoch only
    after that epoch's ``last.pth`` and ``best.pth``, so the line proves the checkpoints are whole."""
    metrics = read_metrics(folder)
    return bool(metrics) and int(metrics[-1].get("epoch", 0)) >= epochs and (Path(folder) / BEST).is_file()


def _rounded(value: Any, digits: int = 2) -> float | None:
    return None if value is None else round(float(value), digits)


def _training_figures(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """Throughput and cost of the epochs in ``metrics``: images/s over the whole run, device-hours."""
    seconds = sum(float(m.get("epoch_time", 0.0)) for m in metrics)
    images = sum(float(m.get("images_per_second", 0.0)) * float(m.get("epoch_time", 0.0)) for m in metrics)
    gpu_seconds = sum(
        float(m.get("epoch_time", 0.0)) * int(m.get("world_size", 1)) for m in metrics if m.get("device") == "cuda"
    )
    return {
        "train_images_per_second": round(images / seconds, 1) if seconds else None,
        "train_hours": round(seconds / 3600, 3) if metrics else None,
        # GPU-hours: every process's share of the epochs that ran on CUDA (None for a CPU run).
        "gpu_hours": round(gpu_seconds / 3600, 3) if gpu_seconds else None,
    }


def _evaluation_fields(evaluation: dict[str, Any] | None) -> dict[str, Any]:
    if not evaluation:
        return {}
    result = evaluation["result"]
    ema, v2 = evaluation.get("ema"), evaluation.get("v2")
    macs = result.get("macs")
    return {
        "model": result.get("model"),
        "top1": _rounded(result.get("top1"), 3),
        "top5": _rounded(result.get("top5"), 3),
        "images": result.get("images"),
        "skipped": len(result.get("skipped") or []),
        "ema_top1": _rounded(ema.get("top1"), 3) if ema else None,
        "real_top1": _rounded(result.get("real_top1"), 3),
        "v2_top1": _rounded(v2.get("top1"), 3) if v2 else None,
        "params": result.get("params"),
        "gmacs": round(macs / 1e9, 3) if macs else None,
        "image_size": result.get("image_size"),
        "checkpoint": result.get("checkpoint"),
    }


def row_record(table: Table, row: Row, out: Path) -> dict[str, Any]:
    """Everything known about one row: its evaluation, training progress and published numbers."""
    folder = row_dir(out, table, row.row)
    metrics = read_metrics(folder)
    epochs = planned_epochs(folder, row)
    evaluation = read_json(folder / EVAL_FILE)
    record: dict[str, Any] = dict.fromkeys(COLUMNS)
    record.update(row=row.row, family=row.family, note=row.note, epochs=epochs, epochs_done=len(metrics))
    record["model"] = _model_name(folder, row)
    record.update(_training_figures(metrics))
    record.update(_evaluation_fields(evaluation))
    if evaluation:
        record["status"] = "done"
    elif epochs is not None and is_trained(folder, epochs):
        record["status"] = "trained, not evaluated"
    elif metrics:
        last = metrics[-1]
        record["status"] = f"training: epoch {last.get('epoch')}/{epochs}"
        if last.get("top1") is not None:
            record["status"] += f", val top-1 {float(last['top1']):.2f}"
    elif (folder / LAST).is_file():
        record["status"] = "training: epoch 1"
    else:
        record["status"] = "not started"
    _add_published(record, row)
    return record


def release_record(table: Table, row: Row, out: Path) -> dict[str, Any] | None:
    """A released checkpoint evaluated on the user's data, if ``scnet-table run --release-weights`` made one."""
    evaluation = read_json(row_dir(out, table, row.row + RELEASE_SUFFIX) / EVAL_FILE)
    if not evaluation:
        return None
    record: dict[str, Any] = dict.fromkeys(COLUMNS)
    record.update(row=row.row + RELEASE_SUFFIX, family=row.family, status="released weights")
    record["note"] = "the published checkpoint, evaluated here by the same code"
    record.update(_evaluation_fields(evaluation))
    _add_published(record, row)
    return record


def _model_name(folder: Path, row: Row) -> str | None:
    for path in (folder / CONFIG, row.config):
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):
            continue
        name = (data or {}).get("model", {}).get("name") if isinstance(data, dict) else None
        if name:
            return str(name)
    return None


def _add_published(record: dict[str, Any], row: Row) -> None:
    published = row.published
    record["published_top1"] = published.top1 if published else None
    record["published_source"] = published.source.key if published and published.source else None
    if record["top1"] is not None and record["published_top1"] is not None:
        record["delta_top1"] = round(record["top1"] - record["published_top1"], 2)


def collect(table: Table, out: Path) -> list[dict[str, Any]]:
    """One record per row of ``table`` (in table order), each followed by its released-weights row if any."""
    records = []
    for row in table.rows:
        records.append(row_record(table, row, out))
        release = release_record(table, row, out)
        if release is not None:
            records.append(release)
    return records


# ----------------------------------------------------------------------------------------------- rendering


def _cell(value: Any, digits: int = 2) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def to_markdown(table: Table, records: list[dict[str, Any]], run: dict[str, Any] | None = None) -> str:
    """The table as Markdown: one line a row, published numbers with numbered sources, then the notes."""
    cited = [key for key in dict.fromkeys(r["published_source"] for r in records) if key]
    marks = {key: i + 1 for i, key in enumerate(cited)}
    columns = "row, model, top-1, top-5, published top-1, Δ top-1, params (M), GMACs, train img/s, GPU-h, status"
    head = "| " + " | ".join(columns.split(", ")) + " |"
    lines = [f"# {table.title}", "", table.description + ".", ""]
    if run:
        lines += [_run_line(run), ""]
    lines += [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in records:
        published = (
            f"{r['published_top1']:.2f} [{marks[r['published_source']]}]"
            if r["published_top1"] is not None
            else "not published"
        )
        params = f"{r['params'] / 1e6:.2f}" if r["params"] else ""
        cells = [
            r["row"],
            r["model"] or "",
            _cell(r["top1"]),
            _cell(r["top5"]),
            published,
            _cell(r["delta_top1"]) if r["delta_top1"] is None else f"{r['delta_top1']:+.2f}",
            params,
            _cell(r["gmacs"]),
            _cell(r["train_images_per_second"], 0 if (r["train_images_per_second"] or 0) >= 100 else 1),
            _cell(r["gpu_hours"], 1),
            r["status"],
        ]
        lines.append("| " + " | ".join(cells) + " |")
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
        + "; GMACs measured at that size; GPU-h: training process-hours on GPUs; empty cells: not measured yet, or "
        "no published number in our sources.",
    ]
    return "\n".join(lines) + "\n"


def _run_line(run: dict[str, Any]) -> str:
    parts = [f"data: `{run.get('data')}`"]
    if run.get("overrides"):
        parts.append("overrides: `" + " ".join(run["overrides"]) + "`")
    if run.get("nproc_per_node"):
        parts.append(f"{run['nproc_per_node']} process(es) per row")
    return "Run with " + ", ".join(parts) + "; each row's recipe is its config (configs/)."


def to_csv(records: list[dict[str, Any]]) -> str:
    """The records as CSV, one column per :data:`COLUMNS` entry."""
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
    """Write ``<out>/<table>.md``, ``.csv`` and ``.json`` from what the run folder holds; return the records."""
    records = collect(table, out)
    run = read_json(Path(out) / table.name / RUN_FILE)
    write_atomic(Path(out) / f"{table.name}.md", to_markdown(table, records, run))
    write_atomic(Path(out) / f"{table.name}.csv", to_csv(records))
    write_atomic(Path(out) / f"{table.name}.json", json.dumps(records, indent=2) + "\n")
    return records
