"""SimCLR: Chen et al., 2020, https://arxiv.org/abs/2002.05709."""

from __future__ import annotations

import torch

from ssl_models.heads import SimCLRProjectionHead
from ssl_models.losses import nt_xent
from ssl_models.methods.base import SSLMethod
from ssl_models.recipes import SHARED_SGD, Recipe
from ssl_models.registry import register_method


@register_method("simclr")
class SimCLR(SSLMethod):
    """Two augmented views, a 2-layer projection head, and NT-Xent over all 2N views.

    Paper defaults: temperature 0.5 (CIFAR-10), 128-d projection, LARS with
    lr = 0.3 x batch / 256, 10 warm-up epochs then cosine decay, weight decay 1e-6.
    Negatives are gathered from every worker (see ``ssl_models.losses.nt_xent``).
    """

    recipe = Recipe(
        paper="https://arxiv.org/abs/2002.05709",
        sync_batchnorm=True,
        **SHARED_SGD,
        notes="Paper: LARS, lr 0.3 x B/256 (ImageNet; 1.0 with B=512 on CIFAR-10), wd 1e-6, 10 warm-up epochs. "
        "LARS pays off at batch 4096; at batch 256 on CPUs, SGD with momentum is the solo-learn CIFAR setting.",
    )

    def __init__(
        self,
        temperature: float = 0.5,
        projection_dim: int = 128,
        hidden_dim: int = 512,
        **encoder_args,
    ):
        super().__init__(**encoder_args)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.projection_head = SimCLRProjectionHead(self.encoder.num_features, hidden_dim, projection_dim)

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        z0 = self.projection_head(self.encoder(batch["view_0"]))
        z1 = self.projection_head(self.encoder(batch["view_1"]))
        # proxy accuracy: how often the positive ranks first among all candidates
        loss, proxy_acc = nt_xent(z0, z1, self.temperature, with_accuracy=True)
        return {"loss": loss, "proxy_acc": proxy_acc}
