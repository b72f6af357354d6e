"""torchvision's ResNet-18 and ResNet-50 without their classifier, with the CIFAR stem for small images."""

from __future__ import annotations

import torch
from torch import nn

from ssl_models.backbones._registry import register_backbone


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
