"""Barlow Twins' redundancy-reduction loss on the cross-correlation of two views' embeddings.

Zbontar et al., "Barlow Twins: Self-Supervised Learning via Redundancy Reduction", 2021,
https://arxiv.org/abs/2103.03230 (equation 1 and algorithm 1).
"""

from __future__ import annotations

import torch

from ssl_models.distributed import on_global_batch_in_float32

__all__ = ["barlow_twins", "cross_correlation"]

# Added to the batch variance like BatchNorm1d(affine=False) does in the paper's code, so a constant
# dimension gives 0 instead of NaN.
_BN_EPS = 1e-5


def _batch_normalize(z: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit (biased, BatchNorm-style) variance along the batch, per dimension."""
    mean = z.mean(dim=0)
    var = z.var(dim=0, unbiased=False)
    return (z - mean) / torch.sqrt(var + _BN_EPS)


@on_global_batch_in_float32
def cross_correlation(z0: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
    """The (D, D) cross-correlation C of the batch-normalized embeddings over the global batch.

    Under ``torch.distributed`` the embeddings of every process are gathered first, so the
    batch statistics and C are those of the concatenated batch (like SyncBatchNorm plus the
    all_reduce of C in the paper's code), and gradients flow back to every process.
    """
    return _batch_normalize(z0).T @ _batch_normalize(z1) / z0.shape[0]


def barlow_twins(z0: torch.Tensor, z1: torch.Tensor, lambda_: float = 5e-3) -> torch.Tensor:
    """``sum_i (1 - C_ii)^2 + lambda_ * sum_{i != j} C_ij^2``.

    The first (invariance) term makes the two views' embeddings agree; the second
    (redundancy reduction) term decorrelates the embedding's dimensions.
    Every process returns the loss of the global batch.

    Args:
        z0, z1: (n, D) projections of two views; row i of each is the same image; n >= 2.
        lambda_: weight of the off-diagonal term; 5e-3 is the paper's default (for D = 8192).
    """
    if lambda_ < 0:
        raise ValueError(f"lambda_ must be >= 0, got {lambda_}")
    c = cross_correlation(z0, z1)
    on_diag = torch.diagonal(c)
    off_diag_sq = c.pow(2).sum() - on_diag.pow(2).sum()
    return (1 - on_diag).pow(2).sum() + lambda_ * off_diag_sq
