"""RotNet: Gidaris et al., 2018, https://arxiv.org/abs/1803.07728."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssl_models.heads import ProjectionHead
from ssl_models.methods.base import SSLMethod
from ssl_models.pretext import all_rotations, random_rotations
from ssl_models.recipes import SHARED_SGD, Recipe
from ssl_models.registry import register_method


@register_method("rotation")
class Rotation(SSLMethod):
    """Predict which of 0, 90, 180 or 270 degrees an image was rotated by.

    Paper defaults: 4 rotations, and every image is fed in all 4 rotations in the same
    batch (section 3.1: better than one random rotation per image), so a batch of N
    images trains on 4N; ``all_rotations=False`` draws one random rotation per image
    instead. CIFAR-10 recipe: SGD, lr 0.1, momentum 0.9, weight decay 5e-4, batch 128.
    The paper's classifier is the top blocks of its NIN; here an MLP head
    (Linear-BN-ReLU-Linear) on the pooled encoder features predicts the 4 classes.

    ``proxy_acc``: rotation accuracy over the batch.
    """

    recipe = Recipe(
        paper="https://arxiv.org/abs/1803.07728",
        **SHARED_SGD,
        notes="Paper: SGD lr 0.1, momentum 0.9, wd 5e-4, batch 128 (x4 rotations); the shared SGD one.",
    )

    num_views = 1
    # The head's BatchNorm needs two rows per worker when all_rotations is off.
    min_batch_per_worker = 2

    def __init__(
        self,
        all_rotations: bool = True,
        hidden_dim: int = 512,
        **encoder_args,
    ):
        super().__init__(**encoder_args)
        self.all_rotations = all_rotations
        self.classifier = ProjectionHead(self.encoder.num_features, hidden_dim, 4)

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["view_0"]
        images, labels = all_rotations(x) if self.all_rotations else random_rotations(x)
        logits = self.classifier(self.encoder(images))
        loss = F.cross_entropy(logits, labels)
        proxy_acc = (logits.detach().argmax(dim=1) == labels).float().mean()
        return {"loss": loss, "proxy_acc": proxy_acc}
