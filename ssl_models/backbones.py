"""Backbones: every one maps images (N, C, H, W) to pooled features (N, num_features).

Registered by name like the methods, so a config picks one with ``method.backbone``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ssl_models.registry import Registry

BACKBONES: Registry[Callable[..., nn.Module]] = Registry("backbone")
register_backbone = BACKBONES.register


def list_backbones() -> list[str]:
    return BACKBONES.names()


def create_backbone(name: str, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """Build backbone ``name`` for images of ``in_channels`` x ``image_size`` px."""
    return BACKBONES.get(name)(in_channels=in_channels, image_size=image_size)


def _conv_bn_relu(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """A four-layer ConvNet sized for CPUs: about 1,000 views/s forward+backward per
    core at 28 px with the default widths, and 256 pooled features for the probes."""

    def __init__(self, in_channels: int = 3, image_size: int = 32, widths: tuple[int, ...] = (16, 32, 64, 256)):
        super().__init__()
        del image_size  # global pooling makes it size-agnostic
        layers, cin = [], in_channels
        for i, width in enumerate(widths):
            layers.append(_conv_bn_relu(cin, width, 1 if i == 0 else 2))
            cin = width
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.num_features = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


@register_backbone("small_cnn")
def small_cnn(in_channels: int = 3, image_size: int = 32) -> nn.Module:
    return SmallCNN(in_channels, image_size)


@register_backbone("tiny_cnn")
def tiny_cnn(in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """A very small ConvNet for unit tests; registered like the real ones."""
    return SmallCNN(in_channels, image_size, widths=(4, 8, 8, 16))


class TorchvisionResNet(nn.Module):
    """A torchvision ResNet without its classifier.

    For images of 64 px and below the ImageNet stem (7x7 stride-2 conv + max-pool)
    throws away most of the image, so it is replaced by the CIFAR stem used by
    SimCLR's CIFAR experiments: a 3x3 stride-1 conv and no pooling.
    """

    def __init__(self, arch: str, in_channels: int, image_size: int):
        super().__init__()
        import torchvision  # here, not at the top: it takes seconds, and most processes never build a ResNet

        net = getattr(torchvision.models, arch)(weights=None)
        if image_size <= 64:
            net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        elif in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.num_features = net.fc.in_features
        net.fc = nn.Identity()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@register_backbone("resnet18")
def resnet18(in_channels: int = 3, image_size: int = 32) -> nn.Module:
    return TorchvisionResNet("resnet18", in_channels, image_size)


@register_backbone("resnet50")
def resnet50(in_channels: int = 3, image_size: int = 32) -> nn.Module:
    return TorchvisionResNet("resnet50", in_channels, image_size)


from ssl_models import vit as _vit  # noqa: E402,F401  (registers vit_tiny)
