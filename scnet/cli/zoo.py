"""``scnet-zoo``: the model zoo as a table, with counts measured on the models themselves."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Sequence

from scnet.cli._common import ListOption, add_json, add_version, fail, plain, write_json
from scnet.models import BASELINES, count_macs, count_params, create_model, list_models, published_weights

COLUMNS = ("model", "baseline", "params_m", "gmacs", "top1", "checkpoint")


def zoo_rows(names: Sequence[str], image_size: int = 224) -> list[dict]:
    """One row per model: params (M), GMACs at ``image_size``, published top-1 and file if any."""
    rows = []
    for name in names:
        model = create_model(name)
        weights = published_weights(name)
        rows.append(
            {
                "model": name,
                "baseline": BASELINES.get(name, ""),
                "params_m": round(count_params(model) / 1e6, 2),
                "gmacs": round(count_macs(model, image_size) / 1e9, 2),
                "top1": weights.top1 if weights else None,
                "checkpoint": weights.file if weights else None,
            }
        )
    return rows


def format_rows(rows: list[dict], fmt: str) -> str:
    """Render rows as ``markdown``, ``csv`` or ``json``."""
    if fmt == "json":
        return json.dumps(rows, indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
        return buf.getvalue().rstrip("\n")
    header = "| model | baseline | params (M) | GMACs | published top-1 | published checkpoint |"
    lines = [header, "|---|---|---:|---:|---:|---|"]
    for r in rows:
        top1 = f"{r['top1']:.2f}" if r["top1"] is not None else "-"
        lines.append(
            f"| {r['model']} | {r['baseline'] or '-'} | {r['params_m']:.2f} | {r['gmacs']:.2f} | {top1} | "
            f"{r['checkpoint'] or '-'} |"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The ``scnet-zoo`` argument parser."""
    parser = argparse.ArgumentParser(prog="scnet-zoo", description=plain(__doc__))
    add_version(parser)
    parser.add_argument(
        "--format", choices=("markdown", "csv", "json"), default="markdown", help="what is printed (default markdown)"
    )
    parser.add_argument("--models", action=ListOption, metavar="NAME", help="only these models (default: all)")
    parser.add_argument("--image-size", type=int, default=224, help="input size for the MAC count (default 224)")
    parser.add_argument("--no-baselines", action="store_true", help="list only the SC models")
    add_json(parser, "the rows (as --format json prints them)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Print the zoo table."""
    args = build_parser().parse_args(argv)
    names = args.models or list_models(include_baselines=not args.no_baselines)
    try:
        rows = zoo_rows(names, args.image_size)
    except ValueError as e:
        return fail("scnet-zoo", e)
    print(format_rows(rows, args.format))
    if args.json:
        try:
            write_json(args.json, rows)
        except OSError as e:
            return fail("scnet-zoo", e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
