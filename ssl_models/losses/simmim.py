"""SimMIM's reconstruction loss: L1 between raw pixels and their prediction, on the masked patches only.

Xie et al., "SimMIM: A Simple Framework for Masked Image Modeling", 2021,
https://arxiv.org/abs/2111.09886 (section 3.4, "Prediction target" and equation 1).
Checked against microsoft/SimMIM, models/simmim.py, ``SimMIM.forward``.
"""

from __future__ import annotations

import torch

__all__ = ["simmim_loss"]


def simmim_loss(reconstruction: torch.Tensor, images: torch.Tensor, mask: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Sum of ``|x - x_rec|`` over the masked pixels, divided by the number of masked pixels and the channels.

    As the reference does: the patch mask is blown up to pixels (``repeat_interleave`` by the patch
    size), the per-pixel L1 is summed where it is 1 and divided by ``mask.sum() + eps`` (the masked
    pixel positions, one per position whatever the channels) and by ``C``; so the loss is the mean
    absolute error over masked pixel values. Unmasked pixels do not count. Every worker masks the
    same number of patches (a fixed ratio), so DDP's gradient average equals the loss on the
    concatenated batch: nothing is gathered.

    Args:
        reconstruction: (N, C, H, W) predicted pixels (the decoder's pixel-shuffled output).
        images: (N, C, H, W) the input pixels, normalized as the encoder saw them (the targets).
        mask: (N, H / p, W / p), 1 for a masked patch and 0 for a visible one, p = H / mask columns.
        eps: the reference's 1e-5 in the denominator.
    """
    if reconstruction.shape != images.shape:
        raise ValueError(f"reconstruction {tuple(reconstruction.shape)} and images {tuple(images.shape)} differ in shape")
    n, c, h, w = images.shape
    if mask.shape[0] != n or h % mask.shape[1] or w % mask.shape[2] or h // mask.shape[1] != w // mask.shape[2]:
        raise ValueError(f"mask {tuple(mask.shape)} does not tile images of {h} x {w} px with square patches")
    patch = h // mask.shape[1]
    dtype = torch.promote_types(reconstruction.dtype, torch.float32)
    pixels = mask.to(dtype).repeat_interleave(patch, 1).repeat_interleave(patch, 2).unsqueeze(1)  # (N, 1, H, W)
    l1 = (images.to(dtype) - reconstruction.to(dtype)).abs()
    return (l1 * pixels).sum() / (pixels.sum() + eps) / c
