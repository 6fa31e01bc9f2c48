"""A table's records: what its runs hold, one record per row, with the spread over seeds and the gain over the
row's baseline.

Everything here only reads. ``<out>/<table>/run.json`` (written by ``scnet-table run``) names each row's seed
runs in the shared store (``<out>/runs/<model>-<key>/seed<seed>/``: ``config.yaml``, ``metrics.jsonl``,
checkpoints and, once evaluated, ``eval.json``); ``<out>/<table>/<row>@release/eval.json`` holds a released
checkpoint's evaluation. A run that is still training shows its progress, so ``scnet-table show`` can watch a
sweep fill in.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from ..train.output import BEST, CONFIG, LAST, read_metrics
from .spec import Row, Table
from .stats import mean_std, paired_gain, rounded

EVAL_FILE = "eval.json"
RUN_FILE = "run.json"
RELEASE_SUFFIX = "@release"
# ImageNet-1k's validation split: published numbers are measured on it, and only on it are they compared.
IMAGENET_VAL_IMAGES = 50_000
# The JSON/CSV columns, in order (the JSON also holds ``per_seed``: each seed's own numbers and checkpoint).
COLUMNS = (
    "row",
    "model",
    "family",
    "status",
    "seeds",
    "top1",
    "top1_mean",
    "top1_std",
    "top5",
    "baseline_row",
    "gain_top1",
    "gain_std",
    "significant",
    "published_gain_top1",
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
    "imagenet",
    "train_images_per_second",
    "gpu_hours",
    "train_hours",
    "epochs_done",
    "epochs",
    "checkpoint",
    "note",
)


def release_dir(out: Path, table: Table, row: str) -> Path:
    """Where the evaluation of a row's released checkpoint lives: ``<out>/<table>/<row>@release``."""
    return Path(out) / table.name / f"{row}{RELEASE_SUFFIX}"


def read_json(path: Path) -> Any:
    """The JSON at ``path``, or None when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def planned(folder: Path | None, row: Row) -> tuple[int | None, str | None]:
    """``train.epochs`` and ``model.name`` of the run in ``folder`` (its saved config), else of the row's config
    file (one read)."""
    data = _saved_config(folder, row)
    epochs = data.get("train", {}).get("epochs")
    return (int(epochs) if epochs is not None else None), data.get("model", {}).get("name")


def is_trained(folder: Path, epochs: int, metrics: list[dict[str, Any]] | None = None) -> bool:
    """True when the run's last epoch is done. The trainer writes ``metrics.jsonl``'s line for an epoch only
    after that epoch's ``last.pth`` and ``best.pth``, so the line proves the checkpoints are whole. ``metrics``:
    the run's lines when the caller has read them already."""
    metrics = read_metrics(folder) if metrics is None else metrics
    return bool(metrics) and int(metrics[-1].get("epoch", 0)) >= epochs and (Path(folder) / BEST).is_file()


def _saved_config(folder: Path | None, row: Row) -> dict[str, Any]:
    """The run's saved config as plain YAML data, else the row's config file's (no validation: only reading)."""
    for path in ([Path(folder) / CONFIG] if folder is not None else []) + [row.config]:
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(data, dict):
            return data
    return {}


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
    """The numbers of one evaluation (``eval.json``), unrounded."""
    if not evaluation:
        return {}
    result = evaluation["result"]
    ema, v2 = evaluation.get("ema"), evaluation.get("v2")
    macs = result.get("macs")
    return {
        "model": result.get("model"),
        "top1": result.get("top1"),
        "top5": result.get("top5"),
        "images": result.get("images"),
        "skipped": len(result.get("skipped") or []),
        "ema_top1": ema.get("top1") if ema else None,
        "real_top1": result.get("real_top1"),
        "v2_top1": v2.get("top1") if v2 else None,
        "params": result.get("params"),
        "gmacs": round(macs / 1e9, 3) if macs else None,
        "image_size": result.get("image_size"),
        "checkpoint": result.get("checkpoint"),
    }


def _status(folder: Path, epochs: int | None, metrics: list[dict[str, Any]], evaluated: bool) -> str:
    if evaluated:
        return "done"
    if epochs is not None and is_trained(folder, epochs, metrics):
        return "trained, not evaluated"
    if metrics:
        last = metrics[-1]
        status = f"training: epoch {last.get('epoch')}/{epochs}"
        if last.get("top1") is not None:
            status += f", val top-1 {float(last['top1']):.2f}"
        return status
    return "training: epoch 1" if (Path(folder) / LAST).is_file() else "not started"


def seed_record(row: Row, seed: int, folder: Path) -> dict[str, Any]:
    """One seed's run of a row: its status, training figures and (once evaluated) its numbers, unrounded."""
    metrics = read_metrics(folder)
    epochs, model = planned(folder, row)
    evaluation = read_json(Path(folder) / EVAL_FILE)
    record: dict[str, Any] = {"seed": seed, "folder": str(folder), "epochs": epochs, "epochs_done": len(metrics)}
    record["model"] = model
    record.update(_training_figures(metrics), metrics=metrics)
    record.update(_evaluation_fields(evaluation))
    record["status"] = _status(folder, epochs, metrics, bool(evaluation))
    return record


_MEANS = ("top1", "top5", "ema_top1", "real_top1", "v2_top1")
_SAME = ("model", "images", "skipped", "params", "gmacs", "image_size", "checkpoint")


def row_record(row: Row, runs: list[tuple[int, Path]]) -> dict[str, Any]:
    """Everything known about one row from its seed runs: the mean and spread of the evaluated seeds, training
    progress and cost over all of them, and its published numbers (the gain is added by :func:`collect`)."""
    seeds = [seed_record(row, seed, folder) for seed, folder in runs]
    done = [s for s in seeds if s["status"] == "done"]
    record: dict[str, Any] = dict.fromkeys(COLUMNS)
    record.update(row=row.row, family=row.family, note=row.note, baseline_row=row.baseline, seeds=len(done))
    first = done[0] if done else (seeds[0] if seeds else {})
    record.update({key: first.get(key) for key in _SAME})
    epochs, model = (seeds[0]["epochs"], None) if seeds else planned(None, row)
    record["model"] = record["model"] or model
    for key in _MEANS:
        values = [s[key] for s in done if s.get(key) is not None]
        record[key] = rounded(mean_std(values)[0]) if values and len(values) == len(done) else None
    mean, std = mean_std([s["top1"] for s in done])
    record.update(top1_mean=rounded(mean), top1_std=rounded(std))
    record.update(_training_figures([m for s in seeds for m in s["metrics"]]))
    record["epochs"] = epochs
    record["epochs_done"] = min((s["epochs_done"] for s in seeds), default=0)
    record["status"] = _row_status(seeds)
    record["per_seed"] = [
        {"seed": s["seed"], "status": s["status"], "top1": s.get("top1"), "top5": s.get("top5"),
         "checkpoint": s.get("checkpoint"), "folder": s["folder"]}
        for s in seeds
    ]  # fmt: skip
    _add_published(record, row)
    return record


def _row_status(seeds: list[dict[str, Any]]) -> str:
    if all(s["status"] == "not started" for s in seeds):
        return "not started"
    if len(seeds) == 1:
        return seeds[0]["status"]
    done = sum(s["status"] == "done" for s in seeds)
    if done == len(seeds):
        return "done"
    pending = next(s for s in seeds if s["status"] != "done")
    return f"{done}/{len(seeds)} seeds done; seed {pending['seed']}: {pending['status']}"


def release_record(table: Table, row: Row, out: Path) -> dict[str, Any] | None:
    """A released checkpoint evaluated on the user's data, if ``scnet-table run --release-weights`` made one."""
    evaluation = read_json(release_dir(out, table, row.row) / EVAL_FILE)
    if not evaluation:
        return None
    record: dict[str, Any] = dict.fromkeys(COLUMNS)
    record.update(row=row.row + RELEASE_SUFFIX, family=row.family, status="released weights")
    record["note"] = "the published checkpoint, evaluated here by the same code"
    record.update(_evaluation_fields(evaluation))
    for key in _MEANS:
        record[key] = rounded(record[key])
    record["top1_mean"] = record["top1"]
    _add_published(record, row)
    return record


def _add_published(record: dict[str, Any], row: Row) -> None:
    published = row.published
    record["published_top1"] = published.top1 if published else None
    record["published_source"] = published.source.key if published and published.source else None


def _add_gain(record: dict[str, Any], baseline: dict[str, Any], rows: dict[str, Row]) -> None:
    """The row's gain over its baseline: paired by seed, measured; and the published one, where both exist."""
    measured = {s["seed"]: s["top1"] for s in record["per_seed"] if s["top1"] is not None}
    reference = {s["seed"]: s["top1"] for s in baseline["per_seed"] if s["top1"] is not None}
    gain = paired_gain(measured, reference)
    record.update(gain_top1=rounded(gain.gain), gain_std=rounded(gain.std), significant=gain.significant)
    mine, theirs = rows[record["row"]].published_top1, rows[record["baseline_row"]].published_top1
    if mine is not None and theirs is not None:
        record["published_gain_top1"] = round(mine - theirs, 2)


def imagenet_data(run: dict[str, Any] | None, records: list[dict[str, Any]]) -> bool | None:
    """Whether the table's numbers are ImageNet-1k numbers, comparable with the published ones: the data's
    classes are the 1000 synsets and every evaluation counted the 50,000 val images. None before the first run."""
    if not run:
        return None
    if not run.get("imagenet_classes", False):
        return False
    counted = {r["images"] for r in records if r.get("images") is not None}
    return counted <= {IMAGENET_VAL_IMAGES}


def collect(table: Table, out: Path) -> list[dict[str, Any]]:
    """One record per row of ``table`` (in table order), each followed by its released-weights row if any."""
    run = read_json(Path(out) / table.name / RUN_FILE) or {}
    runs = run.get("runs", {})
    rows = {row.row: row for row in table.rows}
    records = {
        name: row_record(row, [(int(r["seed"]), Path(out) / r["folder"]) for r in runs.get(name, [])])
        for name, row in rows.items()
    }
    for record in records.values():
        if record["baseline_row"] is not None:
            _add_gain(record, records[record["baseline_row"]], rows)
    ordered = []
    for name, row in rows.items():
        ordered.append(records[name])
        release = release_record(table, row, out)
        if release is not None:
            ordered.append(release)
    imagenet = imagenet_data(run, ordered)
    for record in ordered:
        record["imagenet"] = imagenet
        # A difference from an ImageNet number means something only on ImageNet.
        if imagenet is not False and record["top1"] is not None and record["published_top1"] is not None:
            record["delta_top1"] = round(record["top1"] - record["published_top1"], 2)
    return ordered
