"""The frozen-feature probes against formulas and references; on a GPU, the same numbers as on CPU."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ssl_models.probes import knn_top1, linear_probe_top1, rankme
from tests.conftest import measured


def _blobs(n_per_class=60, classes=3, dim=8, spread=0.3, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * 3
    x = np.concatenate([c + spread * rng.normal(size=(n_per_class, dim)) for c in centres])
    y = np.repeat(np.arange(classes), n_per_class)
    return torch.tensor(x, dtype=torch.float32), y


def test_linear_probe_separates_separable_classes_and_is_at_chance_on_noise():
    x, y = _blobs()
    assert linear_probe_top1(x, y, x, y, num_classes=3, epochs=20, lr=1e-2) == 1.0
    rng = np.random.default_rng(1)
    noise = torch.tensor(rng.normal(size=(600, 8)), dtype=torch.float32)
    labels = rng.integers(0, 2, 600)
    acc = linear_probe_top1(noise[:300], labels[:300], noise[300:], labels[300:], 2, epochs=5)
    measured("linear top-1 on noise", acc, above=0.35, below=0.65)


def _knn_reference(train_x, train_y, test_x, k, t, classes):
    train_n = F.normalize(train_x, dim=1).numpy()
    test_n = F.normalize(test_x, dim=1).numpy()
    preds = []
    for q in test_n:
        sims = train_n @ q
        top = np.argsort(-sims)[:k]
        votes = np.zeros(classes)
        for i in top:
            votes[train_y[i]] += np.exp(sims[i] / t)
        preds.append(votes.argmax())
    return np.array(preds)


def test_knn_matches_a_loop_reference():
    train_x, train_y = _blobs(spread=2.5, seed=2)
    test_x, test_y = _blobs(n_per_class=20, spread=2.5, seed=3)
    for k in (1, 5, 50):
        expected = float((_knn_reference(train_x, train_y, test_x, k, 0.07, 3) == test_y).mean())
        assert knn_top1(train_x, train_y, test_x, test_y, 3, k=k, chunk=7) == pytest.approx(expected)


def test_rankme_is_the_exponential_entropy_of_normalized_singular_values():
    # singular values 4, 2, 1, 1: p = (0.5, 0.25, 0.125, 0.125), entropy = 1.75 ln 2
    z = torch.diag(torch.tensor([4.0, 2.0, 1.0, 1.0]))
    assert abs(rankme(z) - math.exp(1.75 * math.log(2))) < 1e-5
    # rank one: 1; isotropic: about the dimension; never above min(N, D)
    assert abs(rankme(torch.ones(100, 8)) - 1.0) < 1e-4
    gauss = torch.randn(4000, 16, generator=torch.Generator().manual_seed(0))
    assert 15.5 < rankme(gauss) <= 16.0
    assert rankme(torch.randn(5, 64, generator=torch.Generator().manual_seed(0))) <= 5.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_probes_on_the_gpu_match_the_cpu():
    train_x, train_y = _blobs(n_per_class=200, spread=2.5, seed=4)
    test_x, test_y = _blobs(n_per_class=50, spread=2.5, seed=5)
    cpu_knn = knn_top1(train_x, train_y, test_x, test_y, 3, k=20)
    assert knn_top1(train_x.cuda(), train_y, test_x.cuda(), test_y, 3, k=20) == pytest.approx(cpu_knn)
    cpu_linear = linear_probe_top1(train_x, train_y, test_x, test_y, 3, epochs=5)
    assert abs(linear_probe_top1(train_x.cuda(), train_y, test_x.cuda(), test_y, 3, epochs=5) - cpu_linear) <= 0.02
    assert rankme(train_x.cuda()) == pytest.approx(rankme(train_x), rel=1e-6)


def test_linear_probe_does_not_depend_on_the_global_rng():
    train_x, train_y = _blobs(spread=2.5, seed=6)
    test_x, test_y = _blobs(n_per_class=20, spread=2.5, seed=7)
    results = set()
    for global_seed in (0, 1, 2):
        torch.manual_seed(global_seed)  # what a trial's training left behind
        results.add(linear_probe_top1(train_x, train_y, test_x, test_y, 3, epochs=2))
    assert len(results) == 1
