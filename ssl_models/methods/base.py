"""What every registered method shares, and the contract of a method for a user of ``ssl_models`` alone.

Two calls, one for each thing a training loop needs::

    method = ssl_models.create_method("simclr", in_channels=1, image_size=28)
    views = method.make_views(jitter_strength=0.8)   # this method's views, with its paper's fixed settings
    out = method(views.apply(uint8_images_nhwc))     # or method(views({"image": numpy_uint8_nhwc}))
    out["loss"].backward()                           # out["proxy_acc"]: the method's own accuracy

Views come as uint8 (the numpy path, as Ray Data ships them) or as normalized floats (``apply``);
``method(batch)`` and ``method.training_step(batch)`` take either. Under DDP call ``method(batch)``:
gradients are synchronized only for calls through ``forward``.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from ssl_models.backbones import create_backbone
from ssl_models.recipes import Recipe
from ssl_models.views import create_views, model_views


class SSLMethod(nn.Module):
    """Base class: ``encoder`` + heads + loss, trained by ``training_step``.

    Subclasses set ``recipe`` (their paper's training recipe), ``view_policy`` (the name passed to
    ``create_views``) and implement ``training_step(batch) -> {"loss": ..., "proxy_acc": ...}`` on normalized float
    views; the base class makes every ``training_step`` accept uint8 views too.
    """

    method_name: str = ""
    # The paper's training recipe (``rayssl recipe NAME``): every registered method sets its own.
    recipe: Recipe | None = None
    view_policy: str = "multi_view"
    num_views: int = 2
    # Contrastive losses need at least two images per worker batch.
    min_batch_per_worker: int = 2
    # Methods that only make sense on colour images (colorization) set this.
    requires_rgb: bool = False
    # View settings the method's paper fixes, over the config's augmentation (BYOL's asymmetric views).
    view_kwargs: dict = {}
    # The encoder built when no backbone is named.
    default_backbone: str = "small_cnn"
    # The smallest backbone that fits the method, used by the unit tests.
    tiny_backbone: str = "tiny_cnn"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        step = cls.__dict__.get("training_step")
        if step is not None:  # uint8 views (the numpy path's) become normalized floats first; floats pass through

            @functools.wraps(step)
            def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
                return step(self, model_views(batch))

            cls.training_step = training_step

    def __init__(self, backbone: str | None = None, in_channels: int = 3, image_size: int = 32):
        """The encoder's settings, which every method takes as keywords (``**encoder_args``) and passes here:
        ``backbone`` (default: the method's ``default_backbone``), the images' ``in_channels`` and ``image_size``."""
        super().__init__()
        self.backbone_name = backbone or self.default_backbone
        self.in_channels = in_channels
        self.image_size = image_size
        self.encoder = create_backbone(self.backbone_name, in_channels=in_channels, image_size=image_size)

    def make_views(self, image_size: int | None = None, **augment):
        """This method's view policy (``view_policy``, ``num_views``) for images cropped to ``image_size``
        (default: the method's), with ``augment`` (crop_scale, jitter_strength, blur_p, ..., seed) under
        the per-view settings the method's paper fixes (``view_kwargs``)."""
        settings = {**augment, **self.view_kwargs}
        return create_views(self.view_policy, image_size=image_size or self.image_size, num_views=self.num_views, **settings)

    def crops_of(self, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """``view_0`` ... ``view_{num_views - 1}`` of a multi-crop batch (global crops first); a missing one is
        named with what this method expects."""
        missing = [f"view_{i}" for i in range(self.num_views) if f"view_{i}" not in batch]
        if missing:
            local = self.num_views - 2
            raise ValueError(f"{self.method_name} expects {self.num_views} views (2 global + {local} local); missing {missing}")
        return [batch[f"view_{i}"] for i in range(self.num_views)]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled encoder features (N, num_features), the ones the probes use."""
        return self.encoder(x)

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # DDP synchronizes gradients only for calls through forward(), so the
        # training loop calls model(batch) and forward is the training step.
        # Views made by Ray Data arrive as uint8; training_step makes them normalized floats, on the device.
        return self.training_step(batch)

    def on_step_end(self, step: int, total_steps: int) -> None:
        """Momentum / EMA updates after the optimizer step; nothing for most methods."""
