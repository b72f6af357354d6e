"""Colorization: Zhang et al., 2016, https://arxiv.org/abs/1603.08511 (simplified)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssl_models.heads import ProjectionHead
from ssl_models.methods.base import SSLMethod
from ssl_models.pretext import chroma_target, gray_input
from ssl_models.recipes import SHARED_SGD, Recipe
from ssl_models.registry import register_method


class LuminanceEncoder(nn.Module):
    """A backbone that sees only the luma of its RGB input: in training and in every probe alike.

    The probes call the method's ``encoder`` on colour images; without this wrapper an
    encoder trained on grey would be probed on colour it never saw.
    """

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.num_features = backbone.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(gray_input(x))


@register_method("colorization")
class Colorization(SSLMethod):
    """See only the gray image, predict its colours.

    Paper defaults: input the L channel of Lab, predict ab at 1/4 resolution as a
    distribution over 313 quantized ab bins (grid 10), cross-entropy with class
    rebalancing (lambda 0.5) so rare saturated colours count, colour read out as the
    annealed mean (T 0.38); a fully convolutional VGG-style network.
    Simplified here: the input is the luma Y replicated to 3 channels, inside the encoder
    (``LuminanceEncoder``: training and probes both see luma), the target is the linear chroma
    pair (R - Y, B - Y) average-pooled to 1/4 resolution (``target_size``, 8x8 at 32 px),
    regressed with plain MSE (the paper's L2 baseline, which it found gives desaturated
    colours, but which needs no bins) by an MLP decoder (Linear-BN-ReLU-Linear) from the
    pooled encoder features, since the backbones return pooled features only.

    ``proxy_acc``: fraction of target pixels whose predicted chroma is within
    ``tolerance`` (Euclidean, in normalized [-1, 1] pixel units; 0.1 is 5% of the range).
    """

    recipe = Recipe(paper="https://arxiv.org/abs/1603.08511", **SHARED_SGD, notes="Paper: Adam; the shared SGD one.")

    num_views = 1
    requires_rgb = True
    # Targets are the image's own colours: no colour jitter, never turned grey (one target in five had no colour).
    view_kwargs = {"jitter_p": 0.0, "grayscale_p": 0.0}
    # The decoder's BatchNorm needs two images per worker.
    min_batch_per_worker = 2

    def __init__(
        self,
        target_size: int | None = None,
        tolerance: float = 0.1,
        hidden_dim: int = 512,
        **encoder_args,
    ):
        super().__init__(**encoder_args)
        channels = self.in_channels
        if channels != 3:
            raise ValueError(
                f"colorization needs RGB images (in_channels=3); these shards have {channels} channel"
                f"{'s' if channels != 1 else ''} — pick another method or RGB data"
            )
        image_size = self.image_size
        self.encoder = LuminanceEncoder(self.encoder)
        self.target_size = target_size if target_size is not None else max(1, image_size // 4)
        if not 0 < self.target_size <= image_size:
            raise ValueError(f"target_size must be in 1..{image_size}, got {target_size}")
        if tolerance <= 0:
            raise ValueError(f"tolerance must be > 0, got {tolerance}")
        self.tolerance = tolerance
        self.decoder = ProjectionHead(self.encoder.num_features, hidden_dim, 2 * self.target_size**2)

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["view_0"]
        target = chroma_target(x, self.target_size)
        pred = self.decoder(self.encoder(x)).view_as(target)  # the encoder takes the luma itself
        loss = F.mse_loss(pred, target)
        error = (pred.detach() - target).norm(dim=1)  # (N, s, s) chroma error per pixel
        proxy_acc = (error <= self.tolerance).float().mean()
        return {"loss": loss, "proxy_acc": proxy_acc}
