"""Context encoders: Pathak et al., 2016, https://arxiv.org/abs/1604.07379."""

from __future__ import annotations

import torch
from torch import nn

from ssl_models.heads import ProjectionHead
from ssl_models.losses import masked_mse
from ssl_models.methods.base import SSLMethod
from ssl_models.pretext import mask_images, square_masks
from ssl_models.recipes import SHARED_SGD, Recipe
from ssl_models.registry import register_method

MASK_POSITIONS = ("center", "random")


@register_method("inpainting")
class Inpainting(SSLMethod):
    """Hide a square of the image, encode the rest, and reconstruct what was hidden.

    Paper defaults: a central square of half the side (a quarter of the area) filled
    with the mean pixel, an AlexNet encoder, a channel-wise fully connected layer and an
    up-convolutional decoder ending in tanh; loss 0.999 x L2 on the hidden region (with a
    10x weight on a thin overlap band) + 0.001 x adversarial; Adam, lr 2e-4 (pretext
    training used random blocks and regions too). Here: the same central square (or, with
    ``mask_position="random"``, a square at a new random place per sample), filled with 0,
    the mean of normalized pixels; the backbones return pooled features only, so an MLP
    decoder (Linear-BN-ReLU-Linear, then tanh) maps them to the whole image, and the loss is
    ``masked_mse`` on the hidden square alone, without the overlap band or the adversary.

    ``proxy_acc``: fraction of hidden pixel values (per channel) reconstructed within
    ``tolerance`` (0.1 in normalized [-1, 1] units, i.e. 5% of the range).
    """

    recipe = Recipe(paper="https://arxiv.org/abs/1604.07379", **SHARED_SGD, notes="Paper: Adam; the shared SGD one.")

    num_views = 1
    # The decoder's BatchNorm needs two images per worker.
    min_batch_per_worker = 2

    def __init__(
        self,
        mask_size: int | None = None,
        mask_position: str = "center",
        tolerance: float = 0.1,
        hidden_dim: int = 512,
        **encoder_args,
    ):
        super().__init__(**encoder_args)
        image_size = self.image_size
        self.mask_size = mask_size if mask_size is not None else image_size // 2
        if not 0 < self.mask_size < image_size:
            raise ValueError(f"mask_size must be in 1..{image_size - 1} for {image_size} px images, got {mask_size}")
        if mask_position not in MASK_POSITIONS:
            raise ValueError(f"mask_position must be one of {', '.join(MASK_POSITIONS)}, got {mask_position!r}")
        if tolerance <= 0:
            raise ValueError(f"tolerance must be > 0, got {tolerance}")
        self.mask_position = mask_position
        self.tolerance = tolerance
        out_dim = self.in_channels * image_size * image_size
        self.decoder = nn.Sequential(ProjectionHead(self.encoder.num_features, hidden_dim, out_dim), nn.Tanh())

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["view_0"]
        n, size = x.shape[0], x.shape[-1]
        masks = square_masks(n, size, self.mask_size, self.mask_position == "random", x.device)
        pred = self.decoder(self.encoder(mask_images(x, masks))).view_as(x)
        loss = masked_mse(pred, x, masks)
        hidden = masks.expand_as(x)
        close = (pred.detach() - x).abs() <= self.tolerance
        proxy_acc = (close & hidden).sum() / hidden.sum()  # sums, not boolean indexing: no host sync
        return {"loss": loss, "proxy_acc": proxy_acc}
