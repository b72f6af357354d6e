"""MoCo v3's contrastive loss: in-batch keys of every worker as negatives, no queue.

Chen, Xie and He, "An Empirical Study of Training Self-Supervised Vision Transformers",
2021, https://arxiv.org/abs/2104.02057 (algorithm 1 and section 2). Checked against the
authors' ``MoCo.contrastive_loss`` in facebookresearch/moco-v3, ``moco/builder.py``
(tests/ssl_models/test_mocov3_ibot.py, on fixed tensors to 1e-5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssl_models.distributed import gather_with_grad, rank
from ssl_models.losses.infonce import cross_entropy_and_top1

__all__ = ["mocov3_contrastive_loss", "mocov3_loss"]


def mocov3_contrastive_loss(
    q: torch.Tensor, k: torch.Tensor, temperature: float = 1.0, *, with_accuracy: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``2 tau * CE(q k_all^T / tau, positives)``: each query against the keys of every worker's batch.

    Args:
        q: (n, D) queries of one view (predictor outputs of the query encoder), this worker's.
        k: (n, D) keys of the other view of the same n images (momentum encoder), this worker's.
        temperature: tau > 0. The authors use 1.0 for ResNets (``--moco-t`` default) and 0.2
            for ViTs (their released ViT configs).

    Both are L2-normalized. The keys of every worker are gathered (in rank order, without
    gradient: keys come from the momentum encoder and learn only through its EMA), so query
    i of this worker has its positive at column ``n * rank + i`` and the other ``n * world - 1``
    keys as negatives. The ``2 tau`` factor is the authors' (it keeps the gradient's scale
    independent of tau). Every worker must pass the same n. The mean over workers of this
    loss is the loss of the concatenated batch in one process.
    ``with_accuracy`` also returns how often the positive key ranks first.
    """
    if temperature < 1e-8:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    dtype = torch.promote_types(q.dtype, torch.float32)
    q = F.normalize(q.to(dtype), dim=1)
    k = F.normalize(k.detach().to(dtype), dim=1)
    keys = gather_with_grad(k)  # k is detached: a plain all_gather
    logits = q @ keys.T / temperature  # (n, n * world)
    n = q.shape[0]
    targets = torch.arange(n, device=q.device) + n * rank()
    out = cross_entropy_and_top1(logits, targets, with_accuracy)
    if with_accuracy:
        return out[0] * (2 * temperature), out[1]
    return out * (2 * temperature)


def mocov3_loss(q0: torch.Tensor, q1: torch.Tensor, k0: torch.Tensor, k1: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """The symmetrized loss of MoCo v3's ``forward``: ``ctr(q0, k1) + ctr(q1, k0)`` (a sum, not a mean).

    q0, q1: (n, D) queries of views 0 and 1; k0, k1: (n, D) keys of views 0 and 1.
    """
    return mocov3_contrastive_loss(q0, k1, temperature) + mocov3_contrastive_loss(q1, k0, temperature)
