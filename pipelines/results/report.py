"""Where to see the runs in MLflow's UI, as the terminal says it (the tables are ``pipelines.results.tables``)."""

from __future__ import annotations

from pipelines import tracking

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
