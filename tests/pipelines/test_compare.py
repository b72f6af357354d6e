"""The compare plots read at a glance (class names, baselines, few-label bars, titles that fit), and
`rayssl compare` without --experiment picks the experiment of the newest run, in a real SQLite MLflow store."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from pipelines import tracking
from pipelines.cli import main
from pipelines.results.plots import (
    _title,
    baseline_levels,
    embedding_figure,
    few_label_counts,
    plot_few_labels,
    plot_per_method,
)
from pipelines.results.runs import RunRow

CLASSES = ["T-shirt/top", "Trouser", "Pullover"]


def _row(name, method, linear, pixels=0.84, random_init=0.78, **extra):
    metrics = {
        "probe/linear_top1": linear,
        "baseline/pixels_linear_top1": pixels,
        "baseline/random_init_linear_top1": random_init,
    }
    return RunRow(name, f"id-{name}", "FINISHED", {"method.name": method}, {**metrics, **extra})


def test_embedding_legend_names_the_classes():
    labels = np.repeat(np.arange(3), 20)
    features = torch.randn(60, 8, generator=torch.Generator().manual_seed(0)) + torch.tensor(labels).float()[:, None]
    fig = embedding_figure(features, labels, "best run", CLASSES)
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == CLASSES
    plt.close(fig)


def test_baselines_are_the_mean_over_runs_and_drawn_as_lines(tmp_path):
    rows = [_row("a", "simclr", 0.85, pixels=0.84, random_init=0.78), _row("b", "byol", 0.83, pixels=0.86, random_init=0.80)]
    assert baseline_levels(rows) == {"pixels linear": pytest.approx(0.85), "random-init linear": pytest.approx(0.79)}
    assert (plot_per_method(rows, tmp_path)).stat().st_size > 0


def test_few_label_bars_only_when_measured(tmp_path):
    plain = [_row("a", "simclr", 0.85)]
    assert few_label_counts(plain) == [] and plot_few_labels(plain, tmp_path) is None
    rows = [
        _row("a", "simclr", 0.85, **{"probe/finetune_10pc_top1": 0.70, "baseline/supervised_10pc_top1": 0.60}),
        _row("b", "rotation", 0.86, **{"probe/finetune_10pc_top1": 0.72, "baseline/supervised_10pc_top1": 0.62}),
    ]
    assert few_label_counts(rows) == [10]
    assert plot_few_labels(rows, tmp_path) == tmp_path / "few_labels.png" and (tmp_path / "few_labels.png").stat().st_size > 0


def test_titles_wrap_to_the_figure_width():
    fig, ax = plt.subplots(figsize=(4, 3))
    _title(ax, "a long title " * 10, fig)
    assert max(len(line) for line in ax.get_title().splitlines()) <= 44
    plt.close(fig)


def test_compare_without_experiment_takes_the_newest(tmp_path, capsys):
    uri = tracking.resolve_tracking_uri(None, tmp_path)
    assert tracking.newest_experiment(uri) is None
    client = tracking.client(uri)
    # Explicit start times: runs created within one millisecond would otherwise tie.
    for start, name in ((1_000, "older"), (2_000, "newer")):
        run = client.create_run(client.create_experiment(name), start_time=start)
        client.log_metric(run.info.run_id, "probe/linear_top1", 0.8)
        client.set_terminated(run.info.run_id)
    assert tracking.newest_experiment(uri) == "newer"
    run = client.create_run(client.get_experiment_by_name("older").experiment_id, start_time=3_000)  # newest run: older exp
    client.set_terminated(run.info.run_id)
    assert tracking.newest_experiment(uri) == "older"

    assert main(["compare", "--runs-dir", str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "comparing experiment 'older'" in printed and (tmp_path / "out" / "compare.txt").is_file()


def test_headlines_say_best_vs_pixels_and_few_labels_vs_scratch():
    from pipelines.results.compare import headlines

    rows = [
        _row("t0", "simclr", 0.85, pixels=0.84, **{"probe/finetune_10pc_top1": 0.70, "baseline/supervised_10pc_top1": 0.62}),
        _row("t1", "rotation", 0.86, pixels=0.84, **{"probe/finetune_10pc_top1": 0.73, "baseline/supervised_10pc_top1": 0.62}),
    ]
    best, few = headlines(rows)
    assert best.startswith("Best method: rotation (t1), linear top-1 0.860, beats") and "(0.840): +2.0 points" in best
    assert few.startswith("Few labels (10 per class): rotation's encoder") and "0.730" in few and "(+11.0 points)" in few
    assert (
        "does not beat the same probe on raw pixels (0.840): -1.0 points."
        in headlines([_row("t0", "byol", 0.83, pixels=0.84)])[0]
    )


def test_seeds_table_groups_configurations_and_gives_mean_and_half_range():
    from pipelines.results.tables import seeds_table

    def run(seed, lr, linear, status="FINISHED"):
        params = {"method.name": "simclr", "train.seed": str(seed), "optim.lr": lr}
        return RunRow(f"r{seed}-{lr}", "id", status, params, {"probe/linear_top1": linear, "probe/knn_top1": linear - 0.1})

    assert seeds_table([run(0, "0.1", 0.8), run(0, "0.2", 0.7)]) is None  # nothing repeated
    table = seeds_table([run(0, "0.1", 0.80), run(1, "0.1", 0.84), run(0, "0.2", 0.70), run(1, "0.2", 0.0, "FAILED")])
    header, _, first, second = table.splitlines()
    assert header.split()[:3] == ["method", "optim.lr", "seeds"]
    assert first.split()[:3] == ["simclr", "0.1", "0,1"] and "0.8200 ± 0.0200" in first and "0.7200 ± 0.0200" in first
    assert first.rstrip().endswith("2/2")
    assert "0.7000" in second and "±" not in second.split("0.7000")[1][:3] and second.rstrip().endswith("1/2")
