"""A proxy accuracy checked by its count: the share of a known number of predictions that hit."""

from __future__ import annotations

import pytest
import torch


def hits_out_of(acc: torch.Tensor, predictions: int) -> int:
    """How many of ``predictions`` predictions a proxy accuracy says hit; fails unless it is a whole number of them,
    so an accuracy averaged over anything else (the wrong candidates, a padded batch) is caught."""
    hits = acc.item() * predictions
    assert hits == pytest.approx(round(hits), abs=1e-4), f"{acc.item()} is not a share of {predictions} predictions"
    assert 0 <= round(hits) <= predictions
    return round(hits)
