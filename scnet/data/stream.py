"""The training split as a stream of batches: steps per epoch, and epoch e from step k, for an ImageFolder tree
or shards alike. Only this module tells the two apart; the trainer asks it where to start and how far it got."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

from .device import DeviceBatch, DeviceLoader, DevicePreprocess
from .loader import EpochSampler
from .shards import ShardPosition


class TrainStream:
    """``loader`` (from :func:`~scnet.data.loader.build_loader`) of micro-batches of ``micro_batch`` images,
    ``accum_steps`` of them per optimizer step, on ``device`` through ``preprocess``."""

    def __init__(
        self,
        loader: DataLoader,
        micro_batch: int,
        accum_steps: int,
        device: torch.device,
        preprocess: DevicePreprocess,
    ) -> None:
        self.loader, self.micro_batch, self.accum_steps = loader, micro_batch, accum_steps
        self.device, self.preprocess = device, preprocess
        self.dataset = loader.dataset
        self.workers = loader.num_workers
        self.folders = isinstance(loader.sampler, EpochSampler)
        self._position: ShardPosition | None = None
        if self.folders:
            batches = len(loader)
        else:  # shards: the batches the loader's workers actually deliver (each drops its own partial batch)
            batches = self.dataset.rank_num_batches(self.workers, micro_batch, 0)
        self.steps_per_epoch = batches // accum_steps

    def start_epoch(self, epoch: int, step: int = 0, position: dict[str, Any] | None = None) -> None:
        """Set the stream to ``epoch`` from optimizer step ``step`` on; ``position`` is where a mid-epoch
        checkpoint's loader workers were (shards; the first epoch of a resumed run only)."""
        if self.folders:
            self.loader.sampler.set_epoch(epoch, start=step * self.accum_steps * self.micro_batch)
        else:  # shards: each loader worker's stream starts where the checkpoint's run left it
            order = self.dataset.batch_order(self.workers, self.micro_batch, epoch)
            self._position = ShardPosition(order, self.workers, position)
            self.dataset.set_epoch(epoch, self._position.skip, self._position.next_worker)

    def batches(self) -> Iterator[DeviceBatch]:
        """The epoch's batches on the device, from where :meth:`start_epoch` set it."""
        return iter(DeviceLoader(self.loader, self.device, self.preprocess))

    def consumed(self, batch: DeviceBatch) -> None:
        """Count a batch the trainer took (shards: for the position a checkpoint saves)."""
        if self._position is not None:
            self._position.update(batch.delivered, len(batch.replaced))

    def position(self) -> dict[str, Any] | None:
        """How far this rank's loader workers have read in the epoch (shards), else None."""
        return self._position.state_dict() if self._position is not None else None
