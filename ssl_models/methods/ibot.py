"""iBOT: Zhou et al., 2021, "iBOT: Image BERT Pre-Training with Online Tokenizer", https://arxiv.org/abs/2111.07832."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ssl_models.backbones.vit import VisionTransformer
from ssl_models.distributed import world_size
from ssl_models.losses import ibot_loss
from ssl_models.methods.base import SSLMethod
from ssl_models.methods.dino import DINOHead
from ssl_models.momentum import cosine_momentum, ema_update, frozen_copy
from ssl_models.recipes import Recipe
from ssl_models.registry import register_method
from ssl_models.views import local_crop_size


def prediction_ratio(rng: np.random.Generator, ratios: tuple[float, ...], variances: tuple[float, ...]) -> float:
    """One crop's share of masked patches, as ``ImageFolderMask.get_pred_ratio``: for each ratio m with
    variance v, a draw from U(m - v, m + v) (m itself when v is 0); then one of those draws at random."""
    draws = [rng.uniform(m - v, m + v) if v > 0 else m for m, v in zip(ratios, variances, strict=True)]
    return float(draws[rng.integers(len(draws))])


def block_mask(grid: int, target: float, rng: np.random.Generator, aspect: tuple[float, float] = (0.3, 1 / 0.3)) -> np.ndarray:
    """BEiT's block-wise masking, as iBOT's ``ImageFolderMask`` does it: rectangles of random area and
    aspect ratio are added until about ``target`` of the ``grid x grid`` patches are masked.

    Each rectangle covers at least ``(grid // 3) ** 2`` patches and at most what is still to mask;
    it is kept only if it adds a patch without overshooting; ten failed tries in a row stop.
    Returns (grid, grid) bool.
    """
    mask = np.zeros((grid, grid), dtype=bool)
    log_aspect = (math.log(aspect[0]), math.log(aspect[1]))
    count = 0
    while count < target:
        room = target - count
        added = 0
        for _ in range(10):
            low = (grid // 3) ** 2
            area = low + (room - low) * rng.random()  # Python's random.uniform(low, room), also when room < low
            ratio = math.exp(rng.uniform(*log_aspect))
            h, w = int(round(math.sqrt(area * ratio))), int(round(math.sqrt(area / ratio)))
            if w < grid and h < grid:
                top, left = rng.integers(0, grid - h + 1), rng.integers(0, grid - w + 1)
                block = mask[top : top + h, left : left + w]
                new = h * w - int(block.sum())
                if 0 < new <= room:
                    block[:] = True
                    added = new
            if added > 0:
                break
        if added == 0:
            break
        count += added
    return mask


def random_mask(grid: int, target: float, rng: np.random.Generator) -> np.ndarray:
    """``int(target)`` patches of the ``grid x grid`` chosen uniformly (the reference's ``pred_shape='rand'``)."""
    flat = np.zeros(grid * grid, dtype=bool)
    flat[: int(target)] = True
    return rng.permutation(flat).reshape(grid, grid)


def patch_masks(
    n: int,
    grid: int,
    rng: np.random.Generator,
    ratios: tuple[float, ...] = (0.0, 0.3),
    variances: tuple[float, ...] = (0.0, 0.2),
    shape: str = "block",
) -> torch.Tensor:
    """Masks (n, grid * grid) bool, one per crop, each with its own prediction ratio (``prediction_ratio``)."""
    make = block_mask if shape == "block" else random_mask
    masks = [make(grid, prediction_ratio(rng, ratios, variances) * grid * grid, rng) for _ in range(n)]
    return torch.from_numpy(np.stack(masks).reshape(n, grid * grid))


def encode_any_size(vit: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    """The [CLS] output (N, dim) of square crops of any size that the patch size divides (local crops).

    The position embeddings of the patch grid are resized bicubically to the crop's grid, as
    DINO's and iBOT's ``interpolate_pos_encoding`` do; crops of the ViT's own size go unchanged.
    """
    size = x.shape[-1]
    if size == vit.image_size:
        return vit(x)
    if size % vit.patch_size or x.shape[-2] != size:
        raise ValueError(f"ibot: crops must be square and a multiple of the {vit.patch_size} px patch, got {tuple(x.shape[-2:])}")
    grid = size // vit.patch_size
    pos = vit.pos_embed[:, 1:].reshape(1, vit.grid_size, vit.grid_size, -1).permute(0, 3, 1, 2)
    pos = F.interpolate(pos, size=(grid, grid), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).flatten(1, 2)
    tokens = vit.patch_embed(x).flatten(2).transpose(1, 2) + pos
    return vit.encode(torch.cat([vit.cls_with_pos(x.shape[0]), tokens], dim=1))[:, 0]


class IBOTHead(DINOHead):
    """DINO's head applied to every token: (N, 1 + L, dim) -> [CLS] (N, K) and patches (N, L, K).

    One head for [CLS] and patches, as the authors' released configs train (``--shared_head true``).
    """

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """DINO's head on features (..., dim) -> (..., K): the [CLS] features of local crops."""
        return super().forward(x)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.project(tokens)
        return out[:, 0], out[:, 1:]


def check_ibot_arguments(
    *,
    student_temp,
    teacher_temp,
    teacher_patch_temp,
    warmup_teacher_temp,
    num_local_crops,
    momentum,
    center_momentum,
    temp_warmup_share,
    pred_ratio,
    pred_ratio_var,
    pred_shape,
) -> None:
    """One ``ValueError`` naming the first of iBOT's arguments out of its range."""
    for name, value in (("student_temp", student_temp), ("teacher_temp", teacher_temp)):
        if value <= 0:
            raise ValueError(f"{name} must be > 0, got {value}")
    if teacher_patch_temp <= 0 or warmup_teacher_temp <= 0:
        raise ValueError(f"teacher temperatures must be > 0, got {teacher_patch_temp} and {warmup_teacher_temp}")
    if num_local_crops < 0:
        raise ValueError(f"num_local_crops must be >= 0, got {num_local_crops}")
    for name, value in (
        ("momentum", momentum),
        ("center_momentum", center_momentum),
        ("temp_warmup_share", temp_warmup_share),
    ):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    pred_ratio, pred_ratio_var = tuple(pred_ratio), tuple(pred_ratio_var)
    same_length = len(pred_ratio) == len(pred_ratio_var)
    if not same_length or not all(0 <= v <= m <= 1 - v for m, v in zip(pred_ratio, pred_ratio_var, strict=True)):
        raise ValueError(
            f"pred_ratio {pred_ratio} and pred_ratio_var {pred_ratio_var}: one variance per ratio, "
            "with 0 <= var <= ratio <= 1 - var"
        )
    if pred_shape not in ("block", "rand"):
        raise ValueError(f"pred_shape must be 'block' or 'rand', got {pred_shape!r}")


@register_method("ibot")
class IBOT(SSLMethod):
    """DINO on the [CLS] token plus masked image modelling by self-distillation on the patch tokens.

    The student sees the two global crops with some patch embeddings replaced by a learned mask
    token (before the position embeddings are added, as in the authors' ``mask_model``), and the
    local crops unmasked; the EMA teacher sees the global crops unmasked. Loss (``ibot_loss``):
    DINO's cross-crop [CLS] loss with centre ``center``, plus, for each global crop, the cross
    entropy between the teacher's centred, sharpened patch distributions and the student's at the
    masked patches only, with centre ``center2``. Both centres move in ``on_step_end`` towards
    this step's mean teacher outputs over every worker (momentum 0.9 each).

    Paper / authors' defaults (``main_ibot.py`` and the released ViT-S/16 config): student
    temperature 0.1; teacher 0.04 on [CLS] and 0.07 on patches, each warmed up linearly from 0.04
    over the first 30 of 100 epochs (here the first ``temp_warmup_share`` of the run); teacher
    momentum 0.996 -> 1 (cosine); a shared head of 2048 hidden, 256 bottleneck and 8192 outputs;
    block-wise masking with prediction ratio 0 or U(0.1, 0.5) per crop (``pred_ratio 0 0.3``,
    ``pred_ratio_var 0 0.2``); 10 local crops, global crops of 25-100% and local of 5-25% of the
    image. Without local crops the authors' default is global crops of 14-100% (``--global_crops_scale``).

    Here: no local crops by default (``num_local_crops=0``, the authors' own argparse default),
    since on 2 CPU cores every local crop is another ViT pass; 4,096 outputs (as rayssl's DINO).
    Block masking on a 7x7 or 8x8 token grid costs about a millisecond per 100 crops in NumPy on
    the CPU, far below the ViT's step, so it stays the default (``pred_shape="rand"`` is the
    reference's other choice). Local crops are ``local_crop_size`` rounded down to a multiple of
    the patch size, with the position embeddings resized (``encode_any_size``). Not done: drop
    path 0.1 in the student, freezing the last layer in the first epoch, gradient clipping at 3.0,
    the weight-decay schedule 0.04 -> 0.4 (the recipe's weight decay is fixed), per-crop blur and
    solarization (every crop gets the same colour augmentation here).

    ``proxy_acc``: fraction of samples for which the student's most likely [CLS] output on one
    global crop is the centred teacher's on the other (both crop pairs), as DINO's.
    """

    recipe = Recipe(
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
    )

    view_policy = "multi_crop"
    num_views = 2  # global crops; instances with local crops set their own
    view_kwargs = {"global_scale": (0.14, 1.0)}  # the authors' global crops without multi-crop
    default_backbone = "vit_tiny"
    tiny_backbone = "vit_micro"

    def __init__(
        self,
        hidden_dim: int = 2048,
        out_dim: int = 4096,
        bottleneck_dim: int = 256,
        num_local_crops: int = 0,
        student_temp: float = 0.1,
        teacher_temp: float = 0.04,
        teacher_patch_temp: float = 0.07,
        warmup_teacher_temp: float = 0.04,
        temp_warmup_share: float = 0.3,
        momentum: float = 0.996,
        center_momentum: float = 0.9,
        pred_ratio: tuple[float, ...] = (0.0, 0.3),
        pred_ratio_var: tuple[float, ...] = (0.0, 0.2),
        pred_shape: str = "block",
        lambda1: float = 1.0,
        lambda2: float = 1.0,
        **encoder_args,
    ):
        super().__init__(**encoder_args)
        if not isinstance(self.encoder, VisionTransformer):
            raise ValueError(f"ibot needs a ViT backbone (vit_tiny or vit_micro), got {self.backbone_name!r}")
        check_ibot_arguments(
            student_temp=student_temp,
            teacher_temp=teacher_temp,
            teacher_patch_temp=teacher_patch_temp,
            warmup_teacher_temp=warmup_teacher_temp,
            num_local_crops=num_local_crops,
            momentum=momentum,
            center_momentum=center_momentum,
            temp_warmup_share=temp_warmup_share,
            pred_ratio=pred_ratio,
            pred_ratio_var=pred_ratio_var,
            pred_shape=pred_shape,
        )
        pred_ratio, pred_ratio_var = tuple(pred_ratio), tuple(pred_ratio_var)
        self.num_local_crops = num_local_crops
        self.num_views = 2 + num_local_crops
        if num_local_crops:  # the authors' multi-crop scales; local crops a whole number of patches
            patch = self.encoder.patch_size
            local = max(patch, local_crop_size(self.image_size) // patch * patch)
            self.view_kwargs = {"global_scale": (0.25, 1.0), "local_scale": (0.05, 0.25), "local_size": local}
        self.student_temp = student_temp
        self.teacher_temp, self.teacher_patch_temp = teacher_temp, teacher_patch_temp
        self.warmup_teacher_temp, self.temp_warmup_share = warmup_teacher_temp, temp_warmup_share
        self.momentum, self.center_momentum = momentum, center_momentum
        self.pred_ratio, self.pred_ratio_var, self.pred_shape = pred_ratio, pred_ratio_var, pred_shape
        self.lambda1, self.lambda2 = lambda1, lambda2
        dim = self.encoder.num_features
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))  # the authors' masked_embed, zeros
        self.head = IBOTHead(dim, out_dim, hidden_dim, bottleneck_dim)
        self.teacher_encoder = frozen_copy(self.encoder)
        self.teacher_head = frozen_copy(self.head)
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.register_buffer("center2", torch.zeros(1, 1, out_dim))
        self._progress = 0.0  # share of the run done, set by on_step_end: the temperature warm-up
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None

    def temperatures(self) -> tuple[float, float]:
        """The teacher's [CLS] and patch temperatures now: linear from ``warmup_teacher_temp`` over the
        first ``temp_warmup_share`` of the run, then constant."""
        t = 1.0 if self.temp_warmup_share == 0 else min(self._progress / self.temp_warmup_share, 1.0)
        start = self.warmup_teacher_temp
        return start + t * (self.teacher_temp - start), start + t * (self.teacher_patch_temp - start)

    def masks(self, n: int, device: torch.device) -> torch.Tensor:
        """(n, L) bool masks for n global crops, drawn from torch's generator (seeded runs repeat)."""
        rng = np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
        grid = self.encoder.grid_size
        return patch_masks(n, grid, rng, self.pred_ratio, self.pred_ratio_var, self.pred_shape).to(device)

    def student_tokens(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Output tokens (N, 1 + L, dim) of the student on crops x whose patches at ``mask`` (N, L) are
        replaced by the mask token (plus their position embedding, which is added after masking)."""
        vit = self.encoder
        patches = vit.embed_patches(x)
        masked = (self.mask_token + vit.pos_embed[:, 1:]).to(patches.dtype)
        patches = torch.where(mask.unsqueeze(-1), masked, patches)
        return vit.encode(torch.cat([vit.cls_with_pos(x.shape[0]), patches], dim=1))

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        crops = self.crops_of(batch)
        global_crops = torch.cat(crops[:2])
        mask = self.masks(global_crops.shape[0], global_crops.device)
        student_cls, student_patch = self.head(self.student_tokens(global_crops, mask))
        student_cls = list(student_cls.chunk(2))
        if self.num_local_crops:
            local = self.head.project(encode_any_size(self.encoder, torch.cat(crops[2:])))
            student_cls += list(local.chunk(self.num_local_crops))
        with torch.no_grad():
            teacher_cls, teacher_patch = self.teacher_head(self.teacher_encoder.forward_features(global_crops))
        temp, patch_temp = self.temperatures()
        loss = ibot_loss(
            student_cls,
            list(teacher_cls.chunk(2)),
            list(student_patch.chunk(2)),
            list(teacher_patch.chunk(2)),
            list(mask.chunk(2)),
            self.center,
            self.center2,
            self.student_temp,
            temp,
            patch_temp,
            self.lambda1,
            self.lambda2,
        )
        # The centres move only after the optimizer step (on_step_end): forward leaves them as they are.
        self._pending = (teacher_cls.detach(), teacher_patch.detach().mean(dim=1))
        with torch.no_grad():
            target = (teacher_cls - self.center.to(teacher_cls.dtype)).argmax(dim=1).chunk(2)
            hits = torch.cat([student_cls[0].argmax(dim=1) == target[1], student_cls[1].argmax(dim=1) == target[0]])
        return {"loss": loss, "proxy_acc": hits.float().mean()}

    @torch.no_grad()
    def update_centers(self, teacher_cls: torch.Tensor, teacher_patch_mean: torch.Tensor) -> None:
        """center <- m center + (1 - m) mean teacher [CLS] output; center2 likewise with each crop's mean
        patch output; means over this step's global crops of every worker (one all_reduce)."""
        k = teacher_cls.shape[1]
        count = teacher_cls.new_tensor([teacher_cls.shape[0]]).float()
        stats = torch.cat([teacher_cls.float().sum(dim=0), teacher_patch_mean.float().sum(dim=0), count])
        if world_size() > 1:
            dist.all_reduce(stats)
        means = stats[:-1] / stats[-1]
        m = self.center_momentum
        self.center.mul_(m).add_(means[:k].view_as(self.center), alpha=1 - m)
        self.center2.mul_(m).add_(means[k:].view_as(self.center2), alpha=1 - m)

    def on_step_end(self, step: int, total_steps: int) -> None:
        momentum = cosine_momentum(step, total_steps, self.momentum)
        ema_update(self.teacher_encoder, self.encoder, momentum)
        ema_update(self.teacher_head, self.head, momentum)
        self._progress = (step + 1) / total_steps if total_steps > 0 else 1.0
        if self._pending is not None:
            self.update_centers(*self._pending)
            self._pending = None
