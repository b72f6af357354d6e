"""Barlow Twins: Zbontar et al., 2021, https://arxiv.org/abs/2103.03230."""

from __future__ import annotations

import torch

from ssl_models.heads import ProjectionHead
from ssl_models.losses import barlow_twins
from ssl_models.methods.base import SSLMethod
from ssl_models.proxy import nearest_neighbour_accuracy
from ssl_models.recipes import Recipe
from ssl_models.registry import register_method

PAPER_LAMBDA, PAPER_WIDTH = 5e-3, 8192  # lambda_ as tuned in the paper, for its projector width


@register_method("barlow_twins")
class BarlowTwins(SSLMethod):
    """Two views through one encoder + projector; the cross-correlation of their embeddings is pushed to I.

    Loss: ``sum_i (1 - C_ii)^2 + lambda_ sum_{i != j} C_ij^2`` with C computed over the global
    batch (see ``ssl_models.losses.barlow_twins``).

    Paper defaults (ImageNet): 3-layer projector 8192-8192-8192 (Linear -> BN -> ReLU twice, then
    Linear), lambda_ = 5e-3, LARS with lr 0.2 (weights) / 0.0048 (biases and BN), batch 2048,
    weight decay 1.5e-6. The pipeline passes ``projection_dim`` and ``hidden_dim`` from its config;
    the paper finds the loss works better with wide projectors, and lambda_ was tuned for D = 8192.
    The off-diagonal term sums D(D-1) entries against the diagonal's D, so ``lambda_`` left unset
    keeps the paper's balance at any width: 5e-3 x 8192 / D (5e-3 at 8192, 0.04 at 1024).

    ``proxy_acc``: how often the projection of the other view of the same image is the nearest
    (cosine) among the batch's projections of that view.
    """

    recipe = Recipe(
        paper="https://arxiv.org/abs/2103.03230",
        sync_batchnorm=True,
        optimizer="lars",
        lr=0.2,
        weight_decay=1.5e-6,
        bias_lr_scale=0.024,  # 0.0048 / 0.2
        warmup_share=0.1,
        cpu_kwargs={"projection_dim": 1024, "hidden_dim": 1024},
        notes="As published: LARS, lr 0.2 for weights and 0.0048 for biases and norms (x B/256), wd 1.5e-6, "
        "10 warm-up epochs of 1000. The loss sums over D dimensions, so SGD's step grows with D; LARS "
        "normalizes it per layer. Projector 8192-8192-8192 -> 1024 on CPUs; lambda scales as 5e-3 x 8192 / D.",
    )

    def __init__(
        self,
        projection_dim: int = 8192,
        hidden_dim: int = 8192,
        lambda_: float | None = None,
        **encoder_args,
    ):
        super().__init__(**encoder_args)
        lambda_ = PAPER_LAMBDA * PAPER_WIDTH / projection_dim if lambda_ is None else lambda_
        if lambda_ < 0:
            raise ValueError(f"lambda_ must be >= 0, got {lambda_}")
        self.lambda_ = lambda_
        self.projector = ProjectionHead(self.encoder.num_features, hidden_dim, projection_dim, num_layers=3)

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        z0 = self.projector(self.encoder(batch["view_0"]))
        z1 = self.projector(self.encoder(batch["view_1"]))
        loss = barlow_twins(z0, z1, self.lambda_)
        return {"loss": loss, "proxy_acc": nearest_neighbour_accuracy(z0, z1)}
