"""Schedules as pure functions of the step (as in DINO)."""

from __future__ import annotations

import math


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, base: float, final: float = 0.0) -> float:
    """Linear warm-up from 0 to ``base`` over ``warmup_steps``, then cosine decay to ``final``."""
    if warmup_steps > 0 and step < warmup_steps:
        return base * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return final + 0.5 * (base - final) * (1.0 + math.cos(math.pi * progress))


def step_decay(step: int, total_steps: int, warmup_steps: int, base: float, gamma: float = 0.1) -> float:
    """Linear warm-up, then ``base`` divided by 10 at 60% and again at 80% of the steps."""
    if warmup_steps > 0 and step < warmup_steps:
        return base * (step + 1) / warmup_steps
    progress = step / max(1, total_steps)
    return base * gamma ** ((progress >= 0.6) + (progress >= 0.8))


def constant(step: int, total_steps: int, warmup_steps: int, base: float) -> float:
    """Linear warm-up, then ``base``."""
    if warmup_steps > 0 and step < warmup_steps:
        return base * (step + 1) / warmup_steps
    return base


def warmup_steps(warmup_epochs: float, steps_per_epoch: int, total_steps: int, max_share: float) -> int:
    """Warm-up steps for ``warmup_epochs``, never more than ``max_share`` of the run's steps."""
    return min(int(warmup_epochs * steps_per_epoch), int(max_share * total_steps))


def scaled_lr(lr: float, batch_size: int, rule: str = "linear") -> float:
    """The rate at ``batch_size`` of ``lr``, a rate for a batch of 256.

    ``linear`` is Goyal et al.'s rule (``lr x B / 256``), what the papers state their rates with. ``sqrt`` is
    SimCLR's rule for small batches and short runs (``lr x sqrt(B / 256)``; its appendix B.1: ``0.075 x sqrt(B)``
    trains better there than ``0.3 x B / 256``, and the two agree at batch 4,096).
    """
    if rule == "linear":
        return lr * batch_size / 256
    if rule == "sqrt":
        return lr * math.sqrt(batch_size / 256)
    raise ValueError(f"unknown lr scaling rule {rule!r}; known: linear, sqrt")


SCHEDULES = {"cosine": warmup_cosine, "step": step_decay, "constant": constant}


def learning_rate(kind: str, step: int, total_steps: int, warmup_steps: int, base: float) -> float:
    """The learning rate of schedule ``kind`` (cosine, step, constant) at ``step``."""
    return SCHEDULES[kind](step, total_steps, warmup_steps, base)
