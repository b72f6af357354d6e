"""MLflow, and the only module that imports it.

Everything goes through an ``MlflowClient`` bound to an absolute tracking URI, so
the driver and Ray workers (which ``chdir`` into their own folders) write to the
same store. Runs always end FINISHED, FAILED or KILLED.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines import names

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

# mlflow is imported where it is used: importing it takes seconds, and every Ray worker that
# imports the training code (data tasks, workers other than rank 0) would pay for it.

DEFAULT_DB = "mlflow.db"


class TrackingError(RuntimeError):
    """The tracking store cannot be used; the message says which URI and what to do."""


# The columns of a rayssl shard, as an MLflow dataset's schema.
SHARD_COLUMNS = {
    "image": "JPEG or PNG bytes",
    "label": "int64 (-1: unlabeled)",
    "id": "string",
    "height": "int32",
    "width": "int32",
}


def resolve_tracking_uri(configured: str | None, runs_dir: str | Path) -> str:
    """``configured``, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///<abs runs_dir>/mlflow.db``."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        if "://" not in uri:  # a bare folder path: make it absolute before Ray workers chdir
            return str(Path(uri).resolve())
        return uri
    runs = Path(runs_dir).resolve()
    runs.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{runs / DEFAULT_DB}"


def _artifact_root(uri: str) -> str | None:
    """For a local SQLite store, artifacts live beside the database."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").as_uri()
    return None


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast, before any training, when an HTTP tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s) as resp:
            resp.read()
    except OSError as err:
        raise TrackingError(
            f"MLflow tracking server {uri} is unreachable ({err}); start it or pass another --tracking-uri"
        ) from None


def client(uri: str) -> MlflowClient:
    from mlflow.tracking import MlflowClient

    _quiet_unless_verbose()
    return MlflowClient(tracking_uri=uri)


def _quiet_unless_verbose() -> None:
    """MLflow's INFO lines ("Created version ...") and its artifact download bars stay off rayssl's
    terminal, between Tune's table and the results, unless ``--verbose`` (RAYSSL_VERBOSE) asks for them.

    Called after mlflow is imported: its import sets the ``mlflow`` logger to MLFLOW_LOGGING_LEVEL
    (INFO by default). A level the user set in that variable is kept. The variables also reach the
    Ray workers and trial actors started after this, so their MLflow calls are as quiet.
    """
    if os.environ.get("RAYSSL_VERBOSE"):
        return
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    logging.getLogger("mlflow").setLevel(os.environ["MLFLOW_LOGGING_LEVEL"].upper())


# MLflow 3's UI opens an experiment by its kind; untagged ones opened on the GenAI overview (traces,
# tokens). rayssl's are model training: the runs table and their charts.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def experiment_id(uri: str, name: str) -> str:
    c = client(uri)
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        if "mlflow.experimentKind" not in exp.tags:  # made before rayssl tagged them, or by another tool
            c.set_experiment_tag(exp.experiment_id, *next(iter(EXPERIMENT_KIND.items())))
        return exp.experiment_id
    from mlflow.exceptions import MlflowException

    try:
        return c.create_experiment(name, artifact_location=_artifact_root(uri), tags=EXPERIMENT_KIND)
    except MlflowException:
        # a concurrent run (another trial, another driver) created it between our lookup and create
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def _param_value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."


def start_run(uri: str, experiment: str, run_name: str, params: dict[str, Any], tags: dict[str, str] | None = None) -> str:
    """Create a RUNNING run with ``params`` and return its id."""
    from mlflow.entities import Param

    c = client(uri)
    run = c.create_run(experiment_id(uri, experiment), run_name=run_name, tags=tags or {})
    items = [Param(k, _param_value(v)) for k, v in params.items()]
    for i in range(0, len(items), 100):  # MLflow accepts at most 100 params per batch
        c.log_batch(run.info.run_id, params=items[i : i + 100])
    return run.info.run_id


def metric_rows(metrics: dict[str, float], step: int | None = None) -> list[dict]:
    """``{"key", "value", "step", "timestamp"}`` rows, plain data that a checkpoint can carry."""
    timestamp = int(1000 * time.time())
    return [{"key": k, "value": float(v), "step": step or 0, "timestamp": timestamp} for k, v in metrics.items()]


@dataclass(frozen=True)
class Run:
    """One MLflow run: the store it lives in and its id. What rayssl writes to a run goes through here.

    Plain data (two strings), so it travels to Ray workers and trial actors as it is.
    ``reopened`` says that ``open_run`` found the run and reopened it rather than creating it.
    """

    uri: str
    run_id: str
    reopened: bool = field(default=False, compare=False)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.log_metric_rows(metric_rows(metrics, step))

    def log_metric_rows(self, rows: list[dict]) -> None:
        """Log rows ``{"key", "value", "step", "timestamp"}`` (as a ``MetricBuffer`` keeps them) in batches."""
        from mlflow.entities import Metric

        items = [Metric(r["key"], float(r["value"]), int(r["timestamp"]), int(r["step"])) for r in rows]
        for i in range(0, len(items), 1000):  # MLflow accepts at most 1000 metrics per batch
            client(self.uri).log_batch(self.run_id, metrics=items[i : i + 1000])

    def set_tag(self, key: str, value: str) -> None:
        client(self.uri).set_tag(self.run_id, key, value)

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        if tags:
            client(self.uri).log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        client(self.uri).log_artifact(self.run_id, str(path), artifact_path)

    def log_artifacts(self, folder: str | Path, artifact_path: str | None = None) -> None:
        client(self.uri).log_artifacts(self.run_id, str(folder), artifact_path)

    def download_artifact(self, artifact_path: str, dst: str | Path) -> Path:
        """Copy one artifact (e.g. ``checkpoint/checkpoint.pt``) into ``dst``; returns the local path."""
        return Path(client(self.uri).download_artifacts(self.run_id, artifact_path, str(dst)))

    def end(self, status: str) -> None:
        """FINISHED, FAILED or KILLED."""
        client(self.uri).set_terminated(self.run_id, status=status)

    def reopen(self) -> None:
        """Mark the run RUNNING again when its work resumes (so it ends with its true status)."""
        client(self.uri).update_run(self.run_id, status="RUNNING")

    @contextmanager
    def status(self) -> Iterator[Run]:
        """End the run FINISHED on success, KILLED on Ctrl-C/SIGTERM, FAILED on any other exception."""
        try:
            yield self
        except KeyboardInterrupt:
            self.end("KILLED")
            raise
        except BaseException as err:
            # The reason goes on the run, so the MLflow UI says why without the driver's log.
            with contextlib.suppress(Exception):  # an unreachable server must not hide the original error
                self.set_tag(names.FAILURE, f"{type(err).__name__}: {err}"[:5000])
            self.end("FAILED")
            raise
        else:
            self.end("FINISHED")

    def get(self):
        """The run as MLflow has it (``info``, ``data.params``, ``data.metrics``, ``data.tags``)."""
        return client(self.uri).get_run(self.run_id)

    def recorded_steps(self) -> set[tuple[str, int]]:
        """``(key, step)`` of every metric value the run has."""
        c = client(self.uri)
        return {(key, m.step) for key in self.get().data.metrics for m in c.get_metric_history(self.run_id, key)}

    def metric_history(self, key: str) -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in client(self.uri).get_metric_history(self.run_id, key)]

    def log_dataset_inputs(self, shards: str, manifest: dict, context: str = "train") -> None:
        log_dataset_inputs(self.uri, self.run_id, shards, manifest, context)

    def log_encoder_model(self, model, example) -> str:
        """Log ``model`` as the run's MLflow Model ``encoder`` and tag the run with its ``models:/`` URI."""
        model_uri = log_encoder_model(self.uri, self.run_id, model, example)
        self.set_tag(names.ENCODER_MODEL, model_uri)
        return model_uri

    def register_encoder(self, name: str, alias: str = "best") -> str | None:
        return register_encoder(self.uri, self.run_id, name, alias)


def find_run(uri: str, experiment: str, tags: dict[str, str]) -> Run | None:
    """The newest run of ``experiment`` carrying every tag in ``tags``, or None."""
    runs = find_runs(uri, experiment, tags)
    return Run(uri, runs[0].info.run_id) if runs else None


def open_run(
    uri: str,
    experiment: str,
    run_name: str,
    params: dict[str, Any],
    kind: str,
    *,
    tags: dict[str, str] | None = None,
    reopen: Run | None = None,
    labeled: bool = True,
    from_recipe: list[str] | None = None,
) -> Run:
    """A pretraining, trial or search run (``kind``): ``reopen`` marked RUNNING again, else a new run.

    The tags every kind shares are set here, on new and reopened runs alike: the kind, that the
    probes needing labels were skipped (``labeled`` False), and the fields the method's recipe filled.
    """
    if reopen is not None:
        reopen.reopen()
        run = Run(uri, reopen.run_id, reopened=True)
    else:
        run = Run(uri, start_run(uri, experiment, run_name, params, tags={names.KIND: kind, **(tags or {})}))
    shared = {}
    if not labeled:
        shared[names.PROBES] = names.PROBES_SKIPPED
    if from_recipe is not None:
        shared[names.FROM_RECIPE] = ",".join(from_recipe) or "none"
    run.set_tags(shared)
    return run


# The functions below take ``(uri, run_id)``: thin wrappers of ``Run`` for tests, benchmarks and scripts.


def log_metrics(uri: str, run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
    Run(uri, run_id).log_metrics(metrics, step)


def log_artifact(uri: str, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
    Run(uri, run_id).log_artifact(path, artifact_path)


def end_run(uri: str, run_id: str, status: str) -> None:
    Run(uri, run_id).end(status)


def run_status(uri: str, run_id: str):
    """``Run.status``: the run ends FINISHED, KILLED or FAILED with the block."""
    return Run(uri, run_id).status()


def get_run(uri: str, run_id: str):
    return Run(uri, run_id).get()


def metric_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return Run(uri, run_id).metric_history(key)


def find_runs(uri: str, experiment: str, tags: dict[str, str]) -> list:
    """Runs of ``experiment`` carrying every tag in ``tags``, newest first."""
    exp = client(uri).get_experiment_by_name(experiment)
    if exp is None:
        return []
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    return client(uri).search_runs([exp.experiment_id], filter_string=query, order_by=["attributes.start_time DESC"])


def search_runs(uri: str, experiment: str, filter_string: str = "") -> list:
    exp = client(uri).get_experiment_by_name(experiment)
    if exp is None:
        return []
    return client(uri).search_runs([exp.experiment_id], filter_string=filter_string)


def newest_experiment(uri: str) -> str | None:
    """The experiment of the most recently started run in the store (None when it has no runs)."""
    c = client(uri)
    experiments = c.search_experiments()
    if not experiments:
        return None
    runs = c.search_runs([e.experiment_id for e in experiments], order_by=["attributes.start_time DESC"], max_results=1)
    return c.get_experiment(runs[0].info.experiment_id).name if runs else None


def log_encoder_model(uri: str, run_id: str, model, example) -> str:
    """Log ``model`` (an ``EmbeddingModel``) as the run's MLflow Model ``encoder``; returns its ``models:/`` URI.

    Pytorch flavour saved as a ``torch.export`` program (``pt2``), so that ``mlflow.pyfunc.load_model``
    needs torch and mlflow but not rayssl. The signature says uint8 images (batch, H, W, C) in and
    float embeddings out; the input example is two real images; the requirements are pinned, not
    inferred (inference imports the model in a subprocess: slow, and it would list rayssl).
    """
    import mlflow.pytorch
    import numpy as np
    import torch
    from mlflow.models import infer_signature

    with torch.no_grad():
        embeddings = model(torch.from_numpy(example)).numpy()
    requirements = [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}", f"numpy=={np.__version__}"]
    experiment = client(uri).get_run(run_id).info.experiment_id
    with _fluent_uri(uri, experiment):  # log_model takes the store and experiment only from MLflow's global state
        info = mlflow.pytorch.log_model(
            model,
            name="encoder",
            run_id=run_id,
            signature=infer_signature(example, embeddings),
            input_example=example,
            pip_requirements=requirements,
            serialization_format="pt2",
        )
    return info.model_uri


@contextmanager
def _fluent_uri(uri: str, experiment_id: str | None = None) -> Iterator[None]:
    """MLflow's global tracking URI (and experiment) set for the block, then put back with their variables.

    ``mlflow.set_tracking_uri`` also exports MLFLOW_TRACKING_URI, so a bare call would make every later
    ``resolve_tracking_uri`` in the process (the next run, ``rayssl compare``) use this store. And
    ``log_model(run_id=...)`` files the model under the *active* experiment, not the run's: without
    MLFLOW_EXPERIMENT_ID it went to experiment 0, with its artifacts in ./mlruns of the working folder.
    """
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID")}
    try:
        if experiment_id is not None:
            os.environ["MLFLOW_EXPERIMENT_ID"] = experiment_id
        with _use_tracking_uri(uri):
            yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def register_encoder(uri: str, run_id: str, name: str, alias: str = "best") -> str | None:
    """Register the run's logged encoder model under ``name`` with ``alias``; the version carries the run's
    probe metrics as tags. Returns ``models:/NAME@ALIAS``, or None when the run logged no encoder."""
    import mlflow

    c = client(uri)
    run = c.get_run(run_id)
    model_uri = run.data.tags.get(names.ENCODER_MODEL)
    if not model_uri:
        return None
    tags = {k: str(v) for k, v in run.data.metrics.items() if k.startswith((names.PROBE_PREFIX, names.BASELINE_PREFIX))}
    with _fluent_uri(uri), _prints_held_back():  # "Successfully registered model", "Created version 1"
        version = mlflow.register_model(model_uri, name, tags={**tags, names.RUN_ID: run_id})
    c.set_registered_model_alias(name, alias, version.version)
    return f"models:/{name}@{alias}"


@contextmanager
def _prints_held_back() -> Iterator[None]:
    """What MLflow prints on stderr in the block (its ``eprint`` lines, which no logger level stops) is held
    back, unless ``--verbose``; its warnings and errors pass, and everything is shown when the block fails."""
    if os.environ.get("RAYSSL_VERBOSE"):
        yield
        return
    held = io.StringIO()
    try:
        with contextlib.redirect_stderr(held):
            yield
    except BaseException:
        sys.stderr.write(held.getvalue())
        raise
    sys.stderr.writelines(line for line in held.getvalue().splitlines(keepends=True) if " WARNING " in line or " ERROR " in line)


def registered_run_id(uri: str, model_uri: str) -> str:
    """The run that logged a registered model version: ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``."""
    from mlflow.exceptions import MlflowException

    name, _, ref = model_uri.removeprefix("models:/").partition("@")
    try:
        if ref:
            return client(uri).get_model_version_by_alias(name, ref).run_id
        name, _, number = name.partition("/")
        return client(uri).get_model_version(name, number).run_id
    except MlflowException as err:
        raise TrackingError(f"{model_uri}: no such registered model version in {uri} ({err.message.splitlines()[0]})") from None


def log_dataset_inputs(uri: str, run_id: str, shards: str, manifest: dict, context: str = "train") -> None:
    """Record a shard set as the run's MLflow dataset input (the UI's Dataset column): one entry per split
    with rows, under the source URI, a digest of the manifest and the context (``train`` pretraining data,
    ``probe`` a separate labeled set)."""
    import hashlib
    import json

    from mlflow.entities import Dataset, DatasetInput, InputTag

    digest = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16]
    source_type = shards.split("://", 1)[0] if "://" in shards else "local"
    inputs = []
    for split, summary in manifest.get("splits", {}).items():
        if not summary.get("rows"):
            continue
        dataset = Dataset(
            name=f"{Path(shards.rstrip('/')).name}/{split}",
            digest=digest,
            source_type=source_type,
            source=json.dumps({"uri": f"{shards.rstrip('/')}/{split}"}),
            schema=json.dumps(SHARD_COLUMNS),
            profile=json.dumps({"num_rows": summary["rows"], "labeled": summary.get("labeled", 0)}),
        )
        tags = [InputTag("mlflow.data.context", context if context != "train" else ("train" if split == "train" else "eval"))]
        inputs.append(DatasetInput(dataset, tags))
    if inputs:
        _log_inputs_racing_peers(client(uri), run_id, inputs)


def _log_inputs_racing_peers(mlflow_client, run_id: str, inputs: list, attempts: int = 5) -> None:
    """Log dataset inputs when concurrent runs (Tune trials) log the same dataset at the same moment.

    MLflow's SQL store checks whether a (name, digest) dataset exists and then inserts it, in two steps:
    two runs that log the same shard set at once can both see none, and the second insert fails on the
    UNIQUE constraint. Retrying finds the peer's row and only links it to this run."""
    import time

    from mlflow.exceptions import MlflowException

    for attempt in range(attempts):
        try:
            mlflow_client.log_inputs(run_id, datasets=inputs)
            return
        except MlflowException as error:
            if "UNIQUE constraint" not in str(error) or attempt == attempts - 1:
                raise
            time.sleep(0.05 * (attempt + 1))  # back off, so the peer's transaction commits first
