"""Projection and prediction heads, as short lists of blocks."""

from __future__ import annotations

from torch import nn


class ProjectionHead(nn.Sequential):
    """MLP head: (Linear -> BatchNorm -> ReLU) x (num_layers - 1) -> Linear.

    SimCLR (arXiv:2002.05709) uses two layers with a 128-d output.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2):
        blocks: list[nn.Module] = []
        dim = in_dim
        for _ in range(num_layers - 1):
            blocks += [nn.Linear(dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
            dim = hidden_dim
        blocks.append(nn.Linear(dim, out_dim))
        super().__init__(*blocks)


class SimCLRProjectionHead(ProjectionHead):
    """SimCLR's 2-layer projection head (arXiv:2002.05709, section 2.1)."""

    def __init__(self, in_dim: int, hidden_dim: int = 512, out_dim: int = 128):
        super().__init__(in_dim, hidden_dim, out_dim, num_layers=2)
