"""Run a function on two gloo processes, for the losses that gather across workers."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _entry(rank: int, world: int, init_file: str, out_prefix: str, fn, args):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.save(fn(rank, world, *args), f"{out_prefix}{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_distributed(tmp_path, fn, *args, world: int = 2) -> list:
    """Call ``fn(rank, world, *args)`` in ``world`` gloo processes; return each rank's result.

    ``fn`` must be a module-level function (it is pickled to the spawned processes)
    and return something ``torch.save`` can store.
    """
    prefix = str(tmp_path / "rank")
    mp.spawn(_entry, args=(world, str(tmp_path / "init"), prefix, fn, args), nprocs=world, join=True)
    return [torch.load(f"{prefix}{rank}.pt", weights_only=False) for rank in range(world)]
