"""Process-group setup from torchrun's environment: a few lines, no launcher of our own."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

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


def rank_and_world() -> tuple[int, int]:
    """(rank, world_size) of the default process group, or (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """Rank 0 of the process group, or of torchrun's environment before the group exists; True alone."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return os.environ.get("RANK", "0") == "0"


class PeerLostError(RuntimeError):
    """Another process of a multi-process run died or stopped answering: one line for the user, on every rank."""


# What gloo and NCCL say when a peer is gone or silent (they raise plain RuntimeErrors). gloo's wait for a
# stopped peer inside DDP's buffer broadcast ends in "Application timeout caused pair closure".
_PEER_LOST = (
    "Connection reset",
    "Connection closed",
    "Broken pipe",
    "Timed out",
    "timed out",
    "timeout",
    "pair closure",
    "NCCL",
    "gloo",
)


def peer_lost(e: BaseException, info: DistInfo, timeout: float, last_checkpoint: Path) -> PeerLostError | None:
    """The one-line error for a collective that failed because another process is gone, else None."""
    text = str(e)
    if info.world_size == 1 or not (isinstance(e, dist.DistError) or any(k in text for k in _PEER_LOST)):
        return None
    # "[.../gloo/transport/tcp/pair.cc:545] Read error ...: Connection reset by peer. This is typically ..."
    cause = text.split("] ", 1)[-1].split(". ")[0].strip() if text else type(e).__name__
    kept = f"last checkpoint: {last_checkpoint}" if last_checkpoint.is_file() else "no checkpoint written yet"
    return PeerLostError(
        f"rank {info.rank} of {info.world_size}: lost the other processes of the run ({cause}); one of them died or "
        f"did not answer within train.dist_timeout={timeout} s; {kept}; restart the run with --resume auto"
    )


def cleanup_distributed() -> None:
    """Leave the process group, if joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
