"""Negative cosine similarity with a stop-gradient on the target, the loss of SimSiam (and BYOL up to 2 + 2x).

Chen & He, "Exploring Simple Siamese Representation Learning", 2020,
https://arxiv.org/abs/2011.10566 (equation 1: D(p, z) = -p/||p|| . z/||z||, with z = stopgrad(z)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["negative_cosine"]


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``-cos(p_i, z_i)``, in [-1, 1]; ``z`` is detached, so it gets no gradient.

    The stop-gradient is what keeps SimSiam from collapsing (paper, section 4.1).
    A per-sample loss, so it needs no gathering across workers.

    Args:
        p: (N, D) predictions of one view.
        z: (N, D) projections (targets) of the other view.
    """
    return -F.cosine_similarity(p, z.detach(), dim=1).mean()
