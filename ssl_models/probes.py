"""Frozen-feature probes in plain PyTorch: linear top-1, weighted kNN top-1 and RankMe.

They run on whatever device the features are on (a GPU makes the 60,000-image probes
take seconds), and need no Ray, MLflow or config: `pipelines.evaluate` feeds them
features, and `benchmarks/gpu_step.py` times them on a GPU machine that has neither.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _labels(y, device) -> torch.Tensor:
    # a copy: labels read from Arrow are read-only arrays, which torch.as_tensor warns about
    return torch.tensor(np.asarray(y), dtype=torch.long, device=device)


def linear_probe_top1(
    train_x: torch.Tensor,
    train_y: np.ndarray,
    test_x: torch.Tensor,
    test_y: np.ndarray,
    num_classes: int,
    epochs: int = 30,
    lr: float = 1e-3,
    batch_size: int = 256,
    weight_decay: float = 1e-5,
    seed: int = 0,
    min_steps: int = 300,
) -> float:
    """Top-1 test accuracy of a softmax classifier trained on standardized frozen features."""
    device = train_x.device
    gen = torch.Generator().manual_seed(seed)  # CPU generator: the same order on every device
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    xtr, xte = (train_x - mean) / std, (test_x.to(device) - mean) / std
    ytr = _labels(train_y, device)
    with torch.random.fork_rng(devices=[]):  # the same initial classifier whatever the caller's RNG state:
        torch.manual_seed(seed)  # a baseline computed by either of two concurrent trials gives one number
        clf = nn.Linear(xtr.shape[1], num_classes).to(device)
    opt = torch.optim.AdamW(clf.parameters(), lr=lr, weight_decay=weight_decay)
    # Small labeled sets still get enough steps to converge (at least ``min_steps``).
    epochs = max(epochs, math.ceil(min_steps / math.ceil(len(xtr) / batch_size)))
    steps = epochs * math.ceil(len(xtr) / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(epochs):
        order = torch.randperm(len(xtr), generator=gen).to(device)
        for i in range(0, len(xtr), batch_size):
            idx = order[i : i + batch_size]
            loss = F.cross_entropy(clf(xtr[idx]), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        pred = clf(xte).argmax(1)
    return float((pred == _labels(test_y, device)).float().mean())


@torch.no_grad()
def knn_top1(
    train_x: torch.Tensor,
    train_y: np.ndarray,
    test_x: torch.Tensor,
    test_y: np.ndarray,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.07,
    chunk: int = 512,
) -> float:
    """Weighted kNN on cosine similarity (Wu et al. 2018, https://arxiv.org/abs/1805.01978):
    each of the k nearest training features votes for its class with weight exp(sim / T)."""
    device = train_x.device
    train_n = F.normalize(train_x, dim=1)
    test_n = F.normalize(test_x.to(device), dim=1)
    labels, targets = _labels(train_y, device), _labels(test_y, device)
    k = min(k, len(train_n))
    correct = 0
    for i in range(0, len(test_n), chunk):
        sim = test_n[i : i + chunk] @ train_n.T
        top_sim, top_idx = sim.topk(k, dim=1)
        votes = torch.zeros(len(sim), num_classes, device=device)
        votes.scatter_add_(1, labels[top_idx], (top_sim / temperature).exp())
        correct += int((votes.argmax(1) == targets[i : i + chunk]).sum())
    return correct / len(test_n)


def rankme(features: torch.Tensor, eps: float = 1e-7) -> float:
    """RankMe, the effective rank of an embedding matrix (Garrido et al. 2023, https://arxiv.org/abs/2210.02885).

    ``features`` (N, D): with singular values s_k, p_k = s_k / sum(s) + eps and
    RankMe = exp(-sum_k p_k log p_k), between 1 (collapse to one direction) and min(N, D).
    It needs no labels; higher tends to mean better downstream accuracy within one method.
    """
    s = torch.linalg.svdvals(features.double())
    p = s / s.sum() + eps
    return float(torch.exp(-(p * p.log()).sum()))
