"""Data-parallel training under ``torchrun``: process-group set-up and tear-down.

``torchrun --nproc_per_node=N csipos train meml ...`` starts N copies of the
same command. Each reads the torchrun environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``), joins one process group (gloo on CPU,
nccl on GPU), trains on a strided shard of every environment
(`training.fit.Shard`), and only rank 0 logs and publishes. Without torchrun
the same code runs as a single process with no process group at all.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from training.fit import Shard

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Session:
    """Where this process stands: its shard, its device, and whether it is rank 0."""

    shard: Shard
    device: torch.device
    local_world: int

    @property
    def is_main(self) -> bool:
        """Only the main process logs, writes files and publishes."""
        return self.shard.rank == 0

    @property
    def distributed(self) -> bool:
        return self.shard.world > 1


def threads_per_process(local_world: int = 1) -> int:
    """CPU threads for each of ``local_world`` processes on this machine (at least one).

    Oversubscribing cores (torch's default of all cores in every process) makes
    data-parallel CPU training slower than a single process.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // max(1, local_world))


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise RuntimeError(f"environment variable {name}={value!r}: expected an integer") from exc


@contextmanager
def session(timeout_s: float = 1800.0) -> Iterator[Session]:
    """Join the torchrun process group if there is one; leave it on exit.

    Sets the per-process CPU thread count and, on GPU, the local device.
    """
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    local_world = _env_int("LOCAL_WORLD_SIZE", world)
    if not 0 <= rank < world:
        raise RuntimeError(f"RANK={rank} outside WORLD_SIZE={world}; launch with torchrun")
    torch.set_num_threads(threads_per_process(local_world))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world == 1:
        yield Session(Shard(0, 1), device, 1)
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    if rank == 0:
        log.info("distributed training: %d processes, backend %s", world, backend)
    try:
        yield Session(Shard(rank, world), device, local_world)
        dist.barrier()  # nobody leaves while rank 0 is still publishing
    finally:
        dist.destroy_process_group()
