"""MAE: He et al., 2021, "Masked Autoencoders Are Scalable Vision Learners", https://arxiv.org/abs/2111.06377."""

from __future__ import annotations

import torch
from torch import nn

from ssl_models.backbones.vit import VisionTransformer, init_vit_weights, patchify, sincos_pos_embed_2d, transformer_blocks
from ssl_models.losses import mae_loss, mae_pixel_targets
from ssl_models.methods.base import SSLMethod
from ssl_models.recipes import Recipe
from ssl_models.registry import register_method


def num_visible(num_patches: int, mask_ratio: float) -> int:
    """How many of ``num_patches`` patches stay visible: round(L * (1 - mask_ratio))."""
    return int(round(num_patches * (1 - mask_ratio)))


def random_masking(
    tokens: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep a random subset of each sample's tokens, as in the paper's code (argsort of uniform noise).

    Args:
        tokens: (N, L, D) patch tokens.
        mask_ratio: fraction of tokens removed per sample.

    Returns:
        visible (N, K, D) with K = ``num_visible(L, mask_ratio)``, in shuffled order;
        mask (N, L), 1 where a token was removed, in the original order;
        ids_restore (N, L), the permutation that puts [visible, removed] back in the original order.
    """
    n, length, dim = tokens.shape
    keep = num_visible(length, mask_ratio)
    noise = torch.rand(n, length, device=tokens.device, generator=generator)  # a new subset per sample
    ids_shuffle = noise.argsort(dim=1)
    ids_restore = ids_shuffle.argsort(dim=1)
    ids_keep = ids_shuffle[:, :keep]
    visible = tokens.gather(1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))
    mask = torch.ones(n, length, device=tokens.device)
    mask[:, :keep] = 0
    return visible, mask.gather(1, ids_restore), ids_restore


def masked_patch_accuracy(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Fraction of masked patches reconstructed better than a flat patch at the target's own mean.

    A patch counts when its mean squared error is below the target patch's (biased)
    variance, which is exactly the error of predicting every pixel as the patch mean.
    """
    mse = (pred - target).pow(2).mean(dim=-1)
    flat_error = target.var(dim=-1, unbiased=False)
    hits = ((mse < flat_error).float() * mask).sum()
    return hits / mask.sum().clamp(min=1)


class MAEDecoder(nn.Module):
    """Lightweight decoder: encoded visible tokens + mask tokens -> pixels of every patch (N, L, P).

    Fixed 2-D sine-cosine position embeddings as in the paper; the cls token goes
    through the decoder and is dropped from its output.
    """

    def __init__(self, encoder_dim: int, grid_size: int, patch_dim: int, dim: int, depth: int, heads: int):
        super().__init__()
        self.embed = nn.Linear(encoder_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        pos = torch.cat([torch.zeros(1, dim), sincos_pos_embed_2d(grid_size, dim)])  # cls slot gets zeros
        self.register_buffer("pos_embed", pos.unsqueeze(0), persistent=False)
        self.blocks = transformer_blocks(dim, depth, heads)
        self.norm = nn.LayerNorm(dim)
        self.pred = nn.Linear(dim, patch_dim)
        nn.init.normal_(self.mask_token, std=0.02)
        init_vit_weights(self)

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """latent (N, 1 + K, encoder_dim): cls then the K visible tokens in shuffled order."""
        x = self.embed(latent)
        n, length = ids_restore.shape
        masks = self.mask_token.expand(n, length - (x.shape[1] - 1), -1)
        patches = torch.cat([x[:, 1:], masks], dim=1)  # [visible, removed], shuffled order
        patches = patches.gather(1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))  # original order
        x = torch.cat([x[:, :1], patches], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.pred(self.norm(x))[:, 1:]


@register_method("mae")
class MAE(SSLMethod):
    """Mask 75% of the patches, encode the visible ones with a ViT, reconstruct the masked pixels.

    Paper defaults: mask ratio 0.75 (random per sample), normalized-pixel targets
    (``norm_pix_loss``), MSE on masked patches only, decoder of 8 blocks x 512-d
    x 16 heads, AdamW (betas 0.9/0.95, weight decay 0.05), base lr 1.5e-4 x batch /
    256, 40 warm-up epochs then cosine decay, crop + flip augmentation only.
    For small images the decoder here defaults to 2 blocks x 64-d x 2 heads (the
    paper's 32-d heads), since 7x7 or 8x8 token grids need far less capacity.
    The encoder sees the cls token plus the visible patches, as in the paper.

    Views: one view from the ``multi_view`` policy; it adds colour jitter and blur
    to the paper's crop + flip, which only makes the reconstruction target harder.

    ``proxy_acc``: fraction of masked patches whose reconstruction error is below
    the error of predicting the patch as flat at its own mean (see ``masked_patch_accuracy``).
    """

    recipe = Recipe(
        paper="https://arxiv.org/abs/2111.06377",
        optimizer="adamw",
        lr=1.5e-4,
        weight_decay=0.05,
        momentum=0.9,
        beta2=0.95,
        warmup_share=0.05,
        notes="As published: AdamW lr 1.5e-4 x B/256, betas (0.9, 0.95), wd 0.05 (none on norms, biases and "
        "tokens), 40 warm-up epochs of 800, cosine.",
    )

    num_views = 1
    min_batch_per_worker = 1  # the loss is per sample: no negatives needed
    default_backbone = "vit_tiny"
    tiny_backbone = "vit_micro"

    def __init__(
        self,
        mask_ratio: float = 0.75,
        decoder_dim: int = 64,
        decoder_depth: int = 2,
        decoder_heads: int = 2,
        norm_pix_loss: bool = True,
        **encoder_args,
    ):
        super().__init__(**encoder_args)
        if not isinstance(self.encoder, VisionTransformer):
            raise ValueError(f"mae needs a ViT backbone (vit_tiny or vit_micro), got {self.backbone_name!r}")
        num_patches = self.encoder.num_patches
        if not 0 < num_visible(num_patches, mask_ratio) < num_patches:
            raise ValueError(
                f"mask_ratio {mask_ratio} leaves no visible or no masked patch of {num_patches}; use a value in (0, 1)"
            )
        if decoder_depth < 1 or decoder_heads < 1 or decoder_dim % decoder_heads or decoder_dim % 4:
            raise ValueError(
                f"decoder needs depth >= 1, dim divisible by 4 and heads, got {decoder_depth=}, {decoder_dim=}, {decoder_heads=}"
            )
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        patch_dim = self.encoder.patch_size**2 * self.in_channels
        self.decoder = MAEDecoder(
            self.encoder.num_features, self.encoder.grid_size, patch_dim, decoder_dim, decoder_depth, decoder_heads
        )

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        images = batch["view_0"]
        vit = self.encoder
        visible, mask, ids_restore = random_masking(vit.embed_patches(images), self.mask_ratio)
        latent = vit.encode(torch.cat([vit.cls_with_pos(images.shape[0]), visible], dim=1))
        pred = self.decoder(latent, ids_restore)
        pixels = patchify(images, vit.patch_size)
        loss = mae_loss(pred, pixels, mask, norm_pix=self.norm_pix_loss)
        with torch.no_grad():
            proxy_acc = masked_patch_accuracy(pred, mae_pixel_targets(pixels, self.norm_pix_loss), mask)
        return {"loss": loss, "proxy_acc": proxy_acc}
