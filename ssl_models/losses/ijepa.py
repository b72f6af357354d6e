"""I-JEPA's loss: the predictor's output against the target encoder's layer-normed features of the target blocks.

Assran et al., "Self-Supervised Learning from Images with a Joint-Embedding Predictive Architecture",
2023, https://arxiv.org/abs/2301.08243 (section 3, "Loss"). The paper writes the average L2 distance;
the released code (facebookresearch/ijepa, src/train.py, ``forward_target`` and ``loss_fn``) trains
with ``F.smooth_l1_loss`` on ``F.layer_norm``-ed targets, which is what this follows and was checked
against (with ``src/masks/utils.py`` ``apply_masks`` gathering the target blocks).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["ijepa_loss", "ijepa_targets"]


def ijepa_targets(features: torch.Tensor) -> torch.Tensor:
    """Target-encoder features (..., D) normalized over the feature dimension without affine parameters,
    as the reference's ``F.layer_norm(h, (h.size(-1),))``; detached (the target encoder learns by EMA only).

    LayerNorm is per token, so normalizing the gathered target tokens equals gathering the normalized output.
    """
    features = features.detach().to(torch.promote_types(features.dtype, torch.float32))  # at least float32 under bf16
    return F.layer_norm(features, (features.shape[-1],))


def ijepa_loss(predictions: torch.Tensor, target_features: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """Smooth L1 (Huber, ``beta`` = 1 as ``F.smooth_l1_loss``'s default) between the predictions and the
    layer-normed target features, averaged over every target block, token and feature.

    Each term is its own sample's, so the mean over workers (DDP's gradient average, with the same
    block sizes on every worker) equals the loss of the concatenated batch; nothing is gathered.
    The reference all-reduces the loss value for logging only.

    Args:
        predictions: (N, M, K, D) the predictor's output for the K tokens of each of the M target blocks.
        target_features: (N, M, K, D) the target encoder's output at the same positions (before the
            layer norm, which is applied here: ``ijepa_targets``).
        beta: the smooth L1's switch from quadratic to linear; the reference uses the default 1.0.
    """
    if predictions.shape != target_features.shape:
        raise ValueError(f"predictions {tuple(predictions.shape)} and targets {tuple(target_features.shape)} differ in shape")
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    targets = ijepa_targets(target_features)
    return F.smooth_l1_loss(predictions.to(targets.dtype), targets, beta=beta)
