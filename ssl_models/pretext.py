"""Pretext targets made from the images themselves: small pure functions, one per step.

Each function takes normalized float images (N, C, H, W) (the ``view_0`` of a batch)
and, where it draws random numbers, an optional ``torch.Generator`` so that a test
can fix them. Methods call them inside ``training_step`` on the training device, so
every sample gets its own random rotation, permutation, patch pair or mask on every
step, without any extra column in the data pipeline.

Papers: rotation (arXiv:1803.07728), jigsaw (arXiv:1603.09246), relative position
(arXiv:1505.05192), colorization (arXiv:1603.08511), context encoder (arXiv:1604.07379).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from ssl_models.augment import LUMA_WEIGHTS

# Doersch et al. number the 8 neighbours of the centre patch in raster order
# (figure 2 of arXiv:1505.05192); in a 3x3 grid numbered 0..8 they are these cells.
NEIGHBOUR_CELLS = (0, 1, 2, 3, 5, 6, 7, 8)
CENTRE_CELL = 4


def _randint(low: int, high: int, shape: tuple[int, ...], device, generator: torch.Generator | None) -> torch.Tensor:
    """Integers in [low, high] inclusive."""
    return torch.randint(low, high + 1, shape, device=device, generator=generator)


# --- rotation (Gidaris et al., 2018) ------------------------------------------------


def rotate_images(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Rotate image i by ``k[i]`` x 90 degrees counter-clockwise.

    Args:
        x: (N, C, H, H) square images.
        k: (N,) integers in 0..3, the rotation classes.
    """
    out = x.clone()
    for quarter in range(1, 4):  # one rot90 per group of samples sharing a rotation
        rows = k == quarter
        if rows.any():
            out[rows] = torch.rot90(x[rows], quarter, dims=(2, 3))
    return out


def all_rotations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image in all four rotations, as RotNet trains (section 3.1 of arXiv:1803.07728).

    Returns (4N, C, H, W) images, rotation r of image i at row r * N + i, and (4N,) labels r.
    """
    n = x.shape[0]
    k = torch.arange(4, device=x.device).repeat_interleave(n)
    return rotate_images(x.repeat(4, 1, 1, 1), k), k


def random_rotations(x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image in one random rotation; returns (N, C, H, W) images and (N,) labels."""
    k = _randint(0, 3, (x.shape[0],), x.device, generator)
    return rotate_images(x, k), k


# --- patches on a grid (jigsaw, relative position) -----------------------------------


def grid_corners(
    n: int,
    image_size: int,
    grid: int,
    patch_size: int,
    jitter: int,
    device=None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-left corners of ``patch_size`` patches, one in each cell of a ``grid`` x ``grid`` grid.

    The grid of ``image_size // grid`` px cells is centred in the image; each patch is
    centred in its cell and then shifted by up to ``jitter`` px in each direction,
    independently per sample and patch. The gap this leaves between neighbouring
    patches is what stops a network from solving the task by following lines across
    patch edges (Doersch et al.'s gap and jitter, Noroozi & Favaro's random 64 px crop
    of each 75 px cell).

    Returns:
        tops, lefts: (n, grid * grid) long tensors, patch p in cell (p // grid, p % grid).
    """
    cell = image_size // grid
    if patch_size > cell:
        raise ValueError(f"patch_size {patch_size} is larger than the {cell} px cells of a {grid}x{grid} grid on {image_size} px")
    if jitter < 0 or patch_size + 2 * jitter > cell:
        raise ValueError(f"jitter must be in 0..{(cell - patch_size) // 2} for {patch_size} px patches in {cell} px cells")
    index = torch.arange(grid, device=device)
    start = (image_size - grid * cell) // 2 + index * cell + (cell - patch_size) // 2
    tops = start.repeat_interleave(grid).expand(n, -1)  # cell p is in row p // grid
    lefts = start.repeat(grid).expand(n, -1)
    shape = (n, grid * grid)
    tops = tops + _randint(-jitter, jitter, shape, device, generator)
    lefts = lefts + _randint(-jitter, jitter, shape, device, generator)
    return tops, lefts


def crop_patches(x: torch.Tensor, tops: torch.Tensor, lefts: torch.Tensor, size: int) -> torch.Tensor:
    """Square patches at per-sample corners.

    Args:
        x: (N, C, H, W) images.
        tops, lefts: (N, P) top-left corners.
        size: patch side in pixels.

    Returns:
        (N, P, C, size, size) patches.
    """
    offsets = torch.arange(size, device=x.device)
    rows = (tops.unsqueeze(-1) + offsets).view(*tops.shape, size, 1)  # (N, P, size, 1)
    cols = (lefts.unsqueeze(-1) + offsets).view(*lefts.shape, 1, size)  # (N, P, 1, size)
    batch = torch.arange(x.shape[0], device=x.device).view(-1, 1, 1, 1)
    patches = x.permute(0, 2, 3, 1)[batch, rows, cols]  # (N, P, size, size, C)
    return patches.permute(0, 1, 4, 2, 3)


def standardize_patches(patches: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Zero mean and unit standard deviation per patch and channel.

    Noroozi & Favaro normalize every tile on its own so that the network cannot match
    tiles by their brightness or contrast (section 3.2 of arXiv:1603.09246).
    Works on (..., C, h, w).
    """
    mean = patches.mean(dim=(-2, -1), keepdim=True)
    std = patches.std(dim=(-2, -1), keepdim=True, unbiased=False)
    return (patches - mean) / (std + eps)


# --- jigsaw (Noroozi & Favaro, 2016) ------------------------------------------------


@functools.lru_cache(maxsize=8)
def jigsaw_permutations(num_permutations: int = 100, num_tiles: int = 9, num_candidates: int = 5000, seed: int = 0) -> np.ndarray:
    """A fixed set of tile permutations far apart in Hamming distance.

    Noroozi & Favaro pick 1000 of the 9! = 362,880 permutations greedily, each new one
    as far as possible from those already chosen (section 3.3, "maximal Hamming
    distance"). Scoring all 9! at each of 1000 picks is slow, so this draws a pool of
    ``num_candidates`` random permutations with a fixed seed (the same set on every
    worker and every run) and adds, each time, the candidate whose *minimum* distance
    to the chosen set is largest. With the defaults (100 from 5000, seed 0) every pair
    differs in at least 6 of the 9 positions; 1000 from 5000 gives at least 4.

    Returns:
        (num_permutations, num_tiles) read-only int64 array; row j lists, for each position of the
        shuffled puzzle, the index of the original tile placed there.
    """
    rng = np.random.default_rng(seed)
    pool = np.unique(rng.permuted(np.tile(np.arange(num_tiles), (num_candidates, 1)), axis=1), axis=0)
    if not 1 <= num_permutations <= len(pool):
        raise ValueError(f"num_permutations must be in 1..{len(pool)} (distinct permutations in the candidate pool)")
    chosen = [0]
    min_dist = (pool != pool[0]).sum(axis=1)
    for _ in range(num_permutations - 1):
        best = int(min_dist.argmax())
        chosen.append(best)
        min_dist = np.minimum(min_dist, (pool != pool[best]).sum(axis=1))
    perms = pool[chosen].astype(np.int64)
    perms.flags.writeable = False  # cached: shared by every caller
    return perms


def shuffle_tiles(tiles: torch.Tensor, perms: torch.Tensor) -> torch.Tensor:
    """Put tile ``perms[i, j]`` of sample i at position j.

    Args:
        tiles: (N, T, ...) tiles of each sample in grid order.
        perms: (N, T) one permutation per sample. Shuffling with ``perms.argsort(dim=1)``
            undoes it.
    """
    index = perms.view(*perms.shape, *([1] * (tiles.dim() - 2))).expand_as(tiles)
    return tiles.gather(1, index)


# --- relative position (Doersch et al., 2015) ----------------------------------------


def relative_position_pairs(
    x: torch.Tensor, patch_size: int, jitter: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The centre patch of a 3x3 grid and one random neighbour per image.

    Returns:
        centre, neighbour: (N, C, patch_size, patch_size) patches.
        labels: (N,) in 0..7, the neighbour's place in ``NEIGHBOUR_CELLS`` (raster order:
            top-left, top, top-right, left, right, bottom-left, bottom, bottom-right).
    """
    n = x.shape[0]
    tops, lefts = grid_corners(n, x.shape[-1], 3, patch_size, jitter, x.device, generator)
    labels = _randint(0, 7, (n,), x.device, generator)
    cells = torch.stack([torch.full_like(labels, CENTRE_CELL), torch.tensor(NEIGHBOUR_CELLS, device=x.device)[labels]], 1)
    patches = crop_patches(x, tops.gather(1, cells), lefts.gather(1, cells), patch_size)
    return patches[:, 0], patches[:, 1], labels


# --- colorization (Zhang et al., 2016) ----------------------------------------------


def luminance(x: torch.Tensor) -> torch.Tensor:
    """Luma Y = 0.299 R + 0.587 G + 0.114 B of (N, 3, H, W) images, as (N, 1, H, W).

    The weights sum to 1, so on images normalized with the same mean and std for every
    channel (``views.normalize``) this is the normalized luma of the raw image.
    """
    weights = torch.tensor(LUMA_WEIGHTS, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * weights).sum(dim=1, keepdim=True)


def gray_input(x: torch.Tensor) -> torch.Tensor:
    """The colorization input: luma replicated to 3 channels, so the encoder keeps RGB input for the probes."""
    return luminance(x).expand(-1, 3, -1, -1)


def chroma_target(x: torch.Tensor, size: int) -> torch.Tensor:
    """What colorization predicts: (N, 2, size, size) chroma (R - Y, B - Y), average-pooled to ``size``.

    The colour-difference pair of YCbCr up to scale, a linear stand-in for Lab's ab;
    with Y it gives back R, G and B. Zhang et al. predict at 1/4 of the input resolution.
    """
    y = luminance(x)
    chroma = torch.cat([x[:, :1] - y, x[:, 2:3] - y], dim=1)
    return F.adaptive_avg_pool2d(chroma, size)


# --- inpainting (Pathak et al., 2016) -----------------------------------------------


def square_masks(
    n: int, image_size: int, mask_size: int, random_position: bool, device=None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(N, 1, H, W) boolean masks, True on a ``mask_size`` square to be filled in.

    The square is central (the context encoder's default, a quarter of the area when
    ``mask_size = image_size // 2``) or, with ``random_position``, anywhere in the image,
    a new place per sample.
    """
    if not 0 < mask_size < image_size:
        raise ValueError(f"mask_size must be in 1..{image_size - 1} for {image_size} px images, got {mask_size}")
    if random_position:
        tops = _randint(0, image_size - mask_size, (n,), device, generator)
        lefts = _randint(0, image_size - mask_size, (n,), device, generator)
    else:
        tops = lefts = torch.full((n,), (image_size - mask_size) // 2, device=device)
    coords = torch.arange(image_size, device=device)
    inside_rows = (coords >= tops.view(-1, 1)) & (coords < tops.view(-1, 1) + mask_size)  # (N, H)
    inside_cols = (coords >= lefts.view(-1, 1)) & (coords < lefts.view(-1, 1) + mask_size)  # (N, W)
    return (inside_rows.unsqueeze(2) & inside_cols.unsqueeze(1)).unsqueeze(1)


def mask_images(x: torch.Tensor, masks: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """Replace the masked pixels by ``fill``; 0 is the mean pixel of normalized images, as in the paper."""
    return x.masked_fill(masks, fill)
