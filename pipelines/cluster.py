"""The Ray session: join a cluster or start a local Ray, what it can place, and what reaches the terminal."""

from __future__ import annotations

import logging
import os
import sys

import ray
import torch

from pipelines.config import Config, ConfigError


def cluster_address() -> str | None:
    """The running cluster this driver joins (``RAY_ADDRESS``, or one ``ray start``-ed here); None: a new local Ray."""
    from ray._private.services import canonicalize_bootstrap_address  # the rule ray.init itself follows

    return canonicalize_bootstrap_address(None)


def verbose() -> bool:
    """``rayssl --verbose`` (or RAYSSL_VERBOSE=1): Ray's, Ray Train's and Ray Data's own INFO lines in the terminal."""
    return bool(os.environ.get("RAYSSL_VERBOSE"))


def ray_log_level() -> str:
    return "INFO" if verbose() else "WARNING"


def quiet_ray_train_report_lines(level: str) -> None:
    """Hold Ray Train's per-report line ("Reporting training result N: TrainingReport(...)") to ``level``.

    Called in each worker. Ray Train 2.x logs that line from a logger named after its file
    (``logging.getLogger(__file__)`` in ray/train/v2/_internal/execution/context.py), not under
    ``ray.train``, so ``LoggingConfig``'s level misses it and the worker's root console handler
    (INFO) sends it to the terminal twice an epoch.
    """
    from ray.train.v2._internal.execution import context

    logging.getLogger(context.__file__).setLevel(level)


# Whether this process started the local Ray it uses (not a cluster it joined, nor one its caller started).
_started_local_ray = False


def ensure_ray(resources: dict | None = None) -> None:
    """Join the running cluster, else start a local Ray; only a local one takes ``resources``.

    A cluster declares its own (cluster.yaml, the RayJob), and Ray refuses them from a joining driver.
    Ray Data's INFO lines (each dataset's execution plan and finish) stay in Ray's log files unless verbose.
    """
    if not ray.is_initialized():
        os.environ.setdefault("RAY_DATA_LOG_LEVEL", ray_log_level())  # Ray Data's logger in the workers
        # and here: Ray Data read the variable when it was first imported, before this line
        logging.getLogger("ray.data").setLevel(os.environ["RAY_DATA_LOG_LEVEL"])
        if cluster_address():  # a job on a cluster keeps the runtime env it was submitted with
            ray.init(log_to_driver=True)
        else:
            # a local machine never gets a spot-instance notice: no preemption watcher (an actor a run, and
            # an error-level line from Ray's core worker as it starts); set before Ray starts, so inherited
            os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
            env = {
                "env_vars": {"RAY_DATA_LOG_LEVEL": os.environ["RAY_DATA_LOG_LEVEL"]},
                # no SIGTERM traceback, no Ray notices a user can do nothing about (pipelines/ray_exit.py)
                "worker_process_setup_hook": "pipelines.ray_exit.quiet_worker",
            }
            # Ray's own driver lines (the token-auth notice, "Started a local Ray instance", Tune's INFO
            # lines) only with --verbose; its errors always
            level = logging.INFO if verbose() else logging.ERROR
            ray.init(resources=resources, log_to_driver=True, runtime_env=env, logging_level=level)
            global _started_local_ray
            _started_local_ray = True


def stop_local_ray() -> None:
    """Stop the local Ray this process started, so that its actors' last lines, which Ray forwards to this
    terminal a moment late, cannot come after the line the caller prints next. A joined cluster stays up."""
    global _started_local_ray
    if _started_local_ray and ray.is_initialized():
        ray.shutdown()
    _started_local_ray = False


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


def say(line: str) -> None:
    """One line to the worker's real stdout, shown once in the driver's terminal.

    Ray Train V2 patches ``print`` in its workers to go to a logger *and*, when stdout is wrapped, to stdout:
    every per-epoch line came out twice, and a quiet log level would hide it.
    """
    sys.__stdout__.write(line + "\n")
    sys.__stdout__.flush()
