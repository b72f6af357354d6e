"""Points within an epoch: ``train/loss_step`` and ``train/lr_step`` every few steps, and a progress line
at most once a minute, so an hour-long epoch is not a blank chart and a silent terminal."""

from __future__ import annotations

import math

import pytest
import torch

from pipelines import tracking
from pipelines.data import read_manifest
from pipelines.step_log import StepLog, _duration, log_every_steps
from ssl_models.recipes import MAX_WARMUP_SHARE
from ssl_models.schedules import learning_rate, warmup_steps
from tests.conftest import SHARED_RUN_LOG_EVERY


class Clock:
    """A clock the test sets: no sleeping, no timing thresholds."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _step_log(points=None, lines=None, clock=None, **kwargs):
    settings = {"every": 0, "progress_every_s": 0, "epochs": 2, "steps_per_epoch": 5, "last_step": 10, "images_per_step": 64}
    return StepLog(
        None if points is None else lambda metrics, step: points.append((step, metrics)),
        **{**settings, **kwargs},
        clock=clock or Clock(),
        say=(lines if lines is not None else []).append,
    )


def test_points_are_the_mean_loss_since_the_last_point_at_the_global_step():
    points = []
    log = _step_log(points, every=3)
    log.start_epoch(0, 0)
    for step in range(1, 6):
        log.after_step(step, torch.tensor(float(step)), lr=step / 10)
    log.start_epoch(1, 5)  # a window runs on across the epoch's end
    for step in range(6, 11):
        log.after_step(step, torch.tensor(float(step)), lr=step / 10)
    assert points == [
        (3, {"train/loss_step": 2.0, "train/lr_step": 0.3}),  # mean of steps 1-3, the lr of step 3
        (6, {"train/loss_step": 5.0, "train/lr_step": 0.6}),
        (9, {"train/loss_step": 8.0, "train/lr_step": 0.9}),
    ]


def test_about_20_points_per_epoch_by_default_and_0_is_off():
    assert [log_every_steps(None, n) for n in (5004, 1000, 100, 45, 10)] == [250, 50, 5, 2, 1]
    assert [n // log_every_steps(None, n) for n in (5004, 1000, 100)] == [20, 20, 20]
    assert log_every_steps(7, 5004) == 7 and log_every_steps(0, 5004) == 0
    points = []
    log = _step_log(points, every=0)
    log.start_epoch(0, 0)
    for step in range(1, 11):
        log.after_step(step, torch.tensor(1.0), lr=0.1)
    assert points == []


def test_progress_line_only_after_the_interval_of_an_epoch():
    clock, lines = Clock(), []
    log = _step_log(
        [], lines, clock, progress_every_s=60, epochs=90, steps_per_epoch=5004, last_step=90 * 5004, images_per_step=256
    )
    clock.now = 1000.0
    log.start_epoch(2, 2 * 5004)
    clock.now = 1059.0
    for done in range(1, 1200):
        log.after_step(2 * 5004 + done, torch.tensor(1.0), lr=0.1)
    assert lines == []  # 59 s into the epoch: quiet
    clock.now = 1060.0
    log.after_step(2 * 5004 + 1200, torch.tensor(1.0), lr=0.1)
    # 1200 steps in 60 s: 0.05 s a step, 256 images a step; 3804 steps left in the epoch, 439,152 in the run
    assert lines == ["epoch 3/90  step 1200/5004  5120 images/s  ETA 3m10s (epoch), 6h05m (run)"]
    clock.now = 1119.0
    log.after_step(2 * 5004 + 1201, torch.tensor(1.0), lr=0.1)
    assert len(lines) == 1  # at most one line a minute
    clock.now = 1120.0
    log.after_step(2 * 5004 + 1202, torch.tensor(1.0), lr=0.1)
    assert len(lines) == 2


def test_short_epochs_and_other_ranks_stay_quiet():
    clock, lines = Clock(), []
    log = _step_log([], lines, clock, progress_every_s=60)
    for epoch in range(3):  # 50 s epochs: 150 s in all, never 60 s within one epoch
        log.start_epoch(epoch, 5 * epoch)
        for step in range(5 * epoch + 1, 5 * epoch + 6):
            clock.now += 10.0
            log.after_step(step, torch.tensor(1.0), lr=0.1)
    assert lines == []
    other_rank = _step_log(None, lines, clock, every=1, progress_every_s=60)
    other_rank.start_epoch(0, 0)
    clock.now += 3600.0
    other_rank.after_step(1, torch.tensor(1.0), lr=0.1)
    assert lines == [] and other_rank.every == 0


def test_durations_keep_the_two_largest_units():
    assert [_duration(s) for s in (5, 65, 3720, 2 * 86400 + 3 * 3600 + 59)] == ["0m05s", "1m05s", "1h02m", "2d03h"]


@pytest.mark.e2e
def test_a_run_logs_loss_and_lr_at_global_steps(shared_pretrain_run, fmnist_shards):
    cfg, result, uri = shared_pretrain_run.cfg, shared_pretrain_run.result, shared_pretrain_run.uri
    every, epochs = SHARED_RUN_LOG_EVERY, cfg.train.epochs

    run = tracking.get_run(uri, result.run_id)
    params = run.data.params
    per_worker = cfg.data.batch_size // cfg.train.num_workers
    rows = read_manifest(str(fmnist_shards))["splits"]["train"]["rows"]
    steps_per_epoch = rows // cfg.train.num_workers // per_worker  # 1024 // 2 // 32 = 16
    total = epochs * steps_per_epoch
    # every epoch really trained steps_per_epoch steps on each worker
    images = tracking.metric_history(uri, result.run_id, "train/images")
    assert images == [(e, cfg.train.num_workers * per_worker * steps_per_epoch) for e in range(1, epochs + 1)]

    losses = tracking.metric_history(uri, result.run_id, "train/loss_step")
    assert [step for step, _ in losses] == [every * i for i in range(1, total // every + 1)]  # 3, 6, ..., 30
    assert all(math.isfinite(v) and v > 0 for _, v in losses)
    base_lr = float(params["optim.lr"]) * cfg.data.batch_size / 256
    warmup = warmup_steps(float(params["optim.warmup_epochs"]), steps_per_epoch, total, MAX_WARMUP_SHARE)
    lrs = tracking.metric_history(uri, result.run_id, "train/lr_step")
    expected = [(s, learning_rate(params["optim.schedule"], s - 1, total, warmup, base_lr)) for s, _ in losses]
    assert [s for s, _ in lrs] == [s for s, _ in expected]
    assert [v for _, v in lrs] == pytest.approx([v for _, v in expected], rel=1e-9)
    # the per-epoch points are still there, one per epoch, on the epoch axis
    assert [step for step, _ in tracking.metric_history(uri, result.run_id, "train/loss")] == [1, 2]
