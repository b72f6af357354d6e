"""BYOL, SimSiam, Barlow Twins and VICReg: their losses against NumPy references written from the
papers' formulas, the losses' known optima, gathering over 2 gloo processes, and BYOL's EMA target."""

import numpy as np
import pytest
import torch
import torch.distributed as dist

import ssl_models
from ssl_models.losses import barlow_twins, negative_cosine, vibcreg, vicreg, vicreg_terms
from ssl_models.proxy import nearest_neighbour_accuracy
from tests.ssl_models.gloo import run_distributed


def whitened(n: int, d: int, seed: int = 0) -> np.ndarray:
    """(n, d) with every column of zero mean, unit (biased) variance, and the columns uncorrelated."""
    x = np.random.default_rng(seed).normal(size=(n, d))
    q, _ = np.linalg.qr(x - x.mean(axis=0))  # orthonormal columns, each orthogonal to the ones vector
    return q * np.sqrt(n)


# ---------------------------------------------------------------- negative cosine (SimSiam, eq. 1)


def negative_cosine_reference(p: np.ndarray, z: np.ndarray) -> float:
    """D(p, z) = -p/||p||_2 . z/||z||_2, averaged over the batch."""
    return float(np.mean([-(pi @ zi) / (np.linalg.norm(pi) * np.linalg.norm(zi)) for pi, zi in zip(p, z, strict=True)]))


def test_negative_cosine_matches_numpy_reference_and_its_bounds():
    rng = np.random.default_rng(0)
    p, z = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    got = negative_cosine(torch.tensor(p), torch.tensor(z)).item()
    assert got == pytest.approx(negative_cosine_reference(p, z), rel=1e-12)
    assert negative_cosine(torch.tensor(p), torch.tensor(3 * p)).item() == pytest.approx(-1.0)
    assert negative_cosine(torch.tensor(p), torch.tensor(-p)).item() == pytest.approx(1.0)


def test_negative_cosine_gives_no_gradient_to_its_target():
    p = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    z = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    negative_cosine(p, z).backward()
    assert z.grad is None  # stop-gradient
    assert p.grad is not None and p.grad.abs().sum() > 0


# ---------------------------------------------------------------- Barlow Twins (eq. 1 and 2)


def barlow_twins_reference(z0: np.ndarray, z1: np.ndarray, lam: float, eps: float = 1e-5) -> float:
    """Loop form of eq. 1 with C from eq. 2 on batch-centred embeddings; eps = 0 is eq. 2 exactly,
    eps = 1e-5 adds BatchNorm's epsilon to each variance as the paper's code does."""
    n, d = z0.shape
    a, b = z0 - z0.mean(axis=0), z1 - z1.mean(axis=0)
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c_ij = (a[:, i] @ b[:, j]) / n / np.sqrt((a[:, i].var() + eps) * (b[:, j].var() + eps))
            loss += (1 - c_ij) ** 2 if i == j else lam * c_ij**2
    return loss


@pytest.mark.parametrize("lam", [0.0, 5e-3, 1.0])
def test_barlow_twins_matches_numpy_reference(lam):
    rng = np.random.default_rng(1)
    z0, z1 = rng.normal(size=(7, 5)), rng.normal(size=(7, 5))
    got = barlow_twins(torch.tensor(z0), torch.tensor(z1), lambda_=lam).item()
    assert got == pytest.approx(barlow_twins_reference(z0, z1, lam), rel=1e-10)
    # Symmetric in its views: swapping them transposes C.
    assert barlow_twins(torch.tensor(z1), torch.tensor(z0), lambda_=lam).item() == pytest.approx(got, rel=1e-12)


def test_barlow_twins_is_zero_for_identical_whitened_embeddings():
    # C = I up to BatchNorm's epsilon: both terms vanish.
    z = torch.tensor(whitened(32, 6))
    assert barlow_twins(z, z).item() == pytest.approx(0.0, abs=1e-8)
    # Correlated dimensions are penalized by lambda_ only.
    z_dup = torch.cat([z[:, :1], z[:, :1]], dim=1)  # two copies of one dimension: C_01 = C_10 = 1
    assert barlow_twins(z_dup, z_dup, lambda_=0.5).item() == pytest.approx(2 * 0.5, rel=1e-4)
    with pytest.raises(ValueError, match="lambda_"):
        barlow_twins(z, z, lambda_=-1.0)


# ---------------------------------------------------------------- VICReg (eq. 1-6)


def vicreg_reference(z0: np.ndarray, z1: np.ndarray, lam: float, mu: float, nu: float) -> float:
    """lam s(Z, Z') + mu [v(Z) + v(Z')] / 2 + nu [c(Z) + c(Z')], written per dimension from the paper.

    s: mean over samples of ||z_i - z'_i||^2 / d (the MSE); v(Z) = 1/d sum_j max(0, 1 - sqrt(Var(z^j) + 1e-4))
    with the unbiased variance; c(Z) = 1/d sum_{i != j} Cov(Z)_ij^2. The variance term is halved as in the
    authors' code, whose weights 25/25/1 are the published defaults.
    """
    n, d = z0.shape

    def v(z):
        return sum(max(0.0, 1 - np.sqrt(z[:, j].var(ddof=1) + 1e-4)) for j in range(d)) / d

    def c(z):
        zc = z - z.mean(axis=0)
        return sum((zc[:, i] @ zc[:, j] / (n - 1)) ** 2 for i in range(d) for j in range(d) if i != j) / d

    s = np.mean([np.sum((z0[k] - z1[k]) ** 2) / d for k in range(n)])
    return lam * s + mu * (v(z0) + v(z1)) / 2 + nu * (c(z0) + c(z1))


@pytest.mark.parametrize("weights", [(25.0, 25.0, 1.0), (1.0, 0.0, 0.0), (0.0, 3.0, 0.5)])
def test_vicreg_matches_numpy_reference(weights):
    rng = np.random.default_rng(2)
    # Std about 0.7 so that the variance hinge is active for most dimensions.
    z0, z1 = 0.7 * rng.normal(size=(9, 5)), 0.7 * rng.normal(size=(9, 5))
    got = vicreg(torch.tensor(z0), torch.tensor(z1), *weights).item()
    assert got == pytest.approx(vicreg_reference(z0, z1, *weights), rel=1e-10)


def test_vicreg_terms_vanish_at_their_optima():
    z = torch.tensor(2.0 * whitened(16, 4))  # every std about 2 >= 1, columns uncorrelated
    terms = vicreg_terms(z, z)
    assert terms["invariance"].item() == 0.0
    assert terms["variance"].item() == 0.0  # hinge inactive when every std >= 1
    assert terms["covariance"].item() == pytest.approx(0.0, abs=1e-20)
    # A collapsed batch pays the full variance hinge: std = sqrt(1e-4) = 0.01 for every dimension.
    collapsed = torch.ones(8, 4, dtype=torch.float64)
    assert vicreg_terms(collapsed, collapsed)["variance"].item() == pytest.approx(0.99)
    with pytest.raises(ValueError, match="var_weight"):
        vicreg(z, z, var_weight=-1.0)


# ---------------------------------------------------------------- gathering over 2 gloo processes


def _sharded_losses_and_grads(rank: int, world: int, x0, x1, weight):
    """This rank's slice of the batch through a shared linear map; each loss and its DDP-averaged gradient."""
    n = x0.shape[0] // world
    sl = slice(rank * n, (rank + 1) * n)
    results = {}
    for name, loss_fn in (("barlow_twins", barlow_twins), ("vicreg", vicreg)):
        w = weight.clone().requires_grad_(True)
        loss = loss_fn(x0[sl] @ w, x1[sl] @ w)
        loss.backward()
        grad = w.grad.clone()
        dist.all_reduce(grad)  # what DDP does: average the gradients over workers
        results[name] = {"loss": loss.detach(), "grad": grad / world}
    return results


def test_gathered_over_two_gloo_processes_equals_single_process(tmp_path):
    torch.manual_seed(0)
    x0, x1 = torch.randn(8, 6, dtype=torch.float64), torch.randn(8, 6, dtype=torch.float64)
    weight = torch.randn(6, 4, dtype=torch.float64)
    results = run_distributed(tmp_path, _sharded_losses_and_grads, x0, x1, weight)
    for name, loss_fn in (("barlow_twins", barlow_twins), ("vicreg", vicreg)):
        w = weight.clone().requires_grad_(True)
        loss = loss_fn(x0 @ w, x1 @ w)
        loss.backward()
        for r in results:  # every worker sees the loss of the whole batch
            assert r[name]["loss"].item() == pytest.approx(loss.item(), rel=1e-10), name
        torch.testing.assert_close(results[0][name]["grad"], w.grad, rtol=1e-9, atol=1e-12, msg=name)


# ---------------------------------------------------------------- methods


def two_views(channels: int = 1, n: int = 8) -> dict[str, torch.Tensor]:
    return {"view_0": torch.randn(n, channels, 32, 32), "view_1": torch.randn(n, channels, 32, 32)}


def tiny(name: str, **kwargs):
    return ssl_models.create_method(name, backbone="tiny_cnn", in_channels=1, projection_dim=16, hidden_dim=32, **kwargs)


def test_nearest_neighbour_accuracy_counts_positives_ranked_first():
    keys = torch.eye(4)
    assert nearest_neighbour_accuracy(keys + 0.1, keys).item() == 1.0
    assert nearest_neighbour_accuracy(keys[[1, 0, 2, 3]], keys).item() == 0.5


def test_byol_target_is_frozen_and_moves_by_ema_only_in_on_step_end():
    torch.manual_seed(0)
    method = tiny("byol", base_momentum=0.9)
    online = [p.detach().clone() for p in method.encoder.parameters()]
    for t, o in zip(method.target_encoder.parameters(), online, strict=True):
        assert not t.requires_grad and torch.equal(t, o)  # starts as a copy
    assert all(not p.requires_grad for p in method.target_projector.parameters())

    out = method(two_views())
    assert 0 <= out["loss"].item() <= 8  # two directions of 2 - 2 cos
    out["loss"].backward()
    assert all(p.grad is None for p in method.target_encoder.parameters())
    assert all(p.grad is None for p in method.target_projector.parameters())
    before = [p.clone() for p in method.target_encoder.parameters()]
    torch.optim.SGD(method.parameters(), lr=0.5).step()
    for t, b in zip(method.target_encoder.parameters(), before, strict=True):
        assert torch.equal(t, b)  # the forward and the optimizer leave the target alone

    method.on_step_end(0, 10)  # cosine schedule at step 0: momentum = base = 0.9
    moved = 0
    for t, b, o in zip(method.target_encoder.parameters(), before, method.encoder.parameters(), strict=True):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * o.detach())
        moved += int(not torch.equal(t, b))
    assert moved > 0
    method.on_step_end(10, 10)  # end of the schedule: momentum 1, the target stops moving
    frozen = [p.clone() for p in method.target_projector.parameters()]
    method.on_step_end(10, 10)
    assert all(torch.equal(t, f) for t, f in zip(method.target_projector.parameters(), frozen, strict=True))


def test_simsiam_stop_gradient_and_heads():
    torch.manual_seed(0)
    method = tiny("simsiam")
    assert isinstance(method.projector[-1], torch.nn.BatchNorm1d)  # BN on the output layer too
    assert method.predictor[0].out_features == 4  # bottleneck: projection_dim // 4
    out = method(two_views())
    assert -1 <= out["loss"].item() <= 1
    out["loss"].backward()
    assert all(p.grad is not None for p in method.predictor.parameters())


@pytest.mark.parametrize("name", ["barlow_twins", "vicreg", "vibcreg"])
def test_redundancy_reduction_proxy_accuracy_counts_the_rows_whose_other_view_is_their_own_image(name):
    # view_1 is view_0 with rows 0 and 1 swapped: only the 6 other rows have their own image as the other
    # view, so a proxy accuracy that asks "is the other view of the same image the nearest?" is exactly 6 / 8
    torch.manual_seed(0)
    views = two_views()
    same = {"view_0": views["view_0"], "view_1": views["view_0"].clone()}
    swapped = {"view_0": views["view_0"], "view_1": views["view_0"][[1, 0, 2, 3, 4, 5, 6, 7]]}
    method = tiny(name)
    assert method(same)["proxy_acc"].item() == 1.0
    assert method(swapped)["proxy_acc"].item() == 0.75
    out = method(views)
    assert torch.isfinite(out["loss"]) and out["loss"].item() > 0


@pytest.mark.parametrize(
    "name, kwargs, match",
    [
        ("byol", {"base_momentum": 1.5}, "base_momentum"),
        ("barlow_twins", {"lambda_": -1.0}, "lambda_"),
        ("vicreg", {"cov_weight": -1.0}, "cov_weight"),
        ("vibcreg", {"cov_weight": -1.0}, "cov_weight"),
    ],
)
def test_bad_arguments_raise_one_clear_value_error(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny(name, **kwargs)


@pytest.mark.parametrize("loss_fn", [barlow_twins, vicreg, vibcreg])
def test_redundancy_losses_run_in_float32_under_bf16_autocast(loss_fn):
    z0, z1 = torch.randn(8, 4, dtype=torch.float64), torch.randn(8, 4, dtype=torch.float64)
    expected = loss_fn(z0, z1).item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = loss_fn(z0.to(torch.bfloat16), z1.to(torch.bfloat16))
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(expected, rel=1e-2)  # only the bf16 rounding of the inputs


# ---------------------------------------------------------------- VIbCReg (Lee & Aune 2021, section 3)


def vibcreg_reference(z0: np.ndarray, z1: np.ndarray, lam: float, mu: float, nu: float) -> float:
    """Loop form: MSE; per-branch mean_j max(0, 1 - sqrt(var_j + 1e-4)) (unbiased var); per-branch
    sum over i != j of corr_ij^2 divided by D^2, corr from centred, L2-normalized columns."""
    n, d = z0.shape
    sim = np.mean((z0 - z1) ** 2)
    var = sum(np.mean([max(0.0, 1 - np.sqrt(z[:, j].var(ddof=1) + 1e-4)) for j in range(d)]) for z in (z0, z1))
    cov = 0.0
    for z in (z0, z1):
        c = z - z.mean(axis=0)
        c = c / np.linalg.norm(c, axis=0)
        cov += sum((c[:, i] @ c[:, j]) ** 2 for i in range(d) for j in range(d) if i != j) / d**2
    return lam * sim + mu * var + nu * cov


@pytest.mark.parametrize("weights", [(25.0, 25.0, 200.0), (1.0, 0.0, 0.0), (0.0, 3.0, 0.5)])
def test_vibcreg_matches_numpy_reference(weights):
    rng = np.random.default_rng(3)
    z0, z1 = rng.normal(size=(12, 5)) * 0.7, rng.normal(size=(12, 5)) * 1.3
    got = vibcreg(torch.tensor(z0), torch.tensor(z1), *weights).item()
    assert got == pytest.approx(vibcreg_reference(z0, z1, *weights), rel=1e-10)
    # its covariance term ignores the embeddings' scale, unlike VICReg's
    scaled = vibcreg(torch.tensor(10 * z0), torch.tensor(10 * z1), 0.0, 0.0, 1.0).item()
    assert scaled == pytest.approx(vibcreg(torch.tensor(z0), torch.tensor(z1), 0.0, 0.0, 1.0).item(), rel=1e-10)


def test_iternorm_whitens_each_group_and_keeps_running_statistics():
    from ssl_models.iternorm import IterNorm

    torch.manual_seed(0)
    mix = torch.randn(8, 8, dtype=torch.float64)
    x = torch.randn(4096, 8, dtype=torch.float64) @ mix + 3  # correlated, shifted features
    norm = IterNorm(8, num_groups=2, iterations=10).double()
    y = norm(x)
    for g in range(2):
        part = y[:, 4 * g : 4 * g + 4]
        cov = (part - part.mean(0)).T @ (part - part.mean(0)) / len(part)
        torch.testing.assert_close(cov, torch.eye(4, dtype=torch.float64), atol=0.05, rtol=0)
    norm.momentum = 1.0  # the running statistics become this batch's
    norm(x)
    torch.testing.assert_close(norm.eval()(x), norm.train()(x), atol=1e-10, rtol=0)
