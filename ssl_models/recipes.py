"""A method's training recipe: its paper's optimizer, rates, warm-up and head sizes, adapted to small images.

Each method keeps its recipe beside it, as a class attribute (``recipe = Recipe(...)`` in
``ssl_models/methods/<name>.py``), as timm keeps a model's config beside the model; ``method_recipe``
reads it from the method registry.

A config field left unset takes the method's recipe; one the user sets wins. Learning
rates are for a batch of 256 and scale linearly with the batch (as in the papers), or with its square root
where the recipe says so (``lr_scaling="sqrt"``, SimCLR's rule for small batches).
``cpu_kwargs`` are head sizes that fit the main job's budget on 2 CPU cores; on GPUs
the method's own defaults (the paper's sizes) stay. Each recipe says where it differs
from the paper, and why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ssl_models.registry import method_class

# A warm-up longer than this share of the run leaves too little of it at full rate: a 1-epoch
# run with 1 warm-up epoch never decayed. Recipes warm up for less; user settings are capped.
MAX_WARMUP_SHARE = 0.2


@dataclass(frozen=True)
class Recipe:
    paper: str  # arXiv link of the method's paper
    optimizer: str = "sgd"  # sgd | lars | adamw
    lr: float = 0.06  # base learning rate for a batch of 256
    lr_scaling: str = "linear"  # how lr scales with the batch: linear (B / 256) or sqrt (sqrt(B / 256))
    weight_decay: float = 5e-4  # not applied to biases and norm parameters
    momentum: float = 0.9  # SGD / LARS momentum; AdamW's beta1
    beta2: float = 0.999  # AdamW only
    bias_lr_scale: float = 1.0  # LARS only: biases and norms train at lr x this (Barlow Twins: 0.0048 / 0.2)
    warmup_share: float = 0.1  # share of the run spent in linear warm-up (at most MAX_WARMUP_SHARE)
    sync_batchnorm: bool = False  # batch-norm statistics over every worker's batch, as the paper trains
    cpu_kwargs: dict[str, Any] = field(default_factory=dict)  # method arguments on CPUs (head sizes)
    notes: str = ""  # where this differs from the paper, and why

    def __post_init__(self):
        if not 0 <= self.warmup_share <= MAX_WARMUP_SHARE:
            raise ValueError(f"warmup_share {self.warmup_share} is outside [0, {MAX_WARMUP_SHARE}]")
        if self.lr_scaling not in ("linear", "sqrt"):
            raise ValueError(f"lr_scaling {self.lr_scaling!r} is not linear or sqrt")


# The recipe shared by the pretext tasks and the methods whose paper trains with plain SGD at
# these scales: what the whole pipeline used before per-method recipes.
SHARED_SGD = dict(optimizer="sgd", lr=0.06, weight_decay=5e-4, momentum=0.9)


def method_recipe(name: str) -> Recipe:
    """The recipe of method ``name``, its class's own ``recipe``; a method registered without one fails loudly
    (one inherited from the method it builds on does not count: each method says which recipe it trains with)."""
    recipe = method_class(name).__dict__.get("recipe")
    if not isinstance(recipe, Recipe):
        raise ValueError(f"method {name!r} has no recipe; give its class one: recipe = Recipe(paper=..., ...)")
    return recipe
