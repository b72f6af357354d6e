"""One training step as a `rayssl pretrain` worker takes it, for the benchmarks that train in their own process."""

from __future__ import annotations

import torch

from ssl_models.optim import set_learning_rate
from ssl_models.schedules import learning_rate, scaled_lr


def worker_step(method, optimizer, views: dict[str, torch.Tensor], cfg, step: int, total: int, warmup: int, model=None) -> float:
    """The scheduled rate (the recipe's rate scaled to the batch), one update on ``views``, then the method's
    end-of-step update (EMA, queue, centres); returns the loss. ``model``: what runs the step when it is not
    ``method`` itself (its DDP wrapper)."""
    base_lr = scaled_lr(cfg.optim.lr, cfg.data.batch_size, cfg.optim.lr_scaling)
    set_learning_rate(optimizer, learning_rate(cfg.optim.schedule, step, total, warmup, base_lr))
    loss = (model or method)(views)["loss"]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    method.on_step_end(step, total)
    return loss.item()
