"""What a run shows while it trains: the progress bar, TensorBoard, and the lines on stderr; at its end, the
curves as a picture (rank 0 only)."""

from __future__ import annotations

import sys
import time
from typing import Any

from tqdm import tqdm

from ..config import Config
from ..data.loader import skipped_summary
from ..runtime.distributed import DistInfo
from ..runtime.messages import first_line
from ..viz import MissingMatplotlib, save_curves_figure
from .output import CURVES, TENSORBOARD, OutputDir, read_metrics
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
        for names in (tally.replaced, tally.decoded_on_cpu, tally.broken):
            if names.names:
                print(names.summary(), file=sys.stderr)
        if val_skipped:
            print(f"validation: {skipped_summary(val_skipped)}", file=sys.stderr)

    def draw_curves(self) -> None:
        """``curves.png`` from metrics.jsonl at the end of the run (rank 0, ``train.curves``) and one line saying
        where; without matplotlib, one line saying how to get it. A figure never fails a finished run."""
        if not (self.info.is_main and self.cfg.train.curves):
            return
        path = self.out.path / CURVES
        title = f"{self.cfg.model.name} on {self.cfg.data.root}, {self.cfg.data.image_size} px"
        classes = self.cfg.model.num_classes
        chance = 100.0 / classes if isinstance(classes, int) and classes > 0 else None
        try:
            drawn = save_curves_figure(read_metrics(self.out.path), path, title=title, chance=chance)
        except MissingMatplotlib as e:
            print(
                f"curves: {path} not drawn: {e}; then the same scnet-train command with --resume auto draws it "
                "(a finished run only draws)",
                file=sys.stderr,
            )
            return
        except Exception as e:  # noqa: BLE001 - the checkpoints and metrics are written: say why, do not fail
            print(f"curves: warning: {path} not drawn: {first_line(e)}", file=sys.stderr)
            return
        if drawn is not None:
            print(f"curves: {drawn} (loss and accuracy by epoch)", file=sys.stderr)

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
