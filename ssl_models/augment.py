"""Batched augmentations with their own random parameters for every sample.

Each function takes float images (N, C, H, W) in [0, 1] and a ``torch.Generator``
and runs as a handful of tensor ops on the whole batch, so the same code is fast
in a Ray Data CPU task and on a GPU (``data.augment_on: device``). Per-image
Python loops (torchvision's usual per-sample transforms) were the bottleneck.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _uniform(n: int, low: float, high: float, gen: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=device) * (high - low) + low


def random_resized_crop_flip(
    images: torch.Tensor,
    size: int,
    gen: torch.Generator,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip_p: float = 0.5,
) -> torch.Tensor:
    """Random resized crop to ``size`` x ``size`` plus horizontal flip, one affine warp per sample.

    Crop area is drawn from ``scale`` (fraction of the image) and aspect ratio
    log-uniformly from ``ratio``, as in torchvision's RandomResizedCrop.
    """
    n, device = images.shape[0], images.device
    area = _uniform(n, scale[0], scale[1], gen, device)
    log_ratio = _uniform(n, math.log(ratio[0]), math.log(ratio[1]), gen, device)
    aspect = torch.exp(log_ratio)
    width = torch.sqrt(area * aspect).clamp(max=1.0)  # fraction of the image width
    height = torch.sqrt(area / aspect).clamp(max=1.0)
    # centre in normalized [-1, 1] coordinates so that the crop stays inside the image
    cx = (torch.rand(n, generator=gen, device=device) * 2 - 1) * (1 - width)
    cy = (torch.rand(n, generator=gen, device=device) * 2 - 1) * (1 - height)
    flip = torch.where(torch.rand(n, generator=gen, device=device) < flip_p, -1.0, 1.0).to(device)
    theta = torch.zeros(n, 2, 3, device=device, dtype=images.dtype)
    theta[:, 0, 0] = width * flip
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = height
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta, [n, images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def horizontal_flip(images: torch.Tensor, gen: torch.Generator, p: float = 0.5, width_dim: int = -1) -> torch.Tensor:
    """Mirror each image left-right with probability ``p``; ``width_dim``: -1 for (N, C, H, W), 2 for (N, H, W, C)."""
    chosen = _chosen(images.shape[0], p, gen, images.device)
    if len(chosen) == 0:
        return images
    return images.index_copy(0, chosen, images.index_select(0, chosen).flip(width_dim))


def _applies(n: int, p: float, gen: torch.Generator, device) -> torch.Tensor:
    """Which samples an augmentation applied with probability ``p`` applies to: a bool mask, one draw per sample."""
    return torch.rand(n, generator=gen, device=device) < p


def _chosen(n: int, p: float, gen: torch.Generator, device) -> torch.Tensor:
    """The indices of ``_applies``."""
    return torch.nonzero(_applies(n, p, gen, device)).flatten()


def color_jitter(
    images: torch.Tensor,
    gen: torch.Generator,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.4,
    p: float = 0.8,
) -> torch.Tensor:
    """Brightness, contrast and (for RGB) saturation jitter, applied with probability ``p``.

    Brightness b, then contrast c around the image mean m, then saturation s around each pixel's gray g:
    ``y = x b c + b m (1 - c)``, then ``y s + g(y) (1 - s)``, clamped to [0, 1]. All three are linear in the
    pixel, so each image gets one 3 x 3 colour matrix and offset, ``b c (s I + (1 - s) 1 w^T) x + b m (1 - c)``
    (w: the luma weights, summing to 1), applied to the batch in one batched matrix product; an image the
    jitter skips gets the identity, which leaves it exactly as it was.
    """
    n, channels, device = images.shape[0], images.shape[1], images.device
    applies = _applies(n, p, gen, device)
    b = _uniform(n, 1 - brightness, 1 + brightness, gen, device)
    c = _uniform(n, 1 - contrast, 1 + contrast, gen, device)
    s = _uniform(n, 1 - saturation, 1 + saturation, gen, device) if channels == 3 else None
    if not applies.any():
        return images
    one = torch.ones((), device=device, dtype=images.dtype)
    b, c = torch.where(applies, b, one), torch.where(applies, c, one)
    pixels = images.reshape(n, channels, -1)
    offset = (b * pixels.mean(dim=(1, 2)) * (1 - c)).view(n, 1, 1)
    if s is None:
        matrix = (b * c).view(n, 1, 1)
    else:
        s = torch.where(applies, s, one).view(n, 1, 1)
        eye = torch.eye(3, device=device, dtype=images.dtype)
        matrix = (b * c).view(n, 1, 1) * (s * eye + (1 - s) * _to_gray_matrix(device, images.dtype))
    return torch.baddbmm(offset, matrix, pixels).view_as(images).clamp_(0, 1)


LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601, summing to 1; also the colorization task's


def _to_gray_matrix(device, dtype) -> torch.Tensor:
    """The 3 x 3 matrix that sets each of R, G and B to the pixel's luma."""
    return torch.tensor(LUMA_WEIGHTS, device=device, dtype=dtype).expand(3, 3)


def random_grayscale(images: torch.Tensor, gen: torch.Generator, p: float = 0.2) -> torch.Tensor:
    """Turn RGB images gray with probability ``p``; 1-channel images pass through.

    One batched matrix product: the luma matrix for the images it applies to, the identity for the others.
    """
    if images.shape[1] != 3 or p <= 0:
        return images
    n, device = images.shape[0], images.device
    applies = _applies(n, p, gen, device)
    if not applies.any():
        return images
    eye = torch.eye(3, device=device, dtype=images.dtype)
    matrix = torch.where(applies.view(n, 1, 1), _to_gray_matrix(device, images.dtype), eye)
    return torch.bmm(matrix, images.reshape(n, 3, -1)).view_as(images)


def gaussian_blur(
    images: torch.Tensor,
    gen: torch.Generator,
    p: float = 0.5,
    sigma: tuple[float, float] = (0.1, 1.0),
    inplace: bool = False,
) -> torch.Tensor:
    """Gaussian blur with probability ``p`` and sigma, in pixels of the view, uniform in ``sigma``.

    SimCLR draws sigma in [0.1, 2.0] at 224 px; for 28-32 px images a maximum of
    about 1 px blurs as much relative to the image. Each chosen sample gets its own
    separable kernel (radius 2 sigma max), applied to them all as one grouped convolution.
    ``inplace`` writes the blurred samples into ``images`` rather than a copy (a view policy's own tensor:
    0.31 against 0.44 ms a 224 px view, one core).
    """
    n, c, h, w = images.shape
    if p <= 0:
        return images
    device, dtype = images.device, images.dtype
    sig = _uniform(n, sigma[0], sigma[1], gen, device).to(dtype)
    chosen = _chosen(n, p, gen, device)
    if len(chosen) == 0:
        return images
    k = len(chosen)
    radius = max(1, math.ceil(2 * sigma[1]))
    xs = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    kernel = torch.exp(-(xs.view(1, -1) ** 2) / (2 * sig[chosen].view(-1, 1) ** 2))
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (k*c, taps)
    x = images.index_select(0, chosen).reshape(1, k * c, h, w)
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel.view(k * c, 1, 1, -1), groups=k * c)
    x = F.conv2d(x, kernel.view(k * c, 1, -1, 1), groups=k * c)
    return _put(images, chosen, x.view(k, c, h, w), inplace)


def solarize(
    images: torch.Tensor, gen: torch.Generator, p: float = 0.2, threshold: float = 0.5, inplace: bool = False
) -> torch.Tensor:
    """Invert the pixels at or above ``threshold`` (x -> 1 - x), with probability ``p`` per sample (BYOL's view 2);
    ``inplace`` as in ``gaussian_blur``."""
    if p <= 0:
        return images
    chosen = _chosen(images.shape[0], p, gen, images.device)
    if len(chosen) == 0:
        return images
    x = images.index_select(0, chosen)
    return _put(images, chosen, torch.where(x >= threshold, 1 - x, x), inplace)


def _put(images: torch.Tensor, chosen: torch.Tensor, changed: torch.Tensor, inplace: bool) -> torch.Tensor:
    """``images`` with the samples at ``chosen`` replaced by ``changed``: written into ``images``, or into a copy."""
    return images.index_copy_(0, chosen, changed) if inplace else images.index_copy(0, chosen, changed)
