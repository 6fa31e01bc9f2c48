"""Process-group setup from torchrun's environment: a few lines, no launcher of our own."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: rank, world size, and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Only rank 0 writes files and prints."""
        return self.rank == 0


def shared_store_restart_problem(env: Mapping[str, str] = os.environ) -> str | None:
    """Why torchrun's restarts would fail at start-up here, or None.

    With ``--max-restarts`` > 0 and the rendezvous store shared with the workers (torchrun's default since
    torch 2.5), a restarted worker can read the addresses the failed attempt's workers left in that store and
    die connecting to them (pytorch/pytorch#135712; gloo and NCCL alike). torchrun itself must be started
    with ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``; a worker can only say so.
    """
    if env.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or int(env.get("TORCHELASTIC_MAX_RESTARTS", "0")) < 1:
        return None
    return (
        "torchrun --max-restarts with its shared rendezvous store: restarted workers can fail at start-up "
        "connecting to the dead workers' addresses (pytorch/pytorch#135712); "
        "start torchrun with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1"
    )


def setup_distributed(device: str | None = None, timeout: float | None = None) -> DistInfo:
    """Join the process group when launched by ``torchrun`` (RANK/WORLD_SIZE set); else a single process.

    NCCL on CUDA, gloo on CPU; each process takes ``cuda:LOCAL_RANK``. ``timeout`` (seconds; None: torch's
    default) bounds the wait for the other processes at start-up and in every collective, so that a process
    whose peer died or hangs stops with an error instead of waiting forever.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        problem = shared_store_restart_problem()
        if problem and rank == 0 and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
            print(f"warning: {problem}", file=sys.stderr)
        kwargs = {"timeout": timedelta(seconds=timeout)} if timeout is not None else {}
        dist.init_process_group("nccl" if use_cuda else "gloo", **kwargs)
    return DistInfo(rank, world_size, local_rank, dev)


def cleanup_distributed() -> None:
    """Leave the process group, if joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
