"""VICReg: variance-invariance-covariance regularization of two views' embeddings.

Bardes et al., "VICReg: Variance-Invariance-Covariance Regularization for
Self-Supervised Learning", 2021, https://arxiv.org/abs/2105.04906 (section 3 and algorithm 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssl_models.distributed import on_global_batch_in_float32

__all__ = ["vicreg", "vicreg_terms"]

# epsilon inside the square root of the variance term (paper, equation 1), for numerical stability.
_VAR_EPS = 1e-4


def variance_hinge(z: torch.Tensor) -> torch.Tensor:
    """Hinge on the per-dimension standard deviation: mean_j max(0, 1 - sqrt(Var(z_j) + eps))."""
    std = torch.sqrt(z.var(dim=0) + _VAR_EPS)
    return F.relu(1 - std).mean()


def _covariance(z: torch.Tensor) -> torch.Tensor:
    """Sum of the squared off-diagonal entries of the covariance matrix, divided by D."""
    n, d = z.shape
    z = z - z.mean(dim=0)
    cov = z.T @ z / (n - 1)
    return (cov.pow(2).sum() - torch.diagonal(cov).pow(2).sum()) / d


@on_global_batch_in_float32
def vicreg_terms(z0: torch.Tensor, z1: torch.Tensor) -> dict[str, torch.Tensor]:
    """The unweighted invariance, variance and covariance terms over the global batch.

    Under ``torch.distributed`` the embeddings of every process are gathered first (as in the
    paper's code), so the statistics are those of the concatenated batch.
    The variance and covariance terms are averaged over the two branches.
    """
    return {
        "invariance": F.mse_loss(z0, z1),
        "variance": (variance_hinge(z0) + variance_hinge(z1)) / 2,
        "covariance": _covariance(z0) + _covariance(z1),
    }


def vicreg(
    z0: torch.Tensor,
    z1: torch.Tensor,
    sim_weight: float = 25.0,
    var_weight: float = 25.0,
    cov_weight: float = 1.0,
    *,
    with_terms: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``sim_weight * s(z0, z1) + var_weight * [v(z0) + v(z1)] / 2 + cov_weight * [c(z0) + c(z1)]``.

    s is the mean squared error, v the hinge ``mean_j max(0, 1 - sqrt(Var(z_j) + 1e-4))`` on the
    (unbiased) standard deviation of each dimension, c the sum of squared off-diagonal covariances
    divided by D. Defaults are the paper's (lambda = mu = 25, nu = 1). Every process returns the
    loss of the global batch.

    Args:
        z0, z1: (n, D) expander outputs of two views; row i of each is the same image; n >= 2.
    """
    return weighted_sum(vicreg_terms(z0, z1), sim_weight, var_weight, cov_weight, with_terms)


def weighted_sum(
    terms: dict[str, torch.Tensor], sim_weight: float, var_weight: float, cov_weight: float, with_terms: bool
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``sim_weight * invariance + var_weight * variance + cov_weight * covariance`` (VICReg and VIbCReg);
    with ``with_terms``, the unweighted terms too, for logging."""
    for name, weight in (("sim_weight", sim_weight), ("var_weight", var_weight), ("cov_weight", cov_weight)):
        if weight < 0:
            raise ValueError(f"{name} must be >= 0, got {weight}")
    loss = sim_weight * terms["invariance"] + var_weight * terms["variance"] + cov_weight * terms["covariance"]
    return (loss, terms) if with_terms else loss
