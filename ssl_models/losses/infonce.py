"""The cross entropy every InfoNCE-style loss ends in, and the proxy accuracy read off the same logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__: list[str] = []  # a helper of the losses here, not a loss


def cross_entropy_and_top1(
    logits: torch.Tensor, targets: torch.Tensor, with_accuracy: bool
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The mean cross entropy; with ``with_accuracy``, also how often the positive ranks first (no gradient)."""
    loss = F.cross_entropy(logits, targets)
    if not with_accuracy:
        return loss
    return loss, (logits.detach().argmax(dim=1) == targets).float().mean()
