"""Backbones: every one maps images (N, C, H, W) to pooled features (N, num_features).

Registered by name like the methods, so a config picks one with ``method.backbone``.
A new backbone is a module here whose builders sit under ``@register_backbone(name)``
(from ``ssl_models.backbones._registry``), imported below.
"""

from ssl_models.backbones import cnn, resnet, vit  # noqa: F401  (imported to register)
from ssl_models.backbones._registry import BACKBONES, create_backbone, list_backbones, register_backbone
from ssl_models.backbones.cnn import SmallCNN
from ssl_models.backbones.resnet import TorchvisionResNet
from ssl_models.backbones.vit import VisionTransformer

__all__ = [
    "BACKBONES",
    "SmallCNN",
    "TorchvisionResNet",
    "VisionTransformer",
    "create_backbone",
    "list_backbones",
    "register_backbone",
]
