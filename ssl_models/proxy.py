"""Proxy accuracies: how well a method does its own task, shown beside the loss every epoch."""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def nearest_neighbour_accuracy(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Fraction of rows i whose nearest key by cosine similarity is key i (its own positive).

    The proxy accuracy of the Siamese methods without negatives (BYOL, SimSiam, Barlow
    Twins, VICReg): their losses have no candidates to rank, so this asks the same question
    as a contrastive top-1: is the other view of the same image the closest embedding in
    the batch? Chance level is 1 / N for a batch of N. Computed on this worker's batch.
    """
    sim = F.normalize(queries.float(), dim=1) @ F.normalize(keys.float(), dim=1).T
    targets = torch.arange(queries.shape[0], device=queries.device)
    return (sim.argmax(dim=1) == targets).float().mean()
