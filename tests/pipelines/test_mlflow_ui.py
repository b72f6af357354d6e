"""What a person sees in MLflow's UI for a rayssl run, checked in a real headless Chromium.

Skipped where no browser is installed (Debian: ``apt-get install chromium``); CI has none.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines import tracking
from pipelines.build import build_method
from pipelines.config import build_config
from pipelines.data import read_manifest
from pipelines.results import report
from pipelines.train import log_encoder

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs a Chromium browser (apt-get install chromium)")


def _chromium(tmp_path, url: str, *args: str) -> str:
    """Headless Chromium on ``url``, given time for the page's own requests; returns what it printed."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"]
    cmd += ["--disable-background-networking", "--disable-component-update", "--disable-sync"]  # a closed network
    cmd += [f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=20000", *args, url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def _text(html: str) -> str:
    """The visible text of a dumped page, whitespace collapsed."""
    html = re.sub(r"<(style|script)\b.*?</\1>", " ", html, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_the_ui_opens_a_rayssl_experiment_on_its_runs_with_dataset_and_model(mlflow_server, fmnist_shards, tmp_path):
    cfg = build_config({}, [f"data.shards={fmnist_shards}", "method.name=simclr", "method.backbone=tiny_cnn"])
    manifest = read_manifest(str(fmnist_shards))
    run_id = tracking.start_run(mlflow_server, "ui-check", "simclr-ui-run", cfg.flat(), tags={"rayssl.kind": "pretrain"})
    tracking.log_dataset_inputs(mlflow_server, run_id, cfg.data.shards, manifest)
    torch.manual_seed(0)
    log_encoder(build_method(cfg, manifest), cfg, tracking.Run(mlflow_server, run_id))
    tracking.log_metrics(mlflow_server, run_id, {"probe/linear_top1": 0.5}, step=1)
    tracking.end_run(mlflow_server, run_id, "FINISHED")
    url = report.ui_experiment_url(mlflow_server, "ui-check")

    runs = _text(_chromium(tmp_path, url, "--dump-dom"))
    assert "Runs - Experiment" in runs and "Token Usage" not in runs  # the runs table, not the GenAI overview
    assert "simclr-ui-run" in runs
    assert "shards/train" in runs and "shards/test" in runs  # Dataset column: the run's shards, per split
    models = _text(_chromium(tmp_path, url.replace("?", "/models?"), "--dump-dom"))
    assert "encoder Ready" in models and "simclr-ui-run" in models  # the Models tab: the run's encoder, logged from it

    shot = tmp_path / "experiment.png"
    _chromium(tmp_path, url, f"--screenshot={shot}", "--window-size=1400,900", "--hide-scrollbars")
    with Image.open(shot) as img:
        assert img.size == (1400, 900)
        pixels = np.asarray(img.convert("L"), dtype=np.float32)
    assert pixels.std() > 10  # a rendered page, not a blank one
