"""CPC: van den Oord et al., 2018, https://arxiv.org/abs/1807.03748; CPC v2: Hénaff et al., 2019, https://arxiv.org/abs/1905.09272."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssl_models.backbones.vit import VisionTransformer
from ssl_models.losses import cpc_infonce
from ssl_models.methods.base import SSLMethod
from ssl_models.recipes import Recipe
from ssl_models.registry import register_method


def cpc_patch_geometry(image_size: int, grid_size: int) -> tuple[int, int]:
    """(patch size, stride) giving a ``grid_size`` x ``grid_size`` grid of patches overlapping by half.

    stride = image_size // (grid_size + 1) and patch = 2 x stride, the papers' layout
    (256 px -> 64 px patches every 32 px -> 7x7); 32 px -> 16 px patches every 8 px -> 3x3.
    """
    stride = image_size // (grid_size + 1)
    if grid_size < 2 or stride < 1:
        raise ValueError(f"grid_size must be >= 2 and at most image_size - 1 ({image_size - 1}), got {grid_size}")
    return 2 * stride, stride


def extract_patches(images: torch.Tensor, patch_size: int, stride: int) -> torch.Tensor:
    """Images (N, C, H, W) -> patches (N, rows, cols, C, patch, patch); patch (i, j) is the crop at (i*stride, j*stride)."""
    x = images.unfold(2, patch_size, stride).unfold(3, patch_size, stride)  # (N, C, rows, cols, p, p)
    return x.permute(0, 2, 3, 1, 4, 5)


class CPCContextNetwork(nn.Module):
    """PixelCNN-like context: c_{i,j} depends only on encodings z_{u,v} with u <= i (rows at or above).

    Each residual layer is a (2 x 3) convolution over the grid with one row of
    padding on top and none below, so output row i sees input rows i - 1 and i;
    ``num_layers`` layers see ``num_layers`` rows up.
    """

    def __init__(self, dim: int, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(nn.Conv2d(dim, dim, kernel_size=(2, 3)) for _ in range(num_layers))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z (N, D, rows, cols) -> context (N, D, rows, cols)."""
        h = z
        for conv in self.layers:
            h = h + conv(F.pad(F.relu(h), (1, 1, 1, 0)))  # pad (left, right, top, bottom): nothing from below
        return h


@register_method("cpc")
class CPC(SSLMethod):
    """Encode a grid of overlapping patches, predict the encodings of lower rows from the rows above.

    Paper (CPC v2) defaults: 256 px images cut into a 7x7 grid of 64 px patches
    with 32 px stride, a PixelCNN-style masked-convolution context network over the
    grid, linear predictions ``z_hat_{i+k,j} = W_k c_{i,j}`` for k > 0, and InfoNCE
    whose negatives are the other patches of the image and of the other images in
    the batch (gathered from every worker here). Here the grid defaults to 3x3
    (``grid_size``) with the same half-patch overlap: 12 px patches every 6 px at
    32 px, 10 px every 5 px at 28 px. Offsets k start at 2, the first whose patches
    share no pixel with the context's row (k = 1 overlaps by half: a pixel-copy
    shortcut the reference code skips too); ``prediction_steps`` defaults to every
    such row below (k = 2 .. grid_size - 1) and ``context_layers`` to grid_size - 1,
    enough for the last row's context to see the whole grid above it.

    Not reproduced: CPC v2's per-patch augmentations and layer norm in the encoder
    (the shared backbones use batch norm over all patches of the batch).
    The encoder must accept patch-sized inputs, so ViT backbones are refused.

    ``proxy_acc``: how often the true patch scores highest among all candidates.
    """

    recipe = Recipe(
        paper="https://arxiv.org/abs/1905.09272",
        optimizer="adamw",
        lr=1e-3,
        weight_decay=1e-4,
        notes="Paper: Adam. The shared SGD recipe (lr 0.06) diverged at step 9 of 2 epochs on 10,000 images: "
        "InfoNCE logits of unnormalized patch encodings grow until they overflow. AdamW lr 1e-3 trains stably.",
    )

    num_views = 1
    tiny_backbone = "tiny_cnn"

    def __init__(
        self,
        grid_size: int = 4,
        prediction_steps: int | None = None,
        context_layers: int | None = None,
        **encoder_args,
    ):
        super().__init__(**encoder_args)
        if isinstance(self.encoder, VisionTransformer):
            raise ValueError(f"cpc encodes patches of any size and needs a convolutional backbone, got {self.backbone_name!r}")
        self.patch_size, self.stride = cpc_patch_geometry(self.image_size, grid_size)
        # The row below overlaps its context's own row by half: predicting it could copy pixels. As in the
        # reference code, the first offset predicted is the first whose patches share no pixel with the context's.
        self.first_offset = -(-self.patch_size // self.stride)  # ceil(patch / stride): 2 for half-overlapping patches
        most = grid_size - self.first_offset
        steps = prediction_steps if prediction_steps is not None else most
        if not 1 <= steps <= most:
            raise ValueError(f"prediction_steps must be between 1 and {most} for a {grid_size}x{grid_size} grid, got {steps}")
        layers = context_layers if context_layers is not None else grid_size - 1
        if layers < 1:
            raise ValueError(f"context_layers must be >= 1, got {layers}")
        dim = self.encoder.num_features
        self.context = CPCContextNetwork(dim, layers)
        self.predictors = nn.ModuleList(nn.Linear(dim, dim, bias=False) for _ in range(steps))  # W_k, k = 1..steps

    def encode_patches(self, images: torch.Tensor) -> torch.Tensor:
        """Images (N, C, H, W) -> patch encodings (N, rows, cols, D), all patches in one encoder batch."""
        patches = extract_patches(images, self.patch_size, self.stride)
        n, rows, cols = patches.shape[:3]
        z = self.encoder(patches.reshape(n * rows * cols, *patches.shape[3:]))
        return z.reshape(n, rows, cols, -1)

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        z = self.encode_patches(batch["view_0"])
        n, rows, cols, dim = z.shape
        context = self.context(z.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # (N, rows, cols, D)
        index = torch.arange(n * rows * cols, device=z.device).reshape(n, rows, cols)
        predictions, positives = [], []
        for k, predictor in enumerate(self.predictors, start=self.first_offset):
            predictions.append(predictor(context[:, : rows - k]).reshape(-1, dim))  # c_{i,j} for i < rows - k
            positives.append(index[:, k:].reshape(-1))  # z_{i+k,j}
        # proxy accuracy: how often the true patch ranks first among all patches of all images
        loss, proxy_acc = cpc_infonce(torch.cat(predictions), z.reshape(-1, dim), torch.cat(positives), with_accuracy=True)
        return {"loss": loss, "proxy_acc": proxy_acc}
