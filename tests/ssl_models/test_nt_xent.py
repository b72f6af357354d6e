"""NT-Xent against a NumPy reference written from SimCLR's equation 1, and across 2 gloo processes."""

import numpy as np
import pytest
import torch
import torch.distributed as dist

from ssl_models.losses import nt_xent
from tests.ssl_models.gloo import run_distributed


def nt_xent_reference(z0: np.ndarray, z1: np.ndarray, tau: float) -> float:
    """Loop form of the paper: z = [z0; z1], l(i,j) = -log(exp(s_ij/tau) / sum_{k!=i} exp(s_ik/tau)), mean over 2N."""
    z = np.concatenate([z0, z1])
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    n2 = len(z)
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        j = (i + n) % n2
        denom = sum(np.exp(z[i] @ z[k] / tau) for k in range(n2) if k != i)
        total += -np.log(np.exp(z[i] @ z[j] / tau) / denom)
    return total / n2


@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0])
def test_matches_numpy_reference(tau):
    rng = np.random.default_rng(0)
    z0, z1 = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    got = nt_xent(torch.tensor(z0), torch.tensor(z1), temperature=tau).item()
    assert got == pytest.approx(nt_xent_reference(z0, z1, tau), rel=1e-9)


def test_symmetric_in_its_views_and_rejects_zero_temperature():
    z0, z1 = torch.randn(8, 4, dtype=torch.float64), torch.randn(8, 4, dtype=torch.float64)
    assert nt_xent(z0, z1).item() == pytest.approx(nt_xent(z1, z0).item(), rel=1e-12)
    with pytest.raises(ValueError, match="temperature"):
        nt_xent(z0, z1, temperature=0.0)


def test_perfect_alignment_gives_the_known_optimum():
    # Two identical one-hot views of orthogonal images: positives score 1/tau, negatives 0.
    z = torch.eye(4, dtype=torch.float64)
    tau = 0.5
    expected = -np.log(np.exp(1 / tau) / (np.exp(1 / tau) + 6 * np.exp(0.0)))
    assert nt_xent(z, z, tau).item() == pytest.approx(expected)


def _sharded_loss_and_grad(rank: int, world: int, x0, x1, weight):
    """This rank's slice of the batch through a shared linear map; loss and DDP-averaged gradient."""
    n = x0.shape[0] // world
    w = weight.clone().requires_grad_(True)
    sl = slice(rank * n, (rank + 1) * n)
    loss = nt_xent(x0[sl] @ w, x1[sl] @ w, temperature=0.3)
    loss.backward()
    grad = w.grad.clone()
    dist.all_reduce(grad)  # what DDP does: average the gradients over workers
    return {"loss": loss.detach(), "grad": grad / world}


def test_gathered_over_two_gloo_processes_equals_single_process(tmp_path):
    torch.manual_seed(0)
    x0, x1 = torch.randn(8, 6, dtype=torch.float64), torch.randn(8, 6, dtype=torch.float64)
    weight = torch.randn(6, 4, dtype=torch.float64)
    results = run_distributed(tmp_path, _sharded_loss_and_grad, x0, x1, weight)

    w = weight.clone().requires_grad_(True)
    loss = nt_xent(x0 @ w, x1 @ w, temperature=0.3)
    loss.backward()
    mean_loss = sum(r["loss"] for r in results) / len(results)
    assert mean_loss.item() == pytest.approx(loss.item(), rel=1e-10)
    torch.testing.assert_close(results[0]["grad"], w.grad, rtol=1e-9, atol=1e-12)
