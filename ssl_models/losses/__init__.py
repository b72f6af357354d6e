"""Losses of embeddings only, with the papers' defaults."""

from ssl_models.losses.nt_xent import nt_xent, nt_xent_logits

__all__ = ["nt_xent", "nt_xent_logits"]
