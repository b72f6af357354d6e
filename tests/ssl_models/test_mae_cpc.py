"""The ViT backbone, MAE (masking, masked-patch loss) and CPC (patch grid, causal context, InfoNCE)."""

import numpy as np
import pytest
import torch
import torch.distributed as dist

import ssl_models
from ssl_models.backbones.vit import patchify, sincos_pos_embed_2d
from ssl_models.losses import cpc_infonce, mae_loss
from ssl_models.methods.cpc import CPCContextNetwork, cpc_patch_geometry, extract_patches
from ssl_models.methods.mae import masked_patch_accuracy, random_masking
from tests.conftest import correct_of
from tests.ssl_models.gloo import run_distributed

# ---------------------------------------------------------------- ViT backbone


@pytest.mark.parametrize(("image_size", "grid"), [(28, 7), (32, 8)])
def test_vit_micro_shapes(image_size, grid):
    net = ssl_models.create_backbone("vit_micro", in_channels=1, image_size=image_size)
    x = torch.randn(3, 1, image_size, image_size)
    assert net.patch_size == 4 and net.num_patches == grid * grid
    assert net(x).shape == (3, net.num_features) == (3, 32)
    assert net.patch_tokens(x).shape == (3, grid * grid, 32)
    # forward pools the cls token: the first output token
    torch.testing.assert_close(net(x), net.forward_features(x)[:, 0])


def test_vit_tiny_has_deit_tiny_size():
    net = ssl_models.create_backbone("vit_tiny", in_channels=3, image_size=32)
    assert net.num_features == 192 and len(net.blocks) == 12
    assert net.blocks[0].self_attn.num_heads == 3
    assert net(torch.zeros(1, 3, 32, 32)).shape == (1, 192)


def test_vit_rejects_patch_size_that_does_not_divide_the_image():
    with pytest.raises(ValueError, match="patch size 8 does not divide image size 36"):
        ssl_models.create_backbone("vit_micro", in_channels=1, image_size=36)
    net = ssl_models.create_backbone("vit_micro", in_channels=1, image_size=32)
    with pytest.raises(ValueError, match="built for 32 px"):
        net(torch.zeros(1, 1, 28, 28))


def test_patchify_follows_the_token_order():
    images = torch.randn(2, 3, 8, 12)
    patches = patchify(images, 4)
    assert patches.shape == (2, 6, 48)
    # token 4 is row 1, column 1; each patch is flattened (row, column, channel)
    torch.testing.assert_close(patches[:, 4], images[:, :, 4:8, 4:8].permute(0, 2, 3, 1).reshape(2, 48))


def test_sincos_position_embeddings():
    pos = sincos_pos_embed_2d(3, 8)
    assert pos.shape == (9, 8)
    # position (row 0, col 0) is sin(0)=0 and cos(0)=1 for every frequency
    torch.testing.assert_close(pos[0], torch.tensor([0.0, 0, 1, 1, 0, 0, 1, 1]))
    # tokens in the same row share the row half of the embedding
    torch.testing.assert_close(pos[3, :4], pos[5, :4])
    assert not torch.equal(pos[3, 4:], pos[5, 4:])


# ---------------------------------------------------------------- MAE


def test_random_masking_keeps_the_right_count_per_sample():
    tokens = torch.arange(8 * 49, dtype=torch.float32).reshape(8, 49, 1).expand(-1, -1, 3).contiguous()
    gen = torch.Generator().manual_seed(0)
    visible, mask, ids_restore = random_masking(tokens, 0.75, generator=gen)
    keep = round(49 * 0.25)  # 12
    assert visible.shape == (8, keep, 3)
    assert torch.equal(mask.sum(dim=1), torch.full((8,), 49.0 - keep))
    # visible tokens are exactly the unmasked ones
    for i in range(8):
        assert sorted(visible[i, :, 0].tolist()) == tokens[i, mask[i] == 0, 0].tolist()
    # a different subset for every sample
    assert len({tuple(mask[i].tolist()) for i in range(8)}) == 8
    # ids_restore puts [visible, removed] back in the original order (what the decoder relies on)
    ids_shuffle = ids_restore.argsort(dim=1)
    removed = tokens.gather(1, ids_shuffle[:, keep:, None].expand(-1, -1, 3))
    restored = torch.cat([visible, removed], dim=1).gather(1, ids_restore[:, :, None].expand(-1, -1, 3))
    assert torch.equal(restored, tokens)


def mae_loss_reference(pred: np.ndarray, target: np.ndarray, mask: np.ndarray, norm_pix: bool) -> float:
    """The paper's code in NumPy: per-patch normalization (unbiased variance), MSE, mean over masked patches."""
    if norm_pix:
        mean = target.mean(axis=-1, keepdims=True)
        var = target.var(axis=-1, ddof=1, keepdims=True)
        target = (target - mean) / np.sqrt(var + 1e-6)
    per_patch = ((pred - target) ** 2).mean(axis=-1)
    return float((per_patch * mask).sum() / mask.sum())


@pytest.mark.parametrize("norm_pix", [True, False])
def test_mae_loss_matches_numpy_and_ignores_visible_patches(norm_pix):
    rng = np.random.default_rng(0)
    pred, target = rng.normal(size=(3, 5, 12)), rng.normal(size=(3, 5, 12))
    mask = (rng.random(size=(3, 5)) < 0.6).astype(np.float64)
    mask[0, 0], mask[0, 1] = 1, 0
    got = mae_loss(torch.tensor(pred), torch.tensor(target), torch.tensor(mask), norm_pix=norm_pix).item()
    assert got == pytest.approx(mae_loss_reference(pred, target, mask, norm_pix), rel=1e-10)
    changed = pred.copy()
    changed[mask == 0] += 100.0
    assert mae_loss(torch.tensor(changed), torch.tensor(target), torch.tensor(mask), norm_pix).item() == pytest.approx(got)


def test_masked_patch_accuracy_counts_beating_the_flat_patch():
    target = torch.randn(2, 4, 16)
    mask = torch.tensor([[1.0, 1, 0, 0], [1, 0, 1, 0]])
    assert masked_patch_accuracy(target, target, mask).item() == 1.0
    # a flat patch at the mean (plus 0.01, off rounding ties) has error var + 1e-4: never counts
    flat = target.mean(dim=-1, keepdim=True).expand_as(target) + 0.01
    assert masked_patch_accuracy(flat, target, mask).item() == 0.0
    half = target.clone()
    half[0, 0] = flat[0, 0]  # one of four masked patches worse than flat
    half[1, 1] = flat[1, 1]  # a visible patch: does not count
    assert masked_patch_accuracy(half, target, mask).item() == 0.75


def test_mae_refuses_bad_arguments():
    with pytest.raises(ValueError, match="mae needs a ViT backbone"):
        ssl_models.create_method("mae", backbone="tiny_cnn", in_channels=1)
    with pytest.raises(ValueError, match="mask_ratio"):
        ssl_models.create_method("mae", backbone="vit_micro", in_channels=1, mask_ratio=1.0)


def _one_adam_step_changes(method: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    before = {name: p.detach().clone() for name, p in method.named_parameters()}
    opt = torch.optim.Adam(method.parameters(), lr=1e-3)
    out = method(batch)
    out["loss"].backward()
    opt.step()
    unchanged = [name for name, p in method.named_parameters() if torch.equal(p, before[name])]
    assert not unchanged, unchanged
    return out


def _views(n: int = 4, channels: int = 1) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    policy = ssl_models.create_views("multi_view", image_size=32, num_views=1, seed=0)
    return policy.apply(torch.randint(0, 255, (n, 36, 36, channels), dtype=torch.uint8))


def test_mae_one_step_trains_encoder_and_decoder():
    method = ssl_models.create_method("mae", backbone="vit_micro", in_channels=1, image_size=32)
    out = _one_adam_step_changes(method, _views(n=1))  # one image per worker is enough for MAE
    assert torch.isfinite(out["loss"])
    correct_of(out["proxy_acc"].item(), 48)  # a share of the 48 masked patches (75% of 8 x 8)
    # untrained decoder outputs are near zero: the normalized-pixel MSE starts near the patch variance ~ 1
    assert 0.5 < out["loss"].item() < 2.0
    assert method.embed(torch.zeros(2, 1, 32, 32)).shape == (2, 32)


# ---------------------------------------------------------------- CPC


@pytest.mark.parametrize(("image_size", "grid", "expected"), [(32, 3, (16, 8)), (28, 3, (14, 7)), (256, 7, (64, 32))])
def test_cpc_patch_geometry(image_size, grid, expected):
    patch, stride = cpc_patch_geometry(image_size, grid)
    assert (patch, stride) == expected
    assert (image_size - patch) // stride + 1 == grid


def test_cpc_patches_tile_the_image_with_half_overlap():
    images = torch.randn(2, 3, 32, 32)
    patches = extract_patches(images, 16, 8)
    assert patches.shape == (2, 3, 3, 3, 16, 16)
    for i in range(3):
        for j in range(3):
            assert torch.equal(patches[:, i, j], images[:, :, i * 8 : i * 8 + 16, j * 8 : j * 8 + 16])
    # neighbouring patches share half their pixels
    assert torch.equal(patches[:, 0, 0, :, 8:], patches[:, 1, 0, :, :8])


def test_cpc_context_only_sees_rows_at_or_above():
    torch.manual_seed(0)
    net = CPCContextNetwork(4, num_layers=2)
    z = torch.randn(2, 4, 4, 4)
    changed = z.clone()
    changed[:, :, 2:] += 1.0  # rows 2 and 3
    c, c_changed = net(z), net(changed)
    torch.testing.assert_close(c[:, :, :2], c_changed[:, :, :2])
    assert not torch.allclose(c[:, :, 2], c_changed[:, :, 2])


def cpc_infonce_reference(pred: np.ndarray, targets: np.ndarray, positives: np.ndarray) -> float:
    """Equation 4 of arXiv:1807.03748 with f = exp(z^T W c): -log f(pos) / sum_l f(z_l), averaged."""
    total = 0.0
    for m in range(len(pred)):
        scores = np.array([np.exp(pred[m] @ z) for z in targets])
        total += -np.log(scores[positives[m]] / scores.sum())
    return total / len(pred)


def test_cpc_infonce_matches_numpy_reference():
    rng = np.random.default_rng(0)
    pred, targets = rng.normal(size=(5, 4)), rng.normal(size=(7, 4))
    positives = np.array([0, 3, 3, 6, 2])
    got = cpc_infonce(torch.tensor(pred), torch.tensor(targets), torch.tensor(positives)).item()
    assert got == pytest.approx(cpc_infonce_reference(pred, targets, positives), rel=1e-10)
    # without positive_index, row m of targets is the positive of prediction m
    got = cpc_infonce(torch.tensor(pred), torch.tensor(targets[:5])).item()
    assert got == pytest.approx(cpc_infonce_reference(pred, targets[:5], np.arange(5)), rel=1e-10)


def test_cpc_infonce_optimum_and_uniform_scores():
    # Zero scores give log(number of candidates); a huge positive score gives ~0.
    targets = torch.eye(6, dtype=torch.float64)
    assert cpc_infonce(torch.zeros(3, 6, dtype=torch.float64), targets, torch.tensor([0, 1, 2])).item() == pytest.approx(
        np.log(6)
    )
    assert cpc_infonce(50 * targets[:3], targets, torch.tensor([0, 1, 2])).item() == pytest.approx(0.0, abs=1e-12)


def _sharded_cpc(rank: int, world: int, pred, targets, positives, weight):
    n_pred, n_tgt = pred.shape[0] // world, targets.shape[0] // world
    w = weight.clone().requires_grad_(True)
    local_pos = positives[rank * n_pred : (rank + 1) * n_pred] - rank * n_tgt  # positives live on the same worker
    loss = cpc_infonce(pred[rank * n_pred : (rank + 1) * n_pred] @ w, targets[rank * n_tgt : (rank + 1) * n_tgt] @ w, local_pos)
    loss.backward()
    grad = w.grad.clone()
    dist.all_reduce(grad)
    return {"loss": loss.detach(), "grad": grad / world}


def test_cpc_infonce_gathered_over_two_gloo_processes_equals_single_process(tmp_path):
    torch.manual_seed(0)
    pred, targets = torch.randn(6, 5, dtype=torch.float64), torch.randn(8, 5, dtype=torch.float64)
    positives = torch.tensor([0, 2, 3, 4, 7, 5])  # first 3 predictions on worker 0 (targets 0-3), last 3 on worker 1
    weight = torch.randn(5, 4, dtype=torch.float64)
    results = run_distributed(tmp_path, _sharded_cpc, pred, targets, positives, weight)

    w = weight.clone().requires_grad_(True)
    loss = cpc_infonce(pred @ w, targets @ w, positives)
    loss.backward()
    mean_loss = sum(r["loss"] for r in results) / len(results)
    assert mean_loss.item() == pytest.approx(loss.item(), rel=1e-10)
    torch.testing.assert_close(results[0]["grad"], w.grad, rtol=1e-9, atol=1e-12)


def test_cpc_refuses_bad_arguments():
    with pytest.raises(ValueError, match="convolutional backbone"):
        ssl_models.create_method("cpc", backbone="vit_micro", in_channels=1)
    with pytest.raises(ValueError, match="prediction_steps"):
        ssl_models.create_method("cpc", backbone="tiny_cnn", in_channels=1, prediction_steps=3)


def test_cpc_one_step_trains_and_scores_all_patches():
    method = ssl_models.create_method("cpc", backbone="tiny_cnn", in_channels=1, image_size=32)
    out = _one_adam_step_changes(method, _views(n=4))
    # 4 images x 4x4 patches = 64 candidates for each of 4 x (2 + 1) x 4 = 48 predictions (offsets 2 and 3)
    assert torch.isfinite(out["loss"])
    correct_of(out["proxy_acc"].item(), 48)
    z = method.encode_patches(torch.zeros(4, 1, 32, 32))
    assert z.shape == (4, 4, 4, method.encoder.num_features)


@pytest.mark.parametrize("image_size", [28, 32])
def test_cpc_never_predicts_a_patch_that_overlaps_its_context(image_size):
    method = ssl_models.create_method("cpc", backbone="tiny_cnn", in_channels=1, image_size=image_size)
    offsets = range(method.first_offset, method.first_offset + len(method.predictors))
    assert len(offsets) >= 2  # a 4x4 grid leaves rows 2 and 3 below to predict
    # row i+k starts k*stride px below row i, which ends patch_size px below its start: no shared pixel
    assert all(k * method.stride >= method.patch_size for k in offsets)
    out = method.training_step({"view_0": torch.randn(4, 1, image_size, image_size)})
    assert torch.isfinite(out["loss"])
