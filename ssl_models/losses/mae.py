"""MAE's reconstruction loss: mean squared error on the masked patches only.

He et al., "Masked Autoencoders Are Scalable Vision Learners", 2021,
https://arxiv.org/abs/2111.06377 (section 3, "Reconstruction target").
"""

from __future__ import annotations

import torch

__all__ = ["mae_loss", "mae_pixel_targets"]


def mae_pixel_targets(patches: torch.Tensor, norm_pix: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """Reconstruction targets from patchified pixels (N, L, P).

    With ``norm_pix`` (the paper's default, which it finds improves representations)
    every patch is normalized by its own mean and (unbiased) variance, as in the
    paper's code: ``(p - mean) / sqrt(var + eps)``.
    """
    if not norm_pix:
        return patches
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return (patches - mean) / (var + eps).sqrt()


def mae_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool = True) -> torch.Tensor:
    """Mean over masked patches of the per-patch mean squared error.

    ``loss = sum_i m_i * mean_p (pred_ip - t_ip)^2 / sum_i m_i`` where ``t`` is
    ``mae_pixel_targets(target, norm_pix)``; visible patches (m_i = 0) do not count.
    Every sample contributes its own patches only, so with the same number of
    masked patches on every worker, DDP's gradient average already equals the
    loss on the concatenated batch: nothing is gathered.

    Args:
        pred: (N, L, P) decoder outputs for every patch.
        target: (N, L, P) patchified input pixels (``ssl_models.backbones.vit.patchify``).
        mask: (N, L), 1 for masked (removed) patches and 0 for visible ones.
        norm_pix: normalize each target patch by its mean and variance.
    """
    per_patch = (pred - mae_pixel_targets(target, norm_pix)).pow(2).mean(dim=-1)
    mask = mask.to(per_patch.dtype)
    return (per_patch * mask).sum() / mask.sum().clamp(min=1)
