"""SimMIM: Xie et al., 2021, "SimMIM: A Simple Framework for Masked Image Modeling", https://arxiv.org/abs/2111.09886."""

from __future__ import annotations

import math

import torch
from torch import nn

from ssl_models.backbones.vit import VisionTransformer, patchify
from ssl_models.losses import simmim_loss
from ssl_models.methods.base import SSLMethod
from ssl_models.methods.mae import masked_patch_accuracy
from ssl_models.recipes import Recipe
from ssl_models.registry import register_method

# The paper's masks: 32 px squares on 192 px images (a sixth of the side); 32 px on 224 px for ViT-B/16.
PAPER_MASK_SHARE = 32 / 192


def default_mask_patch_size(image_size: int, patch_size: int) -> int:
    """The mask square, in px, nearest to the paper's share of the side (32 / 192) that is a multiple
    of the ViT patch and divides the image: 32 px at 224 px (patch 16) or 192 px (patch 4), as in the
    paper; 4 px (one patch) at 28 and 32 px (patch 4)."""
    sizes = [m for m in range(patch_size, image_size + 1, patch_size) if image_size % m == 0]
    return min(sizes, key=lambda m: abs(m - PAPER_MASK_SHARE * image_size))


def simmim_mask(
    n: int, grid_size: int, group: int, mask_ratio: float, device=None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random masks (N, grid_size, grid_size) of ViT patches, 1 where masked, as the reference's ``MaskGenerator``.

    The grid is cut into squares of ``group`` x ``group`` patches (one mask square); each sample masks
    ``ceil(squares * mask_ratio)`` of them, drawn anew per sample (a random permutation of the squares).
    """
    side = grid_size // group
    squares = side * side
    count = int(math.ceil(squares * mask_ratio))
    order = torch.rand(n, squares, device=device, generator=generator).argsort(dim=1)
    mask = torch.zeros(n, squares, device=device).scatter_(1, order[:, :count], 1.0)
    return mask.view(n, side, side).repeat_interleave(group, 1).repeat_interleave(group, 2)


class SimMIMDecoder(nn.Sequential):
    """The paper's one-layer prediction head: a 1x1 conv to ``patch_size**2 * C`` values per token, then
    ``PixelShuffle`` back to an image (N, C, H, W), as the reference's ``SimMIM.decoder``."""

    def __init__(self, dim: int, patch_size: int, in_channels: int):
        super().__init__(nn.Conv2d(dim, patch_size**2 * in_channels, kernel_size=1), nn.PixelShuffle(patch_size))


@register_method("simmim")
class SimMIM(SSLMethod):
    """Replace 60% of the patch embeddings by a learned mask token, encode every position, predict raw pixels.

    Paper defaults (ViT-B/16, 224 px): mask ratio 0.6 in random 32 px squares (2 x 2 patches), a learnable
    mask token in place of the masked patch embeddings (the encoder sees every position and the cls token,
    unlike MAE), a linear head (1x1 conv + pixel shuffle) to raw pixels, L1 on the masked pixels only;
    AdamW, betas (0.9, 0.999), weight decay 0.05, lr 8e-4 x B / 2048 (100-epoch runs: 1e-4 x B / 256), 10
    warm-up epochs then cosine, gradient clipping at 5, drop path 0.1; views: random resized crop
    (scale 0.67-1) and flip only (``view_kwargs`` turns off the config's colour jitter, grayscale and blur).

    Here, on small images: masks of one 4 px patch at 28-32 px (patch 4; ``default_mask_patch_size``: a
    7 x 7 grid cannot be cut into 2 x 2 squares, and one patch is 1/7 of the side, the share 32 px has at
    224 px), ``mask_patch_size`` in px sets it. The ViT keeps its learned absolute position embeddings (the
    paper's ViT uses a shared relative position bias instead); no drop path and no gradient clipping (the
    pipeline has neither). The mask token and the position embedding: ``(x * (1 - w) + token * w) + pos``
    as in the reference, written as ``embed(x) * (1 - w) + (token + pos) * w`` over the ViT's embedded patches.

    ``proxy_acc``: fraction of masked patches reconstructed better than a flat patch at their own mean
    (``ssl_models.methods.mae.masked_patch_accuracy``, on raw pixels).
    """

    recipe = Recipe(
        paper="https://arxiv.org/abs/2111.09886",
        optimizer="adamw",
        lr=1e-4,
        weight_decay=0.05,
        momentum=0.9,
        beta2=0.999,
        warmup_share=0.1,
        notes="The authors' 100-epoch recipe (configs/*__100ep: AdamW lr 2e-4 x B/512, betas (0.9, 0.999), wd 0.05, "
        "10 warm-up epochs, cosine); their 800-epoch ViT-B run uses 1e-4 x B/512 with a step decay. Not here: "
        "gradient clipping at 5 and drop path 0.1. Masks of one 4 px patch at 28-32 px (paper: 32 px at 192-224 px).",
    )

    num_views = 1
    min_batch_per_worker = 1  # the loss is per sample: no negatives needed
    view_kwargs = {"crop_scale": (0.67, 1.0), "jitter_p": 0.0, "grayscale_p": 0.0, "blur_p": 0.0}
    default_backbone = "vit_tiny"
    tiny_backbone = "vit_micro"

    def __init__(self, mask_ratio: float = 0.6, mask_patch_size: int | None = None, **encoder_args):
        super().__init__(**encoder_args)
        vit = self.encoder
        if not isinstance(vit, VisionTransformer):
            raise ValueError(f"simmim needs a ViT backbone (vit_tiny or vit_micro), got {self.backbone_name!r}")
        if not 0 < mask_ratio < 1:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        mask_patch_size = mask_patch_size or default_mask_patch_size(vit.image_size, vit.patch_size)
        if mask_patch_size % vit.patch_size or vit.image_size % mask_patch_size:
            raise ValueError(
                f"mask_patch_size {mask_patch_size} must be a multiple of the ViT patch ({vit.patch_size} px) "
                f"and divide the image ({vit.image_size} px)"
            )
        self.mask_ratio = mask_ratio
        self.mask_patch_size = mask_patch_size
        self.mask_token = nn.Parameter(torch.zeros(1, 1, vit.num_features))
        nn.init.trunc_normal_(self.mask_token, std=0.02, a=-0.02, b=0.02)  # the reference's init
        self.decoder = SimMIMDecoder(vit.num_features, vit.patch_size, self.in_channels)

    def mask_for(self, n: int, device=None, generator: torch.Generator | None = None) -> torch.Tensor:
        """A new random patch mask (N, grid, grid) for ``n`` images, 1 where masked."""
        group = self.mask_patch_size // self.encoder.patch_size
        return simmim_mask(n, self.encoder.grid_size, group, self.mask_ratio, device, generator)

    def reconstruct(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Pixels (N, C, H, W) predicted from images whose masked patches (``mask`` (N, grid, grid)) the
        encoder saw only as the mask token."""
        vit = self.encoder
        tokens = vit.embed_patches(images)  # patch embeddings + their position embeddings
        w = mask.flatten(1).unsqueeze(-1).to(tokens.dtype)
        tokens = tokens * (1 - w) + (self.mask_token + vit.pos_embed[:, 1:]) * w
        latent = vit.encode(torch.cat([vit.cls_with_pos(images.shape[0]), tokens], dim=1))[:, 1:]
        n, length, dim = latent.shape
        # contiguous: the transposed view is channels-last, whose conv weight gradient DDP's buckets warn about
        grid = latent.transpose(1, 2).reshape(n, dim, vit.grid_size, vit.grid_size).contiguous()
        return self.decoder(grid)

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        images = batch["view_0"]
        mask = self.mask_for(images.shape[0], images.device)
        reconstruction = self.reconstruct(images, mask)
        loss = simmim_loss(reconstruction, images, mask)
        with torch.no_grad():
            p = self.encoder.patch_size
            proxy_acc = masked_patch_accuracy(patchify(reconstruction.float(), p), patchify(images, p), mask.flatten(1))
        return {"loss": loss, "proxy_acc": proxy_acc}
