"""MoCo, triplet and DINO: losses against NumPy references, queues, centres and momentum targets."""

import numpy as np
import pytest
import torch
import torch.distributed as dist

import ssl_models
from ssl_models.losses import dino_loss, moco_infonce, triplet
from ssl_models.methods.triplet import next_image
from tests.ssl_models.gloo import run_distributed


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _views(seed: int, n: int = 4, channels: int = 1, size: int = 16, count: int = 2) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {f"view_{i}": torch.randn(n, channels, size, size, generator=gen) for i in range(count)}


def _train_one_step(method, batch: dict[str, torch.Tensor]) -> None:
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.5)
    method(batch)["loss"].backward()
    optimizer.step()


# ---------------------------------------------------------------- MoCo


def moco_reference(q: np.ndarray, k: np.ndarray, queue: np.ndarray, tau: float) -> float:
    """Equation 1 of MoCo, one query at a time: -log exp(q.k+/tau) / (exp(q.k+/tau) + sum_j exp(q.k_j/tau))."""
    q, k, queue = _unit(q), _unit(k), _unit(queue)
    total = 0.0
    for i in range(len(q)):
        pos = np.exp(q[i] @ k[i] / tau)
        neg = sum(np.exp(q[i] @ key / tau) for key in queue)
        total += -np.log(pos / (pos + neg))
    return total / len(q)


@pytest.mark.parametrize("tau", [0.07, 0.2, 1.0])
def test_moco_infonce_matches_numpy_reference(tau):
    rng = np.random.default_rng(0)
    q, k, queue = rng.normal(size=(5, 6)), rng.normal(size=(5, 6)), rng.normal(size=(7, 6))
    got = moco_infonce(torch.tensor(q), torch.tensor(k), torch.tensor(queue), temperature=tau).item()
    assert got == pytest.approx(moco_reference(q, k, queue, tau), rel=1e-9)


def test_moco_infonce_optimum_no_gradient_to_keys_and_rejects_zero_temperature():
    # Queries equal to their keys and orthogonal to the 3 queued keys: -log(e^(1/tau) / (e^(1/tau) + 3)).
    z = torch.eye(5, dtype=torch.float64)
    q = z[:2].clone().requires_grad_(True)
    k = z[:2].clone().requires_grad_(True)
    loss = moco_infonce(q, k, z[2:], temperature=0.2)
    assert loss.item() == pytest.approx(-np.log(np.exp(5.0) / (np.exp(5.0) + 3)))
    loss.backward()
    assert q.grad is not None and k.grad is None
    with pytest.raises(ValueError, match="temperature"):
        moco_infonce(q, k, z[2:], temperature=0.0)


def _moco(**kwargs):
    torch.manual_seed(0)
    return ssl_models.create_method("moco", backbone="tiny_cnn", in_channels=1, projection_dim=4, hidden_dim=8, **kwargs)


def test_moco_queue_pointer_wraps_around():
    moco = _moco(queue_size=5)
    first, second = torch.randn(3, 4), torch.randn(3, 4)
    moco.enqueue(first)
    assert moco.queue_ptr.item() == 3
    moco.enqueue(second)
    assert moco.queue_ptr.item() == 1  # (3 + 3) % 5
    # slots 0-2 got the first keys, then slots 3, 4 and 0 the second ones
    torch.testing.assert_close(moco.queue, torch.cat([second[2:], first[1:], second[:2]]))
    moco.enqueue(torch.randn(7, 4))  # more keys than slots: the last five are kept
    assert moco.queue_ptr.item() == 1


def test_moco_key_encoder_moves_only_in_on_step_end_and_gets_no_grad():
    moco = _moco(queue_size=16)
    batch = _views(0)
    before = [p.clone() for p in moco.key_encoder.parameters()]
    _train_one_step(moco, batch)
    assert all(torch.equal(a, b) for a, b in zip(before, moco.key_encoder.parameters(), strict=True))
    assert all(p.grad is None and not p.requires_grad for p in moco.key_encoder.parameters())
    assert moco.queue_ptr.item() == 0  # forward did not enqueue
    pending = moco._pending_keys.clone()
    moco.on_step_end(0, 10)
    assert any(not torch.equal(a, b) for a, b in zip(before, moco.key_encoder.parameters(), strict=True))
    torch.testing.assert_close(moco.queue[:8], pending)
    assert moco.queue_ptr.item() == 8


def test_moco_rejects_bad_arguments():
    with pytest.raises(ValueError, match="queue_size"):
        _moco(queue_size=0)
    with pytest.raises(ValueError, match="momentum"):
        _moco(momentum=1.5)


# ---------------------------------------------------------------- triplet


def triplet_reference(a: np.ndarray, p: np.ndarray, n: np.ndarray, margin: float) -> float:
    """mean_i max(0, ||a_i - p_i|| - ||a_i - n_i|| + margin) on unit-norm embeddings."""
    a, p, n = _unit(a), _unit(p), _unit(n)
    return float(np.mean([max(0.0, np.linalg.norm(a[i] - p[i]) - np.linalg.norm(a[i] - n[i]) + margin) for i in range(len(a))]))


@pytest.mark.parametrize("margin", [0.2, 0.5, 1.0])
def test_triplet_matches_numpy_reference_and_torch(margin):
    rng = np.random.default_rng(1)
    a, p, n = (rng.normal(size=(6, 5)) for _ in range(3))
    got = triplet(torch.tensor(a), torch.tensor(p), torch.tensor(n), margin=margin).item()
    assert got == pytest.approx(triplet_reference(a, p, n, margin), rel=1e-9, abs=1e-12)
    unit = [torch.nn.functional.normalize(torch.tensor(x), dim=1) for x in (a, p, n)]
    assert got == pytest.approx(torch.nn.functional.triplet_margin_loss(*unit, margin=margin).item(), abs=1e-5)


def test_triplet_known_values_and_bad_margin():
    e = torch.eye(3, dtype=torch.float64)
    # positive = anchor, negative orthogonal (distance sqrt 2): hinge active only for margin > sqrt 2
    assert triplet(e, e, e.roll(1, 0), margin=1.0).item() == 0.0
    assert triplet(e, e, e.roll(1, 0), margin=2.0).item() == pytest.approx(2 - np.sqrt(2))
    # positive and negative swapped: d(a,p) - d(a,n) = sqrt 2
    assert triplet(e, e.roll(1, 0), e, margin=0.5).item() == pytest.approx(np.sqrt(2) + 0.5)
    with pytest.raises(ValueError, match="margin"):
        triplet(e, e, e, margin=0.0)


def test_triplet_negative_is_the_next_image_and_proxy_acc_counts_closer_positives():
    z = torch.arange(4.0).view(4, 1)
    assert next_image(z).flatten().tolist() == [1.0, 2.0, 3.0, 0.0]
    torch.manual_seed(0)
    method = ssl_models.create_method("triplet", backbone="tiny_cnn", in_channels=1, projection_dim=4, hidden_dim=8)
    method.projection_head = torch.nn.Identity()  # embeddings = pooled features, to check proxy_acc by hand
    batch = _views(0)
    out = method(batch)
    z0, z1 = method.encoder(batch["view_0"]), method.encoder(batch["view_1"])
    d = torch.cdist(torch.nn.functional.normalize(z0, dim=1), torch.nn.functional.normalize(z1, dim=1))
    closer = [d[i, i] < d[i, (i + 1) % 4] for i in range(4)] + [d[i, i] < d[(i + 1) % 4, i] for i in range(4)]
    assert out["proxy_acc"].item() == pytest.approx(sum(closer) / 8)


# ---------------------------------------------------------------- DINO


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def dino_reference(student: list, teacher: list, center: np.ndarray, ts: float, tt: float) -> float:
    """Algorithm 1 of DINO, pair by pair: H(softmax((t - C)/tt), softmax(s/ts)) over teacher crop i != student crop j."""
    losses = []
    for i, t in enumerate(teacher):
        p_t = _softmax((t - center) / tt)
        for j, s in enumerate(student):
            if i != j:
                losses.append(np.mean(-(p_t * np.log(_softmax(s / ts))).sum(axis=1)))
    return float(np.mean(losses))


@pytest.mark.parametrize("temps", [(0.1, 0.04), (0.5, 0.2)])
def test_dino_loss_matches_numpy_reference(temps):
    rng = np.random.default_rng(2)
    student = [rng.normal(size=(4, 7)) for _ in range(5)]
    teacher = [rng.normal(size=(4, 7)) for _ in range(2)]
    center = rng.normal(size=7) * 0.1
    got = dino_loss([torch.tensor(s) for s in student], [torch.tensor(t) for t in teacher], torch.tensor(center), *temps)
    assert got.item() == pytest.approx(dino_reference(student, teacher, center, *temps), rel=1e-9)


def test_dino_loss_uniform_value_no_teacher_gradient_and_bad_temperature():
    # A constant teacher (after centring) and a constant student are uniform: the loss is log K.
    student = [torch.zeros(3, 8, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    teacher = [torch.ones(3, 8, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    loss = dino_loss(student, teacher, torch.zeros(8, dtype=torch.float64))
    assert loss.item() == pytest.approx(np.log(8))
    loss.backward()
    assert all(s.grad is not None for s in student) and all(t.grad is None for t in teacher)
    with pytest.raises(ValueError, match="temperatures"):
        dino_loss(student, teacher, torch.zeros(8), teacher_temp=0.0)


def _image_batch(n: int = 8, size: int = 28, channels: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (n, size, size, channels), dtype=np.uint8)
    image[:] = image[0]  # one image eight times: every sample must still get its own crops
    return {"image": image, "label": np.arange(n)}


def test_multi_crop_shapes_dtypes_and_per_sample_randomness():
    policy = ssl_models.create_views("multi_crop", image_size=28, num_views=5, seed=1)
    assert (policy.local_crops, policy.local_size) == (3, 12)  # round(28 * 3 / 7)
    out = policy(_image_batch(channels=3))
    assert set(out) == {"label", *(f"view_{i}" for i in range(5))}
    for i in range(5):
        size = 28 if i < 2 else 12
        assert out[f"view_{i}"].shape == (8, 3, size, size) and out[f"view_{i}"].dtype == np.uint8
        assert all(not np.array_equal(out[f"view_{i}"][0], out[f"view_{i}"][j]) for j in range(1, 8))
    assert not np.array_equal(out["view_2"], out["view_3"])
    on_tensor = ssl_models.create_views("multi_crop", image_size=28, num_views=5, seed=1).apply(
        torch.from_numpy(_image_batch(channels=3)["image"])
    )
    from_numpy = ssl_models.model_views({"view_4": torch.from_numpy(out["view_4"])})["view_4"]
    torch.testing.assert_close(from_numpy, on_tensor["view_4"], atol=1 / 255 + 1e-6, rtol=0)  # 8-bit rounding
    assert ssl_models.create_views("multi_crop", image_size=12).local_size == 8  # never below 8 px


def test_multi_crop_rejects_inconsistent_view_counts():
    with pytest.raises(ValueError, match="num_views"):
        ssl_models.create_views("multi_crop", num_views=4, local_crops=3)
    with pytest.raises(ValueError, match="num_views >= 2"):
        ssl_models.create_views("multi_crop", num_views=1)


def _dino(**kwargs):
    torch.manual_seed(0)
    return ssl_models.create_method(
        "dino", backbone="tiny_cnn", in_channels=1, hidden_dim=8, out_dim=6, bottleneck_dim=4, num_local_crops=2, **kwargs
    )


def _dino_views(seed: int, n: int = 4) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {f"view_{i}": torch.randn(n, 1, 16 if i < 2 else 8, 16 if i < 2 else 8, generator=gen) for i in range(4)}


def test_dino_teacher_and_centre_move_only_in_on_step_end():
    dino = _dino()
    batch = _dino_views(0)

    def teacher_params() -> list[torch.Tensor]:
        return [*dino.teacher_head.parameters(), *dino.teacher_encoder.parameters()]

    before = [p.clone() for p in teacher_params()]
    _train_one_step(dino, batch)
    assert all(torch.equal(a, b) for a, b in zip(before, teacher_params(), strict=True))
    assert all(p.grad is None and not p.requires_grad for p in teacher_params())
    assert torch.count_nonzero(dino.center) == 0  # forward did not move the centre
    teacher_out = dino._pending_teacher.clone()
    assert teacher_out.shape == (8, 6)  # two global crops of four images
    dino.on_step_end(0, 10)
    assert any(not torch.equal(a, b) for a, b in zip(before, teacher_params(), strict=True))
    torch.testing.assert_close(dino.center, 0.1 * teacher_out.mean(dim=0, keepdim=True))


def test_dino_needs_all_its_views_and_rejects_bad_arguments():
    with pytest.raises(ValueError, match="dino expects 4 views"):
        _dino()({k: v for k, v in _dino_views(0).items() if k != "view_3"})
    with pytest.raises(ValueError, match="teacher_temp"):
        _dino(teacher_temp=0.0)
    with pytest.raises(ValueError, match="center_momentum"):
        _dino(center_momentum=2.0)


# ---------------------------------------------------------------- two gloo workers (one spawn for both methods)


def _moco_step_on_rank(rank: int) -> dict[str, torch.Tensor]:
    moco = _moco(queue_size=64)  # same seed: identical models and queues on both ranks
    # Shuffling BN must hand every image its own key back: in eval mode BN uses the
    # (here still identical) running statistics, so shuffled keys equal unshuffled ones.
    x = _views(20 + rank)["view_0"]
    moco.eval()
    shuffled, direct = moco.keys(x), moco._key_projection(x)
    moco.train()
    moco(_views(10 + rank))  # each rank sees different images
    pending = moco._pending_keys.clone()
    moco.on_step_end(0, 10)
    return {
        "pending": pending,
        "queue": moco.queue.clone(),
        "ptr": moco.queue_ptr.clone(),
        "shuffled": shuffled,
        "direct": direct,
    }


def _dino_step_on_rank(rank: int) -> dict[str, torch.Tensor]:
    dino = _dino()
    dino(_dino_views(10 + rank))
    teacher_out = dino._pending_teacher.clone()
    dino.on_step_end(0, 10)
    return {"teacher_out": teacher_out, "center": dino.center.clone()}


def _step_on_rank(rank: int, world: int) -> dict[str, dict[str, torch.Tensor]]:
    assert dist.get_world_size() == world == 2
    return {"moco": _moco_step_on_rank(rank), "dino": _dino_step_on_rank(rank)}


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory) -> list[dict[str, dict[str, torch.Tensor]]]:
    return run_distributed(tmp_path_factory.mktemp("gloo"), _step_on_rank)


def test_moco_queue_holds_keys_from_every_worker_in_rank_order(two_workers):
    results = [r["moco"] for r in two_workers]
    everyone = torch.cat([r["pending"] for r in results])  # rank order
    assert everyone.shape == (16, 4) and not torch.allclose(results[0]["pending"], results[1]["pending"])
    for r in results:
        torch.testing.assert_close(r["queue"][:16], everyone)
        assert r["ptr"].item() == 16
        torch.testing.assert_close(r["shuffled"], r["direct"])
    torch.testing.assert_close(results[0]["queue"], results[1]["queue"])


def test_dino_centre_is_the_mean_over_every_worker(two_workers):
    results = [r["dino"] for r in two_workers]
    assert not torch.allclose(results[0]["teacher_out"], results[1]["teacher_out"])
    everyone = torch.cat([r["teacher_out"] for r in results])
    for r in results:  # from zero: 0.9 * 0 + 0.1 * the mean teacher output of both workers
        torch.testing.assert_close(r["center"], 0.1 * everyone.mean(dim=0, keepdim=True))
