"""MoCo v3 and iBOT: losses against references written from the authors' code, gathering, masking, EMA and centres."""

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

import ssl_models
from ssl_models.losses import ibot_loss, ibot_patch_loss, mocov3_contrastive_loss, mocov3_loss
from ssl_models.methods.ibot import block_mask, patch_masks, prediction_ratio
from tests.ssl_models.gloo import run_distributed


def _train_one_step(method, batch: dict[str, torch.Tensor]) -> None:
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.5)
    method(batch)["loss"].backward()
    optimizer.step()


def _images(n: int = 8, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (n, size, size, 1), dtype=np.uint8)


# ---------------------------------------------------------------- MoCo v3 loss


def contrastive_loss_reference(q: torch.Tensor, k: torch.Tensor, tau: float, rank: int = 0, world_keys=None) -> torch.Tensor:
    """moco-v3 moco/builder.py ``MoCo.contrastive_loss``, line by line: normalize, gather the keys,
    einsum logits / T, labels arange(N) + N * rank, CrossEntropyLoss * (2 * T)."""
    q = F.normalize(q, dim=1)
    k = F.normalize(k, dim=1)
    k = k if world_keys is None else torch.cat([F.normalize(w, dim=1) for w in world_keys])  # concat_all_gather
    logits = torch.einsum("nc,mc->nm", [q, k]) / tau
    n = logits.shape[0]
    labels = torch.arange(n, dtype=torch.long) + n * rank
    return torch.nn.CrossEntropyLoss()(logits, labels) * (2 * tau)


@pytest.mark.parametrize("tau", [0.2, 1.0])
def test_mocov3_loss_matches_the_authors_contrastive_loss(tau):
    gen = torch.Generator().manual_seed(0)
    q0, q1, k0, k1 = (torch.randn(6, 5, generator=gen) for _ in range(4))
    got = mocov3_loss(q0, q1, k0, k1, temperature=tau)
    want = contrastive_loss_reference(q0, k1, tau) + contrastive_loss_reference(q1, k0, tau)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # the 2 tau factor: keys all alike make every logit equal, so each direction's loss is 2 tau log n
    assert mocov3_contrastive_loss(torch.eye(4), torch.ones(4, 4), 0.5).item() == pytest.approx(np.log(4), rel=1e-6)


def test_mocov3_loss_gives_keys_no_gradient_and_rejects_zero_temperature():
    q = torch.randn(4, 3, requires_grad=True)
    k = torch.randn(4, 3, requires_grad=True)
    loss, acc = mocov3_contrastive_loss(q, k, 0.2, with_accuracy=True)
    loss.backward()
    assert q.grad is not None and k.grad is None
    # how often the positive key ranks first among the batch's keys (cosine)
    first = (F.normalize(q.detach(), dim=1) @ F.normalize(k.detach(), dim=1).T).argmax(dim=1)
    assert acc.item() == pytest.approx((first == torch.arange(4)).float().mean().item())
    assert mocov3_contrastive_loss(k, k, 0.2, with_accuracy=True)[1].item() == 1.0  # each key is its own nearest
    with pytest.raises(ValueError, match="temperature"):
        mocov3_contrastive_loss(q, k, 0.0)


# ---------------------------------------------------------------- MoCo v3 method


def _mocov3(backbone: str = "tiny_cnn", **kwargs):
    torch.manual_seed(0)
    return ssl_models.create_method(
        "mocov3", backbone=backbone, in_channels=1, image_size=32, projection_dim=8, hidden_dim=16, **kwargs
    )


def test_mocov3_heads_and_temperature_follow_the_backbone():
    cnn, vit = _mocov3(), _mocov3("vit_micro")
    assert (cnn.temperature, vit.temperature) == (0.2, 0.2)  # solo-learn's ResNet-18 and the released ViT configs
    linears = [sum(isinstance(m, torch.nn.Linear) for m in mlp) for mlp in (cnn.projector, vit.projector)]
    assert linears == [2, 3]  # MoCo_ResNet: 2-layer projector; MoCo_ViT: 3 layers
    assert not isinstance(cnn.predictor[-1], torch.nn.BatchNorm1d) and isinstance(vit.predictor[-1], torch.nn.BatchNorm1d)
    assert all(m.bias is None for m in cnn.projector if isinstance(m, torch.nn.Linear))
    assert _mocov3(temperature=0.5).temperature == 0.5
    assert ssl_models.create_method("mocov3").backbone_name == "small_cnn"  # nothing set but the name
    with pytest.raises(ValueError, match="momentum"):
        _mocov3(momentum=1.5)


def test_mocov3_momentum_encoder_moves_only_in_on_step_end_through_make_views():
    moco = _mocov3()
    views = moco.make_views(seed=0)({"image": _images()})
    targets = [*moco.momentum_encoder.parameters(), *moco.momentum_projector.parameters()]
    before = [p.clone() for p in targets]
    _train_one_step(moco, views)
    assert all(torch.equal(a, b) for a, b in zip(before, targets, strict=True))
    assert all(p.grad is None and not p.requires_grad for p in targets)
    moco.on_step_end(0, 10)
    # tau = 0.99 at step 0: every parameter moved 1% of the way to the online one
    for t, b, o in zip(targets, before, [*moco.encoder.parameters(), *moco.projector.parameters()], strict=True):
        torch.testing.assert_close(t, 0.99 * b + 0.01 * o)
    assert any(not torch.equal(a, b) for a, b in zip(before, targets, strict=True))


def test_mocov3_vit_patch_projection_is_frozen_random_and_unchanged_by_a_step():
    moco = _mocov3("vit_micro")
    proj = moco.encoder.patch_embed
    assert not proj.weight.requires_grad and not proj.bias.requires_grad
    bound = np.sqrt(6.0 / (1 * 4 * 4 + 32))  # the authors' Xavier-uniform init for 4x4 patches of 1 channel, 32-d
    assert proj.weight.abs().max().item() <= bound and torch.count_nonzero(proj.bias) == 0
    before = proj.weight.clone(), proj.bias.clone()
    views = moco.make_views(seed=0)({"image": _images()})
    _train_one_step(moco, views)
    moco.on_step_end(0, 10)
    assert proj.weight.grad is None and proj.bias.grad is None
    torch.testing.assert_close(proj.weight, before[0], atol=0, rtol=0)
    torch.testing.assert_close(proj.bias, before[1], atol=0, rtol=0)
    torch.testing.assert_close(moco.momentum_encoder.patch_embed.weight, before[0])  # EMA of equal tensors, to rounding
    assert moco.encoder.blocks[0].linear1.weight.grad is not None  # the rest of the ViT trains
    assert _mocov3("vit_micro", freeze_patch_embed=False).encoder.patch_embed.weight.requires_grad


# ---------------------------------------------------------------- iBOT loss


def ibot_loss_reference(student_output, teacher_output, student_local_cls, student_mask, temps, centers, lambdas):
    """bytedance/ibot main_ibot.py ``iBOTLoss.forward``, line by line (ngcrops = 2, student_temp = 0.1)."""
    student_cls, student_patch = student_output
    teacher_cls, teacher_patch = teacher_output
    temp, temp2 = temps
    center, center2 = centers
    ngcrops = 2
    ncrops = ngcrops + (0 if student_local_cls is None else len(student_local_cls) // (len(student_cls) // ngcrops))
    if student_local_cls is not None:
        student_cls = torch.cat([student_cls, student_local_cls])
    student_cls = student_cls / 0.1
    student_cls_c = student_cls.chunk(ncrops)
    student_patch = student_patch / 0.1
    student_patch_c = student_patch.chunk(ngcrops)
    teacher_cls_c = F.softmax((teacher_cls - center) / temp, dim=-1).detach().chunk(ngcrops)
    teacher_patch_c = F.softmax((teacher_patch - center2) / temp2, dim=-1).detach().chunk(ngcrops)
    total1, n1, total2, n2 = 0, 0, 0, 0
    for q in range(len(teacher_cls_c)):
        for v in range(len(student_cls_c)):
            if v == q:
                loss2 = torch.sum(-teacher_patch_c[q] * F.log_softmax(student_patch_c[v], dim=-1), dim=-1)
                mask = student_mask[v].flatten(-2, -1)
                loss2 = torch.sum(loss2 * mask.float(), dim=-1) / mask.sum(dim=-1).clamp(min=1.0)
                total2 += loss2.mean()
                n2 += 1
            else:
                loss1 = torch.sum(-teacher_cls_c[q] * F.log_softmax(student_cls_c[v], dim=-1), dim=-1)
                total1 += loss1.mean()
                n1 += 1
    return total1 / n1 * lambdas[0] + total2 / n2 * lambdas[1]


@pytest.mark.parametrize("local_crops", [0, 3])
def test_ibot_loss_matches_the_authors_ibotloss(local_crops):
    gen = torch.Generator().manual_seed(1)
    n, grid, k = 4, 3, 7
    s_cls, t_cls = torch.randn(2 * n, k, generator=gen), torch.randn(2 * n, k, generator=gen)
    s_patch, t_patch = torch.randn(2 * n, grid * grid, k, generator=gen), torch.randn(2 * n, grid * grid, k, generator=gen)
    s_local = torch.randn(local_crops * n, k, generator=gen) if local_crops else None
    masks = [torch.rand(n, grid, grid, generator=gen) < 0.4 for _ in range(2)]
    masks[0][0] = False  # an image without masked patches adds 0 to its crop's mean
    center, center2 = torch.randn(1, k, generator=gen) * 0.1, torch.randn(1, 1, k, generator=gen) * 0.1
    temps, lambdas = (0.05, 0.07), (1.0, 0.5)
    want = ibot_loss_reference((s_cls, s_patch), (t_cls, t_patch), s_local, masks, temps, (center, center2), lambdas)
    student_cls = list(s_cls.chunk(2)) + (list(s_local.chunk(local_crops)) if local_crops else [])
    got = ibot_loss(
        student_cls,
        list(t_cls.chunk(2)),
        list(s_patch.chunk(2)),
        list(t_patch.chunk(2)),
        [m.flatten(1) for m in masks],
        center,
        center2,
        0.1,
        *temps,
        *lambdas,
    )
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_ibot_patch_loss_touches_only_masked_patches():
    gen = torch.Generator().manual_seed(2)
    n, length, k = 3, 9, 6
    student = [torch.randn(n, length, k, generator=gen, dtype=torch.float64) for _ in range(2)]
    teacher = [torch.randn(n, length, k, generator=gen, dtype=torch.float64) for _ in range(2)]
    masks = [torch.zeros(n, length, dtype=torch.bool) for _ in range(2)]
    masks[0][:, [1, 4]] = True
    masks[1][0, 7] = True
    center = torch.zeros(1, 1, k, dtype=torch.float64)
    base = ibot_patch_loss(student, teacher, masks, center).item()

    def changed(which: list[torch.Tensor], crop: int, image: int, patch: int) -> float:
        edited = [t.clone() for t in which]
        edited[crop][image, patch] += torch.linspace(-3, 3, k, dtype=torch.float64)
        args = (edited, teacher) if which is student else (student, edited)
        return ibot_patch_loss(*args, masks, center).item()

    for which in (student, teacher):
        assert changed(which, 0, 2, 0) == pytest.approx(base, abs=1e-12)  # unmasked patch
        assert changed(which, 1, 1, 7) == pytest.approx(base, abs=1e-12)  # masked in image 0 only
        assert changed(which, 0, 2, 4) != pytest.approx(base, abs=1e-6)  # masked
        assert changed(which, 1, 0, 7) != pytest.approx(base, abs=1e-6)
    s = [t.clone().requires_grad_(True) for t in student]
    t = [x.clone().requires_grad_(True) for x in teacher]
    ibot_patch_loss(s, t, masks, center).backward()
    assert torch.count_nonzero(s[0].grad[:, [0, 2, 3, 5, 6, 7, 8]]) == 0 and torch.count_nonzero(s[0].grad[:, [1, 4]]) > 0
    assert all(x.grad is None for x in t)


# ---------------------------------------------------------------- iBOT masking


def test_block_masks_follow_the_prediction_ratio():
    rng = np.random.default_rng(0)
    masks = [block_mask(7, 0.3 * 49, rng) for _ in range(200)]
    counts = np.array([m.sum() for m in masks])
    assert counts.min() >= 4 and counts.max() <= 15  # blocks of >= (7 // 3)^2 patches, never above 0.3 * 49
    assert 10 <= counts.mean() <= 15
    assert any(m[r : r + 2, c : c + 2].all() for m in masks for r in range(6) for c in range(6))  # blocks, not scatter
    draws = [prediction_ratio(rng, (0.0, 0.3), (0.0, 0.2)) for _ in range(400)]
    zeros = sum(d == 0.0 for d in draws)
    assert 150 < zeros < 250 and all(0.1 <= d <= 0.5 for d in draws if d)  # 0, or U(0.1, 0.5): the released configs
    rand = patch_masks(5, 8, rng, ratios=(0.25,), variances=(0.0,), shape="rand")
    assert rand.shape == (5, 64) and rand.dtype == torch.bool and rand.sum(dim=1).tolist() == [16] * 5
    assert patch_masks(3, 7, rng, ratios=(0.0,), variances=(0.0,)).sum() == 0


# ---------------------------------------------------------------- iBOT method


def _ibot(**kwargs):
    torch.manual_seed(0)
    return ssl_models.create_method(
        "ibot", backbone="vit_micro", in_channels=1, image_size=32, hidden_dim=16, out_dim=12, bottleneck_dim=8, **kwargs
    )


def test_ibot_teacher_and_both_centres_move_only_in_on_step_end():
    ibot = _ibot(pred_ratio=(0.3,), pred_ratio_var=(0.1,))
    views = ibot.make_views(seed=0)({"image": _images()})

    def teacher_params() -> list[torch.Tensor]:
        return [*ibot.teacher_head.parameters(), *ibot.teacher_encoder.parameters()]

    before = [p.clone() for p in teacher_params()]
    _train_one_step(ibot, views)
    assert all(torch.equal(a, b) for a, b in zip(before, teacher_params(), strict=True))
    assert all(p.grad is None and not p.requires_grad for p in teacher_params())
    assert ibot.mask_token.grad is not None and ibot.mask_token.grad.abs().sum() > 0
    assert torch.count_nonzero(ibot.center) == 0 and torch.count_nonzero(ibot.center2) == 0
    teacher_cls, teacher_patch_mean = (t.clone() for t in ibot._pending)
    assert teacher_cls.shape == (16, 12) and teacher_patch_mean.shape == (16, 12)  # two global crops of 8 images
    ibot.on_step_end(0, 10)
    assert any(not torch.equal(a, b) for a, b in zip(before, teacher_params(), strict=True))
    torch.testing.assert_close(ibot.center, 0.1 * teacher_cls.mean(dim=0, keepdim=True))
    torch.testing.assert_close(ibot.center2, 0.1 * teacher_patch_mean.mean(dim=0).view(1, 1, -1))
    assert not torch.allclose(ibot.center.flatten(), ibot.center2.flatten())


def test_ibot_student_sees_the_mask_token_where_masked_and_the_teacher_temperatures_warm_up():
    ibot = _ibot()
    x = torch.randn(2, 1, 32, 32)
    mask = torch.zeros(2, 64, dtype=torch.bool)
    torch.testing.assert_close(ibot.student_tokens(x, mask), ibot.encoder.forward_features(x))
    mask[0, 1] = True
    other = x.clone()
    other[0, :, 0:4, 4:8] += 1.0  # patch 1 (row 0, column 1 of the 8x8 grid) changes; the student cannot see it
    torch.testing.assert_close(ibot.student_tokens(other, mask), ibot.student_tokens(x, mask))
    assert ibot.temperatures() == pytest.approx((0.04, 0.04))
    ibot.on_step_end(14, 100)  # 15% of the run: half of the 30% warm-up
    assert ibot.temperatures() == pytest.approx((0.04, 0.055))
    ibot.on_step_end(99, 100)
    assert ibot.temperatures() == pytest.approx((0.04, 0.07))


def test_ibot_local_crops_are_whole_patches_and_train():
    ibot = _ibot(num_local_crops=2)
    assert ibot.num_views == 4 and ibot.view_kwargs["local_size"] == 12  # round(32 * 3 / 7) = 14 -> 12, 3x3 patches
    views = ibot.make_views(seed=0)({"image": _images()})
    assert views["view_2"].shape == (8, 1, 12, 12) and views["view_0"].shape == (8, 1, 32, 32)
    out = ibot(views)
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and ibot.encoder.pos_embed.grad.abs().sum() > 0


def test_ibot_needs_a_vit_and_valid_settings():
    with pytest.raises(ValueError, match="ibot needs a ViT"):
        ssl_models.create_method("ibot", backbone="tiny_cnn")
    with pytest.raises(ValueError, match="pred_ratio"):
        _ibot(pred_ratio=(0.3,), pred_ratio_var=(0.4,))
    with pytest.raises(ValueError, match="pred_shape"):
        _ibot(pred_shape="circle")
    with pytest.raises(ValueError, match="ibot expects 2 views"):
        _ibot()({"view_0": torch.randn(2, 1, 32, 32)})
    assert ssl_models.method_class("ibot").default_backbone == "vit_tiny"


# ---------------------------------------------------------------- two gloo workers (one spawn for both methods)


def _mocov3_loss_on_rank(rank: int, world: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(5)  # the same global batch on every rank; each takes its slice
    q0, q1, k0, k1 = (torch.randn(4 * world, 6, generator=gen) for _ in range(4))
    mine = slice(4 * rank, 4 * (rank + 1))
    return {"loss": mocov3_loss(q0[mine], q1[mine], k0[mine], k1[mine], 0.2)}


def _ibot_centres_on_rank(rank: int) -> dict[str, torch.Tensor]:
    ibot = _ibot()
    gen = torch.Generator().manual_seed(30 + rank)  # each rank sees different images
    ibot({f"view_{i}": torch.randn(4, 1, 32, 32, generator=gen) for i in range(2)})
    pending = [t.clone() for t in ibot._pending]
    ibot.on_step_end(0, 10)
    return {"cls": pending[0], "patch": pending[1], "center": ibot.center.clone(), "center2": ibot.center2.clone()}


def _step_on_rank(rank: int, world: int) -> dict[str, dict[str, torch.Tensor]]:
    assert dist.get_world_size() == world == 2
    return {"mocov3": _mocov3_loss_on_rank(rank, world), "ibot": _ibot_centres_on_rank(rank)}


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory) -> list[dict[str, dict[str, torch.Tensor]]]:
    return run_distributed(tmp_path_factory.mktemp("gloo"), _step_on_rank)


def test_mocov3_negatives_from_every_worker_give_the_one_process_loss(two_workers):
    losses = torch.stack([r["mocov3"]["loss"] for r in two_workers])
    gen = torch.Generator().manual_seed(5)
    q0, q1, k0, k1 = (torch.randn(8, 6, generator=gen) for _ in range(4))
    one_process = mocov3_loss(q0, q1, k0, k1, 0.2)  # no process group here: the whole batch in one process
    torch.testing.assert_close(losses.mean(), one_process, atol=1e-5, rtol=0)  # DDP averages over workers
    assert not torch.allclose(losses[0], losses[1])
    # the gathered keys (8 per rank, not 4) are what each rank's loss saw: its own 4 keys alone give another loss
    alone = mocov3_loss(q0[:4], q1[:4], k0[:4], k1[:4], 0.2)
    assert not torch.allclose(alone, losses[0])


def test_ibot_centres_are_the_means_over_every_worker(two_workers):
    results = [r["ibot"] for r in two_workers]
    assert not torch.allclose(results[0]["cls"], results[1]["cls"])
    cls = torch.cat([r["cls"] for r in results])
    patch = torch.cat([r["patch"] for r in results])
    for r in results:
        torch.testing.assert_close(r["center"], 0.1 * cls.mean(dim=0, keepdim=True))
        torch.testing.assert_close(r["center2"], 0.1 * patch.mean(dim=0).view(1, 1, -1))
