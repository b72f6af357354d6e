"""Small ConvNets sized for CPUs: ``small_cnn`` for the main job, ``tiny_cnn`` for unit tests."""

from __future__ import annotations

import torch
from torch import nn

from ssl_models.backbones._registry import register_backbone


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
