"""Views cropped from the original photo, and the probes' resize and centre crop, straight from encoded bytes.

Shards of photos keep each image at its own size (``rayssl shard``), so a view's RandomResizedCrop
is drawn in the original's coordinates, as torchvision's is on a PIL image (solo-learn, lightly):
a 0.2-area crop of a 500 x 375 photo is ~190 px of real pixels, not a patch of a stored thumbnail
upsampled. Only what the crops need is decoded: when every box of an image is at least twice its
output size, PIL's JPEG draft mode decodes at 1/2, 1/4 or 1/8 scale in the DCT domain (FFCV's trick).
The boxes are then cut and resized in one PIL call each. Everything after the crop (flip, colour,
blur) runs batched on these fixed-size crops, in the view policy. The probes' resize and centre crop
is ``pipelines.data.eval_crop``.
"""

from __future__ import annotations

import io
import math
import os

import numpy as np
from PIL import Image

from pipelines.data import as_hwc, damaged_row
from ssl_models.views import CropSpec

Box = tuple[float, float, float, float]  # left, top, right, bottom in the original's pixels


def random_box(width: int, height: int, spec: CropSpec, rng: np.random.Generator) -> Box:
    """A RandomResizedCrop box, as torchvision draws it: area share uniform in ``spec.scale``, aspect ratio
    log-uniform in ``spec.ratio``, position uniform; ten tries, then the centre crop of the clamped ratio."""
    area = width * height
    log_low, log_high = math.log(spec.ratio[0]), math.log(spec.ratio[1])
    for _ in range(10):
        target = area * rng.uniform(*spec.scale)
        aspect = math.exp(rng.uniform(log_low, log_high))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left, top = rng.integers(0, width - w + 1), rng.integers(0, height - h + 1)
            return float(left), float(top), float(left + w), float(top + h)
    ratio = width / height
    if ratio < spec.ratio[0]:
        w, h = width, round(width / spec.ratio[0])
    elif ratio > spec.ratio[1]:
        w, h = round(height * spec.ratio[1]), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return float(left), float(top), float(left + w), float(top + h)


def _open_for(data: bytes, mode: str, smallest_ratio: float) -> tuple[Image.Image, float, float]:
    """The image, decoded at the coarsest JPEG draft scale that keeps every box at least its output size
    (``smallest_ratio``: the least box side over output side), in ``mode``; and its x and y scales (about 1, 1/2,
    1/4 or 1/8: a draft's sides are rounded up)."""
    img = Image.open(io.BytesIO(data))
    full_width, full_height = img.size
    if img.format == "JPEG" and smallest_ratio >= 2:
        # PIL picks the coarsest scale whose image is at least this size: no box ends below its output size
        img.draft(mode, (math.ceil(img.width / smallest_ratio), math.ceil(img.height / smallest_ratio)))
    img = img.convert(mode)  # decodes (at the draft scale)
    return img, img.width / full_width, img.height / full_height


def crops_of(data: bytes, specs: list[CropSpec], mode: str, rng: np.random.Generator) -> list[np.ndarray]:
    """One crop of the encoded image ``data`` per spec, each uint8 (size, size, C), boxes drawn in its own pixels."""
    with Image.open(io.BytesIO(data)) as header:
        width, height = header.size
    boxes = [random_box(width, height, spec, rng) for spec in specs]
    smallest = min(min(b[2] - b[0], b[3] - b[1]) / spec.size for b, spec in zip(boxes, specs, strict=True))
    img, sx, sy = _open_for(data, mode, smallest)
    out = []
    for (left, top, right, bottom), spec in zip(boxes, specs, strict=True):
        box = (left * sx, top * sy, min(right * sx, img.width), min(bottom * sy, img.height))
        out.append(as_hwc(img.resize((spec.size, spec.size), Image.Resampling.BILINEAR, box=box)))
    return out


def crop_batch(batch: dict, specs: list[CropSpec], mode: str, seed: int | None = None) -> dict[str, np.ndarray]:
    """Ray Data batch of encoded originals (any sizes) -> ``crop_0`` ... uint8 (N, size, size, C), one per spec.

    Other columns pass through; a row that does not decode raises ``DataError`` naming its ``id``.
    """
    rng = np.random.default_rng(seed if seed is not None else int.from_bytes(os.urandom(8), "little"))
    per_view: list[list[np.ndarray]] = [[] for _ in specs]
    for i, data in enumerate(batch["image"]):
        try:
            crops = crops_of(data, specs, mode, rng)
        except Exception as err:
            raise damaged_row(batch, i, err) from None
        for view, crop in zip(per_view, crops, strict=True):
            view.append(crop)
    out = {k: v for k, v in batch.items() if k not in ("image", "height", "width")}
    out.update({f"crop_{i}": np.stack(view) for i, view in enumerate(per_view)})
    return out
