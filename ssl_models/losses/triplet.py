"""Triplet margin loss on L2-normalized embeddings.

Schroff et al., "FaceNet: A Unified Embedding for Face Recognition and Clustering",
2015, https://arxiv.org/abs/1503.03832 (equation 1, embeddings on the unit sphere);
used for self-supervised features by Wang & Gupta, 2015, https://arxiv.org/abs/1505.00687.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["triplet", "triplet_distances"]


def triplet_distances(
    anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, normalize: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean distances (n,) anchor-positive and anchor-negative, after L2 normalization by default."""
    if normalize:
        anchor, positive, negative = (F.normalize(z, dim=1) for z in (anchor, positive, negative))
    return (anchor - positive).norm(dim=1), (anchor - negative).norm(dim=1)


def triplet(
    anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, margin: float = 1.0, normalize: bool = True
) -> torch.Tensor:
    """``mean(relu(d(a, p) - d(a, n) + margin))`` with d the Euclidean (not squared) distance.

    The semantics of ``torch.nn.functional.triplet_margin_loss`` (p=2), without its
    1e-6 epsilon, on embeddings L2-normalized first (FaceNet constrains them to the
    unit sphere, so distances lie in [0, 2] and a margin in (0, 2) is meaningful).
    Every term uses only its own triplet, so averaging over workers needs no gathering.

    Args:
        anchor, positive, negative: (n, D) embeddings; row i of each is one triplet.
        margin: the hinge margin alpha > 0 (torch's default 1.0; FaceNet used 0.2 on squared distances).
        normalize: L2-normalize the embeddings before measuring distances.
    """
    if margin <= 0:
        raise ValueError(f"margin must be > 0, got {margin}")
    d_pos, d_neg = triplet_distances(anchor, positive, negative, normalize)
    return F.relu(d_pos - d_neg + margin).mean()
