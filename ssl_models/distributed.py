"""Distributed helpers for losses, each guarded so they are no-ops in one process."""

from __future__ import annotations

import functools

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every process's gradient and keeps this process's slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.n = dist.get_rank(), x.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (N, ...) from every process along dim 0, keeping gradients.

    The backward pass sums each slice's gradient back to the process that owns it,
    so a loss over gathered tensors trains every worker's encoder.
    Every process must pass the same shape.
    """
    if world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


def on_global_batch_in_float32(fn):
    """Decorate a loss of two views' embeddings ``fn(z0, z1)``: it sees every process's rows, in at least float32.

    Batch statistics and D x D sums of squares are too coarse in bf16, so autocast is off
    inside and the inputs are promoted; the gather keeps gradients (``gather_with_grad``).
    """

    @functools.wraps(fn)
    def wrapped(z0: torch.Tensor, z1: torch.Tensor):
        dtype = torch.promote_types(z0.dtype, torch.float32)
        with torch.autocast(z0.device.type, enabled=False):
            return fn(gather_with_grad(z0.to(dtype)), gather_with_grad(z1.to(dtype)))

    return wrapped
