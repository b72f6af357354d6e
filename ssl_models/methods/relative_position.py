"""Context prediction: Doersch et al., 2015, https://arxiv.org/abs/1505.05192."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssl_models.heads import ProjectionHead
from ssl_models.methods.base import SSLMethod
from ssl_models.pretext import relative_position_pairs
from ssl_models.recipes import SHARED_SGD, Recipe
from ssl_models.registry import register_method


@register_method("relative_position")
class RelativePosition(SSLMethod):
    """Given the centre patch of a 3x3 grid and one of its 8 neighbours, predict where the
    neighbour was (8-way classification).

    Paper defaults: 96 px patches with a 48 px gap between them (cells of 144 px, so
    patches are 2/3 of a cell), each patch jittered by up to 7 px, the two patches through
    a shared AlexNet-style trunk to fc6, concatenated, fc7 4096 -> fc8 8 classes; one
    random pair per image. Here: cells of ``image_size // 3`` px, patches 2/3 of a cell
    (6 px at 32 px), jitter up to a quarter of the cell-patch margin and at least 1 px where
    the margin has room (1 px at 28 and 32 px; a quarter of 3 px rounded to 0 at 28 px, which
    left the patches on a fixed grid whose edges line up), so neighbouring patches never touch;
    both patches encoded at their own size by the shared encoder, features concatenated ->
    MLP (Linear-BN-ReLU-Linear) -> 8 classes.
    The paper's colour dropping against chromatic aberration is left out.

    ``proxy_acc``: accuracy of the 8-way position classifier.
    """

    recipe = Recipe(paper="https://arxiv.org/abs/1505.05192", **SHARED_SGD, notes="The shared SGD recipe.")

    num_views = 1
    # The head's BatchNorm needs two pairs per worker.
    min_batch_per_worker = 2

    def __init__(
        self,
        patch_size: int | None = None,
        jitter: int | None = None,
        hidden_dim: int = 512,
        **encoder_args,
    ):
        super().__init__(**encoder_args)
        image_size = self.image_size
        cell = image_size // 3
        self.patch_size = patch_size if patch_size is not None else max(1, cell * 2 // 3)
        margin = cell - self.patch_size
        self.jitter = jitter if jitter is not None else (max(1, margin // 4) if margin >= 2 else 0)
        if not 0 < self.patch_size <= cell:
            raise ValueError(f"patch_size must be in 1..{cell} (the cells of a 3x3 grid on {image_size} px), got {patch_size}")
        if not 0 <= 2 * self.jitter <= cell - self.patch_size:
            raise ValueError(
                f"jitter must be in 0..{(cell - self.patch_size) // 2} for {self.patch_size} px patches, got {jitter}"
            )
        self.classifier = ProjectionHead(2 * self.encoder.num_features, hidden_dim, 8)

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["view_0"]
        centre, neighbour, labels = relative_position_pairs(x, self.patch_size, self.jitter)
        n = x.shape[0]
        features = self.encoder(torch.cat([centre, neighbour])).view(2, n, -1)  # one encoder call: BatchNorm sees both
        logits = self.classifier(torch.cat([features[0], features[1]], dim=1))
        loss = F.cross_entropy(logits, labels)
        proxy_acc = (logits.detach().argmax(dim=1) == labels).float().mean()
        return {"loss": loss, "proxy_acc": proxy_acc}
