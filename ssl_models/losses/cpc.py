"""InfoNCE of Contrastive Predictive Coding.

van den Oord et al., "Representation Learning with Contrastive Predictive Coding",
2018, https://arxiv.org/abs/1807.03748 (equation 4); Hénaff et al., "Data-Efficient
Image Recognition with Contrastive Predictive Coding", 2019,
https://arxiv.org/abs/1905.09272 (section 2.1).
"""

from __future__ import annotations

import torch

from ssl_models.distributed import gather_with_grad, rank
from ssl_models.losses.infonce import cross_entropy_and_top1

__all__ = ["cpc_infonce", "cpc_infonce_logits"]


def cpc_infonce_logits(
    predictions: torch.Tensor, targets: torch.Tensor, positive_index: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores of every local prediction against every target of every process, and the positives' columns.

    Args:
        predictions: (M, D) predicted encodings ``W_k c_{i,j}``.
        targets: (P, D) candidate encodings ``z``: the positives and all negatives.
        positive_index: (M,) row of ``targets`` holding each prediction's positive;
            ``None`` means row m for prediction m (then P = M).

    Returns:
        logits (M, P x world size) of raw dot products ``z^T W_k c`` (the paper's
        log-bilinear score, no temperature), and targets (M,) indexing the gathered columns.
    """
    if positive_index is None:
        if predictions.shape[0] != targets.shape[0]:
            raise ValueError(
                f"without positive_index, predictions and targets need as many rows, got {len(predictions)} and {len(targets)}"
            )
        positive_index = torch.arange(predictions.shape[0], device=predictions.device)
    candidates = gather_with_grad(targets)  # negatives from every worker, as in the paper's whole batch
    logits = predictions @ candidates.T
    return logits, positive_index + rank() * targets.shape[0]


def cpc_infonce(
    predictions: torch.Tensor,
    targets: torch.Tensor,
    positive_index: torch.Tensor | None = None,
    *,
    with_accuracy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """InfoNCE: ``-log exp(s(pred_m, z_pos)) / sum_l exp(s(pred_m, z_l))``, averaged over the M predictions.

    ``s`` is the dot product and ``z_l`` runs over every target of every process,
    so the positive competes with all other patches of all images in the batch.
    Under ``torch.distributed`` with more than one process and the same M and P on
    each, the mean over processes equals the single-process loss on the concatenated
    batch and gradients flow back to every process's targets. ``with_accuracy`` also returns
    how often the true patch ranks first among all of them.
    """
    logits, labels = cpc_infonce_logits(predictions, targets, positive_index)
    return cross_entropy_and_top1(logits, labels, with_accuracy)
