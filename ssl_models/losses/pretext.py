"""Losses of the pretext tasks that are more than plain cross-entropy or MSE.

Rotation, jigsaw and relative position are classification tasks trained with
``torch.nn.functional.cross_entropy``; colorization regresses chroma with plain MSE.
"""

from __future__ import annotations

import torch

__all__ = ["masked_mse"]


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the masked pixels only: the context encoder's reconstruction loss.

    Pathak et al., "Context Encoders: Feature Learning by Inpainting", 2016,
    https://arxiv.org/abs/1604.07379, equation 1: ``L_rec = || M * (x - F((1 - M) * x)) ||^2``,
    here averaged over the masked values so that its scale does not depend on the mask size.

    Args:
        pred, target: (N, C, H, W) reconstruction and original image.
        mask: (N, 1, H, W) or (N, C, H, W) boolean, True where the image was hidden.
            Pixels outside the mask do not change the loss or get a gradient. An empty
            mask gives 0.
    """
    mask = mask.expand_as(pred)
    count = mask.sum().clamp(min=1)  # no .item(): no host sync on a GPU
    return torch.where(mask, pred - target, 0.0).pow(2).sum() / count
