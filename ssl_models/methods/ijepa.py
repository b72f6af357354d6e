"""I-JEPA: Assran et al., 2023, "Self-Supervised Learning from Images with a Joint-Embedding Predictive
Architecture", https://arxiv.org/abs/2301.08243."""

from __future__ import annotations

import math

import torch
from torch import nn

from ssl_models.backbones.vit import VisionTransformer, init_vit_weights, sincos_pos_embed_2d, transformer_blocks
from ssl_models.losses import ijepa_loss, ijepa_targets
from ssl_models.methods.base import SSLMethod
from ssl_models.momentum import ema_update, frozen_copy
from ssl_models.recipes import Recipe
from ssl_models.registry import register_method


def block_size(grid_size: int, scale: tuple[float, float], aspect_ratio: tuple[float, float], r: float) -> tuple[int, int]:
    """(rows, columns) of a block covering ``scale`` of the grid at ``aspect_ratio``, for a uniform draw ``r``.

    As the reference's ``_sample_block_size``: one draw sets both the scale and the aspect ratio,
    ``h = round(sqrt(keep * ratio))``, ``w = round(sqrt(keep / ratio))`` with ``keep = int(L * scale)``,
    and a block is at most ``grid_size - 1`` patches on a side.
    """
    keep = int(grid_size * grid_size * (scale[0] + r * (scale[1] - scale[0])))
    ratio = aspect_ratio[0] + r * (aspect_ratio[1] - aspect_ratio[0])
    h, w = round(math.sqrt(keep * ratio)), round(math.sqrt(keep / ratio))
    return max(1, min(h, grid_size - 1)), max(1, min(w, grid_size - 1))


def place_blocks(
    n: int, count: int, size: tuple[int, int], grid_size: int, device=None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``count`` blocks of ``size`` at random places in each of ``n`` grids: (n, count, grid, grid) bool."""
    h, w = size
    top = torch.randint(0, grid_size - h + 1, (n, count, 1, 1), device=device, generator=generator)
    left = torch.randint(0, grid_size - w + 1, (n, count, 1, 1), device=device, generator=generator)
    rows = torch.arange(grid_size, device=device).view(1, 1, -1, 1)
    cols = torch.arange(grid_size, device=device).view(1, 1, 1, -1)
    return (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)


def first_indices(masks: torch.Tensor, keep: int) -> torch.Tensor:
    """The first ``keep`` positions (in raster order) where each row of ``masks`` (..., L) is True: (..., keep)."""
    return torch.argsort((~masks).to(torch.uint8), dim=-1, stable=True)[..., :keep]


class MultiBlockMasks:
    """I-JEPA's multi-block masks (the reference's ``src/masks/multiblock.py`` ``MaskCollator``).

    Per batch: one target-block size (scale ``target_scale``, aspect ``aspect_ratio``) and one context-block
    size (scale ``context_scale``, square). Per image: ``num_targets`` target blocks at random places, then a
    context block at a random place with every target removed from it, redrawn until it keeps more than
    ``min_context`` patches (after 20 failed draws, one target fewer is removed, as the reference does). Every
    image's context is cut to the batch's smallest, keeping its first patches in raster order (the reference's
    ``cm[:min_keep_enc]``). One difference: the reference draws a block's top row from ``[0, grid - h)``, so no
    block ever reaches the last row or column (on a 7 x 7 grid, the 6 x 6 context would always sit in the
    top-left corner); here from ``[0, grid - h]``.

    ``__call__`` returns ``context`` (n, Kc) and ``targets`` (n, M, Kt) patch indices in raster order.
    """

    def __init__(
        self,
        grid_size: int,
        num_targets: int = 4,
        target_scale: tuple[float, float] = (0.15, 0.2),
        context_scale: tuple[float, float] = (0.85, 1.0),
        aspect_ratio: tuple[float, float] = (0.75, 1.5),
        min_context: int = 10,
        tries: int = 20,
    ):
        for name, (low, high) in (("target_scale", target_scale), ("context_scale", context_scale)):
            if not 0 < low <= high <= 1:
                raise ValueError(f"{name} needs 0 < min <= max <= 1, got {(low, high)}")
        if num_targets < 1:
            raise ValueError(f"num_targets must be >= 1, got {num_targets}")
        smallest = block_size(grid_size, context_scale, (1.0, 1.0), 0.0)
        if smallest[0] * smallest[1] <= min_context:
            raise ValueError(
                f"a {smallest[0]} x {smallest[1]} context block can never keep more than min_context={min_context} "
                f"patches of a {grid_size} x {grid_size} grid; lower min_context"
            )
        self.grid_size, self.num_targets = grid_size, num_targets
        self.target_scale, self.context_scale, self.aspect_ratio = target_scale, context_scale, aspect_ratio
        self.min_context, self.tries = min_context, tries

    def sizes(self, generator: torch.Generator | None = None) -> tuple[tuple[int, int], tuple[int, int]]:
        """This batch's target and context block sizes (rows, columns)."""
        r_target, r_context = torch.rand(2, generator=generator).tolist()
        target = block_size(self.grid_size, self.target_scale, self.aspect_ratio, r_target)
        return target, block_size(self.grid_size, self.context_scale, (1.0, 1.0), r_context)

    def block_masks(
        self, n: int, device=None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Boolean masks before the cut to equal sizes: context (n, grid, grid) and targets (n, M, grid, grid),
        and how many of the last targets each context could not exclude (n,): 0 but for rare crowded grids."""
        target_size, context_size = self.sizes(generator)
        g, m = self.grid_size, self.num_targets
        targets = place_blocks(n, m, target_size, g, device, generator)
        context = torch.zeros(n, g, g, dtype=torch.bool, device=device)
        dropped = torch.full((n,), -1, dtype=torch.long, device=device)
        for level in range(m + 1):  # allowed region: outside the first m - level targets
            allowed = ~targets[:, : m - level].any(dim=1)
            candidates = place_blocks(n, self.tries, context_size, g, device, generator) & allowed[:, None]
            valid = candidates.flatten(2).sum(dim=2) > self.min_context  # (n, tries)
            first = candidates[torch.arange(n, device=device), valid.to(torch.uint8).argmax(dim=1)]
            take = valid.any(dim=1) & (dropped < 0)
            context[take], dropped[take] = first[take], level
            if bool((dropped >= 0).all()):
                break
        return context, targets, dropped

    def __call__(self, n: int, device=None, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        context, targets, _ = self.block_masks(n, device, generator)
        context, targets = context.flatten(1), targets.flatten(2)
        keep = int(context.sum(dim=1).min())
        return first_indices(context, keep), first_indices(targets, int(targets[0, 0].sum()))


def gather_tokens(tokens: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """``tokens`` (N, L, D) at ``indices`` (N, ...) of positions: (N, ..., D), as the reference's ``apply_masks``."""
    n, dim = tokens.shape[0], tokens.shape[-1]
    flat = indices.reshape(n, -1, 1).expand(-1, -1, dim)
    return tokens.gather(1, flat).reshape(*indices.shape, dim)


class IJEPAPredictor(nn.Module):
    """The narrow ViT that predicts target-block features from the context (the reference's
    ``VisionTransformerPredictor``): context tokens projected to ``dim`` plus fixed sine-cosine position
    embeddings, then per target block mask tokens plus the target positions' embeddings; the blocks run
    once per target block (the context repeated), and the mask tokens' outputs are projected back to the
    encoder's width. The cls token, which the reference's ViT has not, is one more context token with a
    zero position embedding (as in MAE's decoder), so it is trained and the probes' feature means something.
    """

    def __init__(self, encoder_dim: int, grid_size: int, dim: int = 96, depth: int = 6, heads: int = 3):
        super().__init__()
        self.embed = nn.Linear(encoder_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos_embed", sincos_pos_embed_2d(grid_size, dim), persistent=False)  # (L, dim)
        self.blocks = transformer_blocks(dim, depth, heads)
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, encoder_dim)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        init_vit_weights(self)

    def forward(self, context: torch.Tensor, context_idx: torch.Tensor, target_idx: torch.Tensor) -> torch.Tensor:
        """Predictions (N, M, Kt, encoder_dim) at ``target_idx`` (N, M, Kt) from the encoded context
        (N, 1 + Kc, encoder_dim: cls, then the patches at ``context_idx`` (N, Kc))."""
        n, m, kt = target_idx.shape
        x = self.embed(context)
        x = torch.cat([x[:, :1], x[:, 1:] + self.pos_embed[context_idx]], dim=1)
        queries = (self.mask_token + self.pos_embed[target_idx]).reshape(n * m, kt, -1)
        x = torch.cat([x.repeat_interleave(m, dim=0), queries], dim=1)  # sample-major: row b * m + j is block j of b
        for block in self.blocks:
            x = block(x)
        return self.proj(self.norm(x[:, -kt:])).reshape(n, m, kt, -1)


def linear_momentum(step: int, total_steps: int, base: float, final: float = 1.0) -> float:
    """The reference's EMA schedule: ``base + step * (final - base) / total_steps`` (linear, not cosine)."""
    if total_steps <= 0:
        return base
    return base + min(step / total_steps, 1.0) * (final - base)


@register_method("ijepa")
class IJEPA(SSLMethod):
    """Predict, from one context block, the EMA target encoder's features of 4 target blocks of the same image.

    Paper defaults (ViT-H/14, 224 px): 4 target blocks of scale 0.15-0.2 and aspect ratio 0.75-1.5, one
    context block of scale 0.85-1.0 (square) with the targets removed from it (``MultiBlockMasks``); targets
    are the target encoder's output on the whole image at the target positions, layer-normed; predictor a
    narrow ViT of 12 blocks x 384-d; loss smooth L1 (the released code; the paper writes L2); target-encoder
    momentum 0.996 -> 1.0 linearly over training; AdamW lr 1e-3 at batch 2048 (1.25e-4 x B / 256), 40 warm-up
    epochs of 300, weight decay 0.04 -> 0.4 (cosine); views: random resized crop (scale 0.3-1) only, no flip
    and no colour (``view_kwargs``).

    Here: the predictor is 6 blocks x 96-d x 3 heads for vit_tiny (192-d, 12 blocks: the paper's 384 / 1280
    width ratio would be 58-d; the reference's default depth is 6), ``predictor_dim`` / ``predictor_depth``
    set it. ``min_context`` is 4 patches instead of 10: 10 of the 256 patches of a 16 x 16 grid is 4%; the
    reference also needs every target block to exceed it, and 7 x 7 target blocks have 6-9 patches; at 10, 3%
    of the contexts could not exclude every target. The ViT has a cls token, which the reference's has not:
    it goes through the context encoder and the predictor sees it (``IJEPAPredictor``). The target encoder
    and the momentum update cover the whole encoder; the update runs in ``on_step_end`` only, so ``forward``
    changes no state.

    ``proxy_acc``: fraction of predicted target tokens whose nearest (cosine) layer-normed target token
    among all target tokens of the same image is the one at their own position.
    """

    recipe = Recipe(
        paper="https://arxiv.org/abs/2301.08243",
        optimizer="adamw",
        lr=1.25e-4,
        weight_decay=0.04,
        momentum=0.9,
        beta2=0.999,
        warmup_share=0.13,
        notes="The authors' ViT-H/14 recipe (configs/in1k_vith14_ep300.yaml): AdamW lr 1e-3 at batch 2048 "
        "(1.25e-4 x B/256), 40 warm-up epochs of 300 (from 2e-4, here from 0), cosine; weight decay 0.04 here "
        "throughout (the paper: cosine 0.04 -> 0.4). EMA 0.996 -> 1 linear (the method's default). Predictor "
        "6 x 96-d for vit_tiny (paper: 12 x 384-d for ViT-H).",
    )

    num_views = 1
    min_batch_per_worker = 1  # every term is its own image's: no negatives
    view_kwargs = {"crop_scale": (0.3, 1.0), "flip_p": 0.0, "jitter_p": 0.0, "grayscale_p": 0.0, "blur_p": 0.0}
    default_backbone = "vit_tiny"
    tiny_backbone = "vit_micro"

    def __init__(
        self,
        predictor_dim: int = 96,
        predictor_depth: int = 6,
        predictor_heads: int = 3,
        num_targets: int = 4,
        target_scale: tuple[float, float] = (0.15, 0.2),
        context_scale: tuple[float, float] = (0.85, 1.0),
        aspect_ratio: tuple[float, float] = (0.75, 1.5),
        min_context: int = 4,
        momentum: float = 0.996,
        final_momentum: float = 1.0,
        **encoder_args,
    ):
        super().__init__(**encoder_args)
        vit = self.encoder
        if not isinstance(vit, VisionTransformer):
            raise ValueError(f"ijepa needs a ViT backbone (vit_tiny or vit_micro), got {self.backbone_name!r}")
        if not 0.0 <= momentum <= final_momentum <= 1.0:
            raise ValueError(f"needs 0 <= momentum <= final_momentum <= 1, got {momentum} and {final_momentum}")
        if predictor_depth < 1 or predictor_dim % predictor_heads or predictor_dim % 4:
            raise ValueError(
                f"predictor needs depth >= 1 and a dim divisible by 4 and by its heads, got "
                f"{predictor_depth=}, {predictor_dim=}, {predictor_heads=}"
            )
        self.momentum, self.final_momentum = momentum, final_momentum
        self.masks = MultiBlockMasks(vit.grid_size, num_targets, target_scale, context_scale, aspect_ratio, min_context)
        self.predictor = IJEPAPredictor(vit.num_features, vit.grid_size, predictor_dim, predictor_depth, predictor_heads)
        self.target_encoder = frozen_copy(vit)

    def encode_context(self, images: torch.Tensor, context_idx: torch.Tensor) -> torch.Tensor:
        """The online encoder on the cls token and the context patches only: (N, 1 + Kc, dim)."""
        vit = self.encoder
        patches = gather_tokens(vit.embed_patches(images), context_idx)  # position embeddings before the cut
        return vit.encode(torch.cat([vit.cls_with_pos(images.shape[0]), patches], dim=1))

    @torch.no_grad()
    def target_features(self, images: torch.Tensor, target_idx: torch.Tensor) -> torch.Tensor:
        """The target encoder's output on the whole image at the target positions: (N, M, Kt, dim)."""
        return gather_tokens(self.target_encoder.patch_tokens(images), target_idx)

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        images = batch["view_0"]
        context_idx, target_idx = self.masks(images.shape[0], images.device)
        targets = self.target_features(images, target_idx)
        predictions = self.predictor(self.encode_context(images, context_idx), context_idx, target_idx)
        loss = ijepa_loss(predictions, targets)
        with torch.no_grad():
            proxy_acc = own_position_accuracy(predictions, ijepa_targets(targets))
        return {"loss": loss, "proxy_acc": proxy_acc}

    def on_step_end(self, step: int, total_steps: int) -> None:
        ema_update(self.target_encoder, self.encoder, linear_momentum(step, total_steps, self.momentum, self.final_momentum))


def own_position_accuracy(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Fraction of predicted tokens (N, M, K, D) whose most cosine-similar target token of the same image is
    the one at their own position."""
    n, d = predictions.shape[0], predictions.shape[-1]
    p = nn.functional.normalize(predictions.reshape(n, -1, d).float(), dim=-1)
    t = nn.functional.normalize(targets.reshape(n, -1, d).float(), dim=-1)
    nearest = (p @ t.transpose(1, 2)).argmax(dim=-1)
    return (nearest == torch.arange(p.shape[1], device=p.device)).float().mean()
