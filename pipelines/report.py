"""What the terminal shows: plain-text tables, and where to see the runs in MLflow's UI."""

from __future__ import annotations

from pipelines import tracking


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
    ("linear top-1", "probe/linear_top1"),
    ("kNN top-1", "probe/knn_top1"),
    ("pixels linear", "baseline/pixels_linear_top1"),
    ("random-init linear", "baseline/random_init_linear_top1"),
    ("RankMe", "probe/rankme"),
    ("images/s", "train/images_per_s"),
    ("wall s", "wall_s"),
]


def pretrain_table(results: list[tuple[str, dict[str, float]]]) -> str:
    """One row per run: method, probes, baselines, throughput and wall time."""
    headers = [h for h, _ in PRETRAIN_COLUMNS]
    rows = [[name] + [metrics.get(key, float("nan")) for _, key in PRETRAIN_COLUMNS[1:]] for name, metrics in results]
    return format_table(headers, rows)


LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default


def ui_experiment_url(uri: str, experiment: str) -> str:
    """The experiment's runs table in MLflow's UI. MLflow 3's UI opens every experiment on its GenAI
    overview (traces, tokens) unless the URL asks for the model-training view, whatever the
    experiment's ``mlflow.experimentKind`` tag says (seen in headless Chromium, MLflow 3.17)."""
    base = LOCAL_UI if uri.startswith("sqlite:///") else uri.rstrip("/")
    return f"{base}/#/experiments/{tracking.experiment_id(uri, experiment)}?workflowType=machine_learning"


def ui_command(uri: str, experiment: str | None = None) -> str:
    """What to type to see the runs in MLflow's UI (and which page to open, given the experiment)."""
    page = f" and open {ui_experiment_url(uri, experiment)}" if experiment else ""
    if uri.startswith("sqlite:///"):
        return f"mlflow ui --backend-store-uri {uri}{page}"
    return f"open {ui_experiment_url(uri, experiment) if experiment else uri} in a browser"
