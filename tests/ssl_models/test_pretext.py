"""Pretext targets (ssl_models.pretext), their losses, and the five pretext methods.

Each target maker is checked on images built so that the right answer is known.
"""

import numpy as np
import pytest
import torch

import ssl_models
from ssl_models import pretext
from ssl_models.losses import masked_mse
from tests.conftest import correct_of


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _one_step(name: str, channels: int = 1, **kwargs) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    method = ssl_models.create_method(name, backbone="tiny_cnn", in_channels=channels, image_size=32, **kwargs)
    return method({"view_0": torch.rand(4, channels, 32, 32) * 2 - 1})


# --- rotation -------------------------------------------------------------------


def test_rotate_images_turns_each_sample_by_its_own_quarter():
    x = torch.arange(2 * 3 * 3, dtype=torch.float32).view(2, 1, 3, 3)
    x = torch.cat([x, x])  # samples 0..3, rotated by 0, 1, 2, 3 quarters
    out = pretext.rotate_images(x, torch.tensor([0, 1, 2, 3]))
    for i, k in enumerate([0, 1, 2, 3]):
        assert torch.equal(out[i], torch.rot90(x[i], k, dims=(1, 2)))
    # A quarter turn counter-clockwise puts the top-right pixel at the top-left.
    assert out[1, 0, 0, 0] == x[1, 0, 0, 2]


def test_all_rotations_labels_and_random_rotations_are_consistent():
    x = torch.randn(3, 2, 5, 5)
    images, labels = pretext.all_rotations(x)
    assert labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    for r in range(4):
        assert torch.equal(images[r * 3 : (r + 1) * 3], torch.rot90(x, r, dims=(2, 3)))
    images, labels = pretext.random_rotations(x.repeat(20, 1, 1, 1), _gen())
    assert set(labels.tolist()) == {0, 1, 2, 3}  # 60 draws hit every class
    for i in range(len(labels)):
        assert torch.equal(images[i], torch.rot90(x[i % 3], int(labels[i]), dims=(1, 2)))


@pytest.mark.parametrize("all_rotations", [True, False])
def test_rotation_step(all_rotations):
    out = _one_step("rotation", all_rotations=all_rotations)
    assert torch.isfinite(out["loss"])
    # rotation accuracy over the batch: 4 images in each of 4 rotations, or each in one random rotation
    correct_of(out["proxy_acc"].item(), 16 if all_rotations else 4)
    if all_rotations:  # the same 16 predictions, recomputed from the method's classifier
        torch.manual_seed(0)
        method = ssl_models.create_method("rotation", backbone="tiny_cnn", in_channels=1, image_size=32)
        images, labels = pretext.all_rotations(torch.rand(4, 1, 32, 32) * 2 - 1)
        with torch.no_grad():
            first = method.classifier(method.encoder(images)).argmax(dim=1)
        assert out["proxy_acc"].item() == pytest.approx((first == labels).float().mean().item())
    # An untrained 4-way classifier starts near log(4).
    assert out["loss"].item() == pytest.approx(np.log(4), abs=0.5)


# --- masked_mse -------------------------------------------------------------------


def test_masked_mse_matches_numpy_and_ignores_pixels_outside_the_mask():
    rng = np.random.default_rng(0)
    pred, target = rng.normal(size=(2, 3, 6, 6)), rng.normal(size=(2, 3, 6, 6))
    mask = rng.random(size=(2, 1, 6, 6)) < 0.3
    full = np.broadcast_to(mask, pred.shape)
    expected = ((pred - target) ** 2)[full].mean()
    got = masked_mse(torch.tensor(pred), torch.tensor(target), torch.tensor(mask))
    assert got.item() == pytest.approx(expected, rel=1e-12)
    # Changing the target (or the prediction) outside the mask changes nothing, and gets no gradient.
    other = torch.tensor(np.where(full, target, 100.0))
    p = torch.tensor(pred, requires_grad=True)
    loss = masked_mse(p, other, torch.tensor(mask))
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    loss.backward()
    assert torch.all(p.grad[~torch.tensor(full)] == 0) and torch.all(p.grad[torch.tensor(full)] != 0)


# --- patches and jigsaw -------------------------------------------------------------


def _assemble(tiles: torch.Tensor, grid: int) -> torch.Tensor:
    """(N, grid*grid, C, t, t) tiles in raster order -> (N, C, grid*t, grid*t) image."""
    n, _, c, t, _ = tiles.shape
    return tiles.view(n, grid, grid, c, t, t).permute(0, 3, 1, 4, 2, 5).reshape(n, c, grid * t, grid * t)


def test_grid_corners_centre_patches_in_their_cells_and_jitter_stays_inside():
    tops, lefts = pretext.grid_corners(2, 32, 3, 8, 0)
    # 10 px cells start at 1 (the 30 px grid is centred in 32 px); 8 px patches sit 1 px into each cell.
    assert tops[0].tolist() == [2, 2, 2, 12, 12, 12, 22, 22, 22]
    assert lefts[1].tolist() == [2, 12, 22] * 3
    tops, lefts = pretext.grid_corners(500, 32, 3, 8, 1, generator=_gen())
    cell_top = 1 + 10 * torch.arange(3).repeat_interleave(3)
    assert torch.all(tops >= cell_top) and torch.all(tops + 8 <= cell_top + 10)
    assert set((tops - tops[:1].new_tensor([2, 2, 2, 12, 12, 12, 22, 22, 22])).unique().tolist()) == {-1, 0, 1}
    with pytest.raises(ValueError, match="jitter"):
        pretext.grid_corners(1, 32, 3, 8, 2)


def test_crop_patches_matches_slicing():
    x = torch.randn(3, 2, 16, 16)
    tops = torch.tensor([[0, 5], [3, 9], [10, 1]])
    lefts = torch.tensor([[7, 0], [2, 2], [11, 4]])
    patches = pretext.crop_patches(x, tops, lefts, 5)
    assert patches.shape == (3, 2, 2, 5, 5)
    for i in range(3):
        for p in range(2):
            top, left = int(tops[i, p]), int(lefts[i, p])
            assert torch.equal(patches[i, p], x[i, :, top : top + 5, left : left + 5])


def test_shuffled_tiles_hold_the_permuted_tiles_and_the_inverse_restores_the_image():
    x = torch.randn(4, 3, 30, 30)
    tops, lefts = pretext.grid_corners(4, 30, 3, 10, 0)
    tiles = pretext.crop_patches(x, tops, lefts, 10)
    assert torch.equal(_assemble(tiles, 3), x)
    perms = torch.tensor(pretext.jigsaw_permutations(100))[torch.tensor([0, 7, 42, 99])]
    puzzles = pretext.shuffle_tiles(tiles, perms)
    for i in range(4):
        for j in range(9):
            assert torch.equal(puzzles[i, j], tiles[i, perms[i, j]])
    assert not torch.equal(_assemble(puzzles, 3), x)
    assert torch.equal(_assemble(pretext.shuffle_tiles(puzzles, perms.argsort(dim=1)), 3), x)


@pytest.mark.parametrize(("count", "min_distance"), [(100, 6), (1000, 4)])
def test_jigsaw_permutations_are_distinct_permutations_with_the_stated_hamming_distance(count, min_distance):
    perms = pretext.jigsaw_permutations(count)
    assert perms.shape == (count, 9)
    assert np.all(np.sort(perms, axis=1) == np.arange(9))  # each row is a permutation of the 9 tiles
    assert len(np.unique(perms, axis=0)) == count
    distances = (perms[:, None, :] != perms[None, :, :]).sum(-1)
    assert distances[~np.eye(count, dtype=bool)].min() == min_distance
    # Deterministic: every worker and every run get the same set.
    assert np.array_equal(pretext.jigsaw_permutations.__wrapped__(count), perms)
    with pytest.raises(ValueError, match="num_permutations"):
        pretext.jigsaw_permutations(30, num_tiles=4)  # only 4! = 24 exist


def test_standardize_patches_gives_zero_mean_unit_std_per_patch_and_channel():
    out = pretext.standardize_patches(torch.randn(2, 9, 3, 8, 8) * 5 + 3)
    assert torch.allclose(out.mean(dim=(-2, -1)), torch.zeros(2, 9, 3), atol=1e-5)
    assert torch.allclose(out.std(dim=(-2, -1), unbiased=False), torch.ones(2, 9, 3), atol=1e-4)


def test_jigsaw_step_and_bad_tile_size():
    out = _one_step("jigsaw")
    assert torch.isfinite(out["loss"]) and out["loss"].item() == pytest.approx(np.log(100), abs=1.0)
    with pytest.raises(ValueError, match=r"tile_size must be in 1..10 .* got 11"):
        ssl_models.create_method("jigsaw", backbone="tiny_cnn", tile_size=11)
    with pytest.raises(ValueError, match=r"jitter must be in 0..1 for 8 px tiles, got 2"):
        ssl_models.create_method("jigsaw", backbone="tiny_cnn", jitter=2)


# --- relative position ----------------------------------------------------------------


def test_relative_position_labels_match_the_neighbour_offsets():
    # Each pixel of cell (row, col) of the centred 3x3 grid of 10 px cells holds the cell's index.
    coords = (torch.arange(32) - 1).clamp(0, 29) // 10
    cells = (coords.view(-1, 1) * 3 + coords.view(1, -1)).float()
    x = cells.expand(200, 1, 32, 32)
    centre, neighbour, labels = pretext.relative_position_pairs(x, patch_size=6, jitter=1, generator=_gen())
    assert centre.shape == neighbour.shape == (200, 1, 6, 6)
    assert torch.all(centre == pretext.CENTRE_CELL)
    assert set(labels.tolist()) == set(range(8))
    offsets = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]  # raster order, as in the paper
    for i in range(200):
        values = neighbour[i].unique()
        assert len(values) == 1  # the whole patch lies in one cell
        cell = int(values)
        assert (cell // 3 - 1, cell % 3 - 1) == offsets[int(labels[i])]


def test_relative_position_step_and_bad_patch_size():
    out = _one_step("relative_position")
    assert torch.isfinite(out["loss"]) and out["loss"].item() == pytest.approx(np.log(8), abs=0.7)
    with pytest.raises(ValueError, match=r"patch_size must be in 1..10 .* got 12"):
        ssl_models.create_method("relative_position", backbone="tiny_cnn", patch_size=12)


# --- colorization ---------------------------------------------------------------------


def test_colorization_input_is_gray_luma_and_the_target_gives_back_the_colours():
    rng = np.random.default_rng(0)
    raw = rng.random(size=(2, 3, 8, 8))  # RGB in [0, 1]
    x = torch.tensor(raw * 2 - 1)  # normalized as views.normalize does
    gray = pretext.gray_input(x)
    luma = 0.299 * raw[:, 0] + 0.587 * raw[:, 1] + 0.114 * raw[:, 2]
    for c in range(3):  # every channel equals the normalized luma of the raw image
        assert np.allclose(gray[:, c].numpy(), luma * 2 - 1, atol=1e-12)
    chroma = pretext.chroma_target(x, 8)
    y = pretext.luminance(x)[:, 0]
    r, b = y + chroma[:, 0], y + chroma[:, 1]
    g = (y - 0.299 * r - 0.114 * b) / 0.587
    assert torch.allclose(torch.stack([r, g, b], 1), x, atol=1e-12)
    assert torch.allclose(pretext.chroma_target(x, 2), torch.nn.functional.avg_pool2d(chroma, 4), atol=1e-12)
    assert torch.allclose(
        pretext.chroma_target(gray, 4), torch.zeros(2, 2, 4, 4, dtype=torch.float64), atol=1e-12
    )  # gray has no colour


def test_colorization_step_and_gray_data():
    out = _one_step("colorization", channels=3)
    assert torch.isfinite(out["loss"])
    # the share of the 4 x 8 x 8 target pixels whose predicted chroma is within the tolerance, recomputed
    torch.manual_seed(0)
    method = ssl_models.create_method("colorization", backbone="tiny_cnn", in_channels=3, image_size=32)
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    target = pretext.chroma_target(x, method.target_size)
    with torch.no_grad():
        error = (method.decoder(method.encoder(x)).view_as(target) - target).norm(dim=1)
    assert correct_of(out["proxy_acc"].item(), 256) == int((error <= method.tolerance).sum())
    with pytest.raises(ValueError) as err:
        ssl_models.create_method("colorization", backbone="tiny_cnn", in_channels=1)
    assert str(err.value) == (
        "colorization needs RGB images (in_channels=3); these shards have 1 channel — pick another method or RGB data"
    )


def test_colorization_proxy_acc_counts_pixels_within_tolerance():
    torch.manual_seed(0)
    method = ssl_models.create_method("colorization", backbone="tiny_cnn", image_size=32)
    gray = torch.rand(4, 1, 32, 32).expand(-1, 3, -1, -1) * 2 - 1
    torch.nn.init.zeros_(method.decoder[-1].weight)
    torch.nn.init.zeros_(method.decoder[-1].bias)
    out = method({"view_0": gray})  # predicts 0 chroma, right for gray images
    assert out["loss"].item() < 1e-12 and out["proxy_acc"].item() == 1
    # Every pixel redder by d: the chroma error is |(0.701 d, -0.299 d)| = 0.762 d, so within 0.1 for d = 0.1, not 0.3.
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    assert method({"view_0": gray + 0.1 * red})["proxy_acc"].item() == 1
    assert method({"view_0": gray + 0.3 * red})["proxy_acc"].item() == 0


# --- inpainting ------------------------------------------------------------------------


def test_central_mask_covers_the_central_quarter_and_random_masks_move():
    masks = pretext.square_masks(2, 32, 16, random_position=False)
    assert masks.shape == (2, 1, 32, 32) and masks.dtype == torch.bool
    expected = torch.zeros(32, 32, dtype=torch.bool)
    expected[8:24, 8:24] = True
    assert torch.equal(masks[0, 0], expected) and torch.equal(masks[1, 0], expected)
    assert masks.float().mean().item() == 0.25
    masks = pretext.square_masks(100, 32, 16, random_position=True, generator=_gen())
    assert torch.all(masks.sum(dim=(1, 2, 3)) == 256)  # a whole 16x16 square every time
    rows = masks.any(dim=3)[:, 0].float().argmax(dim=1)  # first masked row of each sample
    assert rows.min() == 0 and rows.max() == 16 and len(rows.unique()) > 10
    x = torch.randn(100, 3, 32, 32)
    masked = pretext.mask_images(x, masks)
    hidden = masks.expand_as(x)
    assert torch.all(masked[hidden] == 0) and torch.equal(masked[~hidden], x[~hidden])


def test_inpainting_loss_is_the_error_on_the_central_square_only():
    torch.manual_seed(0)
    method = ssl_models.create_method("inpainting", backbone="tiny_cnn", in_channels=1, image_size=32)
    method.eval()  # BatchNorm on running statistics, so the prediction can be recomputed outside the step
    x = torch.rand(4, 1, 32, 32) * 2 - 1
    centre = torch.zeros(32, 32, dtype=torch.bool)
    centre[8:24, 8:24] = True
    out = method({"view_0": x})
    pred = method.decoder(method.encoder(x.masked_fill(centre, 0))).view_as(x)
    error = (pred - x)[:, :, centre]
    assert out["loss"].item() == pytest.approx((error**2).mean().item(), rel=1e-6)
    assert out["proxy_acc"].item() == pytest.approx((error.abs() <= 0.1).float().mean().item())
    with pytest.raises(ValueError, match="mask_position must be one of center, random"):
        ssl_models.create_method("inpainting", backbone="tiny_cnn", mask_position="edge")
    assert torch.isfinite(_one_step("inpainting", mask_position="random")["loss"])


def test_relative_position_patches_are_jittered_at_fashion_mnist_size():
    # At 28 px the cells are 9 px and the patches 6 px: a quarter of the 3 px margin rounded to 0 jitter,
    # so every patch sat on a fixed grid. At least 1 px now, at 28 and at 32 px, and never more than half the margin.
    for size in (28, 32):
        method = ssl_models.create_method("relative_position", backbone="tiny_cnn", in_channels=1, image_size=size)
        assert 1 <= method.jitter and 2 * method.jitter <= size // 3 - method.patch_size
    tops, lefts = pretext.grid_corners(256, 28, 3, 6, 1, torch.device("cpu"), _gen())
    assert len(torch.unique(tops[:, 4])) == 3 and len(torch.unique(lefts[:, 4])) == 3  # the centre patch moves


def test_colorization_targets_keep_their_colour_and_the_encoder_sees_luma():
    from ssl_models.methods.colorization import Colorization

    # one saturated photo-like image, 200 times: every view's chroma target must carry colour
    rng = np.random.default_rng(0)
    image = np.zeros((200, 16, 16, 3), dtype=np.uint8)
    image[..., 0] = rng.integers(150, 255, (16, 16))  # reddish everywhere
    image[..., 2] = rng.integers(0, 60, (16, 16))
    settings = dict(image_size=16, seed=0)
    before = ssl_models.create_views("multi_view", **settings).apply(torch.from_numpy(image))["view_0"]
    after = ssl_models.create_views("multi_view", **settings, **Colorization.view_kwargs).apply(torch.from_numpy(image))["view_0"]

    def colourless(views):
        return int((pretext.chroma_target(views, 4).abs().amax(dim=(1, 2, 3)) < 1e-3).sum())

    assert colourless(before) > 20  # grayscale p 0.2: about one target in five had no colour at all
    assert colourless(after) == 0
    method = ssl_models.create_method("colorization", backbone="tiny_cnn", image_size=16).eval()
    colour = torch.rand(4, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(method.encoder(colour), method.encoder(pretext.gray_input(colour)))
