"""One Ray Train worker: build the method, continue its checkpoint, then ``train_epoch`` per epoch.

Each epoch ends in one report to Ray Train with rank 0's checkpoint, the per-epoch probes and
one MLflow row of metrics (buffered while the tracking server is away), at MLflow step = epoch.

Within an epoch, rank 0 logs ``train/loss_step`` (its mean loss since the last point) and
``train/lr_step`` every ``train.log_every_steps`` optimizer steps, at MLflow step = optimizer steps
done in the run: another axis than the per-epoch ``train/loss``, hence another name (Lightning's
``_step`` suffix). It prints a progress line (images/s, ETAs) at most every ``train.progress_every_s``.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import ray
import ray.train
import torch
import torch.distributed as dist
from ray.train import Checkpoint
from torch import nn

from pipelines import checkpoint, names, tracking
from pipelines.build import build_method, build_method_optimizer, view_policy
from pipelines.cluster import quiet_ray_train_report_lines, say
from pipelines.config import Config
from pipelines.evaluate import EpochKNN, EpochRankMe, has_labels
from pipelines.failures import NonFiniteLossError, one_line_errors
from pipelines.faults import FaultInjector
from pipelines.init_from import init_encoder
from pipelines.metric_buffer import MetricBuffer
from pipelines.step_log import StepLog, log_every_steps
from pipelines.stream import train_batches, train_images
from ssl_models.optim import set_learning_rate
from ssl_models.recipes import MAX_WARMUP_SHARE
from ssl_models.schedules import learning_rate, scaled_lr, warmup_steps
from ssl_models.sync_batchnorm import convert_sync_batchnorm


@dataclass
class Worker:
    """What every step of one worker's run shares."""

    cfg: Config
    model: nn.Module  # what steps call: DDP around the (compiled) method
    inner: nn.Module  # the plain method: state_dict keys, EMA updates, probes
    optimizer: torch.optim.Optimizer
    policy: object | None  # views made here on the device; None: Ray Data made them
    faults: FaultInjector
    device: torch.device
    rank: int
    world: int
    per_worker: int  # images per step on this worker
    total_steps: int
    warmup: int
    base_lr: float
    step_log: StepLog  # rank 0's points and progress lines within an epoch
    steps_per_epoch: int
    end_epoch: int  # the epoch to stop before: train.epochs, or a PBT segment's stop_epoch
    manifest: dict  # the shards' manifest, saved in each checkpoint
    run: tracking.Run  # the MLflow run it logs to
    buffer: MetricBuffer | None  # rank 0's MLflow rows, held while the tracking server is away


def to_channels_last(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """NHWC layout for the image tensors of a batch (faster convolutions with bf16 on recent GPUs)."""
    return {k: v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v for k, v in batch.items()}


def _all_reduce_sum(values: list[float], device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def _nonfinite_on_any_rank(loss: torch.Tensor) -> bool:
    """True on every rank when the loss is NaN or inf on any: all ranks must stop at the same step.

    The flag stays on the device until after the all-reduce: one host sync per step, not two.
    """
    bad = (~torch.isfinite(loss.detach())).to(torch.float32).reshape(1)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(bad)
    return bool(bad.item() > 0)


def _record_worker_nodes(rank: int, world: int, run: tracking.Run, first_epoch: int) -> None:
    """Tag the run with the Ray node of every worker (rank order) from ``first_epoch`` on: one tag per
    (re)start of the worker group. Best effort: training never waits on it."""
    nodes = [ray.get_runtime_context().get_node_id()] * world
    if dist.is_available() and dist.is_initialized():
        dist.all_gather_object(nodes, nodes[rank])
    if rank == 0:  # in MLflow, not the terminal: one line of long node ids per run was noise
        try:
            run.set_tag(f"{names.WORKER_NODES_PREFIX}{first_epoch}", ",".join(nodes))
        except Exception as err:  # an unreachable server must not stop training
            say(f"warning: could not tag worker nodes ({type(err).__name__})")


def train_epoch(w: Worker, shard, epoch: int, step: int) -> tuple[dict[str, float], int]:
    """One pass over this worker's shard; returns the epoch's metrics (all workers) and the next step.

    Raises ``NonFiniteLossError`` on every rank at the first step whose loss is NaN or inf on any rank.
    """
    w.model.train()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if w.cfg.train.use_gpu else contextlib.nullcontext()
    # Summed on the device, read once per epoch: a .item() per step stalls a GPU's queue every step.
    loss_sum = torch.zeros((), dtype=torch.float64, device=w.device)
    acc_sum = torch.zeros((), dtype=torch.float64, device=w.device)
    batches, images = 0, 0
    lr = w.base_lr
    t0 = ready = time.perf_counter()
    w.step_log.start_epoch(epoch, step)
    waited = 0.0  # seconds this worker sat waiting for its next batch: data starvation
    for batch in train_batches(shard, w.cfg, w.per_worker, epoch, w.rank, w.device):
        waited += time.perf_counter() - ready
        # Views come from Ray Data as uint8 (the method's forward normalizes them), or are made here.
        if w.policy is not None:
            batch = w.policy.apply(batch)  # whole images, or each view's crop of the original
        if w.cfg.train.channels_last:
            batch = to_channels_last(batch)
        lr = learning_rate(w.cfg.optim.schedule, step, w.total_steps, w.warmup, w.base_lr)
        set_learning_rate(w.optimizer, lr)
        w.faults.before_step(step)
        with autocast:
            out = w.model(batch)
        loss = w.faults.loss(out["loss"], step)
        if _nonfinite_on_any_rank(loss):
            raise NonFiniteLossError(f"loss is not finite at epoch {epoch + 1}, step {step}; lower optim.lr or check the data")
        w.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        w.optimizer.step()
        w.inner.on_step_end(step, w.total_steps)
        step += 1
        w.step_log.after_step(step, loss, lr)
        batches += 1
        images += w.per_worker
        loss_sum += loss.detach()
        if "proxy_acc" in out:
            acc_sum += torch.as_tensor(out["proxy_acc"], device=w.device).detach()
        ready = time.perf_counter()
    seconds = time.perf_counter() - t0
    loss_sum, acc_sum, batches, images, waited = _all_reduce_sum(
        [float(loss_sum), float(acc_sum), batches, images, waited], w.device
    )
    metrics = {
        "train/loss": loss_sum / max(batches, 1),
        "train/proxy_acc": acc_sum / max(batches, 1),
        "train/images": images,  # images trained on this epoch, all workers: every row, labeled or not
        "train/images_per_s": images / seconds,
        "train/data_wait_frac": waited / w.world / seconds,  # share of the epoch spent waiting for data
        "train/lr": lr,
        "epoch": epoch + 1,
    }
    return metrics, step


def train_loop_per_worker(loop_config: dict) -> dict | None:
    """One Ray Train worker (see ``_train_loop``); bad data or config ends it with the cause alone.

    Ray Train prints a worker's traceback; for an error the user fixes in the data or the
    config, the cause's one line says more (``RAYSSL_TRACEBACK=1`` keeps the full one).
    """
    with one_line_errors():
        try:
            _train_loop(loop_config)
        except NonFiniteLossError as err:
            # Returned, not raised: a restart from the last checkpoint would only diverge again.
            return {"error": str(err)}
    return None


def _train_loop(loop_config: dict) -> None:
    """One Ray Train worker: DDP model, streamed views, one report + checkpoint per epoch."""
    quiet_ray_train_report_lines(loop_config["ray_log_level"])
    w, start_epoch = build_worker(Config.model_validate(loop_config["config"]), loop_config)
    probes = epoch_probes(w.cfg, w.rank)
    _record_worker_nodes(w.rank, w.world, w.run, start_epoch + 1)
    shard = ray.train.get_dataset_shard("train")
    step = start_epoch * w.steps_per_epoch
    for epoch in range(start_epoch, w.end_epoch):
        metrics, step = train_epoch(w, shard, epoch, step)
        probed = {name: epoch_probe(w.inner.encoder, w.device) for name, epoch_probe in probes.items()}
        end_epoch(w, epoch, {**probed, **metrics})  # probes first: Tune's table shows a trial's first 4 metrics


def build_worker(cfg: Config, loop_config: dict) -> tuple[Worker, int]:
    """This worker's method, optimizer and schedule, continued from a checkpoint when there is one;
    returns the worker and the first epoch to train."""
    manifest, run = loop_config["manifest"], loop_config["run"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, int(cfg.train.cpus_per_worker)))
    torch.manual_seed(cfg.train.seed + rank)
    device = ray.train.torch.get_device()

    method = build_method(cfg, manifest)
    if cfg.method.init_from and ray.train.get_checkpoint() is None and not loop_config.get("init_checkpoint"):
        init_encoder(method.encoder, cfg)  # a fresh run from existing weights; a restart continues its own checkpoint
    if cfg.train.sync_batchnorm and world > 1:  # before the optimizer takes the parameters; names stay the same
        method = convert_sync_batchnorm(method, cuda=cfg.train.use_gpu)
    optimizer = build_method_optimizer(cfg, method)
    start_epoch, pending = _continue_checkpoint(method, optimizer, loop_config.get("init_checkpoint"))
    if cfg.train.channels_last:
        method = method.to(memory_format=torch.channels_last)

    per_worker = cfg.data.batch_size // world
    steps_per_epoch = max(1, train_images(cfg, manifest) // world // per_worker)
    total_steps = cfg.train.epochs * steps_per_epoch
    # The lr schedule always spans train.epochs; a PBT segment stops early at stop_epoch.
    end_epoch = loop_config.get("stop_epoch") or cfg.train.epochs
    buffer = MetricBuffer(run, pending) if rank == 0 else None
    w = Worker(
        cfg=cfg,
        # DDP wraps the compiled module; `inner` stays the plain one, for state_dict keys, EMA and probes.
        model=ray.train.torch.prepare_model(torch.compile(method) if cfg.train.compile else method),
        inner=method,
        optimizer=optimizer,
        policy=view_policy(cfg, manifest, method) if cfg.data.augment_on == "device" else None,
        faults=FaultInjector(cfg.faults, rank, Path(cfg.tracking.runs_dir) / "faults", run.run_id),
        device=device,
        rank=rank,
        world=world,
        per_worker=per_worker,
        total_steps=total_steps,
        warmup=warmup_steps(cfg.optim.warmup_epochs, steps_per_epoch, total_steps, MAX_WARMUP_SHARE),
        base_lr=scaled_lr(cfg.optim.lr, cfg.data.batch_size, cfg.optim.lr_scaling),
        step_log=StepLog(
            buffer.log_step if rank == 0 else None,
            every=log_every_steps(cfg.train.log_every_steps, steps_per_epoch),
            progress_every_s=cfg.train.progress_every_s,
            epochs=cfg.train.epochs,
            steps_per_epoch=steps_per_epoch,
            last_step=end_epoch * steps_per_epoch,
            images_per_step=per_worker * world,
        ),
        steps_per_epoch=steps_per_epoch,
        end_epoch=end_epoch,
        manifest=manifest,
        run=run,
        buffer=buffer,
    )
    return w, start_epoch


def _continue_checkpoint(method: nn.Module, optimizer, init_checkpoint: str | None) -> tuple[int, list]:
    """Load the checkpoint this run continues, if any; returns the first epoch to train and the metric rows
    the tracking server had not taken yet."""
    saved = ray.train.get_checkpoint()  # set when Ray Train restarts the workers after a failure
    if saved is None and init_checkpoint:  # a PBT segment continues a checkpoint
        saved = Checkpoint(init_checkpoint)
    if saved is None:
        return 0, []
    with saved.as_directory() as folder:  # continue where the last epoch ended
        state = checkpoint.load(folder)
    method.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return state["epoch"] + 1, state.get("pending_metrics", [])


def epoch_probes(cfg: Config, rank: int) -> dict:
    """Per-epoch probes on rank 0: kNN when the probe set has labels, RankMe always (label-free)."""
    probes = {}
    if rank == 0 and cfg.probe.epoch_knn_images and has_labels(cfg):
        probes[names.EPOCH_KNN_TOP1] = EpochKNN(cfg)
    if rank == 0 and cfg.probe.rankme_images:
        probes[names.EPOCH_RANKME] = EpochRankMe(cfg)
    return probes


def end_epoch(w: Worker, epoch: int, metrics: dict[str, float]) -> None:
    """The end of an epoch: rank 0 logs the metrics, saves the checkpoint and prints the epoch's line; every
    rank reports to Ray Train (with rank 0's checkpoint)."""
    with tempfile.TemporaryDirectory() as folder:
        if w.rank == 0:
            w.buffer.log({k: v for k, v in metrics.items() if k != "epoch"}, step=epoch + 1)
            checkpoint.save(
                folder,
                model=w.inner,
                optimizer=w.optimizer,
                epoch=epoch,
                config=w.cfg.model_dump(mode="json"),
                manifest=w.manifest,
                run_id=w.run.run_id,
                uri=w.run.uri,
                pending=w.buffer.pending,
            )
            say(
                f"epoch {epoch + 1}/{w.cfg.train.epochs}  loss {metrics['train/loss']:.3f}  "
                f"proxy_acc {metrics['train/proxy_acc']:.2f}  {metrics['train/images_per_s']:.0f} images/s  "
                f"lr {metrics['train/lr']:.4f}"
            )
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(folder) if w.rank == 0 else None)
