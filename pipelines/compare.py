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
import textwrap
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
    ax.set(xlabel="epoch", ylabel="kNN top-1 (held-out train subset)")
    _title(ax, "Per-epoch kNN top-1 of every run", fig)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if any(r.epoch_curve for r in rows):
        ax.legend(fontsize=7)
    return _save(fig, out / "accuracy_per_epoch.png")


def baseline_levels(rows: list[RunRow]) -> dict[str, float]:
    """Mean pixels and random-init linear top-1 over the runs that measured them (drawn as lines)."""
    levels = {}
    for key in BASELINES:
        values = [r.metrics[key] for r in rows if key in r.metrics]
        if values:
            levels[COLUMN_NAMES[key]] = float(np.mean(values))
    return levels


def draw_baselines(ax, levels: dict[str, float]) -> None:
    for (name, value), style in zip(levels.items(), ("--", ":"), strict=False):
        ax.axhline(value, color="grey", linestyle=style, linewidth=1, label=f"{name} {value:.3f}")


def plot_per_method(rows: list[RunRow], out: Path) -> Path:
    methods = sorted({r.method for r in rows})
    fig, ax = plt.subplots(figsize=(max(5, len(methods) * 0.9), 4))
    for i, method in enumerate(methods):
        values = [r.metrics["probe/linear_top1"] for r in rows if r.method == method and "probe/linear_top1" in r.metrics]
        if values:
            mean = float(np.mean(values))
            ax.errorbar(i, mean, yerr=[[mean - min(values)], [max(values) - mean]], fmt="o", capsize=4)
            ax.scatter([i] * len(values), values, s=10, alpha=0.5)
    draw_baselines(ax, baseline_levels(rows))
    ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
    ax.set(ylabel="linear probe top-1 (test)")
    _title(ax, "Linear top-1 per method (mean, min-max over runs)", fig)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="lower right")
    return _save(fig, out / "accuracy_per_method.png")


def few_label_counts(rows: list[RunRow]) -> list[int]:
    keys = {k for r in rows for k in r.metrics if k.startswith("probe/finetune_") and k.endswith("pc_top1")}
    return sorted(int(k.removeprefix("probe/finetune_").removesuffix("pc_top1")) for k in keys)


def plot_few_labels(rows: list[RunRow], out: Path) -> Path | None:
    """Bars per labels-per-class count: each method's best fine-tuned encoder against training from scratch."""
    counts = few_label_counts(rows)
    if not counts:
        return None
    methods = sorted({r.method for r in rows if any(f"probe/finetune_{n}pc_top1" in r.metrics for n in counts)})
    series = [*methods, "from scratch"]
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(counts) * len(series) * 0.5), 4))
    for j, name in enumerate(series):
        heights = []
        for n in counts:
            if name == "from scratch":
                values = [
                    r.metrics[f"baseline/supervised_{n}pc_top1"] for r in rows if f"baseline/supervised_{n}pc_top1" in r.metrics
                ]
                heights.append(float(np.mean(values)) if values else math.nan)
            else:
                values = [
                    r.metrics[f"probe/finetune_{n}pc_top1"]
                    for r in rows
                    if r.method == name and f"probe/finetune_{n}pc_top1" in r.metrics
                ]
                heights.append(max(values) if values else math.nan)
        xs = np.arange(len(counts)) + (j - (len(series) - 1) / 2) * width
        bars = ax.bar(xs, heights, width, label=name, color="lightgrey" if name == "from scratch" else None)
        ax.bar_label(bars, fmt="%.3f", fontsize=6)
    ax.set_xticks(range(len(counts)), [f"{n} labels / class" for n in counts])
    ax.set(ylabel="test top-1", ylim=(0, 1))
    _title(ax, "Few labels: fine-tuned SSL encoder vs the same network from scratch", fig)
    ax.legend(fontsize=7, loc="upper left")
    return _save(fig, out / "few_labels.png")


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
        draw_baselines(ax, baseline_levels(rows))
        if not numeric:
            ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=7)
        ax.set(xlabel=key, ylabel="linear top-1")
    if axes[0][0].get_legend_handles_labels()[0]:
        axes[0][0].legend(fontsize=7, loc="lower right")
    fig.suptitle("Linear top-1 against each searched parameter", fontsize=10)
    return _save(fig, out / "accuracy_vs_params.png")


def embedding_figure(features: torch.Tensor, labels: np.ndarray, title: str, classes: list[str] | None = None):
    """2-D PCA of test-set features, one colour per class, named in the legend."""
    centered = features - features.mean(0)
    _, _, v = torch.pca_lowrank(centered, q=2, center=False)
    xy = (centered @ v[:, :2]).numpy()
    fig, ax = plt.subplots(figsize=(7, 5))
    cmap = plt.get_cmap("tab10" if len(np.unique(labels)) <= 10 else "tab20")
    for i, label in enumerate(np.unique(labels)):
        name = classes[label] if classes and label < len(classes) else str(label)
        mask = labels == label
        ax.scatter(xy[mask, 0], xy[mask, 1], s=4, color=cmap(i % cmap.N), label=name)
    ax.legend(title="class", fontsize=7, markerscale=3, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.set(xlabel="PC 1", ylabel="PC 2")
    _title(ax, title, fig)
    return fig


def plot_embedding(features: torch.Tensor, labels: np.ndarray, title: str, out: Path, classes: list[str] | None = None) -> Path:
    return _save(embedding_figure(features, labels, title, classes), out / "embedding_best.png")


def best_run_embedding(uri: str, best: RunRow, out: Path, max_images: int = 2000) -> Path | None:
    """Download the best run's checkpoint from MLflow and plot its test-set embedding."""
    from pipelines import checkpoint
    from pipelines.build import method_from_checkpoint
    from pipelines.data import DataError, load_labeled, read_manifest
    from pipelines.evaluate import extract_features, probe_shards

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = tracking.download_artifact(uri, best.run_id, checkpoint.ARTIFACT_PATH, tmp)
        except Exception as err:  # noqa: BLE001  (no checkpoint logged: say so, keep the rest)
            print(f"no embedding plot: run {best.run_id} has no checkpoint artifact ({err})")
            return None
        state = checkpoint.load(path)
    method, cfg = method_from_checkpoint(state)
    shards = probe_shards(cfg)
    try:
        images, labels = load_labeled(shards, "test", max_images)
        classes = read_manifest(shards).get("classes")
    except DataError as err:
        print(f"no embedding plot: {err}")
        return None
    features = extract_features(method.encoder, images)
    title = (
        f"Test-set features of the best run, {best.name} ({best.method}): linear top-1 {best.metrics['probe/linear_top1']:.3f}"
    )
    return plot_embedding(features, labels, title, out, classes)


def headlines(rows: list[RunRow]) -> list[str]:
    """One sentence per headline: the best method against raw pixels, and few labels against from scratch."""
    probed = [r for r in rows if "probe/linear_top1" in r.metrics]
    if not probed:
        return ["No run has a linear probe (the probe set has no labels); see RankMe in the table."]
    best = max(probed, key=lambda r: r.metrics["probe/linear_top1"])
    linear = best.metrics["probe/linear_top1"]
    lines = []
    pixels = best.metrics.get("baseline/pixels_linear_top1")
    if pixels is not None:
        verdict = "beats" if linear > pixels else "does not beat"
        lines.append(
            f"Best method: {best.method} ({best.name}), linear top-1 {linear:.3f}, {verdict} the same probe on raw pixels "
            f"({pixels:.3f}) by {100 * (linear - pixels):+.1f} points."
        )
    else:
        lines.append(f"Best method: {best.method} ({best.name}), linear top-1 {linear:.3f}.")
    for n in few_label_counts(rows):
        tuned = [r for r in rows if f"probe/finetune_{n}pc_top1" in r.metrics]
        if not tuned:
            continue
        top = max(tuned, key=lambda r: r.metrics[f"probe/finetune_{n}pc_top1"])
        ours, scratch = top.metrics[f"probe/finetune_{n}pc_top1"], top.metrics.get(f"baseline/supervised_{n}pc_top1", math.nan)
        lines.append(
            f"Few labels ({n} per class): {top.method}'s encoder fine-tuned reaches {ours:.3f}, the same network trained "
            f"from scratch on the same labels {scratch:.3f} ({100 * (ours - scratch):+.1f} points)."
        )
    return lines


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
    few_labels = plot_few_labels(rows, out)
    if few_labels is not None:
        plots.append(few_labels)
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


def _title(ax, text: str, fig) -> None:
    """A title wrapped to the figure's width, so that it never runs off the image."""
    chars_per_line = int(fig.get_figwidth() * 11)  # about 11 characters per inch at 10 pt
    ax.set_title(textwrap.fill(text, chars_per_line), fontsize=10)


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
