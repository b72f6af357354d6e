"""NT-Xent, the normalized temperature-scaled cross-entropy loss of SimCLR.

Chen et al., "A Simple Framework for Contrastive Learning of Visual
Representations", 2020, https://arxiv.org/abs/2002.05709 (equation 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssl_models.distributed import gather_with_grad, rank
from ssl_models.losses.infonce import cross_entropy_and_top1

__all__ = ["nt_xent", "nt_xent_logits"]


def _check_temperature(temperature: float) -> None:
    if temperature < 1e-8:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def nt_xent_logits(z0: torch.Tensor, z1: torch.Tensor, temperature: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and targets of NT-Xent for this process's 2n anchors.

    Args:
        z0, z1: (n, D) embeddings of two views of the same n images.
        temperature: tau in the paper; 0.5 is SimCLR's CIFAR-10 default.

    Returns:
        logits (2n, 2N) of every local anchor against every view of every process
        (N = n x world size), with each anchor's own entry set to -inf, and targets
        (2n,) holding the column of each anchor's positive.
    """
    _check_temperature(temperature)
    z0 = F.normalize(z0, dim=1)
    z1 = F.normalize(z1, dim=1)
    n = z0.shape[0]
    all0 = gather_with_grad(z0)
    all1 = gather_with_grad(z1)
    total = all0.shape[0]
    anchors = torch.cat([z0, z1])  # (2n, D)
    candidates = torch.cat([all0, all1])  # (2N, D)
    logits = anchors @ candidates.T / temperature
    local = torch.arange(n, device=z0.device) + rank() * n  # global index of each local image
    self_cols = torch.cat([local, local + total])
    rows = torch.arange(2 * n, device=z0.device)
    logits = logits.index_put((rows, self_cols), torch.tensor(float("-inf"), device=z0.device, dtype=logits.dtype))
    targets = torch.cat([local + total, local])
    return logits, targets


def nt_xent(
    z0: torch.Tensor, z1: torch.Tensor, temperature: float = 0.5, *, with_accuracy: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """SimCLR's NT-Xent loss, averaged over all 2N anchors.

    For anchor i with positive j among the 2N views,
    ``l(i, j) = -log exp(sim(i, j)/tau) / sum_{k != i} exp(sim(i, k)/tau)``.
    Under ``torch.distributed`` with more than one process, negatives come from
    every process and gradients flow back to each; the mean over processes of the
    returned losses equals the single-process loss on the concatenated batch.

    Args:
        z0, z1: (n, D) projections of two views; row i of each is the same image.
        temperature: tau > 0.
        with_accuracy: also return how often the positive ranks first among the 2N - 1 candidates
            (SimCLR's training step logs it as its proxy accuracy).
    """
    logits, targets = nt_xent_logits(z0, z1, temperature)
    return cross_entropy_and_top1(logits, targets, with_accuracy)
