"""Triplet network: anchor and positive are two views of one image, the negative a view of another."""

from __future__ import annotations

import torch

from ssl_models.heads import ProjectionHead
from ssl_models.losses import triplet, triplet_distances
from ssl_models.methods.base import SSLMethod
from ssl_models.recipes import SHARED_SGD, Recipe
from ssl_models.registry import register_method


def next_image(z: torch.Tensor) -> torch.Tensor:
    """Row i becomes row (i + 1) mod n: each image's negative is the next image of the batch."""
    return torch.roll(z, shifts=-1, dims=0)


@register_method("triplet")
class Triplet(SSLMethod):
    """A 2-layer projection head and the triplet margin loss (``ssl_models.losses.triplet``).

    FaceNet's loss (https://arxiv.org/abs/1503.03832) on L2-normalized embeddings, with
    Euclidean (not squared) distances and margin 1.0 (``triplet_margin_loss``'s
    default; FaceNet used 0.2 on squared distances); self-supervised triplets as in
    Wang & Gupta (https://arxiv.org/abs/1505.00687): the positive is the other view
    of the anchor's image, the negative the other view of the next image in this
    worker's batch, (i + 1) mod n. No hard-negative mining: simple, and unbiased.
    The loss is symmetrized: each view is the anchor once.

    ``proxy_acc``: fraction of triplets with d(anchor, positive) < d(anchor, negative).
    """

    recipe = Recipe(paper="https://arxiv.org/abs/1503.03832", **SHARED_SGD, notes="No SSL paper recipe; the shared SGD one.")

    def __init__(
        self,
        projection_dim: int = 128,
        hidden_dim: int = 512,
        margin: float = 1.0,
        **encoder_args,
    ):
        super().__init__(**encoder_args)
        if margin <= 0:
            raise ValueError(f"margin must be > 0, got {margin}")
        self.margin = margin
        self.projection_head = ProjectionHead(self.encoder.num_features, hidden_dim, projection_dim)

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        z0 = self.projection_head(self.encoder(batch["view_0"]))
        z1 = self.projection_head(self.encoder(batch["view_1"]))
        n0, n1 = next_image(z0), next_image(z1)
        loss = (triplet(z0, z1, n1, self.margin) + triplet(z1, z0, n0, self.margin)) / 2
        with torch.no_grad():
            pairs = [triplet_distances(z0, z1, n1), triplet_distances(z1, z0, n0)]
            proxy_acc = torch.cat([(d_pos < d_neg).float() for d_pos, d_neg in pairs]).mean()
        return {"loss": loss, "proxy_acc": proxy_acc}
