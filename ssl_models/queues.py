"""The FIFO queue of past embeddings that MoCo (keys) and NNCLR (its support set) keep, identical on every worker."""

from __future__ import annotations

import torch

from ssl_models.distributed import gather_with_grad


@torch.no_grad()
def enqueue_from_every_worker(queue: torch.Tensor, pointer: torch.Tensor, rows: torch.Tensor) -> int:
    """Write every worker's ``rows`` (n, D), in rank order, into the ring buffer ``queue`` (L, D) at ``pointer``
    (a 0-d long tensor, advanced), wrapping around; returns how many rows were written.

    A global batch larger than the queue keeps its last rows. Every worker writes the same rows in the same
    order, so every worker holds the same queue.
    """
    rows = gather_with_grad(rows)  # under no_grad a plain all_gather
    size = queue.shape[0]
    rows = rows[-size:]
    slots = (pointer + torch.arange(rows.shape[0], device=queue.device)) % size
    queue[slots] = rows.to(queue.dtype)
    pointer.copy_((pointer + rows.shape[0]) % size)
    return rows.shape[0]
