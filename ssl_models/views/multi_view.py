"""SimCLR's multi-view policy: ``num_views`` random crops of every image, each with its own colour steps.

Images of their own sizes (photos in shards that keep each one's resolution) cannot be stacked:
there the data stage crops every view from the original first, at the boxes ``crop_specs()``
asks for (``pipelines/crops.py``), and the policy makes the rest of each view from those fixed-size
crops (``views_from_crops``: flip, colour, blur, solarize), per batch as before.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ssl_models import augment
from ssl_models.views._registry import register_views
from ssl_models.views.pixels import normalize, quantize, to_float

# The numpy path (Ray Data's CPU tasks) makes views a chunk of rows at a time, the chunk's float views about
# this many bytes: each step is a pass over memory, and a chunk that stays near the caches takes far less time
# a pass. 224 px SimCLR view pairs, one core: 3.3 ms a pair for a 55-row task at once, 2.2 in chunks of 16.
# Small images (Fashion-MNIST's 256-row tasks of 28 px views) fit in one chunk and keep their draws.
CHUNK_BYTES = 16 * 1024**2


@dataclass(frozen=True)
class CropSpec:
    """One view's RandomResizedCrop: output ``size`` px, area share in ``scale``, aspect ratio in ``ratio``."""

    size: int
    scale: tuple[float, float]
    ratio: tuple[float, float] = (3 / 4, 4 / 3)


def crop_keys(batch: dict) -> list[str]:
    """The ``crop_*`` columns of a batch (views cropped from originals, uint8 (N, H, W, C)), in view order."""
    return sorted((k for k in batch if k.startswith("crop_")), key=lambda k: int(k.split("_")[1]))


def _for_view(p: float | Sequence[float], index: int) -> float:
    """A probability for view ``index``: the number itself, or the view's entry (the last one for further views)."""
    if isinstance(p, int | float):
        return float(p)
    return float(p[min(index, len(p) - 1)])


def view_generator(device: torch.device, seed: int | None) -> torch.Generator:
    """A generator on ``device``, seeded with ``seed`` (a test's fixed draws) or at random (new draws every call)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed if seed is not None else int.from_bytes(os.urandom(8), "little") >> 1)
    return gen


@register_views("multi_view")
class MultiViewPolicy:
    """``num_views`` SimCLR-style views: random resized crop, flip, colour jitter,
    grayscale (RGB only) and Gaussian blur, then normalization.

    Defaults follow SimCLR's CIFAR-10 recipe (arXiv:2002.05709, appendix B.9), with
    blur added as in its ImageNet recipe at a strength scaled to small images.
    """

    def __init__(
        self,
        image_size: int = 32,
        num_views: int = 2,
        crop_scale: tuple[float, float] = (0.2, 1.0),
        flip_p: float = 0.5,
        jitter_strength: float = 0.4,
        jitter_p: float = 0.8,
        grayscale_p: float = 0.2,
        blur_p: float | Sequence[float] = 0.5,
        blur_sigma: tuple[float, float] = (0.1, 1.0),
        seed: int | None = None,
        solarize_p: float | Sequence[float] = 0.0,
    ):
        self.image_size = image_size
        self.num_views = num_views
        self.crop_scale = tuple(crop_scale)
        self.flip_p = flip_p
        self.jitter_strength = jitter_strength
        self.jitter_p = jitter_p
        self.grayscale_p = grayscale_p
        # A number applies to every view; a sequence gives each view its own (BYOL's asymmetric views).
        self.blur_p = blur_p
        self.solarize_p = solarize_p
        self.blur_sigma = tuple(blur_sigma)
        self.seed = seed

    def view(
        self,
        x: torch.Tensor,
        gen: torch.Generator,
        size: int | None = None,
        scale: tuple[float, float] | None = None,
        index: int = 0,
    ) -> torch.Tensor:
        """View ``index``, in [0, 1], of float images (N, C, H, W) in [0, 1]; ``size``/``scale`` default to the policy's.

        Every step keeps pixels in [0, 1] (convex combinations, clamped, or 1 - x), so a view rounds to uint8 exactly.
        """
        size, scale = size or self.image_size, scale or self.crop_scale
        x = augment.random_resized_crop_flip(x, size, gen, scale=scale, flip_p=self.flip_p)
        return self.colour(x, gen, index)

    def colour(self, x: torch.Tensor, gen: torch.Generator, index: int = 0) -> torch.Tensor:
        """Colour jitter, grayscale, blur and solarize of view ``index`` (float (N, C, H, W) in [0, 1]).

        ``x`` is a tensor the policy made (a crop, or the float copy of the uint8 input): blur and solarize write
        into it rather than into a copy.
        """
        s = self.jitter_strength
        x = augment.color_jitter(x, gen, brightness=s, contrast=s, saturation=s, p=self.jitter_p)
        x = augment.random_grayscale(x, gen, p=self.grayscale_p)
        x = augment.gaussian_blur(x, gen, p=_for_view(self.blur_p, index), sigma=self.blur_sigma, inplace=True)
        return augment.solarize(x, gen, p=_for_view(self.solarize_p, index), inplace=True)

    def crop_specs(self) -> list[CropSpec]:
        """The crop of each view, for a data stage that crops views from originals of any size."""
        return [CropSpec(self.image_size, self.crop_scale)] * self.num_views

    def unit_views(self, images: torch.Tensor, gen: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Views in [0, 1] of uint8 images (N, H, W, C) on any device, before normalization."""
        gen = gen or view_generator(images.device, self.seed)
        x = to_float(images)
        return {f"view_{i}": self.view(x, gen, index=i) for i in range(self.num_views)}

    def views_from_crops(self, crops: Sequence[torch.Tensor], gen: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Views in [0, 1] from each view's crop of the original (uint8 (N, H, W, C), as ``crop_specs`` asked):
        the flip and the colour steps; the crop was made when the original was decoded."""
        gen = gen or view_generator(crops[0].device, self.seed)
        views = {}
        for i, crop in enumerate(crops):
            flipped = augment.horizontal_flip(crop, gen, p=self.flip_p, width_dim=2)  # on uint8: a quarter of the bytes
            views[f"view_{i}"] = self.colour(to_float(flipped), gen, index=i)
        return views

    def _unit_views_of(self, batch: dict, gen: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Unit views of a batch holding ``image`` (one size) or ``crop_*`` columns (cropped from originals)."""
        keys = crop_keys(batch)
        if keys:
            return self.views_from_crops([_tensor(batch[k]) for k in keys], gen)
        return self.unit_views(_tensor(batch["image"]), gen)

    def _chunk_rows(self, channels: int) -> int:
        """Rows of a numpy batch made into views at once: float views of about CHUNK_BYTES."""
        return max(1, CHUNK_BYTES // (4 * channels * sum(spec.size**2 for spec in self.crop_specs())))

    def apply(self, images: torch.Tensor | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Normalized float views, ready for a method, of uint8 images (N, H, W, C) on any device, or of a batch
        with ``image`` or ``crop_*`` columns."""
        views = self._unit_views_of(images if isinstance(images, dict) else {"image": images})
        return {k: normalize(v) for k, v in views.items()}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Views of a numpy batch (``image`` or ``crop_*`` columns) as uint8 (N, C, H, W); ``model_views``
        makes them model input. Other columns pass through."""
        images = {k: v for k, v in batch.items() if k == "image" or k.startswith("crop_")}
        out = {k: v for k, v in batch.items() if k not in images}
        first = next(iter(images.values()))  # uint8 (N, H, W, C)
        rows, step = len(first), self._chunk_rows(channels=first.shape[-1])
        gen = view_generator(torch.device("cpu"), self.seed)  # one generator for every chunk: seeded, reproducible
        with torch.no_grad():
            chunks = [self._uint8_views(images, start, step, gen) for start in range(0, max(rows, 1), step)]
        out.update({k: np.concatenate([chunk[k] for chunk in chunks]) for k in chunks[0]})
        return out

    def _uint8_views(self, images: dict, start: int, rows: int, gen: torch.Generator) -> dict[str, np.ndarray]:
        """uint8 views of ``rows`` rows of the numpy ``images`` columns from row ``start``."""
        part = {name: column[start : start + rows] for name, column in images.items()}
        return {name: quantize(view).numpy() for name, view in self._unit_views_of(part, gen).items()}


def _tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
