"""SimSiam: Chen & He, 2020, https://arxiv.org/abs/2011.10566."""

from __future__ import annotations

import torch
from torch import nn

from ssl_models.heads import ProjectionHead
from ssl_models.losses import negative_cosine
from ssl_models.methods.base import SSLMethod
from ssl_models.proxy import nearest_neighbour_accuracy
from ssl_models.recipes import Recipe
from ssl_models.registry import register_method


class SimSiamProjectionHead(ProjectionHead):
    """SimSiam's 3-layer projector: BN on every layer including the output one, whose output has no ReLU.

    The output BatchNorm has no affine parameters, as in the paper's code.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 2048, out_dim: int = 2048):
        super().__init__(in_dim, hidden_dim, out_dim, num_layers=3)
        self.append(nn.BatchNorm1d(out_dim, affine=False))


@register_method("simsiam")
class SimSiam(SSLMethod):
    """Two views through one encoder + projector; a predictor maps each to the other, with a stop-gradient.

    Loss: ``D(p0, stopgrad(z1)) / 2 + D(p1, stopgrad(z0)) / 2`` with D the negative cosine
    similarity, so it lies in [-1, 1] (-1 is perfect agreement). No negatives, no momentum encoder:
    the stop-gradient is what prevents collapse.

    Paper defaults (ImageNet): 3-layer projector with 2048-d hidden and output layers, BN on
    each; 2-layer bottleneck predictor 2048 -> 512 -> 2048 (hidden = output / 4); SGD with
    lr = 0.05 x batch / 256, momentum 0.9, weight decay 1e-4, cosine decay (the predictor's lr
    is not decayed in the paper; here it follows the shared schedule). ``predictor_hidden_dim``
    defaults to ``projection_dim // 4``, keeping the paper's bottleneck when the pipeline passes
    its own ``projection_dim`` and ``hidden_dim``.

    ``proxy_acc``: how often the projection of the other view of the same image is the nearest
    (cosine) to a prediction among the batch's projections, averaged over both directions.
    """

    recipe = Recipe(
        paper="https://arxiv.org/abs/2011.10566",
        sync_batchnorm=True,
        optimizer="sgd",
        lr=0.05,
        weight_decay=1e-4,
        notes="As published: SGD lr 0.05 x B/256, wd 1e-4, cosine, no warm-up (here 10%); its CIFAR recipe uses wd 5e-4.",
    )

    def __init__(
        self,
        projection_dim: int = 2048,
        hidden_dim: int = 2048,
        predictor_hidden_dim: int | None = None,
        **encoder_args,
    ):
        super().__init__(**encoder_args)
        predictor_hidden_dim = predictor_hidden_dim or max(projection_dim // 4, 1)
        if predictor_hidden_dim < 1:
            raise ValueError(f"predictor_hidden_dim must be >= 1, got {predictor_hidden_dim}")
        self.projector = SimSiamProjectionHead(self.encoder.num_features, hidden_dim, projection_dim)
        self.predictor = ProjectionHead(projection_dim, predictor_hidden_dim, projection_dim)

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        z0 = self.projector(self.encoder(batch["view_0"]))
        z1 = self.projector(self.encoder(batch["view_1"]))
        p0, p1 = self.predictor(z0), self.predictor(z1)
        # negative_cosine detaches its second argument: the stop-gradient of the paper.
        loss = negative_cosine(p0, z1) / 2 + negative_cosine(p1, z0) / 2
        proxy_acc = (nearest_neighbour_accuracy(p0, z1) + nearest_neighbour_accuracy(p1, z0)) / 2
        return {"loss": loss, "proxy_acc": proxy_acc}
