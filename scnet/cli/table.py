"""``scnet-table``: the ImageNet tables of the SCNet paper, from data to a table beside the published numbers.

    scnet-table list [NAME] [--format text|tsv]
    scnet-table run NAME --data ROOT [--rows a,b] [--seeds N] [--out DIR] [--json FILE] [--nproc-per-node N]
                    [key=value ...]
    scnet-table show NAME [--out DIR] [--json FILE]
    scnet-table runs NAME --data ROOT [--rows a,b] [--seeds N] [--out DIR] [key=value ...]

``run`` trains each row and seed through scnet-train into DIR/runs/MODEL-KEY/seedS/ (one folder per resolved
config and seed, shared by the tables: a row that two tables hold trains once per seed; re-running retrains
nothing and resumes an interrupted run), evaluates each best checkpoint as scnet-eval does, and writes
DIR/NAME.md, .csv and .json: per row the mean and spread over the seeds and the gain over the row's baseline
(--json FILE writes that JSON to FILE too).
``show`` renders whatever exists so far, with a figure (DIR/NAME.png); ``runs`` prints where each (row, seed)
trains (row, seed, config, folder; tab-separated), for schedulers that launch the training themselves.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from scnet.cli._common import ListOption, add_json, add_version, plain, write_json

PROG = "scnet-table"


def build_parser() -> argparse.ArgumentParser:
    """The ``scnet-table`` argument parser."""
    from scnet.tables.spec import TABLES

    parser = argparse.ArgumentParser(
        prog=PROG, description=plain(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_version(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help="what to do with a table")

    p = sub.add_parser("list", help="the tables, their rows, configs and published numbers")
    p.add_argument("name", nargs="?", choices=TABLES, help="one table (default: all)")
    p.add_argument("--format", choices=["text", "tsv"], default="text", help="tsv: row, config, model per line")
    p.add_argument(
        "--estimate", action="store_true", help="also the GPU-hours each row should take (estimated from MACs)"
    )

    p = sub.add_parser("run", help="train, evaluate and report the rows of a table (resumable)")
    p.add_argument("name", choices=TABLES, help="the table")
    p.add_argument("--data", required=True, help="data root with train/ and val/ (or demo: the built-in demo set)")
    _add_selection(p)
    p.add_argument("--nproc-per-node", type=int, default=1, help="processes per row (torchrun when > 1)")
    p.add_argument(
        "--no-train",
        dest="train",
        action="store_false",
        help="train nothing: evaluate and report what is trained (waits up to an hour for another run's lock)",
    )
    p.add_argument("--release-weights", type=Path, help="folder with the released .pth files: evaluated as rows")
    p.add_argument("--real-labels", type=Path, help="ImageNet-ReaL real.json: also report ReaL top-1")
    p.add_argument("--imagenet-v2", type=Path, help="an ImageNet-V2 folder (0/..999/): also report V2 top-1")
    p.add_argument("--device", choices=["cpu", "cuda"], help="evaluation device (default: cuda when available)")
    add_json(p, "the table's records (DIR/NAME.json's content)")

    p = sub.add_parser("runs", help="where each (row, seed) of a run trains: row, seed, config, folder (TSV)")
    p.add_argument("name", choices=TABLES, help="the table")
    p.add_argument("--data", required=True, help="data root, as given to run")
    _add_selection(p)

    p = sub.add_parser("show", help="render what a table's run folder holds so far (+ a PNG figure)")
    p.add_argument("name", choices=TABLES, help="the table")
    p.add_argument("--out", type=Path, default=Path("runs/tables"), help="the run's folder (default runs/tables)")
    p.add_argument("--no-figure", action="store_true", help="do not draw DIR/NAME.png")
    add_json(p, "the table's records (DIR/NAME.json's content)")
    return parser


def _add_selection(p: argparse.ArgumentParser) -> None:
    """The options that pick the runs of a table: rows, seeds, output folder."""
    p.add_argument("--rows", action=ListOption, metavar="ROW", help="the rows to run (default: all)")
    p.add_argument(
        "--seeds", type=int, default=1, help="runs per row, seeds train.seed, train.seed + 1, ... (default 1)"
    )
    p.add_argument("--out", type=Path, default=Path("runs/tables"), help="runs and reports (default runs/tables)")
    # key=value overrides may come anywhere after NAME; main() collects them (argparse cannot mix a
    # variable-length positional with options inside a subcommand).
    p.epilog = "Any key=value arguments are config overrides applied to every row (e.g. train.epochs=1)."


def _list(args: argparse.Namespace) -> int:
    from scnet.config import load_config
    from scnet.tables.spec import TABLES, configs_dir, load_table

    root = configs_dir()
    if args.estimate and args.format == "text":
        from scnet.models.published import throughput_anchor

        anchor = throughput_anchor()
        print(
            f"est. GPU-h: an ESTIMATE for ImageNet-1k, scaled by MACs from {anchor.model} at "
            f"{anchor.images_per_second:,.0f} img/s on {anchor.device} ({anchor.source.title}); not measured"
        )
    for name in [args.name] if args.name else TABLES:
        table = load_table(name)
        if args.format == "text":
            print(f"{name}: {table.title} ({table.description})")
        for row in table.rows:
            model = load_config(row.config).model.name
            config = row.config.relative_to(root.parent)
            if args.format == "tsv":
                print(f"{row.row}\t{config}\t{model}")
                continue
            published = f"{row.published_top1:.2f}" if row.published_top1 is not None else "not published"
            source = f" [{row.published.source.key}]" if row.published and row.published.source else ""
            note = f"  ({row.note})" if row.note else ""
            estimate = ""
            if args.estimate:
                from scnet.tables.estimate import estimated_gpu_hours

                estimate = f"  est. GPU-h {estimated_gpu_hours(load_config(row.config)):,.0f}"
            print(f"  {row.row:<22} {model:<22} {config!s:<44} published top-1 {published}{source}{estimate}{note}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from scnet.tables.report import write_reports
    from scnet.tables.run import RunOptions, run_table
    from scnet.tables.spec import load_table

    table = load_table(args.name)
    options = RunOptions(
        data=args.data,
        out=args.out,
        rows=args.rows,
        seeds=args.seeds,
        train=args.train,
        overrides=list(args.overrides),
        nproc_per_node=args.nproc_per_node,
        release_weights=args.release_weights,
        real_labels=args.real_labels,
        imagenet_v2=args.imagenet_v2,
        device=args.device,
    )
    run_table(table, options)
    records = write_reports(table, args.out)
    print((args.out / f"{table.name}.md").read_text(), end="")
    if args.json:
        write_json(args.json, records)
    return 0


def _runs(args: argparse.Namespace) -> int:
    from scnet.tables.run import RunOptions, plan
    from scnet.tables.spec import load_table

    table = load_table(args.name)
    options = RunOptions(data=args.data, out=args.out, rows=args.rows, seeds=args.seeds, overrides=args.overrides)
    for p in plan(table, options, table.select(args.rows)):
        print(f"{p.row.row}\t{p.run.seed}\t{p.row.config}\t{p.run.folder}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from scnet.tables.figure import draw
    from scnet.tables.report import write_reports
    from scnet.tables.spec import load_table
    from scnet.viz import MissingMatplotlib

    table = load_table(args.name)
    if not (args.out / table.name).is_dir():
        raise ValueError(
            f"{args.out / table.name}: no run of table {table.name} there (scnet-table run makes it; "
            "with --no-train it only collects the runs that other tables trained)"
        )
    records = write_reports(table, args.out)
    print((args.out / f"{table.name}.md").read_text(), end="")
    if args.json:
        write_json(args.json, records)
    if not args.no_figure:
        try:
            path = draw(table, records, args.out / f"{table.name}.png")
        except MissingMatplotlib as e:
            print(f"{PROG}: warning: {e}", file=sys.stderr)
        else:
            print(f"figure: {path}" if path else "figure: nothing to draw yet", file=sys.stderr)
    return 0


def _name_before_rows(argv: list[str]) -> list[str]:
    """``run --rows a b NAME``: the table's name, which a --rows list would take as a row, moved before the
    list (no row is called as a table), so the old order ``run --rows a,b NAME`` still works."""
    from scnet.tables.spec import TABLES

    for start, token in enumerate(argv):
        if token != "--rows":
            continue
        for i in range(start + 1, len(argv)):
            if argv[i].startswith("-"):
                break
            if argv[i] in TABLES:
                return [*argv[:start], argv[i], *argv[start:i], *argv[i + 1 :]]
    return argv


def _overrides(parser: argparse.ArgumentParser, args: argparse.Namespace, extra: list[str], argv: list[str]) -> list:
    """The key=value overrides, in command-line order: those argparse left over, and those that ``--rows a b``
    took as rows (a row name never holds '=')."""
    rows = getattr(args, "rows", None) or []
    taken = [r for r in rows if "=" in r]
    if taken:
        args.rows = [r for r in rows if "=" not in r]
        if not args.rows:
            parser.error("--rows: no row given before the key=value overrides")
    wanted = set(extra) | set(taken)
    return [a for a in argv if a in wanted]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line as ``main`` reads it: ``key=value`` overrides may stand anywhere after ``run``/``runs``
    (also among ``--rows``' names), the table's name before or after ``--rows``. Bad input exits 2 (argparse)."""
    parser = build_parser()
    argv = _name_before_rows(list(sys.argv[1:] if argv is None else argv))
    args, extra = parser.parse_known_args(argv)
    bad = [a for a in extra if args.command not in ("run", "runs") or a.startswith("-") or "=" not in a]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    args.overrides = _overrides(parser, args, extra, argv)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: bad input is one line on stderr and exit status 2; a stop by signal exits 128 + signal."""
    args = parse_args(argv)
    from scnet.config import ConfigError
    from scnet.tables.run import Stopped

    try:
        return {"list": _list, "run": _run, "runs": _runs, "show": _show}[args.command](args)
    except Stopped as e:
        print(f"{PROG}: {e}; run the same command again to resume it", file=sys.stderr)
        return 128 + e.signum
    except (ConfigError, ValueError, OSError) as e:
        print(f"{PROG}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
