"""The run tables the terminal prints: one pretraining run, a search's trials, an experiment's runs,
and an experiment's configurations over seeds. Plain text, one renderer (``format_table``)."""

from __future__ import annotations

import math
from typing import Any

from pipelines import names
from pipelines.results.runs import RunRow, varying_params


def format_table(headers: list[str], rows: list[list[object]]) -> str:
    def cell(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.4f}" if v < 1 else f"{v:.1f}"
        return str(v)

    text = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in text)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in text]
    return "\n".join(lines)


PRETRAIN_COLUMNS = [
    ("method", "method"),
    ("linear top-1", names.LINEAR_TOP1),
    ("kNN top-1", names.KNN_TOP1),
    ("pixels linear", names.PIXELS_LINEAR_TOP1),
    ("random-init linear", names.RANDOM_INIT_LINEAR_TOP1),
    ("RankMe", names.RANKME),
    ("images/s", names.IMAGES_PER_S),
    ("wall s", names.WALL_S),
]


def pretrain_table(results: list[tuple[str, dict[str, float]]]) -> str:
    """One row per run: method, probes, baselines, throughput and wall time."""
    headers = [h for h, _ in PRETRAIN_COLUMNS]
    rows = [[name] + [metrics.get(key, math.nan) for _, key in PRETRAIN_COLUMNS[1:]] for name, metrics in results]
    return format_table(headers, rows)


TRIAL_FINALS = (names.LINEAR_TOP1, names.KNN_TOP1, names.RANKME)


def trials_table(trials: list[dict[str, Any]], ranked_by: str) -> str:
    """A search's trials (``SearchResult.trials``), best ``ranked_by`` first: method, searched values, final probes."""
    searched = sorted({k for t in trials for k in t["params"]} - {"method.name"})  # the method has its own column
    rows = [
        [t["trial_id"], t.get("method") or t["params"].get("method.name", "?"), *(t["params"].get(k) for k in searched)]
        + [t["metrics"].get(k, math.nan) for k in TRIAL_FINALS]
        + [int(t["metrics"].get(names.EPOCHS, 0)), "early stop" if t["stopped_early"] else t["status"]]
        for t in sorted(trials, key=lambda t: -t["metrics"].get(ranked_by, -1))
    ]
    headers = ["trial", "method", *searched, *(names.SHORT_NAMES[k] for k in TRIAL_FINALS), "epochs", "status"]
    return format_table(headers, rows)


def _extra_metrics(rows: list[RunRow]) -> list[str]:
    """Metric columns beyond linear and kNN that some run has: few labels, baselines, RankMe."""
    prefixes = (names.FINETUNE_PREFIX, names.SUPERVISED_PREFIX)
    keys = sorted({k for r in rows for k in r.metrics if k.startswith(prefixes)})
    keys += [k for k in names.BASELINES if any(k in r.metrics for r in rows)]
    keys += [k for k in (names.RANKME,) if any(k in r.metrics for r in rows)]  # label-free: unlabeled runs too
    return keys


def comparison_table(rows: list[RunRow]) -> str:
    """Every run of an experiment, best linear top-1 first: method, what varied, probes, cost, status."""
    varying = varying_params(rows)
    extra_keys = _extra_metrics(rows)
    extra = [names.SHORT_NAMES.get(k, k.split("/", 1)[-1]) for k in extra_keys]
    headers = ["run", "method", *varying, "linear", "kNN", *extra, "epochs", "images/s", "wall s", "CPU-h", "GPU-h", "status"]
    body = []
    for r in sorted(rows, key=lambda r: -r.metrics.get(names.LINEAR_TOP1, -1)):
        m = r.metrics
        cpu_h, gpu_h = r.resource_hours()
        body.append(
            [r.name, r.method, *(r.params.get(k, "") for k in varying)]
            + [m.get(names.LINEAR_TOP1, math.nan), m.get(names.KNN_TOP1, math.nan)]
            + [m.get(k, math.nan) for k in extra_keys]
            + [int(m.get(names.EPOCHS, 0)), m.get(names.IMAGES_PER_S, math.nan), m.get(names.WALL_S, math.nan)]
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
    keys = [k for k in (names.LINEAR_TOP1, names.KNN_TOP1) if any(k in r.metrics for r in rows)] or [names.LINEAR_TOP1]
    keys += [k for k in (names.RANKME,) if any(k in r.metrics for r in rows)]
    headers = ["method", *varying, "seeds", *(f"{names.SHORT_NAMES[k]} (mean ± half-range)" for k in keys), "finished"]
    ranked = []
    for key, group in groups.items():
        done = [r for r in group if r.status == "FINISHED"]
        values = [[r.metrics[k] for r in done if k in r.metrics] for k in keys]
        row = [*key, ",".join(sorted({r.params.get("train.seed", "?") for r in group}, key=_seed_order))]
        row += [mean_spread(v, digits=1 if k == names.RANKME else 4) for k, v in zip(keys, values, strict=True)]
        ranked.append((sum(values[0]) / len(values[0]) if values[0] else -math.inf, [*row, f"{len(done)}/{len(group)}"]))
    ranked.sort(key=lambda pair: pair[0], reverse=True)  # best mean of the first column first
    return format_table(headers, [row for _, row in ranked])


def _seed_order(seed: str):
    return (0, int(seed)) if seed.lstrip("-").isdigit() else (1, seed)
