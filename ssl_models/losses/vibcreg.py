"""VIbCReg: VICReg with a normalized (correlation) covariance term.

Lee & Aune, "VIbCReg: Variance-Invariance-better-Covariance Regularization for
Self-Supervised Learning on Time Series", 2021, https://arxiv.org/abs/2109.00783 (section 3).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssl_models.distributed import on_global_batch_in_float32
from ssl_models.losses.vicreg import variance_hinge, weighted_sum

__all__ = ["vibcreg", "vibcreg_terms"]


def _normalized_covariance(z: torch.Tensor) -> torch.Tensor:
    """Mean over all D x D entries of the squared correlation matrix with its diagonal set to 0.

    Columns are centred and scaled to unit L2 norm, so the entries are correlations in [-1, 1]
    and the term no longer grows with the embedding's scale or width, unlike VICReg's.
    """
    d = z.shape[1]
    zn = F.normalize(z - z.mean(dim=0), dim=0)
    corr = zn.T @ zn
    off = corr - torch.diag(torch.diagonal(corr))
    return off.pow(2).sum() / (d * d)


@on_global_batch_in_float32
def vibcreg_terms(z0: torch.Tensor, z1: torch.Tensor) -> dict[str, torch.Tensor]:
    """The unweighted invariance (MSE), variance (sum over branches) and normalized covariance (sum) terms.

    Under ``torch.distributed`` every process's embeddings are gathered first, so the
    statistics are those of the global batch.
    """
    return {
        "invariance": F.mse_loss(z0, z1),
        "variance": variance_hinge(z0) + variance_hinge(z1),
        "covariance": _normalized_covariance(z0) + _normalized_covariance(z1),
    }


def vibcreg(
    z0: torch.Tensor,
    z1: torch.Tensor,
    sim_weight: float = 25.0,
    var_weight: float = 25.0,
    cov_weight: float = 200.0,
    *,
    with_terms: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``sim_weight * MSE(z0, z1) + var_weight * [v(z0) + v(z1)] + cov_weight * [c(z0) + c(z1)]``.

    v is VICReg's variance hinge and c the mean squared off-diagonal correlation. The paper's
    weights: lambda = mu = 25, nu = 200.

    Args:
        z0, z1: (n, D) embeddings of two views (after IterNorm in the method); row i is the same image.
    """
    return weighted_sum(vibcreg_terms(z0, z1), sim_weight, var_weight, cov_weight, with_terms)
