"""Momentum (EMA) targets shared by MoCo, BYOL and DINO.

The target network is a frozen copy of the online one, moved towards it after each
optimizer step by ``on_step_end`` -- never inside ``forward`` -- so DDP's gradient
sync and the update never interleave.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy with ``requires_grad=False`` everywhere: it never receives a gradient."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


def cosine_momentum(step: int, total_steps: int, base: float, final: float = 1.0) -> float:
    """BYOL's schedule (arXiv:2006.07733, sec. 3.2): tau = final - (final - base) (cos(pi k / K) + 1) / 2."""
    if total_steps <= 0:
        return base
    progress = min(step / total_steps, 1.0)
    return final - (final - base) * (math.cos(math.pi * progress) + 1) / 2


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * online, for parameters; buffers are copied."""
    for t, o in zip(target.parameters(), online.parameters(), strict=True):
        t.mul_(momentum).add_(o.detach(), alpha=1 - momentum)
    for t, o in zip(target.buffers(), online.buffers(), strict=True):
        t.copy_(o)
