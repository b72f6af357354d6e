"""SimMIM and I-JEPA: losses against references written from the authors' code, masks, mask token, EMA target."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ssl_models
from ssl_models.losses import ijepa_loss, simmim_loss
from ssl_models.methods.ijepa import MultiBlockMasks, block_size, gather_tokens, linear_momentum
from ssl_models.methods.simmim import default_mask_patch_size, simmim_mask


def _images(n: int = 4, channels: int = 1, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- SimMIM


def simmim_loss_reference(x: np.ndarray, x_rec: np.ndarray, mask: np.ndarray, patch: int) -> float:
    """microsoft/SimMIM models/simmim.py SimMIM.forward in NumPy: the patch mask blown up to pixels,
    L1 summed where masked, / (mask.sum() + 1e-5) / in_chans."""
    pixel_mask = mask.repeat(patch, axis=1).repeat(patch, axis=2)[:, None]  # (N, 1, H, W)
    loss_recon = np.abs(x - x_rec)
    return float((loss_recon * pixel_mask).sum() / (pixel_mask.sum() + 1e-5) / x.shape[1])


@pytest.mark.parametrize("channels", [1, 3])
def test_simmim_loss_matches_the_reference(channels):
    rng = np.random.default_rng(0)
    x, x_rec = rng.normal(size=(3, channels, 16, 16)), rng.normal(size=(3, channels, 16, 16))
    mask = (rng.random(size=(3, 4, 4)) < 0.6).astype(np.float64)
    got = simmim_loss(torch.tensor(x_rec), torch.tensor(x), torch.tensor(mask)).item()
    assert got == pytest.approx(simmim_loss_reference(x, x_rec, mask, 4), abs=1e-5)
    # with float32 tensors, as training sees them
    got32 = simmim_loss(torch.tensor(x_rec).float(), torch.tensor(x).float(), torch.tensor(mask).float()).item()
    assert got32 == pytest.approx(simmim_loss_reference(x, x_rec, mask, 4), abs=1e-5)


def test_simmim_loss_touches_only_masked_patches():
    rng = np.random.default_rng(1)
    x, x_rec = torch.tensor(rng.normal(size=(2, 1, 8, 8))), torch.tensor(rng.normal(size=(2, 1, 8, 8)))
    mask = torch.zeros(2, 2, 2, dtype=torch.float64)
    mask[0, 0, 1] = mask[1, 1, 0] = 1  # patch (row 0, column 1) of image 0 and (1, 0) of image 1: 4 x 4 px each
    loss = simmim_loss(x_rec, x, mask)
    unmasked = x.clone()
    unmasked[0, :, 4:, :] += 10.0  # image 0's bottom row of patches: both visible
    assert simmim_loss(x_rec, unmasked, mask).item() == pytest.approx(loss.item(), abs=1e-12)
    masked = x.clone()
    masked[0, :, 0, 5] += 10.0  # one pixel of the masked patch
    assert simmim_loss(x_rec, masked, mask).item() > loss.item() + 0.1


@pytest.mark.parametrize(
    ("image_size", "patch", "expected"), [(28, 4, 4), (32, 4, 4), (64, 8, 8), (224, 16, 32), (192, 16, 32), (192, 4, 32)]
)
def test_simmim_mask_size_is_the_papers_share_of_the_side(image_size, patch, expected):
    assert default_mask_patch_size(image_size, patch) == expected


def test_simmim_masks_cover_the_ratio_in_squares_anew_per_sample():
    mask = simmim_mask(64, grid_size=8, group=2, mask_ratio=0.6, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (64, 8, 8)
    squares = mask[:, ::2, ::2]  # one entry per 2 x 2 square
    assert torch.equal(mask, squares.repeat_interleave(2, 1).repeat_interleave(2, 2))
    assert (squares.flatten(1).sum(1) == math.ceil(16 * 0.6)).all()  # MaskGenerator: ceil(squares * ratio)
    assert len({tuple(m.flatten().tolist()) for m in mask}) > 60  # drawn per sample


def _simmim(**kwargs):
    torch.manual_seed(0)
    return ssl_models.create_method("simmim", backbone="vit_micro", in_channels=1, image_size=32, **kwargs)


def simmim_forward_reference(method, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """VisionTransformerForSimMIM.forward + SimMIM.forward written out on the method's weights:
    patch embed, mask token in place of masked embeddings, cls, + pos_embed, blocks, norm, drop cls,
    1x1 conv, pixel shuffle (by reshapes), L1 on masked pixels."""
    vit = method.encoder
    z = F.conv2d(x, vit.patch_embed.weight, vit.patch_embed.bias, stride=vit.patch_size).flatten(2).transpose(1, 2)
    b, length, _ = z.shape
    mask_token = method.mask_token.expand(b, length, -1)
    w = mask.flatten(1).unsqueeze(-1).type_as(mask_token)
    z = z * (1 - w) + mask_token * w
    z = torch.cat((vit.cls_token.expand(b, -1, -1), z), dim=1) + vit.pos_embed
    for blk in vit.blocks:
        z = blk(z)
    z = vit.norm(z)[:, 1:]
    h = int(length**0.5)
    z = z.permute(0, 2, 1).reshape(b, -1, h, h)
    conv = method.decoder[0]
    out = torch.einsum("bchw,oc->bohw", z, conv.weight[:, :, 0, 0]) + conv.bias[None, :, None, None]
    r, c = vit.patch_size, x.shape[1]
    x_rec = out.reshape(b, c, r, r, h, h).permute(0, 1, 4, 2, 5, 3).reshape(b, c, h * r, h * r)  # PixelShuffle
    pixel_mask = mask.repeat_interleave(r, 1).repeat_interleave(r, 2).unsqueeze(1)
    loss = (F.l1_loss(x, x_rec, reduction="none") * pixel_mask).sum() / (pixel_mask.sum() + 1e-5) / c
    return x_rec, loss


def test_simmim_forward_matches_the_authors_forward():
    method = _simmim()
    x = _images()
    mask = method.mask_for(4, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (4, 8, 8) and (mask.flatten(1).sum(1) == math.ceil(64 * 0.6)).all()
    rec = method.reconstruct(x, mask)
    ref_rec, ref_loss = simmim_forward_reference(method, x, mask)
    torch.testing.assert_close(rec, ref_rec, atol=1e-5, rtol=0)
    assert simmim_loss(rec, x, mask).item() == pytest.approx(ref_loss.item(), abs=1e-5)


def test_simmim_mask_token_gets_a_gradient_and_one_step_trains_it():
    method = _simmim()
    views = method.make_views(seed=0).apply(torch.randint(0, 255, (4, 36, 36, 1), dtype=torch.uint8))
    before = method.mask_token.detach().clone()
    optimizer = torch.optim.AdamW(method.parameters(), lr=1e-3)
    out = method(views)
    assert torch.isfinite(out["loss"]) and 0 <= out["proxy_acc"].item() <= 1
    out["loss"].backward()
    assert method.mask_token.grad is not None and method.mask_token.grad.abs().sum() > 0
    optimizer.step()
    method.on_step_end(0, 10)  # SimMIM keeps no state: nothing to update
    assert not torch.equal(method.mask_token, before)


def test_simmim_views_are_crop_and_flip_only_and_bad_arguments_are_refused():
    policy = _simmim().make_views(seed=0)
    assert policy.num_views == 1 and policy.crop_scale == (0.67, 1.0) and policy.flip_p == 0.5
    assert policy.jitter_p == policy.grayscale_p == policy.blur_p == 0.0
    with pytest.raises(ValueError, match="simmim needs a ViT backbone"):
        ssl_models.create_method("simmim", backbone="tiny_cnn", in_channels=1)
    with pytest.raises(ValueError, match="mask_patch_size 6 must be a multiple"):
        _simmim(mask_patch_size=6)
    with pytest.raises(ValueError, match="mask_ratio"):
        _simmim(mask_ratio=1.0)


# ---------------------------------------------------------------- I-JEPA


def apply_masks_reference(x: torch.Tensor, masks: list[torch.Tensor]) -> torch.Tensor:
    """facebookresearch/ijepa src/masks/utils.py apply_masks: gather each mask's rows, concatenated over masks."""
    return torch.cat([torch.gather(x, 1, m.unsqueeze(-1).repeat(1, 1, x.size(-1))) for m in masks], dim=0)


def ijepa_loss_reference(h: np.ndarray, masks_pred: list[np.ndarray], z: np.ndarray) -> float:
    """src/train.py forward_target + loss_fn in NumPy: layer norm over features (eps 1e-5), apply_masks,
    smooth L1 (beta 1) averaged over every element; ``z`` in the reference's (M * B, K, D) order."""
    h = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-5)
    targets = np.concatenate([np.stack([h[b, m[b]] for b in range(len(h))]) for m in masks_pred])
    d = np.abs(z - targets)
    return float(np.where(d < 1.0, 0.5 * d**2, d - 0.5).mean())


def test_ijepa_loss_matches_the_reference():
    rng = np.random.default_rng(0)
    n, length, dim, blocks, k = 3, 16, 8, 4, 5
    h = rng.normal(size=(n, length, dim)) * 3 + 1
    masks_pred = [np.stack([rng.choice(length, k, replace=False) for _ in range(n)]) for _ in range(blocks)]
    z = rng.normal(size=(blocks * n, k, dim)) * 1.5  # differences both below and above the smooth L1's beta
    expected = ijepa_loss_reference(h, masks_pred, z)
    # ours: (N, M, K) indices and (N, M, K, D) predictions
    target_idx = torch.tensor(np.stack(masks_pred, axis=1))
    predictions = torch.tensor(z).reshape(blocks, n, k, dim).transpose(0, 1)
    targets = gather_tokens(torch.tensor(h), target_idx)
    torch.testing.assert_close(
        targets.transpose(0, 1).reshape(blocks * n, k, dim), apply_masks_reference(torch.tensor(h), list(target_idx.unbind(1)))
    )
    assert ijepa_loss(predictions, targets).item() == pytest.approx(expected, abs=1e-5)
    assert ijepa_loss(predictions.float(), targets.float()).item() == pytest.approx(expected, abs=1e-5)


def block_size_reference(height: int, width: int, scale, aspect_ratio, rand: float) -> tuple[int, int]:
    """src/masks/multiblock.py MaskCollator._sample_block_size with its random draw given."""
    mask_scale = scale[0] + rand * (scale[1] - scale[0])
    max_keep = int(height * width * mask_scale)
    ar = aspect_ratio[0] + rand * (aspect_ratio[1] - aspect_ratio[0])
    h = int(round(math.sqrt(max_keep * ar)))
    w = int(round(math.sqrt(max_keep / ar)))
    while h >= height:
        h -= 1
    while w >= width:
        w -= 1
    return h, w


@pytest.mark.parametrize("grid", [7, 8, 14, 16])
def test_ijepa_block_sizes_follow_the_reference(grid):
    for rand in np.linspace(0, 1, 21):
        for scale, ratio in (((0.15, 0.2), (0.75, 1.5)), ((0.85, 1.0), (1.0, 1.0))):
            assert block_size(grid, scale, ratio, rand) == block_size_reference(grid, grid, scale, ratio, rand)


def _bounding_box(indices: torch.Tensor, grid: int) -> tuple[int, int]:
    rows, cols = indices // grid, indices % grid
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


@pytest.mark.parametrize("grid", [7, 14])
def test_ijepa_multiblock_masks_sizes_and_disjointness(grid):
    masks = MultiBlockMasks(grid)
    gen = torch.Generator().manual_seed(0)
    reached_last_row, crowded = False, 0
    for _ in range(5):
        state = gen.get_state()
        target_size, context_size = masks.sizes(gen)
        gen.set_state(state)  # the calls below draw the same sizes first
        _, _, dropped = masks.block_masks(32, generator=gen)
        gen.set_state(state)
        context, targets = masks(32, generator=gen)
        crowded += int((dropped > 0).sum())
        assert targets.shape == (32, 4, target_size[0] * target_size[1])
        assert context.shape[0] == 32 and masks.min_context < context.shape[1] <= context_size[0] * context_size[1]
        assert 0.15 * grid**2 * 0.8 <= targets.shape[2] <= 0.2 * grid**2 * 1.2  # about the target scale
        for b in range(32):
            assert len(set(context[b].tolist())) == context.shape[1]  # distinct, and in raster order
            assert torch.equal(context[b], context[b].sort().values)
            h, w = _bounding_box(context[b], grid)
            assert h <= context_size[0] and w <= context_size[1]  # inside one context block
            for m in range(4):
                assert _bounding_box(targets[b, m], grid) == target_size  # a full h x w rectangle
                # the context has every target removed from it; as in the reference, when no context block
                # keeps more than min_context patches after 20 draws, the last target is no longer removed
                if m < 4 - int(dropped[b]):
                    assert not set(context[b].tolist()) & set(targets[b, m].tolist())
            reached_last_row |= bool((targets[b] // grid == grid - 1).any())
    assert reached_last_row  # unlike the reference, blocks may touch the last row
    # crowded contexts are rare at 7 x 7 (4 targets of 9 patches in 49) and absent at 14 x 14
    assert crowded <= (0.05 * 160 if grid == 7 else 0)


def test_ijepa_context_is_cut_to_the_batch_smallest_keeping_its_first_patches():
    masks = MultiBlockMasks(7, min_context=4)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(3)
    state = gen.get_state()
    full, _, _ = masks.block_masks(16, generator=gen)
    gen.set_state(state)
    context, _ = masks(16, generator=gen)
    counts = full.flatten(1).sum(1)
    assert context.shape[1] == int(counts.min())
    for b in range(16):
        assert context[b].tolist() == torch.nonzero(full[b].flatten()).squeeze(1)[: context.shape[1]].tolist()


def test_ijepa_masks_refuse_a_context_that_cannot_keep_min_context():
    with pytest.raises(ValueError, match="min_context"):
        MultiBlockMasks(7, min_context=36)


def _ijepa(**kwargs):
    torch.manual_seed(0)
    return ssl_models.create_method(
        "ijepa",
        backbone="vit_micro",
        in_channels=1,
        image_size=32,
        predictor_dim=32,
        predictor_depth=2,
        predictor_heads=2,
        **kwargs,
    )


def test_ijepa_predictor_outputs_sit_at_the_target_positions():
    method = _ijepa()
    predictor = method.predictor
    x = _images(n=2)
    context_idx, target_idx = method.masks(2, generator=torch.Generator().manual_seed(0))
    context = method.encode_context(x, context_idx)
    with torch.no_grad():
        out = predictor(context, context_idx, target_idx)
        assert out.shape == (*target_idx.shape, method.encoder.num_features)
        # permuting a block's positions permutes its outputs the same way: slot k predicts position target_idx[..., k]
        perm = torch.randperm(target_idx.shape[2], generator=torch.Generator().manual_seed(1))
        permuted = predictor(context, context_idx, target_idx[:, :, perm])
        torch.testing.assert_close(permuted, out[:, :, perm], atol=1e-5, rtol=0)
        # every block is predicted on its own (the context repeated per block): moving block 1 leaves block 0 alone
        moved = target_idx.clone()
        moved[:, 1] = (moved[:, 1] + 1) % method.encoder.num_patches
        other = predictor(context, context_idx, moved)
        torch.testing.assert_close(other[:, 0], out[:, 0], atol=1e-5, rtol=0)
        assert not torch.allclose(other[:, 1], out[:, 1])
        alone = predictor(context, context_idx, target_idx[:, :1])
        torch.testing.assert_close(alone[:, 0], out[:, 0], atol=1e-5, rtol=0)


def test_ijepa_target_encoder_gets_no_gradient_and_moves_only_in_on_step_end():
    method = _ijepa()
    target_params = list(method.target_encoder.parameters())
    assert target_params and all(not p.requires_grad for p in target_params)
    before = [p.detach().clone() for p in target_params]
    views = method.make_views(seed=0).apply(torch.randint(0, 255, (4, 36, 36, 1), dtype=torch.uint8))
    optimizer = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=1e-3)
    out = method(views)
    assert torch.isfinite(out["loss"]) and 0 <= out["proxy_acc"].item() <= 1
    out["loss"].backward()
    assert all(p.grad is None for p in target_params)
    assert method.predictor.mask_token.grad.abs().sum() > 0 and method.encoder.cls_token.grad.abs().sum() > 0
    optimizer.step()
    assert all(torch.equal(p, b) for p, b in zip(target_params, before, strict=True))  # forward and step: unchanged
    online = [p.detach().clone() for p in method.encoder.parameters()]
    method.on_step_end(0, 10)
    for t, b, o in zip(target_params, before, online, strict=True):
        torch.testing.assert_close(t, 0.996 * b + 0.004 * o)  # the first step's momentum, 0.996
    assert any(not torch.equal(t, b) for t, b in zip(target_params, before, strict=True))


def test_ijepa_momentum_is_linear_from_0996_to_1():
    assert linear_momentum(0, 100, 0.996) == pytest.approx(0.996)
    assert linear_momentum(50, 100, 0.996) == pytest.approx(0.998)
    assert linear_momentum(100, 100, 0.996) == pytest.approx(1.0)
    assert linear_momentum(200, 100, 0.996) == pytest.approx(1.0)


def test_ijepa_loss_uses_the_target_encoders_layer_normed_features():
    method = _ijepa()
    x = _images(n=2)
    context_idx, target_idx = method.masks(2, generator=torch.Generator().manual_seed(0))
    predictions = method.predictor(method.encode_context(x, context_idx), context_idx, target_idx)
    with torch.no_grad():
        h = method.target_encoder.forward_features(x)[:, 1:]  # patch tokens of the whole image
        h = F.layer_norm(h, (h.size(-1),))
        expected = F.smooth_l1_loss(predictions, gather_tokens(h, target_idx))
    assert ijepa_loss(predictions, method.target_features(x, target_idx)).item() == pytest.approx(expected.item(), abs=1e-6)


def test_ijepa_views_are_crops_only_and_bad_arguments_are_refused():
    policy = _ijepa().make_views(seed=0)
    assert policy.num_views == 1 and policy.crop_scale == (0.3, 1.0)
    assert policy.flip_p == policy.jitter_p == policy.grayscale_p == policy.blur_p == 0.0
    with pytest.raises(ValueError, match="ijepa needs a ViT backbone"):
        ssl_models.create_method("ijepa", backbone="tiny_cnn", in_channels=1)
    with pytest.raises(ValueError, match="momentum"):
        _ijepa(momentum=1.5)
