"""``scnet-train --config FILE [key=value ...] [--resume [PATH|auto]] [--print-config]``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from scnet.cli._common import add_version


def build_parser() -> argparse.ArgumentParser:
    """The ``scnet-train`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="scnet-train",
        description="Train an SC model (or a baseline) from a YAML config.",
        # Where the keys are: argparse cannot list a schema's nested keys as options.
        epilog="Every config key, with its type, default and meaning: docs/configs.md in the repository, or "
        "python -c 'import scnet.config as c; print(c.describe())'. --print-config shows the resolved values.",
    )
    add_version(parser)
    parser.add_argument("--config", required=True, help="YAML config (see configs/)")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="dotted overrides, e.g. optim.lr=0.2 data.batch_size=512 (global: split across the processes)",
    )
    parser.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        metavar="PATH|auto",
        help="continue the run in output_dir (auto, the default with no value) or from a checkpoint",
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: bad input ends with one line on stderr (rank 0) and exit status 2; a run stopped by a
    non-finite loss, a checkpoint it could not write or a lost peer process, with one line and status 1."""
    # Intermixed: overrides may come before and after --resume/--print-config.
    args = build_parser().parse_intermixed_args(argv)
    from scnet.config import ConfigError, format_config, load_config
    from scnet.data.decode import BadImageError
    from scnet.models import CheckpointError
    from scnet.runtime.distributed import is_main_process

    main_rank = is_main_process()  # from torchrun's environment: the group does not exist yet
    try:
        cfg = load_config(args.config, args.overrides)
        if args.print_config:
            print(format_config(cfg))
            return 0
        from scnet.train import CheckpointWriteError, NonFiniteLossError, PeerLostError, train

        try:
            train(cfg, resume=args.resume)
        except (NonFiniteLossError, CheckpointWriteError) as e:  # the run started and failed: 1, not a usage error
            if main_rank:
                print(f"scnet-train: error: {e}", file=sys.stderr)
            return 1
        except PeerLostError as e:  # every surviving rank says so: rank 0 may be the one that is gone
            print(f"scnet-train: error: {e}", file=sys.stderr)
            return 1
    except (ConfigError, CheckpointError, BadImageError, ValueError, OSError) as e:
        if main_rank:
            print(f"scnet-train: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
