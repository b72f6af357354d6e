"""The one adapter from a rayssl config to ``ssl_models``: the method, its views, its optimizer.

Training, the probes, the preview, Tune and the benchmarks all build through here, so a config
field reaches PyTorch in one place. Each function builds from the config as it is given: a run's
config was resolved where it entered (``config.resolve``: the recipe's optimizer and head sizes).
"""

from __future__ import annotations

import torch
from torch import nn

import ssl_models
from pipelines.config import Config
from pipelines.data import resolve_uri
from ssl_models.optim import build_optimizer

# The view size for photos that keep their own sizes (no one size in the manifest), unless data.crop_size
# says: ImageNet's 224 px, the size SimCLR, BYOL, MoCo and DINO train and evaluate at.
DEFAULT_PHOTO_CROP = 224


def view_size(cfg: Config, manifest: dict) -> int:
    """The side in px of the views and of the probes' images: ``data.crop_size``, else the shards' one image
    size, else ``DEFAULT_PHOTO_CROP``."""
    if cfg.data.crop_size:
        return cfg.data.crop_size
    size = manifest.get("image_size")
    return size[0] if size else DEFAULT_PHOTO_CROP


def shared_method_fields(cfg: Config) -> dict:
    """The shared ``method`` fields the config sets (None means: the method's own default)."""
    m = cfg.method
    shared = {"temperature": m.temperature, "projection_dim": m.projection_dim, "hidden_dim": m.hidden_dim}
    return {k: v for k, v in shared.items() if v is not None}


def ignored_method_fields(cfg: Config) -> list[str]:
    """Shared fields set in the config that this method has no use for (e.g. a temperature for BYOL)."""
    return [f"method.{k}" for k in shared_method_fields(cfg) if k not in ssl_models.method_arguments(cfg.method.name)]


def build_method(cfg: Config, manifest: dict) -> nn.Module:
    """The configured method for images of the shards' channels and size.

    The shared ``method`` fields (temperature, projection sizes) go to the methods
    whose constructor takes them; ``method.kwargs`` go as given, so a misspelt one fails.
    """
    m = cfg.method
    kwargs = {k: v for k, v in shared_method_fields(cfg).items() if k in ssl_models.method_arguments(m.name)}
    kwargs.update(m.kwargs)
    return ssl_models.create_method(
        m.name, backbone=m.backbone, in_channels=manifest["channels"], image_size=view_size(cfg, manifest), **kwargs
    )


def view_policy(cfg: Config, manifest: dict, method=None):
    """The views ``method`` trains on, from ``data.augment`` and what the method's paper fixes per view."""
    # The built method, not its class: an argument such as DINO's num_local_crops sets its views.
    # A worker passes the method it already built rather than building a second one.
    method = method if method is not None else build_method(cfg, manifest)
    # what the method's paper fixes per view wins over data.augment (validate() says so)
    size = view_size(cfg, manifest)
    augment = cfg.data.augment.model_dump()
    augment["blur_sigma"] = augment["blur_sigma"] or blur_sigma_for(size)
    return method.make_views(size, **augment)


def blur_sigma_for(size: int) -> tuple[float, float]:
    """The default blur sigma range for views of ``size`` px: SimCLR's (0.1, 2.0) at 224 px (arXiv:2002.05709,
    appendix A: a kernel 10% of the image side), scaled with the size, and at least (0.1, 1.0), which blurs a
    28-32 px view about as much relative to its size."""
    return (0.1, max(1.0, 2.0 * size / 224))


def build_method_optimizer(cfg: Config, method) -> torch.optim.Optimizer:
    """The optimizer of a resolved config (``config.resolve``: the recipe's optimizer) for ``method``'s parameters."""
    o = cfg.optim
    return build_optimizer(o.name, method, o.lr, o.weight_decay, o.momentum, o.beta2, o.bias_lr_scale)


def method_from_checkpoint(state: dict, shards: str | None = None) -> tuple[nn.Module, Config]:
    """The pretrained method of a loaded checkpoint; ``shards`` replaces both the pretraining and the probe set."""
    cfg = Config.model_validate(state["config"])
    if shards is not None:
        cfg.data.shards = cfg.probe.shards = resolve_uri(shards)
    method = build_method(cfg, state["manifest"])
    method.load_state_dict(state["model"])
    return method, cfg
