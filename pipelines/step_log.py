"""Rank 0's view inside a long epoch: loss and lr points every few steps, and a progress line now and then.

An ImageNet epoch takes an hour; per-epoch metrics alone leave MLflow and the terminal silent that long.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from pipelines.cluster import say

STEP_LOSS = "train/loss_step"  # rank 0's mean loss since the last point; MLflow step = optimizer steps done
STEP_LR = "train/lr_step"  # the learning rate of the last of those steps


def log_every_steps(configured: int | None, steps_per_epoch: int) -> int:
    """Steps between points: ``train.log_every_steps``, or about 20 points per epoch when it is None (0 = off)."""
    return max(1, steps_per_epoch // 20) if configured is None else configured


def _duration(seconds: float) -> str:
    """``2d03h``, ``1h02m`` or ``4m05s``: the two largest units, enough for an ETA."""
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    d, h = divmod(h, 24)
    return f"{d}d{h:02d}h" if d else f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class StepLog:
    """Rank 0's view inside an epoch: a point every ``every`` steps and a progress line now and then.

    A point is ``{STEP_LOSS: mean loss since the last point, STEP_LR: lr}`` at MLflow step = optimizer
    steps done in the run, sent through ``log`` (``MetricBuffer.log``). The loss stays on the device
    and is read once per point, never once per step. The progress line comes at most every
    ``progress_every_s`` seconds of an epoch (timed from its start), so epochs shorter than that
    stay quiet. ``log=None`` (ranks other than 0): neither points nor lines.
    """

    def __init__(
        self,
        log: Callable[..., object] | None,
        *,
        every: int,
        progress_every_s: float,
        epochs: int,
        steps_per_epoch: int,
        last_step: int,  # where this run of the loop ends (a PBT segment ends before train.epochs)
        images_per_step: int,  # all workers
        clock: Callable[[], float] = time.monotonic,
        say: Callable[[str], None] = say,
    ):
        self.log, self.clock, self.say = log, clock, say
        self.every = every if log is not None else 0
        self.progress_every_s = progress_every_s if log is not None else 0
        self.epochs, self.steps_per_epoch, self.last_step = epochs, steps_per_epoch, last_step
        self.images_per_step = images_per_step
        self.loss_sum, self.losses = None, 0  # since the last point; the sum is a device tensor
        self.epoch = self.first_step = 0
        self.started = self.printed = clock()

    def start_epoch(self, epoch: int, step: int) -> None:
        """Epoch ``epoch`` (from 0) begins after ``step`` optimizer steps."""
        self.epoch, self.first_step = epoch, step
        self.started = self.printed = self.clock()

    def after_step(self, step: int, loss: torch.Tensor, lr: float) -> None:
        """``step`` optimizer steps are done; ``loss`` is the last one's (rank 0's), still on the device."""
        if self.every:
            loss = loss.detach().to(torch.float64)
            self.loss_sum = loss if self.loss_sum is None else self.loss_sum + loss
            self.losses += 1
            if step % self.every == 0:
                self.log({STEP_LOSS: self.loss_sum.item() / self.losses, STEP_LR: lr}, step=step)
                self.loss_sum, self.losses = None, 0
        if self.progress_every_s:  # a clock read per step, no device sync
            now = self.clock()
            if now - self.printed >= self.progress_every_s:
                self.printed = now
                self.say(self.progress_line(step, now - self.started))

    def progress_line(self, step: int, seconds: float) -> str:
        """``epoch 3/90  step 1200/5004  412 images/s  ETA 1h02m (epoch), 2d03h (run)``."""
        done = step - self.first_step
        per_step = seconds / max(done, 1)
        epoch_left = (self.steps_per_epoch - done) * per_step
        run_left = (self.last_step - step) * per_step
        return (
            f"epoch {self.epoch + 1}/{self.epochs}  step {done}/{self.steps_per_epoch}  "
            f"{self.images_per_step * done / seconds:.0f} images/s  "
            f"ETA {_duration(epoch_left)} (epoch), {_duration(run_left)} (run)"
        )
