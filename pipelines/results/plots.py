"""The plots of ``rayssl compare``: accuracy per epoch, per method and per searched value, few labels, embedding.

Each function takes the compared runs and writes one PNG; titles wrap to fit and baselines are lines.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # files only; no display on clusters or in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from pipelines import names  # noqa: E402

if TYPE_CHECKING:
    from pipelines.results.runs import RunRow


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
    for key in names.BASELINES:
        values = [r.metrics[key] for r in rows if key in r.metrics]
        if values:
            levels[names.SHORT_NAMES[key]] = float(np.mean(values))
    return levels


def draw_baselines(ax, levels: dict[str, float]) -> None:
    for (name, value), style in zip(levels.items(), ("--", ":"), strict=False):
        ax.axhline(value, color="grey", linestyle=style, linewidth=1, label=f"{name} {value:.3f}")


def plot_per_method(rows: list[RunRow], out: Path) -> Path:
    methods = sorted({r.method for r in rows})
    fig, ax = plt.subplots(figsize=(max(5, len(methods) * 0.9), 4))
    for i, method in enumerate(methods):
        values = [r.metrics[names.LINEAR_TOP1] for r in rows if r.method == method and names.LINEAR_TOP1 in r.metrics]
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
    keys = {k for r in rows for k in r.metrics if k.startswith(names.FINETUNE_PREFIX) and k.endswith("pc_top1")}
    return sorted(int(k.removeprefix(names.FINETUNE_PREFIX).removesuffix("pc_top1")) for k in keys)


def plot_few_labels(rows: list[RunRow], out: Path) -> Path | None:
    """Bars per labels-per-class count: each method's best fine-tuned encoder against training from scratch."""
    counts = few_label_counts(rows)
    if not counts:
        return None
    methods = sorted({r.method for r in rows if any(names.finetune_top1(n) in r.metrics for n in counts)})
    series = [*methods, "from scratch"]
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(counts) * len(series) * 0.5), 4))
    for j, name in enumerate(series):
        heights = []
        for n in counts:
            if name == "from scratch":
                values = [r.metrics[names.supervised_top1(n)] for r in rows if names.supervised_top1(n) in r.metrics]
                heights.append(float(np.mean(values)) if values else math.nan)
            else:
                key = names.finetune_top1(n)
                values = [r.metrics[key] for r in rows if r.method == name and key in r.metrics]
                heights.append(max(values) if values else math.nan)
        xs = np.arange(len(counts)) + (j - (len(series) - 1) / 2) * width
        bars = ax.bar(xs, heights, width, label=name, color="lightgrey" if name == "from scratch" else None)
        ax.bar_label(bars, fmt="%.3f", fontsize=6)
    ax.set_xticks(range(len(counts)), [f"{n} labels / class" for n in counts])
    ax.set(ylabel="test top-1", ylim=(0, 1))
    _title(ax, "Few labels: fine-tuned SSL encoder vs the same network from scratch", fig)
    ax.legend(fontsize=7, loc="upper left")
    return _save(fig, out / "few_labels.png")


def plot_against_params(rows: list[RunRow], varying: list[str], out: Path) -> Path:
    """Linear top-1 against each searched key (``varying``), or against the method when nothing else varied."""
    varying = varying or ["method.name"]
    if len({r.method for r in rows}) > 1 and "method.name" not in varying:
        varying = ["method.name", *varying]
    fig, axes = plt.subplots(1, len(varying), figsize=(4 * len(varying), 3.5), squeeze=False)
    for ax, key in zip(axes[0], varying, strict=True):
        pairs = [(r.params.get(key, ""), r.metrics[names.LINEAR_TOP1]) for r in rows if names.LINEAR_TOP1 in r.metrics]
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
