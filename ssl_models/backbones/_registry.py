"""The registry of backbones, in a module of its own so that a backbone module registering itself
never imports the package that imports it (timm's ``_registry.py``).

Every backbone maps images (N, C, H, W) to pooled features (N, num_features) and is
registered by name like the methods, so a config picks one with ``method.backbone``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ssl_models.registry import Registry

BACKBONES: Registry[Callable[..., nn.Module]] = Registry("backbone")
register_backbone = BACKBONES.register


def list_backbones() -> list[str]:
    return BACKBONES.names()


def create_backbone(name: str, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """Build backbone ``name`` for images of ``in_channels`` x ``image_size`` px."""
    return BACKBONES.get(name)(in_channels=in_channels, image_size=image_size)
