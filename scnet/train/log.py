"""What a run shows while it trains: the progress bar, TensorBoard, and the lines on stderr (rank 0 only)."""

from __future__ import annotations

import sys
import time
from typing import Any

from tqdm import tqdm

from ..config import Config
from ..data.loader import skipped_summary
from ..runtime.distributed import DistInfo
from .output import TENSORBOARD, OutputDir
from .state import EpochTally


class RunLog:
    """The run's progress bar, TensorBoard writer and stderr lines."""

    def __init__(self, cfg: Config, info: DistInfo, out: OutputDir) -> None:
        self.cfg, self.info, self.out = cfg, info, out
        self.bar: tqdm | None = None
        self.writer = None
        if info.is_main and cfg.train.tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # imported only when used: it is slow to import

            self.writer = SummaryWriter(out.path / TENSORBOARD)

    def start_epoch(self, epoch: int, steps: int, done: int) -> tqdm:
        """A progress bar for ``epoch`` of ``steps`` steps, ``done`` of them already (resumed mid-epoch)."""
        self.bar = tqdm(
            total=steps,
            initial=done,
            desc=f"epoch {epoch + 1}/{self.cfg.train.epochs}",
            disable=not self.info.is_main,
            file=sys.stderr,
            dynamic_ncols=True,
        )
        return self.bar

    def step(self, tally: EpochTally, lr: float, global_step: int) -> None:
        """The running figures of the epoch, on the bar and in TensorBoard (at log points)."""
        elapsed = time.perf_counter() - tally.t0
        avg_loss = tally.mean_loss()
        ips = tally.seen * self.info.world_size / max(elapsed, 1e-9)
        self.bar.set_postfix(
            loss=f"{avg_loss:.4f}", lr=f"{lr:.3g}", img_s=f"{ips:.0f}", wait=f"{tally.wait / max(elapsed, 1e-9):.0%}"
        )
        if self.writer is not None:
            self.writer.add_scalar("train/loss", avg_loss, global_step)
            self.writer.add_scalar("train/lr", lr, global_step)
            self.writer.add_scalar("train/images_per_second", ips, global_step)

    def epoch_done(self, metrics: dict[str, Any], tally: EpochTally, val_skipped: list[str]) -> None:
        """The epoch's metrics.jsonl line, TensorBoard scalars and stderr lines (rank 0)."""
        if not self.info.is_main:
            return
        self.out.append_metrics(metrics)
        if self.writer is not None:
            for key in ("top1", "top5", "ema_top1", "ema_top5", "epoch_time", "images_per_second"):
                if key in metrics:
                    self.writer.add_scalar(f"epoch/{key}", metrics[key], metrics["epoch"])
            self.writer.flush()
        line = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
        print(line, file=sys.stderr)
        if tally.replaced.names:
            print(tally.replaced.summary(), file=sys.stderr)
        if val_skipped:
            print(f"validation: {skipped_summary(val_skipped)}", file=sys.stderr)

    def say(self, text: str) -> None:
        """One line on stderr from rank 0."""
        if self.info.is_main:
            print(text, file=sys.stderr)

    def close_bar(self) -> None:
        """An error's one line then starts on a line of its own, not after the progress bar."""
        if self.bar is not None:
            self.bar.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
