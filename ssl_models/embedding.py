"""An encoder that takes raw images: uint8 (N, H, W, C) in, float embeddings (N, F) out, normalization inside.

What leaves rayssl (ONNX, torch.export, MLflow models, batch embedding) wraps the encoder in this,
so that whoever uses it feeds decoded image pixels and never needs rayssl's preprocessing.
"""

from __future__ import annotations

import torch
from torch import nn

from ssl_models.views import PIXEL_MEAN, PIXEL_STD


class EmbeddingModel(nn.Module):
    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        # Buffers, so that they travel with the weights into every exported format.
        self.register_buffer("mean", torch.tensor(PIXEL_MEAN, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(PIXEL_STD, dtype=torch.float32))

    @property
    def num_features(self) -> int:
        return self.encoder.num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``images``: uint8 (N, H, W, C), as decoded from image files; returns (N, num_features) float32."""
        x = images.permute(0, 3, 1, 2).float() / 255.0
        return self.encoder((x - self.mean) / self.std)
