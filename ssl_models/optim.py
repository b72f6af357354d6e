"""Optimizers: SGD, AdamW and LARS, built from plain keyword arguments."""

from __future__ import annotations

import torch
from torch import nn


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling (You et al., 2017, https://arxiv.org/abs/1708.03888).

    SGD with momentum whose step for each weight matrix is scaled by
    ``trust_coefficient * ||w|| / ||grad + wd * w||``. Biases and BatchNorm
    parameters (1-d) are neither adapted nor decayed, as in SimCLR.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 1e-6, trust_coefficient: float = 1e-3):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coefficient=trust_coefficient))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if p.ndim > 1:
                    grad = grad.add(p, alpha=group["weight_decay"])
                    w_norm, g_norm = torch.norm(p), torch.norm(grad)
                    trust = torch.where(
                        (w_norm > 0) & (g_norm > 0), group["trust_coefficient"] * w_norm / g_norm, torch.ones_like(w_norm)
                    )
                    grad = grad.mul(trust)
                buf = self.state[p].get("momentum_buffer")
                if buf is None:
                    buf = self.state[p]["momentum_buffer"] = torch.clone(grad)
                else:
                    buf.mul_(group["momentum"]).add_(grad)
                p.add_(buf, alpha=-group["lr"])
        return loss


def build_optimizer(
    name: str,
    model: nn.Module,
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
    beta2: float = 0.999,
    bias_lr_scale: float = 1.0,
) -> torch.optim.Optimizer:
    """Optimizer ``name`` (sgd, lars, adamw); no weight decay on biases, norms and tokens (1-d parameters).

    Every param group carries ``lr_scale``: the training loop sets each group's lr to the
    schedule's value times it. LARS biases and norms train at ``bias_lr_scale`` (Barlow Twins:
    0.0048 / 0.2); AdamW takes ``(momentum, beta2)`` as its betas (MAE: 0.9, 0.95).
    """
    params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    # Biases, norm scales and learned tokens (MAE's mask and cls tokens) are not decayed.
    plain = [p for name, p in params if p.ndim <= 1 or name.endswith("token")]
    decay = [p for name, p in params if not (p.ndim <= 1 or name.endswith("token"))]
    groups = [
        {"params": decay, "weight_decay": weight_decay, "lr_scale": 1.0},
        {"params": plain, "weight_decay": 0.0, "lr_scale": bias_lr_scale if name == "lars" else 1.0},
    ]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(momentum, beta2))
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; known: sgd, lars, adamw")


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """The schedule's ``lr`` on every param group, times the group's ``lr_scale``."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
