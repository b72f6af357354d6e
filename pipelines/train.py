"""Pretraining, the driver: validate, open the MLflow run, fit with Ray Train, probe, close the run.

The stages it calls each live in one module: ``stream`` (Ray Data: shards to views),
``worker`` (the Ray Train loop and its epoch), ``checkpoint`` (the format), ``evaluate``
(the probes), ``cluster`` (the Ray session) and ``tracking`` (MLflow).

It reads top to bottom: ``pretrain``, then each step in the order it calls them. The config is
resolved once (``config.resolve``): ``pretrain`` resolves the one it is given (a resolved one comes
back unchanged); the steps take it as given, and ``fit`` refuses one that was not resolved.
"""

from __future__ import annotations

import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import ray.data
import yaml
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

import ssl_models
from pipelines import checkpoint, names, storage, tracking
from pipelines.build import build_method, ignored_method_fields, view_size
from pipelines.cluster import check_capacity, ensure_ray, ray_log_level
from pipelines.config import Config, ConfigError, resolve
from pipelines.data import check_shards, load_images, read_manifest
from pipelines.evaluate import check_probe_set, has_labels, run_probes
from pipelines.failures import NonFiniteLossError, fail_fast_on_unfixable_errors, one_line_errors
from pipelines.init_from import check_init_from
from pipelines.metric_buffer import unrecorded
from pipelines.stream import build_pretrain_dataset, train_images
from pipelines.worker import train_loop_per_worker
from ssl_models.embedding import EmbeddingModel


@dataclass
class PretrainResult:
    run_id: str
    tracking_uri: str
    metrics: dict[str, float]
    checkpoint_dir: str
    wall_s: float


def pretrain(cfg: Config, callbacks: list | None = None) -> PretrainResult:
    """Pretrain, probe and record one run; returns the MLflow run id and final metrics.

    ``callbacks`` are Ray Train ``UserCallback``s (they run in Ray Train's controller).
    """
    cfg = resolve(cfg)  # unchanged when the caller resolved it (the CLI); benchmarks and tests may pass their own
    manifest = validate(cfg)
    uri = tracking.resolve_tracking_uri(cfg.tracking.tracking_uri, cfg.tracking.runs_dir)
    tracking.check_reachable(uri)
    run_name = cfg.tracking.run_name or f"{cfg.method.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run = open_pretrain_run(cfg, uri, run_name)
    with run.status():
        ensure_ray()
        metrics, checkpoint = fit_and_probe(cfg, manifest, run, f"{run_name}-{run.run_id[:8]}", cfg.storage("ray"), callbacks)
    return PretrainResult(run.run_id, uri, metrics, checkpoint, metrics[names.WALL_S])


def open_pretrain_run(cfg: Config, uri: str, run_name: str) -> tracking.Run:
    """A new MLflow run, or the newest run of that name again when it did not finish.

    Reopening the run also resumes its training: the Ray Train run name derives from the
    MLflow run id, and Ray Train continues a run name from its last checkpoint.
    """
    unfinished = None
    if cfg.tracking.run_name:
        previous = tracking.find_runs(uri, cfg.tracking.experiment, {names.KIND: names.KIND_PRETRAIN, names.RUN_NAME: run_name})
        if previous and previous[0].info.status != "FINISHED":
            info = previous[0].info
            print(f"resuming run {run_name} (MLflow {info.run_id}, was {info.status}) from its last checkpoint")
            unfinished = tracking.Run(uri, info.run_id)
    return tracking.open_run(
        uri,
        cfg.tracking.experiment,
        run_name,
        cfg.flat(),
        names.KIND_PRETRAIN,
        reopen=unfinished,
        labeled=has_labels(cfg),
        from_recipe=cfg.from_recipe,
    )


def validate(cfg: Config) -> dict:
    """Everything that can be checked before Ray starts; returns the shards' manifest. Changes nothing in ``cfg``."""
    check_capacity(cfg)
    # object storage: a missing bucket, refused credentials or a down endpoint, in one line each
    for field, where in (
        ("data.shards", cfg.data.shards),
        ("probe.shards", cfg.probe.shards),
        ("tracking.storage_path", cfg.storage()),
    ):
        if where:
            storage.check_bucket(where, field)
    manifest = read_manifest(cfg.data.shards)
    check_shards(cfg.data.shards, manifest)
    fixed = manifest.get("image_size")
    if fixed and cfg.data.crop_size is not None and cfg.data.crop_size > fixed[0]:
        raise ConfigError(
            f"data.crop_size={cfg.data.crop_size} is larger than the shards' {fixed[0]} px images; use at most {fixed[0]}, "
            "or re-shard without --size so that each image keeps its own size"
        )
    try:
        method = build_method(cfg, manifest)  # a resolved config: with the recipe's head sizes, as it will train
    except (TypeError, ValueError) as err:
        raise ConfigError(f"method: {err}") from None
    check_init_from(cfg, method)
    check_probe_set(cfg, manifest)
    check_one_batch(cfg, manifest)
    fixed = ssl_models.method_class(cfg.method.name).view_kwargs
    if fixed:
        print(f"note: {cfg.method.name} makes its views as its paper does: {fixed} (over data.augment)")
    ignored = ignored_method_fields(cfg)
    if ignored:
        print(f"note: {cfg.method.name} does not use {', '.join(ignored)}; ignoring")
    return manifest


def check_one_batch(cfg: Config, manifest: dict) -> None:
    """Refuse a run that would train no step: batches drop their last partial batch, so fewer images per
    worker than its share of ``data.batch_size`` would give empty epochs and a run that still finishes."""
    images, world = train_images(cfg, manifest), cfg.train.num_workers
    if images // world < cfg.data.batch_size // world:
        limit = (
            "data.max_train_images"
            if cfg.data.max_train_images and cfg.data.max_train_images < manifest["splits"]["train"]["rows"]
            else "the shards"
        )
        per_worker = cfg.data.batch_size // world
        raise ConfigError(
            f"data.batch_size={cfg.data.batch_size} needs {per_worker} training images for each of {world} worker(s), "
            f"and {limit} give {images}: no step would run; set data.batch_size to at most {images // world * world}"
        )


def fit_and_probe(
    cfg: Config, manifest: dict, run: tracking.Run, ray_run_name: str, storage_path: str, callbacks: list | None = None
) -> tuple[dict[str, float], str]:
    """Train, then probe the final checkpoint; logs to the open MLflow ``run``.

    Returns the final metrics and the final checkpoint's path.
    """
    log_config(cfg, run)
    t0 = time.perf_counter()
    result = fit(cfg, manifest, run, ray_run_name, storage_path, callbacks)
    final = checkpoint.uri_of(result.checkpoint)
    metrics = probe_checkpoint_and_log(cfg, manifest, run, final)
    metrics["wall_s"] = time.perf_counter() - t0
    metrics.update({k: v for k, v in (result.metrics or {}).items() if k.startswith("train/")})
    run.log_metrics({names.WALL_S: metrics[names.WALL_S]}, step=cfg.train.epochs)
    return metrics, final


def log_config(cfg: Config, run: tracking.Run) -> None:
    """The resolved config as an artifact, and the shards (and a separate probe set) as the run's dataset inputs."""
    with tempfile.TemporaryDirectory() as tmp:
        config_file = Path(tmp) / "config.yaml"
        config_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        run.log_artifact(config_file)
    run.log_dataset_inputs(cfg.data.shards, read_manifest(cfg.data.shards))
    if cfg.probe.shards and cfg.probe.shards != cfg.data.shards:
        run.log_dataset_inputs(cfg.probe.shards, read_manifest(cfg.probe.shards), context="probe")


def fit(
    cfg: Config,
    manifest: dict,
    run: tracking.Run,
    ray_run_name: str,
    storage_path: str,
    callbacks: list | None = None,
    init_checkpoint: str | None = None,
    stop_epoch: int | None = None,
    dataset: ray.data.Dataset | None = None,
):
    """Train with Ray Train, logging to the open MLflow ``run``; returns Ray Train's result.

    ``init_checkpoint`` and ``stop_epoch`` run one segment of a longer run (PBT). ``dataset``
    replaces the streamed shards (benchmarks feed views held in memory).
    """
    if cfg.from_recipe is None:  # the workers would train without the recipe's optimizer
        raise ValueError("fit() takes a resolved config: pass pipelines.config.resolve(cfg)")
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": cfg.model_dump(mode="json"),
            "manifest": manifest,
            "run": run,  # plain data: the store's URI and the run's id
            "init_checkpoint": init_checkpoint,
            "stop_epoch": stop_epoch,
            "ray_log_level": ray_log_level(),  # Ray's own INFO lines reach the terminal only with --verbose
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
    # bad data or config, or an object store gone: one line, not the workers' tracebacks
    with one_line_errors(object_store=True):
        result = _fit_with_timeout(trainer, cfg.train.timeout_s)
    if isinstance(result.return_value, dict) and "error" in result.return_value:
        raise NonFiniteLossError(result.return_value["error"])
    return result


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


def probe_checkpoint_and_log(cfg: Config, manifest: dict, run: tracking.Run, checkpoint_dir: str) -> dict[str, float]:
    """Probe a run's checkpoint, log the probe metrics and the checkpoint itself to its MLflow run."""
    with Checkpoint(checkpoint_dir).as_directory() as folder:
        state = checkpoint.load(folder)
        if state.get("pending_metrics"):  # the tracking server was away when the workers last tried
            run.log_metric_rows(unrecorded(state["pending_metrics"], run.recorded_steps()))
        run.log_artifact(checkpoint.file_in(folder), checkpoint.ARTIFACT_DIR)
    method = build_method(cfg, manifest)
    method.load_state_dict(state["model"])
    metrics = run_probes(method, cfg)
    metrics[names.EPOCHS] = state["epoch"] + 1
    run.log_metrics(metrics, step=state["epoch"] + 1)
    if cfg.tracking.log_model:
        try:
            log_encoder(method, cfg, run)
        except Exception as err:  # noqa: BLE001  the run trained and is probed: a model that did not log must not fail it
            print(f"warning: the encoder was not logged as an MLflow Model ({type(err).__name__}: {err}); the checkpoint has it")
    return metrics


def log_encoder(method, cfg: Config, run: tracking.Run) -> str:
    """The run's encoder as an MLflow Model: raw uint8 images in, embeddings out (``EmbeddingModel``)."""
    # two real images, as the probes see them: the input example and the export's trace
    example = load_images(cfg.data.shards, "train", 2, view_size(cfg, read_manifest(cfg.data.shards)))
    return run.log_encoder_model(EmbeddingModel(method.encoder).eval(), example)  # and tags the run with it
