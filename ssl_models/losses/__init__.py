"""Losses of embeddings only, with the papers' defaults: one loss (or family) per module.

Every public name of every module here (its ``__all__``) is imported below, so
``from ssl_models.losses import nt_xent`` works for each of them; a new loss module
is imported here by name, as ``ssl_models.methods`` imports each method.
``infonce`` is a helper of the contrastive losses, not a loss, and exports nothing.
"""

from ssl_models.losses.barlow_twins import barlow_twins, cross_correlation
from ssl_models.losses.cpc import cpc_infonce, cpc_infonce_logits
from ssl_models.losses.dino import dino_loss
from ssl_models.losses.ibot import ibot_loss, ibot_patch_loss
from ssl_models.losses.ijepa import ijepa_loss, ijepa_targets
from ssl_models.losses.mae import mae_loss, mae_pixel_targets
from ssl_models.losses.moco import moco_infonce, moco_logits
from ssl_models.losses.mocov3 import mocov3_contrastive_loss, mocov3_loss
from ssl_models.losses.negative_cosine import negative_cosine
from ssl_models.losses.nnclr import nearest_neighbours, nnclr_loss
from ssl_models.losses.nt_xent import nt_xent, nt_xent_logits
from ssl_models.losses.pretext import masked_mse
from ssl_models.losses.simmim import simmim_loss
from ssl_models.losses.swav import sinkhorn_codes, swapped_prediction_loss, swav_codes, swav_loss
from ssl_models.losses.triplet import triplet, triplet_distances
from ssl_models.losses.vibcreg import vibcreg, vibcreg_terms
from ssl_models.losses.vicreg import vicreg, vicreg_terms

__all__ = [
    "barlow_twins",
    "cpc_infonce",
    "cpc_infonce_logits",
    "cross_correlation",
    "dino_loss",
    "ibot_loss",
    "ibot_patch_loss",
    "ijepa_loss",
    "ijepa_targets",
    "mae_loss",
    "mae_pixel_targets",
    "masked_mse",
    "moco_infonce",
    "moco_logits",
    "mocov3_contrastive_loss",
    "mocov3_loss",
    "nearest_neighbours",
    "negative_cosine",
    "nnclr_loss",
    "nt_xent",
    "nt_xent_logits",
    "simmim_loss",
    "sinkhorn_codes",
    "swapped_prediction_loss",
    "swav_codes",
    "swav_loss",
    "triplet",
    "triplet_distances",
    "vibcreg",
    "vibcreg_terms",
    "vicreg",
    "vicreg_terms",
]
