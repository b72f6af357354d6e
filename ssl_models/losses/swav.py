"""SwAV's swapped prediction loss, with codes from the Sinkhorn-Knopp equipartition of the prototypes.

Caron et al., "Unsupervised Learning of Visual Features by Contrasting Cluster Assignments", 2020,
https://arxiv.org/abs/2006.09882 (equations 1-3, section 3.1 and appendix A.1).
Checked on fixed tensors against a NumPy transcription of facebookresearch/swav ``main_swav.py``
(``train``'s loss loop and ``distributed_sinkhorn``), to 1e-5.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ssl_models.distributed import world_size

__all__ = ["sinkhorn_codes", "swapped_prediction_loss", "swav_codes", "swav_loss"]


@torch.no_grad()
def sinkhorn_codes(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """Soft codes (B, K) of B samples on K prototypes: each row sums to 1, each prototype gets B/K in all.

    ``Q = exp(scores / epsilon)`` made a joint distribution, then ``iterations`` rounds of:
    every prototype's row total -> 1/K, every sample's column total -> 1/B; finally times B,
    so each sample's code is a distribution over the prototypes. With more than one process
    the totals are all-reduced, as in the authors' ``distributed_sinkhorn``: B counts the
    samples of every worker and the codes are those of the concatenated batch.

    Args:
        scores: (n, K) scores of this worker's n samples against the (normalized) prototypes,
            cosine similarities in [-1, 1]; queued samples, when used, are rows here too.
        epsilon: the entropy regularization, 0.05 in the paper.
        iterations: Sinkhorn-Knopp rounds, 3 in the paper.

    No gradient flows through the codes. Computed in at least float32 (exp(1 / 0.05) is
    4.9e8: beyond float16 and coarse in bfloat16).
    """
    if epsilon < 1e-8:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    distributed = world_size() > 1
    with torch.autocast(scores.device.type, enabled=False):
        q = torch.exp(scores.to(torch.promote_types(scores.dtype, torch.float32)) / epsilon).T  # (K, n)
        num_prototypes, total_samples = q.shape[0], q.shape[1] * world_size()
        total = q.sum()
        if distributed:
            dist.all_reduce(total)
        q = q / total
        for _ in range(iterations):
            rows = q.sum(dim=1, keepdim=True)  # each prototype's share, over every worker's samples
            if distributed:
                dist.all_reduce(rows)
            q = q / rows / num_prototypes
            q = q / q.sum(dim=0, keepdim=True) / total_samples  # each sample's column is its own: no reduce
        return (q * total_samples).T


def swapped_prediction_loss(
    crop_scores: Sequence[torch.Tensor],
    codes: Sequence[torch.Tensor],
    temperature: float = 0.1,
    crops_for_assign: Sequence[int] = (0, 1),
) -> torch.Tensor:
    """Each assigning crop's codes predicted by every other crop: mean of ``-sum_k q_k log softmax(p / T)_k``.

    For every crop ``c`` in ``crops_for_assign`` (with codes ``codes[i]``), the cross entropy
    of ``softmax(scores_v / temperature)`` against the codes, averaged over the batch and
    over the other ``V - 1`` crops v; then averaged over the assigning crops (as ``main_swav.py``).

    Args:
        crop_scores: V tensors (n, K), the prototype scores of each crop (global crops first).
        codes: one (n, K) tensor per assigning crop, rows summing to 1 (``sinkhorn_codes``); detached.
        temperature: 0.1 in the paper.
        crops_for_assign: which crops' codes are predicted; the paper's [0, 1], the two global crops.

    Every term uses only its own sample, so the mean over workers equals the loss of the
    concatenated batch (the codes already saw every worker through the all-reduced Sinkhorn).
    """
    if temperature < 1e-8:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if len(codes) != len(crops_for_assign):
        raise ValueError(f"need one code per assigning crop: {len(codes)} codes for crops {list(crops_for_assign)}")
    if len(crop_scores) < 2:
        raise ValueError("swapped prediction needs two crops or more")
    dtype = torch.promote_types(crop_scores[0].dtype, torch.float32)
    log_probs = [F.log_softmax(s.to(dtype) / temperature, dim=1) for s in crop_scores]
    loss = crop_scores[0].new_zeros((), dtype=dtype)
    for q, crop in zip(codes, crops_for_assign, strict=True):
        q = q.detach().to(dtype)
        others = [lp for v, lp in enumerate(log_probs) if v != crop]
        loss = loss + torch.stack([-(q * lp).sum(dim=1).mean() for lp in others]).mean()
    return loss / len(crops_for_assign)


def swav_codes(
    crop_scores: Sequence[torch.Tensor],
    epsilon: float = 0.05,
    sinkhorn_iterations: int = 3,
    crops_for_assign: Sequence[int] = (0, 1),
    queue_scores: Sequence[torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """The codes (n, K) of each assigning crop, by ``sinkhorn_codes`` on its scores.

    ``queue_scores`` (one (L, K) tensor per assigning crop: queued embeddings of that crop
    against the current prototypes) join the Sinkhorn problem, so the equipartition is over
    L + n samples per worker; only the batch's n codes are kept (``main_swav.py``'s ``[-bs:]``).
    """
    codes = []
    for i, crop in enumerate(crops_for_assign):
        scores = crop_scores[crop].detach()
        n = scores.shape[0]
        if queue_scores is not None:
            scores = torch.cat([queue_scores[i].detach().to(scores.dtype), scores])
        codes.append(sinkhorn_codes(scores, epsilon, sinkhorn_iterations)[-n:])
    return codes


def swav_loss(
    crop_scores: Sequence[torch.Tensor],
    temperature: float = 0.1,
    epsilon: float = 0.05,
    sinkhorn_iterations: int = 3,
    crops_for_assign: Sequence[int] = (0, 1),
    queue_scores: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """SwAV's loss from the prototype scores (n, K) of every crop: ``swav_codes``, then ``swapped_prediction_loss``."""
    codes = swav_codes(crop_scores, epsilon, sinkhorn_iterations, crops_for_assign, queue_scores)
    return swapped_prediction_loss(crop_scores, codes, temperature, crops_for_assign)
