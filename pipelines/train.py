"""Pretraining with Ray Train: the driver function, the per-worker loop and the epoch.

The driver validates everything, opens the MLflow run, streams the shards through
Ray Data into a ``TorchTrainer``, probes the final checkpoint and closes the run.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import ray
import ray.data
import ray.train
import torch
import torch.distributed as dist
import yaml
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

import ssl_models
from pipelines import tracking
from pipelines.config import Config, ConfigError, with_recipe
from pipelines.data import check_shards, decode_png_batch, load_images, read_manifest, resolve_uri, split_uri
from pipelines.evaluate import (
    PROBES_SKIPPED,
    EpochKNN,
    EpochRankMe,
    build_method,
    check_probe_set,
    has_labels,
    ignored_method_fields,
    run_probes,
)
from pipelines.failures import fail_fast_on_unfixable_errors, unfixable_errors_in_one_line
from pipelines.faults import FaultInjector
from pipelines.init_from import check_init_from, init_encoder
from ssl_models.embedding import EmbeddingModel
from ssl_models.optim import build_optimizer, set_learning_rate
from ssl_models.recipes import MAX_WARMUP_SHARE
from ssl_models.schedules import learning_rate, warmup_steps
from ssl_models.sync_batchnorm import convert_sync_batchnorm


class NonFiniteLossError(FloatingPointError):
    """Training diverged; the message names the epoch and step."""


@dataclass
class PretrainResult:
    run_id: str
    tracking_uri: str
    metrics: dict[str, float]
    checkpoint_dir: str
    wall_s: float


# ---------------------------------------------------------------- data stage


class ViewsFromPNG:
    """Ray Data ``map_batches`` callable: decode PNG bytes, then the method's view policy."""

    def __init__(self, policy):
        self.policy = policy

    def __call__(self, batch):
        decoded = decode_png_batch(batch)
        decoded.pop("id", None)  # only for naming a row that does not decode; the trainer takes tensors
        return decoded if self.policy is None else self.policy(decoded)


def view_policy(cfg: Config, manifest: dict, method=None):
    # The built method, not its class: an argument such as DINO's num_local_crops sets its views.
    # A worker passes the method it already built rather than building a second one.
    method = method if method is not None else build_method(with_recipe(cfg)[0], manifest)
    a = cfg.data.augment
    settings = dict(
        crop_scale=a.crop_scale,
        flip_p=a.flip_p,
        jitter_strength=a.jitter_strength,
        jitter_p=a.jitter_p,
        grayscale_p=a.grayscale_p,
        blur_p=a.blur_p,
        blur_sigma=a.blur_sigma,
    )
    settings.update(method.view_kwargs)  # what the method's paper fixes per view wins (validate() says so)
    return ssl_models.create_views(
        method.view_policy, image_size=cfg.data.crop_size or manifest["image_size"][0], num_views=method.num_views, **settings
    )


# Ray Data's default of 128 MiB suits bulk data: here one block held a whole 10,000-image
# shard's views, so each epoch's first batch waited until a task had augmented a whole shard.
# Share of each epoch the workers waited for data (SimCLR, 8,192 images, 2 CPU workers, one
# Ray instance): 128 MiB 11.7%, 2 MiB 8.1%, 1 MiB 6.6% (~670 Fashion-MNIST view pairs).
# Small blocks also let Ray Data's backpressure work in smaller steps.
VIEW_BLOCK_BYTES = 1024**2


@contextlib.contextmanager
def _data_context(**settings):
    """Ray Data settings for the datasets created inside; the driver's own are put back after.

    A dataset keeps a copy of the context it was created with, so the settings last for it.
    """
    context = ray.data.DataContext.get_current()
    before = {name: getattr(context, name) for name in settings}
    try:
        for name, value in settings.items():
            setattr(context, name, value)
        yield
    finally:
        for name, value in before.items():
            setattr(context, name, value)


def read_train_shards(cfg: Config) -> ray.data.Dataset:
    """The train split's Parquet shards, files in a new order every epoch, read by Ray Data's V1 Parquet reader.

    Ray 2.60's default (V2) reader lists the files and reads their footers on a pool of new
    actor processes at the start of every epoch; on 2 cores that halved pretraining speed
    (``benchmarks/end_to_end.py``: 274 against 409 images/s with V1). V1 reads the footers
    once, here, and each epoch only runs the read tasks.
    """
    with _data_context(use_datasource_v2=False, target_max_block_size=VIEW_BLOCK_BYTES):
        return ray.data.read_parquet(split_uri(cfg.data.shards, "train"), shuffle="files")


def build_pretrain_dataset(cfg: Config, manifest: dict) -> ray.data.Dataset:
    """Stream the train shards: read Parquet, decode, and (on CPU) make the views, per sample and per epoch."""
    # One progress line per epoch from the trainer is enough; Ray Data's bars flood a terminal log.
    ray.data.DataContext.get_current().enable_progress_bars = False
    ds = read_train_shards(cfg).select_columns(["image", "id"])  # every row, labeled or not; id names a bad one
    if cfg.data.max_train_images:
        ds = ds.limit(cfg.data.max_train_images)
    policy = view_policy(cfg, manifest) if cfg.data.augment_on == "cpu" else None
    return ds.map_batches(ViewsFromPNG(policy), batch_size=256)


def train_images(cfg: Config, manifest: dict) -> int:
    rows = manifest["splits"]["train"]["rows"]
    return min(rows, cfg.data.max_train_images or rows)


# ---------------------------------------------------------------- worker loop


def _save_checkpoint(
    model, optimizer, epoch: int, cfg: Config, manifest: dict, folder: str, run_id: str, uri: str, pending
) -> None:
    state = {
        "pending_metrics": pending,  # metrics the tracking server has not taken yet; the driver sends them
        "run_id": run_id,  # so `rayssl probe CHECKPOINT` can log to the run that made it
        "tracking_uri": uri,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": epoch,
        "config": cfg.model_dump(mode="json"),
        "manifest": {k: manifest[k] for k in ("mode", "channels", "image_size", "classes")},
    }
    torch.save(state, Path(folder) / "checkpoint.pt")


def build_method_optimizer(cfg: Config, method) -> torch.optim.Optimizer:
    """The optimizer of a resolved config (``with_recipe``) for ``method``'s parameters."""
    o = cfg.optim
    return build_optimizer(o.name, method, o.lr, o.weight_decay, o.momentum, o.beta2, o.bias_lr_scale)


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


def _record_worker_nodes(rank: int, world: int, uri: str, run_id: str, first_epoch: int) -> None:
    """Tag the run with the Ray node of every worker (rank order) from ``first_epoch`` on: one tag per
    (re)start of the worker group. Best effort: training never waits on it."""
    nodes = [ray.get_runtime_context().get_node_id()] * world
    if dist.is_available() and dist.is_initialized():
        dist.all_gather_object(nodes, nodes[rank])
    if rank == 0:  # in MLflow, not the terminal: one line of long node ids per run was noise
        try:
            tracking.set_tag(uri, run_id, f"rayssl.worker_nodes.from_epoch_{first_epoch}", ",".join(nodes))
        except Exception as err:  # an unreachable server must not stop training
            say(f"warning: could not tag worker nodes ({type(err).__name__})")


def train_loop_per_worker(loop_config: dict) -> dict | None:
    """One Ray Train worker (see ``_train_loop``); bad data or config ends it with the cause alone.

    Ray Train prints a worker's traceback; for an error the user fixes in the data or the
    config, the cause's one line says more (``RAYSSL_TRACEBACK=1`` keeps the full one).
    """
    with unfixable_errors_in_one_line():
        return _train_loop(loop_config)


def _train_loop(loop_config: dict) -> dict | None:
    """One Ray Train worker: DDP model, streamed views, one report + checkpoint per epoch."""
    cfg = Config.model_validate(loop_config["config"])
    manifest, run_id, uri = loop_config["manifest"], loop_config["run_id"], loop_config["tracking_uri"]
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
    start_epoch, pending = 0, []
    checkpoint = ray.train.get_checkpoint()  # set when Ray Train restarts the workers after a failure
    if checkpoint is None and loop_config.get("init_checkpoint"):  # a PBT segment continues a checkpoint
        checkpoint = Checkpoint(loop_config["init_checkpoint"])
    if checkpoint is not None:  # continue where the last epoch ended
        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / "checkpoint.pt", map_location="cpu", weights_only=True)
        method.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = state["epoch"] + 1
        pending = state.get("pending_metrics", [])
    if cfg.train.channels_last:
        method = method.to(memory_format=torch.channels_last)
    # DDP wraps the compiled module; `inner` stays the plain one, for state_dict keys, EMA and probes.
    model = ray.train.torch.prepare_model(torch.compile(method) if cfg.train.compile else method)
    inner = method

    per_worker = cfg.data.batch_size // world
    steps_per_epoch = max(1, train_images(cfg, manifest) // world // per_worker)
    total_steps = cfg.train.epochs * steps_per_epoch
    warmup = warmup_steps(cfg.optim.warmup_epochs, steps_per_epoch, total_steps, MAX_WARMUP_SHARE)
    base_lr = cfg.optim.lr * cfg.data.batch_size / 256  # linear scaling rule
    policy = view_policy(cfg, manifest, method) if cfg.data.augment_on == "device" else None
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cfg.train.use_gpu else contextlib.nullcontext()
    shard = ray.train.get_dataset_shard("train")

    # Per-epoch probes on rank 0: kNN when the probe set has labels, RankMe always (label-free).
    epoch_probes = {}
    if rank == 0 and cfg.probe.epoch_knn_images and has_labels(cfg):
        epoch_probes["probe/epoch_knn_top1"] = EpochKNN(cfg)
    if rank == 0 and cfg.probe.rankme_images:
        epoch_probes["probe/epoch_rankme"] = EpochRankMe(cfg)
    buffer = tracking.MetricBuffer(uri, run_id, pending) if rank == 0 else None
    faults = FaultInjector(cfg.faults, rank, Path(cfg.tracking.runs_dir) / "faults", run_id)
    _record_worker_nodes(rank, world, uri, run_id, start_epoch + 1)
    step = start_epoch * steps_per_epoch
    # The lr schedule always spans train.epochs; a PBT segment stops early at stop_epoch.
    stop_epoch = loop_config.get("stop_epoch") or cfg.train.epochs
    for epoch in range(start_epoch, stop_epoch):
        model.train()
        # Summed on the device, read once per epoch: a .item() per step stalls a GPU's queue every step.
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        acc_sum = torch.zeros((), dtype=torch.float64, device=device)
        batches, images = 0, 0
        lr = base_lr
        t0 = ready = time.perf_counter()
        waited = 0.0  # seconds this worker sat waiting for its next batch: data starvation
        for batch in shard.iter_torch_batches(batch_size=per_worker, drop_last=True, device=device):
            waited += time.perf_counter() - ready
            # Views come from Ray Data as uint8 (the method's forward normalizes them), or are made here.
            if policy is not None:
                batch = policy.apply(batch["image"])
            if cfg.train.channels_last:
                batch = to_channels_last(batch)
            lr = learning_rate(cfg.optim.schedule, step, total_steps, warmup, base_lr)
            set_learning_rate(optimizer, lr)
            faults.before_step(step)
            with autocast:
                out = model(batch)
            loss = faults.loss(out["loss"], step)
            if _nonfinite_on_any_rank(loss):
                # Returned, not raised: a restart from the last checkpoint would only diverge again.
                return {"error": f"loss is not finite at epoch {epoch + 1}, step {step}; lower optim.lr or check the data"}
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            inner.on_step_end(step, total_steps)
            step += 1
            batches += 1
            images += per_worker
            loss_sum += loss.detach()
            if "proxy_acc" in out:
                acc_sum += torch.as_tensor(out["proxy_acc"], device=device).detach()
            ready = time.perf_counter()
        seconds = time.perf_counter() - t0
        totals = _all_reduce_sum([float(loss_sum), float(acc_sum), batches, images, waited], device)
        loss_sum, acc_sum, batches, images, waited = totals
        metrics = {
            "train/loss": loss_sum / max(batches, 1),
            "train/proxy_acc": acc_sum / max(batches, 1),
            "train/images": images,  # images trained on this epoch, all workers: every row, labeled or not
            "train/images_per_s": images / seconds,
            "train/data_wait_frac": waited / world / seconds,  # share of the epoch spent waiting for data
            "train/lr": lr,
            "epoch": epoch + 1,
        }
        for name, epoch_probe in epoch_probes.items():
            metrics[name] = epoch_probe(inner.encoder, device)
        with tempfile.TemporaryDirectory() as folder:
            if rank == 0:
                buffer.log({k: v for k, v in metrics.items() if k != "epoch"}, step=epoch + 1)
                _save_checkpoint(inner, optimizer, epoch, cfg, manifest, folder, run_id, uri, buffer.pending)
                say(
                    f"epoch {epoch + 1}/{cfg.train.epochs}  loss {metrics['train/loss']:.3f}  "
                    f"proxy_acc {metrics['train/proxy_acc']:.2f}  {metrics['train/images_per_s']:.0f} images/s  "
                    f"lr {lr:.4f}"
                )
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(folder) if rank == 0 else None)


# ---------------------------------------------------------------- driver


def validate(cfg: Config) -> dict:
    """Everything that can be checked before Ray starts; returns the shards' manifest.

    Also makes ``data.shards`` and ``tracking.runs_dir`` absolute: Ray workers run in another folder.
    """
    cfg.data.shards = resolve_uri(cfg.data.shards)
    cfg.tracking.runs_dir = str(Path(cfg.tracking.runs_dir).expanduser().resolve())
    check_capacity(cfg)
    manifest = read_manifest(cfg.data.shards)
    check_shards(cfg.data.shards, manifest)
    size = manifest["image_size"][0]
    if cfg.data.crop_size is not None and cfg.data.crop_size > size:
        raise ConfigError(f"data.crop_size={cfg.data.crop_size} is larger than the {size} px images; use at most {size}")
    try:
        method = build_method(with_recipe(cfg)[0], manifest)  # with the recipe's head sizes, as it will train
    except (TypeError, ValueError) as err:
        raise ConfigError(f"method: {err}") from None
    check_init_from(cfg, method)
    check_probe_set(cfg, manifest)
    fixed = ssl_models.method_class(cfg.method.name).view_kwargs
    if fixed:
        print(f"note: {cfg.method.name} makes its views as its paper does: {fixed} (over data.augment)")
    ignored = ignored_method_fields(cfg)
    if ignored:
        print(f"note: {cfg.method.name} does not use {', '.join(ignored)}; ignoring")
    return manifest


def check_capacity(cfg: Config) -> None:
    """Refuse workers the cluster can never place: Ray would wait for them forever instead of failing."""
    if ray.is_initialized():
        total = ray.cluster_resources()
    elif cluster_address():
        return  # a running (maybe autoscaling) cluster: only Ray knows what it can grow to
    else:
        total = {"CPU": os.cpu_count() or 1, "GPU": torch.cuda.device_count()}
    t = cfg.train
    need = t.num_workers * t.cpus_per_worker
    if need > total.get("CPU", 0):
        raise ConfigError(
            f"train.num_workers={t.num_workers} x train.cpus_per_worker={t.cpus_per_worker} needs {need:g} CPUs, "
            f"the cluster has {total.get('CPU', 0):g}; lower one of them"
        )
    if t.use_gpu and t.num_workers > total.get("GPU", 0):
        raise ConfigError(
            f"train.num_workers={t.num_workers} with train.use_gpu=true needs {t.num_workers} GPUs, "
            f"the cluster has {total.get('GPU', 0):g}; lower train.num_workers or set train.use_gpu=false"
        )


def _fit_with_timeout(trainer: TorchTrainer, timeout_s: float | None):
    if timeout_s is None:
        return trainer.fit()
    box: dict = {}

    def target():
        try:
            box["result"] = trainer.fit()
        except BaseException as err:  # handed to the caller's thread
            box["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise TimeoutError(f"pretraining did not finish within train.timeout_s={timeout_s}")
    if "error" in box:
        raise box["error"]
    return box["result"]


def cluster_address() -> str | None:
    """The running cluster this driver joins (``RAY_ADDRESS``, or one ``ray start``-ed here); None: a new local Ray."""
    from ray._private.services import canonicalize_bootstrap_address  # the rule ray.init itself follows

    return canonicalize_bootstrap_address(None)


def verbose() -> bool:
    """``rayssl --verbose`` (or RAYSSL_VERBOSE=1): Ray's, Ray Train's and Ray Data's own INFO lines in the terminal."""
    return bool(os.environ.get("RAYSSL_VERBOSE"))


def ray_log_level() -> str:
    return "INFO" if verbose() else "WARNING"


def ensure_ray(resources: dict | None = None) -> None:
    """Join the running cluster, else start a local Ray; only a local one takes ``resources``.

    A cluster declares its own (cluster.yaml, the RayJob), and Ray refuses them from a joining driver.
    Ray Data's INFO lines (each dataset's execution plan and finish) stay in Ray's log files unless verbose.
    """
    if not ray.is_initialized():
        os.environ.setdefault("RAY_DATA_LOG_LEVEL", ray_log_level())  # the driver's own Ray Data logger
        if cluster_address():  # a job on a cluster keeps the runtime env it was submitted with
            ray.init(log_to_driver=True)
        else:
            env = {"env_vars": {"RAY_DATA_LOG_LEVEL": os.environ["RAY_DATA_LOG_LEVEL"]}}
            ray.init(resources=resources, log_to_driver=True, runtime_env=env)


def say(line: str) -> None:
    """One line to the worker's real stdout, shown once in the driver's terminal.

    Ray Train V2 patches ``print`` in its workers to go to a logger *and*, when stdout is wrapped, to stdout:
    every per-epoch line came out twice, and a quiet log level would hide it.
    """
    sys.__stdout__.write(line + "\n")
    sys.__stdout__.flush()


def fit(
    cfg: Config,
    manifest: dict,
    uri: str,
    run_id: str,
    ray_run_name: str,
    storage_path: str,
    callbacks: list | None = None,
    init_checkpoint: str | None = None,
    stop_epoch: int | None = None,
    dataset: ray.data.Dataset | None = None,
):
    """Train with Ray Train, logging to the open MLflow run ``run_id``; returns Ray Train's result.

    ``init_checkpoint`` and ``stop_epoch`` run one segment of a longer run (PBT). ``dataset``
    replaces the streamed shards (benchmarks feed views held in memory).
    """
    cfg = with_recipe(cfg)[0]  # resolved already on every rayssl path; callers such as benchmarks may pass an unresolved one
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": cfg.model_dump(mode="json"),
            "manifest": manifest,
            "run_id": run_id,
            "tracking_uri": uri,
            "init_checkpoint": init_checkpoint,
            "stop_epoch": stop_epoch,
        },
        scaling_config=ScalingConfig(
            num_workers=cfg.train.num_workers,
            use_gpu=cfg.train.use_gpu,
            placement_strategy=cfg.train.placement_strategy,
            resources_per_worker={"CPU": cfg.train.cpus_per_worker, **({"GPU": 1} if cfg.train.use_gpu else {})},
        ),
        run_config=RunConfig(
            name=ray_run_name,
            storage_path=str(storage_path),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            callbacks=callbacks or [],
            logging_config=LoggingConfig(log_level=ray_log_level()),
        ),
        datasets={"train": dataset if dataset is not None else build_pretrain_dataset(cfg, manifest)},
    )
    fail_fast_on_unfixable_errors()
    with unfixable_errors_in_one_line():  # bad data or config: one line, not the workers' tracebacks
        result = _fit_with_timeout(trainer, cfg.train.timeout_s)
    if isinstance(result.return_value, dict) and "error" in result.return_value:
        raise NonFiniteLossError(result.return_value["error"])
    return result


def log_config(cfg: Config, uri: str, run_id: str) -> None:
    """The resolved config as an artifact, and the shards (and a separate probe set) as the run's dataset inputs."""
    with tempfile.TemporaryDirectory() as tmp:
        config_file = Path(tmp) / "config.yaml"
        config_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        tracking.log_artifact(uri, run_id, config_file)
    tracking.log_dataset_inputs(uri, run_id, cfg.data.shards, read_manifest(cfg.data.shards))
    if cfg.probe.shards and cfg.probe.shards != cfg.data.shards:
        tracking.log_dataset_inputs(uri, run_id, cfg.probe.shards, read_manifest(cfg.probe.shards), context="probe")


def fit_and_probe(
    cfg: Config, manifest: dict, uri: str, run_id: str, ray_run_name: str, storage_path: str, callbacks: list | None = None
) -> tuple[dict[str, float], str]:
    """Train, then probe the final checkpoint; logs to the open MLflow run ``run_id``.

    Returns the final metrics and the final checkpoint's path.
    """
    log_config(cfg, uri, run_id)
    t0 = time.perf_counter()
    result = fit(cfg, manifest, uri, run_id, ray_run_name, storage_path, callbacks)
    metrics = probe_checkpoint_and_log(cfg, manifest, uri, run_id, result.checkpoint.path)
    metrics["wall_s"] = time.perf_counter() - t0
    metrics.update({k: v for k, v in (result.metrics or {}).items() if k.startswith("train/")})
    tracking.log_metrics(uri, run_id, {"wall_s": metrics["wall_s"]}, step=cfg.train.epochs)
    return metrics, result.checkpoint.path


def probe_checkpoint_and_log(cfg: Config, manifest: dict, uri: str, run_id: str, checkpoint_dir: str) -> dict[str, float]:
    """Probe a run's checkpoint, log the probe metrics and the checkpoint itself to its MLflow run."""
    with Checkpoint(checkpoint_dir).as_directory() as folder:
        state = torch.load(Path(folder) / "checkpoint.pt", map_location="cpu", weights_only=True)
        if state.get("pending_metrics"):  # the tracking server was away when the workers last tried
            rows = tracking.unrecorded(state["pending_metrics"], tracking.recorded_steps(uri, run_id))
            tracking.log_metric_rows(uri, run_id, rows)
        tracking.log_artifact(uri, run_id, Path(folder) / "checkpoint.pt", "checkpoint")
    method = build_method(cfg, manifest)
    method.load_state_dict(state["model"])
    metrics = run_probes(method, cfg)
    metrics["epochs"] = state["epoch"] + 1
    tracking.log_metrics(uri, run_id, metrics, step=state["epoch"] + 1)
    if cfg.tracking.log_model:
        try:
            log_encoder(method, cfg, uri, run_id)
        except Exception as err:  # noqa: BLE001  the run trained and is probed: a model that did not log must not fail it
            print(f"warning: the encoder was not logged as an MLflow Model ({type(err).__name__}: {err}); the checkpoint has it")
    return metrics


def log_encoder(method, cfg: Config, uri: str, run_id: str) -> str:
    """The run's encoder as an MLflow Model: raw uint8 images in, embeddings out (``EmbeddingModel``)."""
    example = load_images(cfg.data.shards, "train", 2)  # two real images: the input example and the export's trace
    model_uri = tracking.log_encoder_model(uri, run_id, EmbeddingModel(method.encoder).eval(), example)
    tracking.set_tag(uri, run_id, "rayssl.encoder_model", model_uri)
    return model_uri


def tag_skipped_probes(cfg: Config, uri: str, run_id: str) -> None:
    """Say on the run, where the MLflow UI shows it, that the probes needing labels did not run."""
    if not has_labels(cfg):
        tracking.set_tag(uri, run_id, "rayssl.probes", PROBES_SKIPPED)


def open_pretrain_run(cfg: Config, uri: str, run_name: str) -> str:
    """A new MLflow run, or the newest run of that name again when it did not finish.

    Reopening the run also resumes its training: the Ray Train run name derives from the
    MLflow run id, and Ray Train continues a run name from its last checkpoint.
    """
    if cfg.tracking.run_name:
        previous = tracking.find_runs(uri, cfg.tracking.experiment, {"rayssl.kind": "pretrain", "mlflow.runName": run_name})
        if previous and previous[0].info.status != "FINISHED":
            run = previous[0].info
            print(f"resuming run {run_name} (MLflow {run.run_id}, was {run.status}) from its last checkpoint")
            tracking.reopen_run(uri, run.run_id)
            return run.run_id
    return tracking.start_run(uri, cfg.tracking.experiment, run_name, cfg.flat(), tags={"rayssl.kind": "pretrain"})


def pretrain(cfg: Config, callbacks: list | None = None) -> PretrainResult:
    """Pretrain, probe and record one run; returns the MLflow run id and final metrics.

    ``callbacks`` are Ray Train ``UserCallback``s (they run in Ray Train's controller).
    """
    cfg, from_recipe = with_recipe(cfg)
    manifest = validate(cfg)
    uri = tracking.resolve_tracking_uri(cfg.tracking.tracking_uri, cfg.tracking.runs_dir)
    tracking.check_reachable(uri)
    run_name = cfg.tracking.run_name or f"{cfg.method.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_id = open_pretrain_run(cfg, uri, run_name)
    tag_skipped_probes(cfg, uri, run_id)
    tracking.set_tag(uri, run_id, "rayssl.from_recipe", ",".join(from_recipe) or "none")
    with tracking.run_status(uri, run_id):
        ensure_ray()
        metrics, checkpoint = fit_and_probe(cfg, manifest, uri, run_id, f"{run_name}-{run_id[:8]}", cfg.storage("ray"), callbacks)
    return PretrainResult(run_id, uri, metrics, checkpoint, metrics["wall_s"])
