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

from pipelines import tracking
from pipelines.plots import (
    BASELINES,
    COLUMN_NAMES,
    few_label_counts,
    plot_against_params,
    plot_embedding,
    plot_epoch_curves,
    plot_few_labels,
    plot_per_method,
)
from pipelines.report import format_table

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


def mean_spread(values: list[float], digits: int = 4) -> str:
    """``mean ± half the range`` of the values (NaN-free), as the quality table (docs/results.md) writes it;
    with two seeds, the two values are mean - x and mean + x."""
    if not values:
        return "-"
    mean = sum(values) / len(values)
    return f"{mean:.{digits}f} ± {(max(values) - min(values)) / 2:.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f}"


def seeds_table(rows: list[RunRow]) -> str | None:
    """One row per configuration (method and searched values) run with more than one ``train.seed``:
    the seeds, and linear and kNN top-1 (RankMe too, when the runs have it: unlabeled data has nothing else)
    as mean ± half the range over them. None when no configuration repeats."""
    varying = varying_params(rows)
    groups: dict[tuple, list[RunRow]] = {}
    for r in rows:
        groups.setdefault((r.method, *(r.params.get(k, "") for k in varying)), []).append(r)
    if not any(len({r.params.get("train.seed") for r in group}) > 1 for group in groups.values()):
        return None
    keys = [k for k in ("probe/linear_top1", "probe/knn_top1") if any(k in r.metrics for r in rows)] or ["probe/linear_top1"]
    keys += [k for k in ("probe/rankme",) if any(k in r.metrics for r in rows)]
    names = {"probe/linear_top1": "linear", "probe/knn_top1": "kNN", "probe/rankme": "RankMe"}
    headers = ["method", *varying, "seeds", *(f"{names[k]} (mean ± half-range)" for k in keys), "finished"]
    ranked = []
    for key, group in groups.items():
        done = [r for r in group if r.status == "FINISHED"]
        values = [[r.metrics[k] for r in done if k in r.metrics] for k in keys]
        row = [*key, ",".join(sorted({r.params.get("train.seed", "?") for r in group}, key=_seed_order))]
        row += [mean_spread(v, digits=1 if k == "probe/rankme" else 4) for k, v in zip(keys, values, strict=True)]
        ranked.append((sum(values[0]) / len(values[0]) if values[0] else -math.inf, [*row, f"{len(done)}/{len(group)}"]))
    ranked.sort(key=lambda pair: pair[0], reverse=True)  # best mean of the first column first
    return format_table(headers, [row for _, row in ranked])


def _seed_order(seed: str):
    return (0, int(seed)) if seed.lstrip("-").isdigit() else (1, seed)


def best_run_embedding(uri: str, best: RunRow, out: Path, max_images: int = 2000) -> Path | None:
    """Download the best run's checkpoint from MLflow and plot its test-set embedding."""
    from pipelines import checkpoint
    from pipelines.build import method_from_checkpoint, view_size
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
        images, labels = load_labeled(shards, "test", max_images, view_size(cfg, state["manifest"]))
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
    per_config = seeds_table(rows)
    if per_config is not None:
        table += f"\n\nPer configuration over seeds:\n{per_config}"
    (out / "compare.txt").write_text(table + "\n")
    (out / "compare.json").write_text(json.dumps([r.__dict__ for r in rows], indent=1, default=str))
    plots = [plot_epoch_curves(rows, out), plot_per_method(rows, out), plot_against_params(rows, varying_params(rows), out)]
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
