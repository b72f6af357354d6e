"""View policies: the per-sample augmented views a method trains on.

A policy is a callable taking a Ray Data numpy batch ``{"image": uint8 (N, H, W, C),
...}`` and returning the batch dict (``view_0``, ``view_1``, ...; other columns such
as ``label`` pass through). ``policy.apply(images)`` does the same on a uint8 tensor
already on the training device (``data.augment_on: device``). Either way every
sample gets its own random parameters, drawn anew on every call (every epoch).

Every policy registers here: a new one is a module in this package with its class under
``@register_views(name)`` (from ``ssl_models.views._registry``), imported below. Methods
name their policy (``view_policy``) and never import it.
"""

from ssl_models.views import multi_crop, multi_view  # noqa: F401  (imported to register)
from ssl_models.views._registry import VIEWS, create_views, list_views, register_views
from ssl_models.views.multi_crop import MultiCropPolicy, local_crop_size
from ssl_models.views.multi_view import CropSpec, MultiViewPolicy, crop_keys
from ssl_models.views.pixels import (
    PIXEL_MEAN,
    PIXEL_STD,
    dequantize,
    model_input,
    model_views,
    normalize,
    quantize,
    to_float,
)

__all__ = [
    "PIXEL_MEAN",
    "PIXEL_STD",
    "VIEWS",
    "CropSpec",
    "MultiCropPolicy",
    "MultiViewPolicy",
    "create_views",
    "crop_keys",
    "dequantize",
    "list_views",
    "local_crop_size",
    "model_input",
    "model_views",
    "normalize",
    "quantize",
    "register_views",
    "to_float",
]
