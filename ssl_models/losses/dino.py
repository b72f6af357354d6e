"""DINO's self-distillation loss: a sharpened, centred teacher supervises the student across crops.

Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", 2021,
https://arxiv.org/abs/2104.14294 (equation 3 and algorithm 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["dino_loss"]


def dino_loss(
    student_out: list[torch.Tensor],
    teacher_out: list[torch.Tensor],
    center: torch.Tensor,
    student_temp: float = 0.1,
    teacher_temp: float = 0.04,
) -> torch.Tensor:
    """Mean over crop pairs of ``H(P_t(x), P_s(x'))`` for every teacher crop x and student crop x' != x.

    ``P_t = softmax((t - center) / teacher_temp)`` (centring and sharpening keep the
    teacher from collapsing), ``P_s = softmax(s / student_temp)``, and
    ``H(a, b) = -sum_k a_k log b_k`` averaged over the batch. Teacher crop i is the
    student's crop i (the global crops come first), so those pairs are skipped.
    The teacher side is detached: it learns only through the EMA update. Every term
    uses only its own sample and the (all-reduced) centre, so the mean over workers
    equals the loss of the concatenated batch without gathering.

    Args:
        student_out: (n, K) outputs of the student head for every crop, global crops first.
        teacher_out: (n, K) outputs of the teacher head for the global crops.
        center: (K,) or (1, K) running mean of the teacher outputs.
        student_temp, teacher_temp: the paper's 0.1 and 0.04 (> 0).
    """
    if student_temp < 1e-8 or teacher_temp < 1e-8:
        raise ValueError(f"temperatures must be > 0, got student {student_temp}, teacher {teacher_temp}")
    if not 1 <= len(teacher_out) <= len(student_out):
        raise ValueError(f"need 1 <= teacher crops ({len(teacher_out)}) <= student crops ({len(student_out)})")
    # At least float32: under bf16 autocast, logits divided by 0.04 would lose most of their precision.
    dtype = torch.promote_types(student_out[0].dtype, torch.float32)
    center = center.reshape(1, -1).detach().to(dtype)
    teacher_probs = [F.softmax((t.detach().to(dtype) - center) / teacher_temp, dim=-1) for t in teacher_out]
    student_logp = [F.log_softmax(s.to(dtype) / student_temp, dim=-1) for s in student_out]
    terms = [-(p * logp).sum(dim=-1).mean() for i, p in enumerate(teacher_probs) for j, logp in enumerate(student_logp) if i != j]
    if not terms:
        raise ValueError("dino_loss needs two crops or more")
    return torch.stack(terms).mean()
