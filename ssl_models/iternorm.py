"""Iterative normalization (IterNorm): whitening by Newton iterations, without an eigendecomposition.

Huang et al., "Iterative Normalization: Beyond Standardization towards Efficient Whitening",
CVPR 2019, https://arxiv.org/abs/1904.03441 (algorithm 1). VIbCReg puts it on its projector's
output. Features are split into groups whitened separately; T Newton-Schulz steps approximate
Sigma^(-1/2) of each group's covariance.
"""

from __future__ import annotations

import torch
from torch import nn


class IterNorm(nn.Module):
    """Whiten (N, D) features in ``num_groups`` groups with ``iterations`` Newton steps; running statistics for eval."""

    def __init__(self, num_features: int, num_groups: int = 64, iterations: int = 5, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        num_groups = min(num_groups, num_features)
        if num_features % num_groups:
            raise ValueError(f"num_features {num_features} is not divisible into {num_groups} groups")
        self.num_groups, self.iterations, self.eps, self.momentum = num_groups, iterations, eps, momentum
        size = num_features // num_groups
        self.register_buffer("running_mean", torch.zeros(num_groups, size, 1))
        self.register_buffer("running_whitening", torch.eye(size).expand(num_groups, size, size).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, d = x.shape
        g = self.num_groups
        xg = x.T.reshape(g, d // g, n)  # (groups, features per group, samples)
        if not self.training:
            return (self.running_whitening @ (xg - self.running_mean)).reshape(d, n).T
        mean = xg.mean(dim=2, keepdim=True)
        centred = xg - mean
        eye = torch.eye(d // g, device=x.device, dtype=x.dtype).expand(g, -1, -1)
        sigma = self.eps * eye + centred @ centred.transpose(1, 2) / n
        trace = sigma.diagonal(dim1=1, dim2=2).sum(dim=1).view(g, 1, 1)
        sigma_n = sigma / trace  # eigenvalues in (0, 1]: the iterations converge
        p = eye
        for _ in range(self.iterations):
            p = 0.5 * (3 * p - p @ p @ p @ sigma_n)
        whitening = p / trace.sqrt()
        with torch.no_grad():
            self.running_mean.lerp_(mean, self.momentum)
            self.running_whitening.lerp_(whitening, self.momentum)
        return (whitening @ centred).reshape(d, n).T
