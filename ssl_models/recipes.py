"""Every method's training recipe: its paper's optimizer, rates, warm-up and head sizes, adapted to small images.

A config field left unset takes the method's recipe; one the user sets wins. Learning
rates are for a batch of 256 and scale linearly with the batch (as in the papers).
``cpu_kwargs`` are head sizes that fit the main job's budget on 2 CPU cores; on GPUs
the method's own defaults (the paper's sizes) stay. Each recipe says where it differs
from the paper, and why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# A warm-up longer than this share of the run leaves too little of it at full rate: a 1-epoch
# run with 1 warm-up epoch never decayed. Recipes warm up for less; user settings are capped.
MAX_WARMUP_SHARE = 0.2


@dataclass(frozen=True)
class Recipe:
    paper: str  # arXiv link of the method's paper
    optimizer: str = "sgd"  # sgd | lars | adamw
    lr: float = 0.06  # base learning rate for a batch of 256
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


# The recipe shared by the pretext tasks and the methods whose paper trains with plain SGD at
# these scales: what the whole pipeline used before per-method recipes.
_SGD = dict(optimizer="sgd", lr=0.06, weight_decay=5e-4, momentum=0.9)

RECIPES: dict[str, Recipe] = {
    "simclr": Recipe(
        paper="https://arxiv.org/abs/2002.05709",
        sync_batchnorm=True,
        **_SGD,
        notes="Paper: LARS, lr 0.3 x B/256 (ImageNet; 1.0 with B=512 on CIFAR-10), wd 1e-6, 10 warm-up epochs. "
        "LARS pays off at batch 4096; at batch 256 on CPUs, SGD with momentum is the solo-learn CIFAR setting.",
    ),
    "moco": Recipe(
        paper="https://arxiv.org/abs/2003.04297",
        optimizer="sgd",
        lr=0.03,
        weight_decay=1e-4,
        notes="MoCo v2 as published: SGD lr 0.03 for batch 256, wd 1e-4, cosine; its warm-up is none (here 10%).",
    ),
    "mocov3": Recipe(
        paper="https://arxiv.org/abs/2104.02057",
        sync_batchnorm=True,
        optimizer="lars",
        lr=0.6,
        weight_decay=1e-6,
        momentum=0.9,
        warmup_share=0.1,
        notes="The authors' ResNet recipe (main_moco.py, CONFIG.md, 100 epochs): LARS lr 0.6 x B/256 (0.3 for 300+ "
        "epochs), wd 1e-6, momentum 0.9, 10 warm-up epochs of 100, cosine, SyncBN. Their ViT recipe differs: AdamW "
        "lr 1.5e-4 x B/256, wd 0.1, 40 warm-up epochs of 300; with method.backbone=vit_tiny set optim.name=adamw, "
        "optim.lr=1.5e-4, optim.weight_decay=0.1 (one recipe per method; the CPU default is small_cnn).",
    ),
    "triplet": Recipe(paper="https://arxiv.org/abs/1503.03832", **_SGD, notes="No SSL paper recipe; the shared SGD one."),
    "byol": Recipe(
        paper="https://arxiv.org/abs/2006.07733",
        sync_batchnorm=True,
        **_SGD,
        notes="Paper: LARS lr 0.2 x B/256, wd 1.5e-6, batch 4096, 1% warm-up; not yet measured here against the "
        "shared SGD recipe. Views as in the paper: blur 1.0 / 0.1, solarization 0 / 0.2 (BYOL.view_kwargs).",
    ),
    "simsiam": Recipe(
        paper="https://arxiv.org/abs/2011.10566",
        sync_batchnorm=True,
        optimizer="sgd",
        lr=0.05,
        weight_decay=1e-4,
        notes="As published: SGD lr 0.05 x B/256, wd 1e-4, cosine, no warm-up (here 10%); its CIFAR recipe uses wd 5e-4.",
    ),
    "barlow_twins": Recipe(
        paper="https://arxiv.org/abs/2103.03230",
        sync_batchnorm=True,
        optimizer="lars",
        lr=0.2,
        weight_decay=1.5e-6,
        bias_lr_scale=0.024,  # 0.0048 / 0.2
        warmup_share=0.1,
        cpu_kwargs={"projection_dim": 1024, "hidden_dim": 1024},
        notes="As published: LARS, lr 0.2 for weights and 0.0048 for biases and norms (x B/256), wd 1.5e-6, "
        "10 warm-up epochs of 1000. The loss sums over D dimensions, so SGD's step grows with D; LARS "
        "normalizes it per layer. Projector 8192-8192-8192 -> 1024 on CPUs; lambda scales as 5e-3 x 8192 / D.",
    ),
    "vicreg": Recipe(
        paper="https://arxiv.org/abs/2105.04906",
        sync_batchnorm=True,
        **_SGD,
        cpu_kwargs={"projection_dim": 1024, "hidden_dim": 1024},
        notes="Paper: LARS lr 0.2 x B/256 (biases and norms unadapted and undecayed), wd 1e-6, 10 warm-up "
        "epochs, batch 2048; not yet measured here against the shared SGD recipe. Expander 8192 -> 1024 on CPUs.",
    ),
    "vibcreg": Recipe(
        paper="https://arxiv.org/abs/2109.00783",
        sync_batchnorm=True,
        **_SGD,
        cpu_kwargs={"projection_dim": 1024, "hidden_dim": 1024},
        notes="The paper trains on time series; for images, the shared SGD recipe, not yet measured against "
        "VICReg's. Projector 4096 -> 1024 on CPUs (IterNorm keeps 64 groups of 16). IterNorm whitens each "
        "worker's batch; the loss terms use the gathered global batch.",
    ),
    "dino": Recipe(
        paper="https://arxiv.org/abs/2104.14294",
        **_SGD,
        notes="Paper: AdamW lr 5e-4 x B/256 for ViTs, wd 0.04 -> 0.4; its ResNet-50 runs use LARS/SGD. "
        "The CPU backbone is a ConvNet, so the SGD recipe.",
    ),
    "swav": Recipe(
        paper="https://arxiv.org/abs/2006.09882",
        sync_batchnorm=True,
        optimizer="lars",
        lr=0.6,
        weight_decay=1e-6,
        momentum=0.9,
        warmup_share=0.0,
        notes="The authors' batch-256 recipe (scripts/swav_200ep_bs256_pretrain.sh): LARS lr 0.6 (cosine to 0.0006), "
        "wd 1e-6, no warm-up, sync BN, queue 3840 from epoch 15 of 200, prototypes frozen for 1 epoch (5005 steps; "
        "313 at batch 4096, the method's default). Their LARC adapts biases and norms too; here those train at "
        "the plain rate. 2 global + 4 local crops (the paper: 6); the paper's head sizes fit 2 CPU cores.",
    ),
    "nnclr": Recipe(
        paper="https://arxiv.org/abs/2104.14548",
        sync_batchnorm=True,
        optimizer="lars",
        lr=0.3,
        weight_decay=1e-6,
        momentum=0.9,
        warmup_share=0.01,
        cpu_kwargs={"hidden_dim": 1024, "prediction_hidden_dim": 1024},
        notes="As published: LARS lr 0.3 x B/256 (batch 4096), wd 1e-6, 10 warm-up epochs of 1000, cosine. "
        "Support set 4,096 (paper: 98,304 at batch 4096). Projector 2048-2048-256 and predictor 4096-256 "
        "become 1024-1024-256 and 1024-256 on CPUs.",
    ),
    "ibot": Recipe(
        paper="https://arxiv.org/abs/2111.07832",
        optimizer="adamw",
        lr=5e-4,
        weight_decay=0.04,
        momentum=0.9,
        beta2=0.999,
        warmup_share=0.1,
        cpu_kwargs={"hidden_dim": 512, "out_dim": 1024},
        notes="The authors' main_ibot.py: AdamW lr 5e-4 x B/256, 10 warm-up epochs of 100, cosine to 1e-6. Their "
        "weight decay rises 0.04 -> 0.4 (cosine); here it stays at 0.04. Gradient clipping at 3.0 is not done. "
        "Head 2048 hidden x 4096 outputs (paper 8192) -> 512 x 1024 on CPUs: the head runs on every patch token.",
    ),
    "mae": Recipe(
        paper="https://arxiv.org/abs/2111.06377",
        optimizer="adamw",
        lr=1.5e-4,
        weight_decay=0.05,
        momentum=0.9,
        beta2=0.95,
        warmup_share=0.05,
        notes="As published: AdamW lr 1.5e-4 x B/256, betas (0.9, 0.95), wd 0.05 (none on norms, biases and "
        "tokens), 40 warm-up epochs of 800, cosine.",
    ),
    "simmim": Recipe(
        paper="https://arxiv.org/abs/2111.09886",
        optimizer="adamw",
        lr=1e-4,
        weight_decay=0.05,
        momentum=0.9,
        beta2=0.999,
        warmup_share=0.1,
        notes="The authors' 100-epoch recipe (configs/*__100ep: AdamW lr 2e-4 x B/512, betas (0.9, 0.999), wd 0.05, "
        "10 warm-up epochs, cosine); their 800-epoch ViT-B run uses 1e-4 x B/512 with a step decay. Not here: "
        "gradient clipping at 5 and drop path 0.1. Masks of one 4 px patch at 28-32 px (paper: 32 px at 192-224 px).",
    ),
    "ijepa": Recipe(
        paper="https://arxiv.org/abs/2301.08243",
        optimizer="adamw",
        lr=1.25e-4,
        weight_decay=0.04,
        momentum=0.9,
        beta2=0.999,
        warmup_share=0.13,
        notes="The authors' ViT-H/14 recipe (configs/in1k_vith14_ep300.yaml): AdamW lr 1e-3 at batch 2048 "
        "(1.25e-4 x B/256), 40 warm-up epochs of 300 (from 2e-4, here from 0), cosine; weight decay 0.04 here "
        "throughout (the paper: cosine 0.04 -> 0.4). EMA 0.996 -> 1 linear (the method's default). Predictor "
        "6 x 96-d for vit_tiny (paper: 12 x 384-d for ViT-H).",
    ),
    "cpc": Recipe(
        paper="https://arxiv.org/abs/1905.09272",
        optimizer="adamw",
        lr=1e-3,
        weight_decay=1e-4,
        notes="Paper: Adam. The shared SGD recipe (lr 0.06) diverged at step 9 of 2 epochs on 10,000 images: "
        "InfoNCE logits of unnormalized patch encodings grow until they overflow. AdamW lr 1e-3 trains stably.",
    ),
    "rotation": Recipe(
        paper="https://arxiv.org/abs/1803.07728",
        **_SGD,
        notes="Paper: SGD lr 0.1, momentum 0.9, wd 5e-4, batch 128 (x4 rotations); the shared SGD one.",
    ),
    "jigsaw": Recipe(paper="https://arxiv.org/abs/1603.09246", **_SGD, notes="The shared SGD recipe."),
    "relative_position": Recipe(paper="https://arxiv.org/abs/1505.05192", **_SGD, notes="The shared SGD recipe."),
    "colorization": Recipe(paper="https://arxiv.org/abs/1603.08511", **_SGD, notes="Paper: Adam; the shared SGD one."),
    "inpainting": Recipe(paper="https://arxiv.org/abs/1604.07379", **_SGD, notes="Paper: Adam; the shared SGD one."),
}


def method_recipe(name: str) -> Recipe:
    """The recipe of method ``name``; a method registered without one fails loudly."""
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError(f"method {name!r} has no recipe; add one to ssl_models/recipes.py") from None
