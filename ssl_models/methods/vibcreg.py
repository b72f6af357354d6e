"""VIbCReg: Lee & Aune, 2021, https://arxiv.org/abs/2109.00783."""

from __future__ import annotations

import torch
from torch import nn

from ssl_models.heads import ProjectionHead
from ssl_models.iternorm import IterNorm
from ssl_models.losses import vibcreg_terms
from ssl_models.methods.base import SSLMethod
from ssl_models.proxy import nearest_neighbour_accuracy
from ssl_models.registry import register_method


@register_method("vibcreg")
class VIbCReg(SSLMethod):
    """VICReg with IterNorm on the projector output and a normalized covariance term.

    Loss: ``sim_weight * MSE + var_weight * variance hinges + cov_weight * mean squared off-diagonal
    correlation`` over the global batch (``ssl_models.losses.vibcreg``). The three unweighted
    terms are also returned for logging.

    Paper defaults: 3-layer projector (Linear -> BN -> ReLU twice, then Linear) of 4096 units,
    IterNorm (64 groups, 5 iterations) on its output, lambda = mu = 25, nu = 200; the paper
    trains with AdamW on time series. The pipeline passes ``projection_dim`` and ``hidden_dim``.

    ``proxy_acc``: how often the embedding of the other view of the same image is the nearest.
    """

    def __init__(
        self,
        backbone: str = "small_cnn",
        in_channels: int = 3,
        image_size: int = 32,
        projection_dim: int = 4096,
        hidden_dim: int = 4096,
        sim_weight: float = 25.0,
        var_weight: float = 25.0,
        cov_weight: float = 200.0,
        iternorm_groups: int = 64,
        iternorm_iterations: int = 5,
    ):
        super().__init__(backbone, in_channels, image_size)
        for name, weight in (("sim_weight", sim_weight), ("var_weight", var_weight), ("cov_weight", cov_weight)):
            if weight < 0:
                raise ValueError(f"{name} must be >= 0, got {weight}")
        self.weights = {"invariance": sim_weight, "variance": var_weight, "covariance": cov_weight}
        groups = min(iternorm_groups, projection_dim)
        while projection_dim % groups:  # a group count that divides the width (64 for the paper's 4096)
            groups -= 1
        self.projector = nn.Sequential(
            ProjectionHead(self.encoder.num_features, hidden_dim, projection_dim, num_layers=3),
            IterNorm(projection_dim, num_groups=groups, iterations=iternorm_iterations),
        )

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        z0 = self.projector(self.encoder(batch["view_0"]))
        z1 = self.projector(self.encoder(batch["view_1"]))
        terms = vibcreg_terms(z0, z1)
        loss = sum(self.weights[name] * value for name, value in terms.items())
        out = {"loss": loss, "proxy_acc": nearest_neighbour_accuracy(z0, z1)}
        out.update({name: value.detach() for name, value in terms.items()})
        return out
