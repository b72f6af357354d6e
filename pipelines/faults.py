"""Failures on purpose (``faults:`` in the config), so tests and fire drills can prove recovery.

A worker exit is a real process death (``os._exit``), the way an OOM kill or a lost
node looks to Ray Train; it fires once per run, remembered by a marker file, so the
restarted worker group goes past the same step.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from pipelines.config import FaultConfig


class FaultInjector:
    def __init__(self, faults: FaultConfig, rank: int, marker_dir: str | Path, run_id: str):
        self.faults, self.rank = faults, rank
        self.exit_marker = Path(marker_dir) / f"{run_id}-exit-at-step-{faults.exit_at_step}"

    def before_step(self, step: int) -> None:
        f = self.faults
        if f.exit_at_step == step and f.exit_rank == self.rank and not self.exit_marker.exists():
            self.exit_marker.parent.mkdir(parents=True, exist_ok=True)
            self.exit_marker.write_text(f"worker rank {self.rank} exited at step {step}\n")
            print(f"faults: worker rank {self.rank} exits at step {step}", flush=True)
            os._exit(1)

    def loss(self, loss: torch.Tensor, step: int) -> torch.Tensor:
        return loss * float("nan") if self.faults.nan_at_step == step else loss
