"""MoCo's InfoNCE loss against a queue of negative keys.

He et al., "Momentum Contrast for Unsupervised Visual Representation Learning",
2019, https://arxiv.org/abs/1911.05722 (equation 1 and algorithm 1); MoCo v2,
Chen et al., 2020, https://arxiv.org/abs/2003.04297 (temperature 0.2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssl_models.losses.infonce import cross_entropy_and_top1

__all__ = ["moco_infonce", "moco_logits"]


def moco_logits(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """Logits (n, 1 + K) of each query against its positive key (column 0) and the K queued keys.

    Args:
        q: (n, D) queries from the query encoder.
        k: (n, D) keys of the other view of the same n images (the positives).
        queue: (K, D) keys of earlier batches (the negatives).
        temperature: tau > 0; 0.2 is MoCo v2's default (v1 used 0.07).

    All three are L2-normalized here, as in the paper. Keys and queue are detached:
    in MoCo the key encoder learns only through the momentum update, never by gradient.
    """
    if temperature < 1e-8:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    q = F.normalize(q, dim=1)
    k = F.normalize(k.detach().to(q.dtype), dim=1)
    queue = F.normalize(queue.detach().to(q.dtype), dim=1)
    positive = (q * k).sum(dim=1, keepdim=True)  # (n, 1)
    negatives = q @ queue.T  # (n, K)
    return torch.cat([positive, negatives], dim=1) / temperature


def moco_infonce(
    q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float = 0.2, *, with_accuracy: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """InfoNCE, ``-log exp(q.k+/tau) / (exp(q.k+/tau) + sum_j exp(q.k_j/tau))``, averaged over the n queries.

    A cross entropy over the logits of ``moco_logits`` with the positive at index 0.
    Every term depends only on its own query, key and the (shared) queue, so the mean
    over workers of this loss equals the loss of the concatenated batch without gathering.
    ``with_accuracy`` also returns how often the key ranks first among key and queue.
    """
    logits = moco_logits(q, k, queue, temperature)
    targets = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return cross_entropy_and_top1(logits, targets, with_accuracy)
