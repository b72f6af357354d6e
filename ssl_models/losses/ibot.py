"""iBOT's loss: DINO's self-distillation on the [CLS] token plus masked-patch self-distillation.

Zhou et al., "iBOT: Image BERT Pre-Training with Online Tokenizer", 2021,
https://arxiv.org/abs/2111.07832 (equations 1-2, algorithm 1). Checked against the authors'
``iBOTLoss.forward`` in bytedance/ibot, ``main_ibot.py`` (tests/ssl_models/test_mocov3_ibot.py,
on fixed tensors to 1e-5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssl_models.losses.dino import dino_loss

__all__ = ["ibot_loss", "ibot_patch_loss"]


def ibot_patch_loss(
    student_patch: list[torch.Tensor],
    teacher_patch: list[torch.Tensor],
    masks: list[torch.Tensor],
    center: torch.Tensor,
    student_temp: float = 0.1,
    teacher_temp: float = 0.07,
) -> torch.Tensor:
    """Masked image modelling by distillation: ``H(P_t(u_j), P_s(u~_j))`` at the masked patches j only.

    For each global crop, the student's output on the masked crop is matched, patch by patch,
    with the teacher's on the same crop unmasked: ``P_t = softmax((t - center) / teacher_temp)``,
    ``P_s = softmax(s / student_temp)``. As in ``iBOTLoss``: the cross entropy is averaged over
    each image's masked patches (an image with none adds 0), then over the images, then over the
    crops. The teacher side is detached.

    Args:
        student_patch: per global crop, (n, L, K) student outputs of the L patch tokens.
        teacher_patch: per global crop, (n, L, K) teacher outputs of the same crop, unmasked.
        masks: per global crop, (n, L) bool (or 0/1), true where the student saw the mask token.
        center: (K,), (1, K) or (1, 1, K) running mean of the teacher's patch outputs (``center2``).
        student_temp, teacher_temp: the authors' 0.1 and 0.07 (``--teacher_patch_temp``, > 0).
    """
    if student_temp < 1e-8 or teacher_temp < 1e-8:
        raise ValueError(f"temperatures must be > 0, got student {student_temp}, teacher {teacher_temp}")
    if not len(student_patch) == len(teacher_patch) == len(masks) >= 1:
        raise ValueError(
            f"need as many student ({len(student_patch)}), teacher ({len(teacher_patch)}) and mask ({len(masks)}) crops, >= 1"
        )
    dtype = torch.promote_types(student_patch[0].dtype, torch.float32)
    center = center.reshape(1, 1, -1).detach().to(dtype)
    terms = []
    for s, t, m in zip(student_patch, teacher_patch, masks, strict=True):
        p_t = F.softmax((t.detach().to(dtype) - center) / teacher_temp, dim=-1)
        per_patch = -(p_t * F.log_softmax(s.to(dtype) / student_temp, dim=-1)).sum(dim=-1)  # (n, L)
        m = m.reshape(per_patch.shape).to(dtype)
        per_image = (per_patch * m).sum(dim=-1) / m.sum(dim=-1).clamp(min=1.0)
        terms.append(per_image.mean())
    return torch.stack(terms).mean()


def ibot_loss(
    student_cls: list[torch.Tensor],
    teacher_cls: list[torch.Tensor],
    student_patch: list[torch.Tensor],
    teacher_patch: list[torch.Tensor],
    masks: list[torch.Tensor],
    center: torch.Tensor,
    center2: torch.Tensor,
    student_temp: float = 0.1,
    teacher_temp: float = 0.04,
    teacher_patch_temp: float = 0.07,
    lambda1: float = 1.0,
    lambda2: float = 1.0,
) -> torch.Tensor:
    """``lambda1 * L_[CLS] + lambda2 * L_MIM``.

    ``L_[CLS]`` is DINO's loss (``dino_loss``): every teacher global crop supervises every other
    student crop (global crops first, then the local ones) on the [CLS] token, centred by
    ``center``. ``L_MIM`` is ``ibot_patch_loss`` with ``center2``: each global crop's masked
    patches against the teacher's patches of the same crop.

    Args:
        student_cls: per crop, (n, K) student [CLS] outputs (global crops masked, then local crops).
        teacher_cls: per global crop, (n, K) teacher [CLS] outputs.
        student_patch, teacher_patch, masks: per global crop, as ``ibot_patch_loss`` takes them.
        center: (1, K) running mean of the teacher's [CLS] outputs; center2: of its patch outputs.
        teacher_temp, teacher_patch_temp: the authors' defaults after their warm-up (0.04 and 0.07).
    """
    cls = dino_loss(student_cls, teacher_cls, center, student_temp, teacher_temp)
    patch = ibot_patch_loss(student_patch, teacher_patch, masks, center2, student_temp, teacher_patch_temp)
    return lambda1 * cls + lambda2 * patch
