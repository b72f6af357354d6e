"""``rayssl compare``: one table and a few plots over every run of an MLflow experiment.

Reads MLflow through ``pipelines.tracking`` (its own client and ``search_runs``),
so it works on any experiment: a Tune search, a method grid or separate
``rayssl pretrain`` runs. The table and plots are also logged to the experiment's
newest Tune parent run, when there is one.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on clusters or in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from pipelines import tracking  # noqa: E402
from pipelines.report import format_table  # noqa: E402

BASELINES = ("baseline/pixels_linear_top1", "baseline/random_init_linear_top1")
COLUMN_NAMES = {
    "baseline/pixels_linear_top1": "pixels linear",
    "baseline/random_init_linear_top1": "random-init linear",
    "probe/rankme": "RankMe",
}
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
        wall_h = self.metrics.get("wall_s", float("nan")) / 3600
        workers = float(self.params.get("train.num_workers", "nan"))
        cpus = float(self.params.get("train.cpus_per_worker", "nan"))
        gpu = self.params.get("train.use_gpu") == "True"
        return wall_h * workers * cpus, wall_h * workers if gpu else 0.0


def collect_runs(uri: str, experiment: str) -> list[RunRow]:
    """Every trial and pretraining run of ``experiment`` (Tune parent runs excluded), oldest first."""
    runs = tracking.search_runs(uri, experiment)
    rows = []
    for run in sorted(runs, key=lambda r: r.info.start_time):
        if run.data.tags.get("rayssl.kind") == "tune":
            continue
        rows.append(
            RunRow(
                name=run.data.tags.get("rayssl.trial_id") or run.info.run_name,
                run_id=run.info.run_id,
                status=run.info.status,
                params=dict(run.data.params),
                metrics=dict(run.data.metrics),
                epoch_curve=tracking.metric_history(uri, run.info.run_id, "probe/epoch_knn_top1"),
            )
        )
    return rows


def varying_params(rows: list[RunRow]) -> list[str]:
    """The config keys whose values differ between runs: what the experiment searched."""
    keys = sorted({k for r in rows for k in r.params if k.startswith(SEARCHABLE_PREFIXES) and k not in NOT_COMPARED})
    return [k for k in keys if len({r.params.get(k) for r in rows}) > 1]


def comparison_table(rows: list[RunRow]) -> str:
    varying = varying_params(rows)
    extra_keys = sorted({k for r in rows for k in r.metrics if k.startswith(("probe/finetune_", "baseline/supervised_"))})
    extra_keys += [k for k in BASELINES if any(k in r.metrics for r in rows)]
    extra_keys += [k for k in ("probe/rankme",) if any(k in r.metrics for r in rows)]  # label-free: unlabeled runs too
    extra = [COLUMN_NAMES.get(k, k.split("/", 1)[-1]) for k in extra_keys]
    headers = ["run", "method", *varying, "linear", "kNN", *extra, "epochs", "images/s", "wall s", "CPU-h", "GPU-h", "status"]
    body = []
    for r in sorted(rows, key=lambda r: -r.metrics.get("probe/linear_top1", -1)):
        m = r.metrics
        cpu_h, gpu_h = r.resource_hours()
        body.append(
            [r.name, r.method, *(r.params.get(k, "") for k in varying)]
            + [m.get("probe/linear_top1", math.nan), m.get("probe/knn_top1", math.nan)]
            + [m.get(k, math.nan) for k in extra_keys]
            + [int(m.get("epochs", 0)), m.get("train/images_per_s", math.nan), m.get("wall_s", math.nan)]
            + [round(cpu_h, 4), round(gpu_h, 4), r.status]
        )
    return format_table(headers, body)


def plot_epoch_curves(rows: list[RunRow], out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in rows:
        if r.epoch_curve:
            steps, values = zip(*r.epoch_curve, strict=True)
            ax.plot(steps, values, marker="o", label=f"{r.name} ({r.method})")
    ax.set(xlabel="epoch", ylabel="per-epoch kNN top-1 (held-out train subset)", title="Probe accuracy per epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if any(r.epoch_curve for r in rows):
        ax.legend(fontsize=7)
    return _save(fig, out / "accuracy_per_epoch.png")


def plot_per_method(rows: list[RunRow], out: Path) -> Path:
    methods = sorted({r.method for r in rows})
    fig, ax = plt.subplots(figsize=(max(5, len(methods) * 0.9), 4))
    for i, method in enumerate(methods):
        values = [r.metrics["probe/linear_top1"] for r in rows if r.method == method and "probe/linear_top1" in r.metrics]
        if values:
            mean = float(np.mean(values))
            ax.errorbar(i, mean, yerr=[[mean - min(values)], [max(values) - mean]], fmt="o", capsize=4)
            ax.scatter([i] * len(values), values, s=10, alpha=0.5)
    ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
    ax.set(ylabel="linear probe top-1 (test)", title="Final accuracy per method (mean, min-max over trials)")
    return _save(fig, out / "accuracy_per_method.png")


def plot_against_params(rows: list[RunRow], out: Path) -> Path:
    varying = varying_params(rows) or ["method.name"]
    if len({r.method for r in rows}) > 1 and "method.name" not in varying:
        varying = ["method.name", *varying]
    fig, axes = plt.subplots(1, len(varying), figsize=(4 * len(varying), 3.5), squeeze=False)
    for ax, key in zip(axes[0], varying, strict=True):
        pairs = [(r.params.get(key, ""), r.metrics["probe/linear_top1"]) for r in rows if "probe/linear_top1" in r.metrics]
        labels = sorted({p for p, _ in pairs}, key=_sort_key)
        numeric = all(_is_number(v) for v in labels)
        xs = [float(p) if numeric else labels.index(p) for p, _ in pairs]
        ax.scatter(xs, [a for _, a in pairs])
        if not numeric:
            ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=7)
        ax.set(xlabel=key, ylabel="linear top-1")
    fig.suptitle("Accuracy against each searched parameter")
    return _save(fig, out / "accuracy_vs_params.png")


def plot_embedding(features: torch.Tensor, labels: np.ndarray, title: str, out: Path) -> Path:
    """2-D PCA of test-set features, coloured by class."""
    centered = features - features.mean(0)
    _, _, v = torch.pca_lowrank(centered, q=2, center=False)
    xy = (centered @ v[:, :2]).numpy()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    scatter = ax.scatter(xy[:, 0], xy[:, 1], c=labels, cmap="tab10", s=4)
    ax.legend(*scatter.legend_elements(), title="class", fontsize=7, loc="best")
    ax.set(title=title, xlabel="PC 1", ylabel="PC 2")
    return _save(fig, out / "embedding_best.png")


def best_run_embedding(uri: str, best: RunRow, out: Path, max_images: int = 2000) -> Path | None:
    """Download the best run's checkpoint from MLflow and plot its test-set embedding."""
    from pipelines.data import DataError, load_labeled
    from pipelines.evaluate import extract_features, load_checkpoint, method_from_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = tracking.download_artifact(uri, best.run_id, "checkpoint/checkpoint.pt", tmp)
        except Exception as err:  # noqa: BLE001  (no checkpoint logged: say so, keep the rest)
            print(f"no embedding plot: run {best.run_id} has no checkpoint artifact ({err})")
            return None
        state = load_checkpoint(path)
    method, cfg = method_from_checkpoint(state)
    try:
        images, labels = load_labeled(cfg.data.shards, "test", max_images)
    except DataError as err:
        print(f"no embedding plot: {err}")
        return None
    features = extract_features(method.encoder, images)
    title = f"{best.name} ({best.method}), linear top-1 {best.metrics['probe/linear_top1']:.3f}"
    return plot_embedding(features, labels, title, out)


def compare(uri: str, experiment: str, out: str | Path) -> tuple[str, list[Path]]:
    """Print-ready table and the plot files; logs both to the newest Tune parent run of ``experiment``."""
    rows = collect_runs(uri, experiment)
    if not rows:
        raise FileNotFoundError(f"MLflow experiment {experiment!r} in {uri} has no runs; check --experiment and --tracking-uri")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = comparison_table(rows)
    (out / "compare.txt").write_text(table + "\n")
    (out / "compare.json").write_text(json.dumps([r.__dict__ for r in rows], indent=1, default=str))
    plots = [plot_epoch_curves(rows, out), plot_per_method(rows, out), plot_against_params(rows, out)]
    probed = [r for r in rows if "probe/linear_top1" in r.metrics]
    if probed:
        best = max(probed, key=lambda r: r.metrics["probe/linear_top1"])
        embedding = best_run_embedding(uri, best, out)
        if embedding is not None:
            plots.append(embedding)
    parents = tracking.find_runs(uri, experiment, {"rayssl.kind": "tune"})
    if parents:
        tracking.log_artifacts(uri, parents[0].info.run_id, out, "compare")
    return table, plots


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _is_number(text: str) -> bool:
    try:
        float(text)
    except (TypeError, ValueError):
        return False
    return True


def _sort_key(value: str):
    return (0, float(value), "") if _is_number(value) else (1, 0.0, str(value))
