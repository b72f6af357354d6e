"""MoCo v3: Chen, Xie and He, 2021, https://arxiv.org/abs/2104.02057."""

from __future__ import annotations

import math

import torch
from torch import nn

from ssl_models.backbones.vit import VisionTransformer
from ssl_models.losses import mocov3_contrastive_loss
from ssl_models.methods.base import SSLMethod
from ssl_models.momentum import cosine_momentum, ema_update, frozen_copy
from ssl_models.recipes import Recipe
from ssl_models.registry import register_method


class MoCoV3MLP(nn.Sequential):
    """The authors' ``_build_mlp``: ``num_layers`` bias-free linear layers with BN + ReLU between them,
    and (``last_bn``) a BN without affine parameters after the last one, as SimCLR's projector ends."""

    def __init__(self, num_layers: int, in_dim: int, hidden_dim: int, out_dim: int, last_bn: bool = True):
        layers: list[nn.Module] = []
        for i in range(num_layers):
            dim_in = in_dim if i == 0 else hidden_dim
            dim_out = out_dim if i == num_layers - 1 else hidden_dim
            layers.append(nn.Linear(dim_in, dim_out, bias=False))
            if i < num_layers - 1:
                layers += [nn.BatchNorm1d(dim_out), nn.ReLU(inplace=True)]
            elif last_bn:
                layers.append(nn.BatchNorm1d(dim_out, affine=False))
        super().__init__(*layers)


def freeze_patch_projection(vit: VisionTransformer) -> None:
    """MoCo v3's stability trick (section 4.2): a random patch projection that never trains.

    Initialized as the authors' ``vits.py`` does (Xavier uniform over the patch's pixels x the
    token width, zero bias), then ``requires_grad=False`` on its weight and bias.
    """
    proj = vit.patch_embed
    fan = proj.in_channels * proj.kernel_size[0] * proj.kernel_size[1] + proj.out_channels
    bound = math.sqrt(6.0 / fan)
    nn.init.uniform_(proj.weight, -bound, bound)
    nn.init.zeros_(proj.bias)
    proj.weight.requires_grad_(False)
    proj.bias.requires_grad_(False)


@register_method("mocov3")
class MoCoV3(SSLMethod):
    """Query encoder + projector + predictor against a momentum encoder + projector; in-batch negatives.

    Paper defaults (and the authors' ``main_moco.py`` / ``CONFIG.md``): 256-d output, 4096-d
    hidden layers, projector of 2 layers on ResNets and 3 on ViTs, predictor of 2 layers (with a
    last BN on ViTs only), all with BN (``MoCoV3MLP``); temperature 1.0 for ResNets
    (``--moco-t`` default) and 0.2 for ViTs (the released ViT configs); momentum 0.99 -> 1 with a
    cosine schedule (``--moco-m-cos``, 0.99 for both); no queue: the negatives are the keys of the
    other images of the global batch (gathered from every worker); the loss is
    ``ctr(q1, k2) + ctr(q2, k1)`` with the authors' ``2 tau`` factor. On a ViT the patch
    projection is random and frozen (``freeze_patch_projection``, the paper's ``--stop-grad-conv1``).

    Here: the temperature is 0.2 for every backbone, as solo-learn trains its ResNet-18s
    (scripts/pretrain/*/mocov3.yaml) and as the issue asked: the authors' 1.0 is for ResNet-50 at
    batch 4,096 over 100+ epochs; at 2 epochs on small images (78 steps) its loss barely moved
    (21.3 -> 20.6 against chance's 22.2) and one seed stayed within a point of its random-init
    encoder. A ViT's projector and predictor take the ViT layout.
    The momentum update runs in ``on_step_end`` after the optimizer step (the authors update
    before computing the keys of the next step: the same order, one step apart at the start).
    Not done: the fixed 2-D sine-cosine position embedding of the authors' ViT (ours learns it).

    ``proxy_acc``: fraction of queries whose positive key ranks first among all gathered keys.
    """

    recipe = Recipe(
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
    )

    def __init__(
        self,
        temperature: float = 0.2,
        projection_dim: int = 256,
        hidden_dim: int = 4096,
        momentum: float = 0.99,
        freeze_patch_embed: bool = True,
        **encoder_args,
    ):
        super().__init__(**encoder_args)
        is_vit = isinstance(self.encoder, VisionTransformer)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        self.temperature = temperature
        self.momentum = momentum
        if is_vit and freeze_patch_embed:
            freeze_patch_projection(self.encoder)
        features = self.encoder.num_features
        # MoCo_ViT: 3-layer projector, predictor ending in BN; MoCo_ResNet: 2-layer projector, predictor without it.
        self.projector = MoCoV3MLP(3 if is_vit else 2, features, hidden_dim, projection_dim)
        self.predictor = MoCoV3MLP(2, projection_dim, hidden_dim, projection_dim, last_bn=is_vit)
        self.momentum_encoder = frozen_copy(self.encoder)
        self.momentum_projector = frozen_copy(self.projector)

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x0, x1 = batch["view_0"], batch["view_1"]
        q0 = self.predictor(self.projector(self.encoder(x0)))
        q1 = self.predictor(self.projector(self.encoder(x1)))
        with torch.no_grad():
            k0 = self.momentum_projector(self.momentum_encoder(x0))
            k1 = self.momentum_projector(self.momentum_encoder(x1))
        loss0, acc0 = mocov3_contrastive_loss(q0, k1, self.temperature, with_accuracy=True)
        loss1, acc1 = mocov3_contrastive_loss(q1, k0, self.temperature, with_accuracy=True)
        return {"loss": loss0 + loss1, "proxy_acc": (acc0 + acc1) / 2}

    def on_step_end(self, step: int, total_steps: int) -> None:
        momentum = cosine_momentum(step, total_steps, self.momentum)
        ema_update(self.momentum_encoder, self.encoder, momentum)
        ema_update(self.momentum_projector, self.projector, momentum)
