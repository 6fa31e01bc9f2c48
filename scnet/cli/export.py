"""``scnet-export``: a checkpoint as ONNX, TorchScript, safetensors or a timm folder, checked against PyTorch.

The checkpoint is read as ``scnet-eval`` reads it (``scnet.inference.checkpoint``): a training checkpoint
names its model and SCConv options, a bare state_dict of the original release needs ``--model``. The
file written is then read back by what a user would read it with (onnxruntime, ``torch.jit.load``,
``timm.create_model("local-dir:...")``, ...), run on a random batch next to the eager model, and the
largest absolute difference printed; above ``atol + rtol * max|eager|`` the command fails (exit 1).

Formats: ``onnx`` (batch dynamic, image size fixed: ``--image-size``; needs
``pip install 'scnet-pytorch[export]'``), ``torchscript``, ``safetensors`` (the state_dict; architecture, class
count, options and classes in its metadata), ``timm`` (a folder: config.json + model.safetensors, for
``timm.create_model("local-dir:PATH", pretrained=True)`` after ``import scnet``; SCConv options are its
``model_args``). ``--out`` is what is written; ``--json FILE`` also writes the files and the check's numbers.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from scnet.cli._common import add_json, add_version, fail, plain, write_json
from scnet.inference.checkpoint import LoadedCheckpoint, load_checkpoint
from scnet.inference.export import (
    DEFAULT_TOLERANCES,
    FORMATS,
    ExportCheckError,
    ExportResult,
    MissingExportDependency,
    export,
    mismatch_hint,
    require_format,
)
from scnet.runtime.messages import first_line

PROG = "scnet-export"


def build_parser() -> argparse.ArgumentParser:
    """The ``scnet-export`` argument parser."""
    tolerances = ", ".join(f"{f} {a:g}/{r:g}" for f, (a, r) in DEFAULT_TOLERANCES.items())
    p = argparse.ArgumentParser(
        prog=PROG, description=plain(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_version(p)
    p.add_argument("--checkpoint", required=True, help="training checkpoint, or a bare state_dict (.pth/.safetensors)")
    p.add_argument(
        "--model",
        help="architecture: required for a bare state_dict (a training checkpoint names its own; another is an error)",
    )
    p.add_argument("--format", required=True, choices=FORMATS, help="what to write (see above)")
    p.add_argument("--out", required=True, help="the file to write (for --format timm, a folder)")
    p.add_argument(
        "--image-size",
        type=int,
        help="input size exported and checked (ONNX fixes it); default: the checkpoint's config, else 224",
    )
    p.add_argument("--ema", action="store_true", help="export the checkpoint's EMA weights (model_ema)")
    p.add_argument("--atol", type=float, help=f"absolute tolerance of the check (atol/rtol defaults: {tolerances})")
    p.add_argument("--rtol", type=float, help="tolerance relative to the largest eager output, added to --atol")
    add_json(p, "what was written and the check's numbers (also when the check fails)")
    return p


def _record(loaded: LoadedCheckpoint, result: ExportResult) -> dict:
    """What ``--json`` writes: the files and the check, each number as printed."""
    return {
        "checkpoint": str(loaded.path),
        "model": loaded.name,
        "format": result.format,
        "path": str(result.path),
        "files": [str(f) for f in result.files],
        "bytes": sum(f.stat().st_size for f in result.files),
        "runtime": result.runtime,
        "batch": result.batch,
        "image_size": result.image_size,
        "max_abs_diff": result.max_abs_diff,
        "max_abs_eager": result.max_abs_eager,
        "atol": result.atol,
        "rtol": result.rtol,
        "tolerance": result.tolerance,
        "passed": result.passed,
        "export_seconds": result.export_seconds,
        "check_seconds": result.check_seconds,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 1 export failed or differs, 2 bad input or missing package)."""
    args = build_parser().parse_args(argv)
    if args.image_size is not None and args.image_size < 1:
        return fail(PROG, f"--image-size must be positive, got {args.image_size}")
    for flag, value in (("--atol", args.atol), ("--rtol", args.rtol)):
        if value is not None and not value >= 0:
            return fail(PROG, f"{flag} must be at least 0, got {value}")
    try:
        require_format(args.format)  # before the checkpoint is read: a missing package is said at once
    except MissingExportDependency as e:
        return fail(PROG, e)
    try:
        loaded = load_checkpoint(args.checkpoint, args.model, args.ema, image_size=args.image_size)
    except (ValueError, OSError) as e:  # CheckpointError is a ValueError
        return fail(PROG, e)
    try:
        result = export(loaded, args.format, args.out, args.image_size, args.atol, args.rtol)
    except MissingExportDependency as e:
        return fail(PROG, e)
    except ValueError as e:  # names the value or file at fault
        return fail(PROG, e)
    except OSError as e:  # the file cannot be written
        return fail(PROG, f"{args.out}: cannot write ({e})")
    except ExportCheckError as e:
        return fail(PROG, e, status=1)
    except Exception as e:  # noqa: BLE001 - an exporter's or runtime's failure: one line naming the format
        what = f"{type(e).__name__}: {first_line(e)}"
        return fail(PROG, f"{args.format} export of {loaded.name} to {args.out} failed ({what})", 1)
    size_mb = sum(f.stat().st_size for f in result.files) / 1e6
    print(
        f"{loaded.name} -> {result.format}: {result.path} ({size_mb:.1f} MB, written in {result.export_seconds:.1f} s)"
    )
    verdict = "ok" if result.passed else "FAILED"
    print(
        f"check with {result.runtime}, batch {result.batch} at {result.image_size} px: "
        f"max |exported - eager| = {result.max_abs_diff:.3g} (max |eager| {result.max_abs_eager:.3g}, "
        f"tolerance {result.tolerance:.3g} = {result.atol:g} + {result.rtol:g} x max |eager|; "
        f"{result.check_seconds:.1f} s): {verdict}"
    )
    if args.json:
        try:
            write_json(args.json, _record(loaded, result))
        except OSError as e:
            return fail(PROG, e)
    if not result.passed:
        return fail(
            PROG,
            f"{result.path} differs from eager PyTorch by {result.max_abs_diff:.3g}, "
            f"above the tolerance {result.tolerance:.3g} (--atol/--rtol); "
            f"{mismatch_hint(loaded, result.image_size, result.max_abs_diff, result.max_abs_eager)}; the file is kept",
            status=1,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
