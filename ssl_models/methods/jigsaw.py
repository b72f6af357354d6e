"""Jigsaw puzzles: Noroozi & Favaro, 2016, https://arxiv.org/abs/1603.09246."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssl_models.heads import ProjectionHead
from ssl_models.methods.base import SSLMethod
from ssl_models.pretext import crop_patches, grid_corners, jigsaw_permutations, shuffle_tiles, standardize_patches
from ssl_models.recipes import SHARED_SGD, Recipe
from ssl_models.registry import register_method


@register_method("jigsaw")
class Jigsaw(SSLMethod):
    """Cut the image into a 3x3 grid of tiles, shuffle them with one of a fixed set of
    permutations, and predict which permutation it was.

    Paper defaults: 3x3 grid of 75 px cells on a 225 px crop, a random 64 px tile in each
    cell (so tiles do not share edges), every tile normalized on its own, 1000
    permutations chosen for large Hamming distance, tiles through a shared trunk
    (context-free network), features concatenated, fc7 4096 -> fc8 1000 classes.
    Here: cells of ``image_size // grid`` px (10 px at 32 px), tiles of 64/75 of a cell
    (8 px) shifted by up to ``jitter`` px (default: as far as the cell allows), each tile
    encoded at its own size by the shared encoder (the backbones pool globally), the
    concatenated pooled features -> MLP (Linear-BN-ReLU-Linear) -> permutation class.
    ``num_permutations`` defaults to 100 for small data sets (the paper found fewer, far
    apart permutations easier and used 1000); see ``pretext.jigsaw_permutations`` for how
    the set is chosen (greedy max-min Hamming distance over a seeded pool of 5000).

    ``proxy_acc``: accuracy of the permutation classifier.
    """

    recipe = Recipe(paper="https://arxiv.org/abs/1603.09246", **SHARED_SGD, notes="The shared SGD recipe.")

    num_views = 1
    # The head's BatchNorm needs two puzzles per worker.
    min_batch_per_worker = 2

    def __init__(
        self,
        grid: int = 3,
        num_permutations: int = 100,
        tile_size: int | None = None,
        jitter: int | None = None,
        normalize_tiles: bool = True,
        hidden_dim: int = 512,
        **encoder_args,
    ):
        super().__init__(**encoder_args)
        image_size = self.image_size
        if grid < 2:
            raise ValueError(f"grid must be >= 2, got {grid}")
        cell = image_size // grid
        self.grid = grid
        self.tile_size = tile_size if tile_size is not None else max(1, cell * 64 // 75)
        self.jitter = jitter if jitter is not None else (cell - self.tile_size) // 2
        if not 0 < self.tile_size <= cell:
            raise ValueError(
                f"tile_size must be in 1..{cell} (the cells of a {grid}x{grid} grid on {image_size} px), got {tile_size}"
            )
        if not 0 <= 2 * self.jitter <= cell - self.tile_size:
            raise ValueError(f"jitter must be in 0..{(cell - self.tile_size) // 2} for {self.tile_size} px tiles, got {jitter}")
        self.normalize_tiles = normalize_tiles
        # A buffer, so the set travels with checkpoints.
        self.register_buffer("permutations", torch.tensor(jigsaw_permutations(num_permutations, grid * grid)))
        num_tiles = grid * grid
        self.classifier = ProjectionHead(num_tiles * self.encoder.num_features, hidden_dim, num_permutations)

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["view_0"]
        n = x.shape[0]
        tops, lefts = grid_corners(n, x.shape[-1], self.grid, self.tile_size, self.jitter, x.device)
        tiles = crop_patches(x, tops, lefts, self.tile_size)  # (N, T, C, t, t)
        if self.normalize_tiles:
            tiles = standardize_patches(tiles)
        labels = torch.randint(0, len(self.permutations), (n,), device=x.device)
        puzzles = shuffle_tiles(tiles, self.permutations[labels])
        features = self.encoder(puzzles.flatten(0, 1)).view(n, -1)  # tile features, concatenated in puzzle order
        logits = self.classifier(features)
        loss = F.cross_entropy(logits, labels)
        proxy_acc = (logits.detach().argmax(dim=1) == labels).float().mean()
        return {"loss": loss, "proxy_acc": proxy_acc}
