"""A small pure-PyTorch Vision Transformer, registered as the ``vit_tiny`` and ``vit_micro`` backbones.

ViT-Tiny follows DeiT (Touvron et al., 2020, https://arxiv.org/abs/2012.12877):
192-d tokens, 12 pre-norm blocks, 3 heads, MLP ratio 4, a cls token, learned
position embeddings and a final LayerNorm. ``forward`` returns the cls token
after the final LayerNorm (N, num_features), the feature DeiT classifies and
MAE linear-probes; ``patch_tokens`` returns the other tokens for dense use.

Patch size is picked from the image size so that small images still get a useful
token grid: 4 px up to 32 px (28 px Fashion-MNIST -> 7x7 tokens, 32 px CIFAR ->
8x8), 8 px up to 96 px, 16 px (the ViT/DeiT size) above. The patch size must
divide the image size; otherwise the constructor raises a ``ValueError``.
"""

from __future__ import annotations

import torch
from torch import nn

from ssl_models.backbones._registry import register_backbone


def default_patch_size(image_size: int) -> int:
    """4 px for images up to 32 px, 8 px up to 96 px, 16 px (ViT's ImageNet size) above."""
    if image_size <= 32:
        return 4
    return 8 if image_size <= 96 else 16


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Images (N, C, H, W) -> patches (N, L, patch_size**2 * C) in the token order of ``VisionTransformer``.

    Patches are taken row by row (L = (H/p) * (W/p)); each patch is flattened as
    (row, column, channel), MAE's layout.
    """
    n, c, h, w = images.shape
    gh, gw = h // patch_size, w // patch_size
    x = images.reshape(n, c, gh, patch_size, gw, patch_size)
    x = x.permute(0, 2, 4, 3, 5, 1)  # (N, gh, gw, p, p, C)
    return x.reshape(n, gh * gw, patch_size * patch_size * c)


def sincos_pos_embed_2d(grid_size: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embeddings (grid_size**2, dim), as MAE uses (arXiv:2111.06377).

    Half of the channels encode the row, half the column, each with sines and
    cosines of geometrically spaced frequencies (Vaswani et al., 2017).
    """
    if dim % 4:
        raise ValueError(f"sine-cosine position embeddings need a dimension divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    rows, cols = torch.meshgrid(torch.arange(grid_size), torch.arange(grid_size), indexing="ij")

    def encode(pos: torch.Tensor) -> torch.Tensor:
        angles = pos.reshape(-1, 1).double() * omega
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([encode(rows), encode(cols)], dim=1).float()


def transformer_blocks(dim: int, depth: int, heads: int, mlp_ratio: float = 4.0) -> nn.ModuleList:
    """``depth`` pre-norm Transformer blocks (LayerNorm -> attention, LayerNorm -> GELU MLP), no dropout."""
    if dim % heads:
        raise ValueError(f"token dimension {dim} must be divisible by the number of heads {heads}")
    return nn.ModuleList(
        nn.TransformerEncoderLayer(
            dim,
            heads,
            dim_feedforward=int(dim * mlp_ratio),
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        for _ in range(depth)
    )


def init_vit_weights(module: nn.Module) -> None:
    """timm/DeiT initialization: truncated normal (std 0.02) for linear weights, zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class VisionTransformer(nn.Module):
    """ViT: conv patch embedding, cls token, learned position embeddings, pre-norm blocks, final LayerNorm.

    The forward pass is split in two steps so that MAE can drop tokens in between:
    ``embed_patches`` (patch tokens + position embeddings) and ``encode`` (blocks +
    norm over any token sequence that starts with the cls token from ``cls_with_pos``).
    """

    def __init__(
        self,
        in_channels: int = 3,
        image_size: int = 32,
        patch_size: int | None = None,
        dim: int = 192,
        depth: int = 12,
        heads: int = 3,
        mlp_ratio: float = 4.0,
    ):
        super().__init__()
        patch_size = patch_size or default_patch_size(image_size)
        if image_size % patch_size:
            raise ValueError(
                f"ViT patch size {patch_size} does not divide image size {image_size}; use an image size that is a multiple of it"
            )
        self.image_size = image_size
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.grid_size = image_size // patch_size
        self.num_patches = self.grid_size**2
        self.num_features = dim
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.num_patches, dim))  # cls first, then patches
        self.blocks = transformer_blocks(dim, depth, heads, mlp_ratio)
        self.norm = nn.LayerNorm(dim)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        init_vit_weights(self)

    def embed_patches(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, C, H, W) -> patch tokens with their position embeddings (N, L, dim), row by row."""
        if x.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"this ViT was built for {self.image_size} px images, got {tuple(x.shape[-2:])}")
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        return tokens + self.pos_embed[:, 1:]

    def cls_with_pos(self, batch_size: int) -> torch.Tensor:
        """The cls token plus its position embedding, one per sample (N, 1, dim)."""
        return (self.cls_token + self.pos_embed[:, :1]).expand(batch_size, -1, -1)

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Transformer blocks and the final LayerNorm over a token sequence (N, T, dim)."""
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """All output tokens (N, 1 + L, dim): the cls token first, then the patches row by row."""
        patches = self.embed_patches(x)
        return self.encode(torch.cat([self.cls_with_pos(x.shape[0]), patches], dim=1))

    def patch_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Output patch tokens (N, L, dim), without the cls token."""
        return self.forward_features(x)[:, 1:]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features (N, dim): the cls token after the final LayerNorm."""
        return self.forward_features(x)[:, 0]


@register_backbone("vit_tiny")
def vit_tiny(in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """DeiT's ViT-Tiny (dim 192, depth 12, 3 heads), patch size from ``default_patch_size``."""
    return VisionTransformer(in_channels, image_size, dim=192, depth=12, heads=3)


@register_backbone("vit_micro")
def vit_micro(in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """A two-block, 32-d ViT for unit tests; registered like the real ones."""
    return VisionTransformer(in_channels, image_size, dim=32, depth=2, heads=2)
