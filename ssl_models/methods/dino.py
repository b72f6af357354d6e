"""DINO: Caron et al., 2021, https://arxiv.org/abs/2104.14294."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ssl_models.distributed import world_size
from ssl_models.losses import dino_loss
from ssl_models.methods.base import SSLMethod
from ssl_models.momentum import cosine_momentum, ema_update, frozen_copy
from ssl_models.recipes import SHARED_SGD, Recipe
from ssl_models.registry import register_method


class DINOHead(nn.Module):
    """MLP (GELU) -> L2-normalized bottleneck -> weight-normalized linear layer without bias.

    The last layer is ``weight_norm`` with its norm fixed to 1 (DINO's ``norm_last_layer``),
    written out as rows normalized in ``forward``: the same function, and a plain
    parameter that ``copy.deepcopy`` (``frozen_copy``) handles.
    """

    def __init__(self, in_dim: int, out_dim: int = 4096, hidden_dim: int = 2048, bottleneck_dim: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, bottleneck_dim),
        )
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):  # DINO's init: truncated normal, std 0.02
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        self.last_weight = nn.Parameter(nn.Linear(bottleneck_dim, out_dim, bias=False).weight.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1)
        return F.linear(x, F.normalize(self.last_weight, dim=1))


@register_method("dino")
class DINO(SSLMethod):
    """Self-distillation with no labels: a student matches an EMA teacher's sharpened, centred output.

    Paper defaults: 2 global crops + 10 local crops (96 px at 224 px), student
    temperature 0.1, teacher temperature 0.04, centre momentum 0.9, teacher
    momentum 0.996 -> 1 (cosine), head 2048-d hidden, 256-d bottleneck and 65,536
    outputs. Here: 4 local crops and 4,096 outputs by default, sizes for small
    images and small datasets (``out_dim``, ``num_local_crops`` in ``method.kwargs``).
    Not done: freezing the last layer in the first epoch, the teacher-temperature
    warm-up (the paper's ViT-S default keeps it at 0.04 anyway), gradient clipping.

    The teacher (``frozen_copy`` of encoder and head) sees only the two global crops;
    the student sees all crops, one forward pass per crop size. After the optimizer
    step, ``on_step_end`` moves the teacher towards the student and the centre towards
    the mean teacher output of this step over every worker (all_reduce), both from
    outputs stashed by ``training_step`` so ``forward`` changes no state.
    The view policy is "multi_crop" (``ssl_models.views.multi_crop``); the batch must hold
    ``num_views = 2 + num_local_crops`` views.

    ``proxy_acc``: fraction of samples for which the student's most likely output on one
    global crop is the centred teacher's on the other global crop (both crop pairs).
    """

    recipe = Recipe(
        paper="https://arxiv.org/abs/2104.14294",
        **SHARED_SGD,
        notes="Paper: AdamW lr 5e-4 x B/256 for ViTs, wd 0.04 -> 0.4; its ResNet-50 runs use LARS/SGD. "
        "The CPU backbone is a ConvNet, so the SGD recipe.",
    )

    view_policy = "multi_crop"
    num_views = 6  # 2 global + 4 local crops, the default; instances with other counts set their own

    def __init__(
        self,
        hidden_dim: int = 2048,
        out_dim: int = 4096,
        bottleneck_dim: int = 256,
        num_local_crops: int = 4,
        student_temp: float = 0.1,
        teacher_temp: float = 0.04,
        momentum: float = 0.996,
        center_momentum: float = 0.9,
        **encoder_args,
    ):
        super().__init__(**encoder_args)
        if student_temp <= 0 or teacher_temp <= 0:
            raise ValueError(f"student_temp and teacher_temp must be > 0, got {student_temp} and {teacher_temp}")
        if num_local_crops < 0:
            raise ValueError(f"num_local_crops must be >= 0, got {num_local_crops}")
        for name, value in (("momentum", momentum), ("center_momentum", center_momentum)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        self.num_views = 2 + num_local_crops
        self.student_temp, self.teacher_temp = student_temp, teacher_temp
        self.momentum, self.center_momentum = momentum, center_momentum
        self.head = DINOHead(self.encoder.num_features, out_dim, hidden_dim, bottleneck_dim)
        self.teacher_encoder = frozen_copy(self.encoder)
        self.teacher_head = frozen_copy(self.head)
        self.register_buffer("center", torch.zeros(1, out_dim))
        self._pending_teacher: torch.Tensor | None = None

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        crops = self.crops_of(batch)
        global_crops = torch.cat(crops[:2])
        # One forward pass per crop size, as in DINO: same-size crops share a batch.
        student = list(self.head(self.encoder(global_crops)).chunk(2))
        if len(crops) > 2:
            student += list(self.head(self.encoder(torch.cat(crops[2:]))).chunk(len(crops) - 2))
        with torch.no_grad():
            teacher_all = self.teacher_head(self.teacher_encoder(global_crops))
        teacher = list(teacher_all.chunk(2))
        loss = dino_loss(student, teacher, self.center, self.student_temp, self.teacher_temp)
        # The centre moves only after the optimizer step (on_step_end): forward leaves it as it is.
        self._pending_teacher = teacher_all.detach()
        with torch.no_grad():
            target = [(t - self.center.to(t.dtype)).argmax(dim=1) for t in teacher]
            proxy_acc = torch.cat([student[0].argmax(dim=1) == target[1], student[1].argmax(dim=1) == target[0]]).float().mean()
        return {"loss": loss, "proxy_acc": proxy_acc}

    @torch.no_grad()
    def update_center(self, teacher_out: torch.Tensor) -> None:
        """center <- m * center + (1 - m) * mean teacher output over this step's global crops of every worker."""
        stats = torch.cat([teacher_out.float().sum(dim=0), teacher_out.new_tensor([teacher_out.shape[0]]).float()])
        if world_size() > 1:
            dist.all_reduce(stats)
        batch_center = (stats[:-1] / stats[-1]).view_as(self.center)
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1 - self.center_momentum)

    def on_step_end(self, step: int, total_steps: int) -> None:
        momentum = cosine_momentum(step, total_steps, self.momentum)
        ema_update(self.teacher_encoder, self.encoder, momentum)
        ema_update(self.teacher_head, self.head, momentum)
        if self._pending_teacher is not None:
            self.update_center(self._pending_teacher)
            self._pending_teacher = None
