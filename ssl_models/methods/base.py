"""What every registered method shares."""

from __future__ import annotations

import torch
from torch import nn

from ssl_models.backbones import create_backbone
from ssl_models.views import model_views


class SSLMethod(nn.Module):
    """Base class: ``encoder`` + heads + loss, trained by ``training_step``.

    Subclasses set ``view_policy`` (the name passed to ``create_views``) and
    implement ``training_step(batch) -> {"loss": ..., "proxy_acc": ...}``.
    """

    method_name: str = ""
    view_policy: str = "multi_view"
    num_views: int = 2
    # Contrastive losses need at least two images per worker batch.
    min_batch_per_worker: int = 2
    # Methods that only make sense on colour images (colorization) set this.
    requires_rgb: bool = False
    # View settings the method's paper fixes, over the config's augmentation (BYOL's asymmetric views).
    view_kwargs: dict = {}
    # The smallest backbone that fits the method, used by the unit tests.
    tiny_backbone: str = "tiny_cnn"

    def __init__(self, backbone: str = "small_cnn", in_channels: int = 3, image_size: int = 32):
        super().__init__()
        self.encoder = create_backbone(backbone, in_channels=in_channels, image_size=image_size)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled encoder features (N, num_features), the ones the probes use."""
        return self.encoder(x)

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # DDP synchronizes gradients only for calls through forward(), so the
        # training loop calls model(batch) and forward is the training step.
        # Views made by Ray Data arrive as uint8; they become normalized floats here, on the device.
        return self.training_step(model_views(batch))

    def on_step_end(self, step: int, total_steps: int) -> None:
        """Momentum / EMA updates after the optimizer step; nothing for most methods."""
