"""``scnet-bench``: measured throughput, each figure beside its baseline from the same run."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from scnet.cli._common import ListOption, add_json, add_version, plain, write_json


def _data(args: argparse.Namespace) -> list[dict]:
    from scnet.bench.data import bench_data

    return bench_data(
        args.data,
        decode=args.decode,
        workers=args.workers,
        batches=args.batches,
        batch_size=args.batch_size,
        image_size=args.image_size,
        warmup=args.warmup,
        repeats=args.repeats,
        model=args.model,
        amp=args.amp,
        channels_last=args.channels_last,
        device=args.device,
    )


def _data_table(rows: list[dict]) -> str:
    from scnet.bench.data import format_rows

    return format_rows(rows)


class _Counts(ListOption):
    """A list option of whole numbers >= 0 (worker counts): ``1,4,16``, ``1 4 16`` or repeated; duplicates dropped."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        super().__call__(parser, namespace, values, option_string)
        items = [str(v) for v in getattr(namespace, self.dest)]
        bad = [v for v in items if not v.isdigit()]
        if bad:
            parser.error(f"{option_string}: not a whole number >= 0: {', '.join(bad)}")
        setattr(namespace, self.dest, list(dict.fromkeys(int(v) for v in items)))


def _model(args: argparse.Namespace) -> dict:
    from scnet.bench.model import bench_model

    return bench_model(
        args.model,
        args.vs,
        train=not args.infer,
        batch_size=args.batch_size,
        image_size=args.image_size,
        amp=args.amp,
        channels_last=args.channels_last,
        compile=args.compile,
        compile_backend=args.compile_backend,
        device=args.device,
        steps=args.steps,
        warmup=args.warmup,
        threads=args.threads,
        kernel_table=args.kernel_table,
        kernel_steps=args.kernel_steps,
    )


def _kernels(args: argparse.Namespace) -> dict:
    from scnet.bench.kernels import check_parity, time_grouped_convs

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    result = check_parity(
        args.model,
        batch_size=args.batch_size,
        image_size=args.image_size,
        amp=args.amp,
        channels_last=args.channels_last,
        device=args.device,
    )
    if args.conv_batch_size > 0:
        result["conv_batch_size"], result["conv_image_size"] = args.conv_batch_size, args.conv_image_size
        result["grouped_convs"] = time_grouped_convs(
            batch_size=args.conv_batch_size, image_size=args.conv_image_size, amp=args.amp, device=args.device
        )
    return result


def _add_precision(p: argparse.ArgumentParser, amp: str, channels_last: bool) -> None:
    """--amp and --channels-last / --no-channels-last, with the command's defaults."""
    p.add_argument("--amp", choices=("bf16", "fp16", "none"), default=amp, help=f"autocast dtype (default {amp})")
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=channels_last,
        help=f"channels_last input and model(s), or NCHW (default {'channels_last' if channels_last else 'NCHW'})",
    )


def _add_data_parser(sub: argparse._SubParsersAction) -> None:
    """The ``data`` subcommand."""
    p = sub.add_parser(
        "data",
        help="who waits: input-path img/s per decode path and worker count, against torchvision's; with --model, "
        "the share of a training step spent waiting for data",
        description="Images per second of the whole input path, from the files to normalised float images on the "
        "device, with the JPEGs decoded in the loader workers (cpu) or on the device (gpu: the workers read the bytes "
        "and draw each crop, the device decodes and cuts the batch, as data.decode=gpu trains; on a CPU device the CPU "
        "decoder stands in), at each worker count, beside torchvision's ImageFolder + PIL. With --model, also a short "
        "training loop fed by each: its img/s and the share of its time spent waiting for the next batch.",
    )
    p.add_argument("--data", required=True, help="ImageFolder root (its train/ is used when present)")
    p.add_argument(
        "--decode",
        action=ListOption,
        allowed=("cpu", "gpu"),
        help="where the JPEGs are decoded, as data.decode: cpu (the loader workers), gpu (the device) (default: both "
        "on a CUDA device whose torchvision decodes JPEG there, else cpu)",
    )
    p.add_argument("--workers", action=_Counts, default=[2], help="loader worker processes, e.g. 1,4,16 (default 2)")
    p.add_argument(
        "--batches",
        type=int,
        help="measured batches per repeat (default: three per worker, at least 3, cut to what the folder holds)",
    )
    p.add_argument(
        "--batch-size", type=int, default=32, help="images per batch of the loader, one process (default 32)"
    )
    p.add_argument("--image-size", type=int, default=224, help="training crop size (default 224)")
    p.add_argument("--warmup", type=int, help="untimed batches first, per repeat (default: one per worker, at least 1)")
    p.add_argument("--repeats", type=int, default=3, help="times each loader is measured, alternated (default 3)")
    p.add_argument(
        "--model",
        help="a zoo name: also train it (forward, backward, SGD; as many classes as the folder) fed by each decode "
        "path and worker count, and report its img/s and the share of its time spent waiting for data",
    )
    _add_precision(p, amp="none", channels_last=False)
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    add_json(p, "the rows (a list, one per decode path and worker count, and torchvision's)")
    p.set_defaults(func=_data, show=_data_table)


def build_parser() -> argparse.ArgumentParser:
    """The ``scnet-bench`` argument parser."""
    parser = argparse.ArgumentParser(prog="scnet-bench", description=plain(__doc__))
    add_version(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help="what to measure")
    _add_data_parser(sub)

    p = sub.add_parser(
        "model",
        help="a model's training (or inference) step against another's, alternated in one process",
        description="Median step time, images per second, activations saved for backward per image and (CUDA) "
        "peak memory of --model and --vs, both built once and stepped alternately in one process. On CUDA with "
        "cudnn.benchmark on, as in training. --kernel-table adds a table of each model's longest kernels.",
    )
    p.add_argument(
        "--model",
        required=True,
        help="a zoo name; an SC model's may end in :layerwise (the plain layers, set_fused(False)) or :lean (the "
        "lean kernels without the Triton ones, set_fused(True, triton=False)); plain: the shipped kernels",
    )
    p.add_argument("--vs", help="the model to compare with (default: the SC model's timm baseline)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--train", action="store_true", help="training steps (default)")
    mode.add_argument("--infer", action="store_true", help="inference forwards (eval, inference_mode)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=16,
        help="images per step in this one process, as a per-GPU batch (default 16; the trainer's data.batch_size "
        "is global)",
    )
    p.add_argument("--image-size", type=int, default=224, help="synthetic input size (default 224)")
    _add_precision(p, amp="none", channels_last=False)
    p.add_argument("--compile", action="store_true", help="torch.compile both models (the warm-up compiles)")
    p.add_argument("--compile-backend", default="inductor", help="e.g. aot_eager or eager for a quick CPU run")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    p.add_argument("--steps", type=int, default=10, help="timed steps per model (a speed ratio needs at least 5)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per model first")
    p.add_argument("--threads", type=int, help="torch.set_num_threads")
    p.add_argument(
        "--kernel-table",
        metavar="FILE.md",
        help="after the timed steps, profile --kernel-steps more of each model (torch.profiler: CUDA kernels, or "
        "CPU ops) and write a Markdown table of the longest kernels per step here",
    )
    p.add_argument("--kernel-steps", type=int, default=3, help="profiled steps per model for --kernel-table")
    add_json(p, "the result (as printed)")
    p.set_defaults(func=_model)

    p = sub.add_parser(
        "kernels",
        help="the shipped training kernels against the plain layers and the exact step, on this device",
        description="One training step of --model by its shipped kernels (on CUDA the fused Triton ones), by the "
        "lean kernels and by the plain layers under --amp, each against the plain layers' float64 step (relative "
        "L2 error of the logits and of the parameter gradients), whether the shipped step repeats bit for bit, and "
        "SC-ResNeXt's grouped 3x3s timed as two convolutions and as one of twice the groups.",
    )
    p.add_argument("--model", default="scnet50", help="an SC zoo name (default: scnet50)")
    p.add_argument(
        "--batch-size", type=int, default=16, help="images in the checked training step, one process (default 16)"
    )
    # 224 px: the map sizes (and so the compiled Triton kernels) of the training benchmark's steps.
    p.add_argument("--image-size", type=int, default=224, help="input size of the checked step (default 224)")
    _add_precision(p, amp="bf16", channels_last=True)
    p.add_argument("--nchw", dest="channels_last", action="store_false", help="(alias) --no-channels-last")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    p.add_argument(
        "--conv-batch-size",
        type=int,
        default=256,
        help="images per forward of the grouped-convolution timing, one process (default 256; 0: skip it)",
    )
    p.add_argument("--conv-image-size", type=int, default=224, help="input size of that timing (default 224)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads")
    add_json(p, "the result (as printed)")
    p.set_defaults(func=_kernels)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except (OSError, ValueError) as e:
        print(f"scnet-bench {args.command}: error: {e}", file=sys.stderr)
        return 2
    show = getattr(args, "show", None)
    print(show(result) if show is not None else json.dumps(result, indent=2))
    if args.json:
        try:
            write_json(args.json, result)
        except OSError as e:
            print(f"scnet-bench {args.command}: error: {e}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
