"""DINO's multi-crop views: two global crops and several small local crops of every image.

Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", 2021,
https://arxiv.org/abs/2104.14294 (section 3.1): global crops of 224 px covering
40-100% of the image, local crops of 96 px covering 5-40%.
"""

from __future__ import annotations

import torch

from ssl_models.views._registry import register_views
from ssl_models.views.multi_view import CropSpec, MultiViewPolicy, view_generator
from ssl_models.views.pixels import to_float


def local_crop_size(image_size: int) -> int:
    """DINO's local/global size ratio, 96 / 224 = 3 / 7, and at least 8 px."""
    return max(8, round(image_size * 3 / 7))


@register_views("multi_crop")
class MultiCropPolicy(MultiViewPolicy):
    """``view_0``, ``view_1``: global crops (``image_size``, area in ``global_scale``);
    ``view_2`` ... ``view_{num_views - 1}``: local crops (``local_size``, area in ``local_scale``).

    Takes MultiViewPolicy's arguments so the pipeline can build it the same way; the
    number of local crops is ``num_views - 2`` (or ``local_crops``, which must agree).
    ``crop_scale`` is accepted but not used: the global crops use DINO's
    ``global_scale`` (0.4, 1.0) instead of SimCLR's (0.2, 1.0). Every crop gets the
    same colour jitter, grayscale and blur as MultiViewPolicy (DINO varies blur and
    solarization per crop; not done here).
    """

    def __init__(
        self,
        image_size: int = 32,
        num_views: int | None = None,
        crop_scale: tuple[float, float] = (0.2, 1.0),
        flip_p: float = 0.5,
        jitter_strength: float = 0.4,
        jitter_p: float = 0.8,
        grayscale_p: float = 0.2,
        blur_p: float = 0.5,
        blur_sigma: tuple[float, float] = (0.1, 1.0),
        seed: int | None = None,
        local_crops: int | None = None,
        local_size: int | None = None,
        global_scale: tuple[float, float] = (0.4, 1.0),
        local_scale: tuple[float, float] = (0.05, 0.4),
    ):
        if local_crops is None:
            local_crops = 4 if num_views is None else num_views - 2
        if num_views is not None and num_views != 2 + local_crops:
            raise ValueError(f"multi_crop: num_views ({num_views}) must be 2 + local_crops ({local_crops})")
        if local_crops < 0:
            raise ValueError(f"multi_crop needs num_views >= 2 (two global crops), got {2 + local_crops}")
        for name, (low, high) in (("global_scale", global_scale), ("local_scale", local_scale)):
            if not 0 < low <= high <= 1:
                raise ValueError(f"multi_crop: {name} needs 0 < min <= max <= 1, got {(low, high)}")
        super().__init__(
            image_size, 2 + local_crops, crop_scale, flip_p, jitter_strength, jitter_p, grayscale_p, blur_p, blur_sigma, seed
        )
        self.local_crops = local_crops
        self.local_size = local_size or local_crop_size(image_size)
        self.global_scale = tuple(global_scale)
        self.local_scale = tuple(local_scale)

    def crop_specs(self) -> list[CropSpec]:
        """Two global crops, then the local ones."""
        local = [CropSpec(self.local_size, self.local_scale)] * self.local_crops
        return [CropSpec(self.image_size, self.global_scale)] * 2 + local

    def unit_views(self, images: torch.Tensor, gen: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Views in [0, 1] of uint8 images (N, H, W, C); ``apply`` and ``__call__`` are inherited."""
        gen = gen or view_generator(images.device, self.seed)
        x = to_float(images)
        views = {f"view_{i}": self.view(x, gen, self.image_size, self.global_scale) for i in range(2)}
        for i in range(self.local_crops):
            views[f"view_{2 + i}"] = self.view(x, gen, self.local_size, self.local_scale)
        return views
