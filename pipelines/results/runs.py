"""The runs of an MLflow experiment as rows, and the one rule that picks the best of them.

``rayssl compare``, its headlines, the Tune search's best trial and the demo all read runs
through here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from pipelines import names, tracking

SEARCHABLE_PREFIXES = ("data.", "method.", "optim.", "train.epochs", "train.num_workers")
# Params that differ between runs for reasons other than the experiment's design.
NOT_COMPARED = {"tracking.run_name", "train.seed", "train.timeout_s", "method.name"}  # method has its own column


@dataclass
class RunRow:
    name: str
    run_id: str
    status: str
    params: dict[str, str]
    metrics: dict[str, float]
    epoch_curve: list[tuple[int, float]] = field(default_factory=list)

    @property
    def method(self) -> str:
        return self.params.get("method.name", "?")

    def resource_hours(self) -> tuple[float, float]:
        """(CPU-hours, GPU-hours) held by the run's workers for its wall time."""
        wall_h = self.metrics.get(names.WALL_S, float("nan")) / 3600
        workers = float(self.params.get("train.num_workers", "nan"))
        cpus = float(self.params.get("train.cpus_per_worker", "nan"))
        gpu = self.params.get("train.use_gpu") == "True"
        return wall_h * workers * cpus, wall_h * workers if gpu else 0.0


def collect_runs(uri: str, experiment: str) -> list[RunRow]:
    """Every trial and pretraining run of ``experiment`` (Tune parent runs excluded), oldest first."""
    runs = tracking.search_runs(uri, experiment)
    rows = []
    for run in sorted(runs, key=lambda r: r.info.start_time):
        if run.data.tags.get(names.KIND) == names.KIND_TUNE:
            continue
        rows.append(
            RunRow(
                name=run.data.tags.get(names.TRIAL_ID) or run.info.run_name,
                run_id=run.info.run_id,
                status=run.info.status,
                params=dict(run.data.params),
                metrics=dict(run.data.metrics),
                epoch_curve=tracking.metric_history(uri, run.info.run_id, names.EPOCH_KNN_TOP1),
            )
        )
    return rows


def varying_params(rows: list[RunRow]) -> list[str]:
    """The config keys whose values differ between runs: what the experiment searched."""
    keys = sorted({k for r in rows for k in r.params if k.startswith(SEARCHABLE_PREFIXES) and k not in NOT_COMPARED})
    return [k for k in keys if len({r.params.get(k) for r in rows}) > 1]


R = TypeVar("R")


def _metrics_of(run) -> dict[str, float]:
    return run.metrics


def best_run(runs: Iterable[R], metric: str = names.LINEAR_TOP1, metrics: Callable[[R], dict] = _metrics_of) -> R | None:
    """The run with the highest final ``metric``; None when no run has it.

    Runs without the metric are left out: failed runs and runs stopped before their probes never
    logged it, and unlabeled runs have no linear probe (pick them by ``names.RANKME``).
    ``metrics`` reads a run's metrics (``run.metrics`` by default; a search's trial dicts pass
    ``lambda t: t["metrics"]``).
    """
    scored = [r for r in runs if metric in metrics(r)]
    return max(scored, key=lambda r: metrics(r)[metric], default=None)
