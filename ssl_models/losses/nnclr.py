"""NNCLR's contrastive loss: each sample's nearest neighbour in a support set is the positive.

Dwibedi et al., "With a Little Help from My Friends: Nearest-Neighbor Contrastive Learning of
Visual Representations", 2021, https://arxiv.org/abs/2104.14548 (equation 2). No official code:
checked on fixed tensors, to 1e-5, against a NumPy transcription of equation 2, with the
neighbour found as lightly's ``NNMemoryBankModule`` does (argmax of the cosine over the bank).
lightly's ``NNCLR`` example feeds neighbours and predictions to its NT-Xent over 2n rows, which
adds neighbour-neighbour and prediction-prediction negatives; equation 2 (and solo-learn's
``nnclr_loss_func``) contrasts each neighbour with the n predictions only, as here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssl_models.distributed import gather_with_grad, rank
from ssl_models.losses.infonce import cross_entropy_and_top1

__all__ = ["nearest_neighbours", "nnclr_loss"]


@torch.no_grad()
def nearest_neighbours(z: torch.Tensor, support: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``NN(z, Q)``: the row of ``support`` (M, D) with the highest cosine similarity to each z (n, D).

    Returns the neighbours (n, D), L2-normalized and detached (no gradient flows through
    them, as in the paper), and their indices (n,) in ``support``.
    """
    similarity = F.normalize(z.detach(), dim=1) @ F.normalize(support.to(z.dtype), dim=1).T
    index = similarity.argmax(dim=1)
    return F.normalize(support[index].to(z.dtype), dim=1), index


def nnclr_loss(
    neighbours: torch.Tensor, predictions: torch.Tensor, temperature: float = 0.1, *, with_accuracy: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Equation 2: ``-log exp(NN(z_i) . p_i+ / tau) / sum_k exp(NN(z_i) . p_k+ / tau)``, mean over i.

    Args:
        neighbours: (n, D) nearest neighbours ``NN(z_i, Q)`` of one view's embeddings (detached here).
        predictions: (n, D) the prediction head's outputs ``p_i+`` for the other view.
        temperature: tau, 0.1 in the paper.

    Both are L2-normalized here. Under ``torch.distributed`` with more than one process the
    predictions are gathered (with gradients) from every worker, so the k of the denominator
    runs over the global batch and the mean over workers is the loss of the concatenated
    batch. ``with_accuracy`` also returns how often ``p_i+`` ranks first for ``NN(z_i)``.
    The method symmetrizes it over the two views (each view's neighbours against the other's
    predictions), as lightly and solo-learn do.
    """
    if temperature < 1e-8:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    predictions = F.normalize(predictions, dim=1)
    neighbours = F.normalize(neighbours.detach().to(predictions.dtype), dim=1)
    everyone = gather_with_grad(predictions)
    logits = neighbours @ everyone.T / temperature
    n = neighbours.shape[0]
    targets = torch.arange(n, device=neighbours.device) + rank() * n
    return cross_entropy_and_top1(logits, targets, with_accuracy)
