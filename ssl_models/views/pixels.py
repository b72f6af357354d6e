"""Pixels between the data stage and the methods: uint8 images <-> normalized floats.

The numpy path stores each view as uint8 (N, C, H, W), the augmented image rounded to
8 bits as an image file would hold it: a quarter of float32's bytes through Ray's
object store and to the device. ``model_views`` turns them into the normalized floats
the methods train on; a policy's ``apply`` returns those directly.
"""

from __future__ import annotations

import numpy as np
import torch

# Pixel normalization used everywhere (training views and probes): [0, 1] -> [-1, 1].
PIXEL_MEAN = 0.5
PIXEL_STD = 0.5


def dequantize(x: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float in [0, 1], same layout; the inverse of ``quantize``."""
    return x.float().div_(255.0)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float (N, C, H, W) in [0, 1], contiguous (the batched colour steps take it so)."""
    return dequantize(images.permute(0, 3, 1, 2).contiguous())


def normalize(x: torch.Tensor) -> torch.Tensor:
    return (x - PIXEL_MEAN) / PIXEL_STD


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] -> uint8, rounded to the nearest of 256 levels."""
    return x.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)


def model_views(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch the methods train on: uint8 ``view_*`` images (the numpy path's) -> normalized float.

    Float views (from ``apply``) and other columns pass through unchanged, so every method's
    ``training_step`` calls it, whichever path made the views. Runs on the tensors' device; numpy
    views (the policy's own output, without Ray Data's conversion) become tensors first.
    """
    out = {}
    for k, v in batch.items():
        if k.startswith("view_"):
            v = torch.from_numpy(v) if isinstance(v, np.ndarray) else v  # the numpy path, used without Ray
            v = normalize(dequantize(v)) if v.dtype == torch.uint8 else v
        out[k] = v
    return out


def model_input(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Un-augmented model input for probes: uint8 (N, H, W, C) -> normalized float (N, C, H, W)."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    return normalize(to_float(images))
