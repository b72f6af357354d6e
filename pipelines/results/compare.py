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
from pathlib import Path

from pipelines import names, tracking
from pipelines.results.plots import (
    few_label_counts,
    plot_against_params,
    plot_embedding,
    plot_epoch_curves,
    plot_few_labels,
    plot_per_method,
)
from pipelines.results.runs import RunRow, best_run, collect_runs, varying_params
from pipelines.results.tables import comparison_table, seeds_table


def best_run_embedding(uri: str, best: RunRow, out: Path, max_images: int = 2000) -> Path | None:
    """Download the best run's checkpoint from MLflow and plot its test-set embedding."""
    from pipelines import checkpoint
    from pipelines.build import method_from_checkpoint, view_size
    from pipelines.data import DataError, load_labeled, read_manifest
    from pipelines.evaluate import extract_features, probe_shards

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = tracking.Run(uri, best.run_id).download_artifact(checkpoint.ARTIFACT_PATH, tmp)
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
    title = f"Test-set features of the best run, {best.name} ({best.method}): linear top-1 {best.metrics[names.LINEAR_TOP1]:.3f}"
    return plot_embedding(features, labels, title, out, classes)


def headlines(rows: list[RunRow]) -> list[str]:
    """One sentence per headline: the best method against raw pixels, and few labels against from scratch."""
    best = best_run(rows)
    if best is None:
        return ["No run has a linear probe (the probe set has no labels); see RankMe in the table."]
    linear = best.metrics[names.LINEAR_TOP1]
    lines = []
    pixels = best.metrics.get(names.PIXELS_LINEAR_TOP1)
    if pixels is not None:
        verdict = "beats" if linear > pixels else "does not beat"
        lines.append(
            f"Best method: {best.method} ({best.name}), linear top-1 {linear:.3f}, {verdict} the same probe on raw pixels "
            f"({pixels:.3f}): {100 * (linear - pixels):+.1f} points."
        )
    else:
        lines.append(f"Best method: {best.method} ({best.name}), linear top-1 {linear:.3f}.")
    for n in few_label_counts(rows):
        top = best_run(rows, names.finetune_top1(n))
        if top is None:
            continue
        ours, scratch = top.metrics[names.finetune_top1(n)], top.metrics.get(names.supervised_top1(n), math.nan)
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
    best = best_run(rows)
    if best is not None:
        embedding = best_run_embedding(uri, best, out)
        if embedding is not None:
            plots.append(embedding)
    parent = tracking.find_run(uri, experiment, {names.KIND: names.KIND_TUNE})
    if parent is not None:
        parent.log_artifacts(out, "compare")
    return table, plots
