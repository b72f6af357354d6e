"""Every finished run's encoder is an MLflow Model that loads and embeds raw images without rayssl."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import torch

from pipelines import checkpoint, tracking
from pipelines.build import build_method
from pipelines.config import build_config
from pipelines.data import load_images, read_manifest
from pipelines.train import log_encoder
from ssl_models.embedding import EmbeddingModel

# Loads the model in a fresh interpreter where importing rayssl's packages fails, as on a machine without rayssl.
LOAD_WITHOUT_RAYSSL = """
import json, sys
import numpy as np

class NoRayssl:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("ssl_models", "pipelines", "tune_spaces"):
            raise ImportError(f"{name}: rayssl is not installed here")
        return None

sys.meta_path.insert(0, NoRayssl())
import mlflow
mlflow.set_tracking_uri(sys.argv[1])
model = mlflow.pyfunc.load_model(sys.argv[2])
images = np.load(sys.argv[3])
out = model.predict(images)
np.save(sys.argv[4], out)
print(json.dumps({"inputs": str(model.metadata.get_input_schema()), "outputs": str(model.metadata.get_output_schema())}))
"""


def test_run_logs_its_encoder_as_an_mlflow_model_usable_without_rayssl(fmnist_shards, tmp_path):
    cfg = build_config({}, [f"data.shards={fmnist_shards}", "method.name=simclr", "method.backbone=tiny_cnn"])
    uri = tracking.resolve_tracking_uri(None, tmp_path)
    run_id = tracking.start_run(uri, "models", "r", {})
    torch.manual_seed(0)
    method = build_method(cfg, read_manifest(str(fmnist_shards)))
    env_before = os.environ.get("MLFLOW_TRACKING_URI")
    model_uri = log_encoder(method, cfg, tracking.Run(uri, run_id))
    assert model_uri.startswith("models:/")
    assert os.environ.get("MLFLOW_TRACKING_URI") == env_before  # MLflow's global URI does not leak into later runs
    c = tracking.client(uri)
    logged = c.get_logged_model(model_uri.removeprefix("models:/"))
    assert logged.experiment_id == c.get_run(run_id).info.experiment_id  # the run's experiment, not experiment 0
    assert str(tmp_path) in logged.artifact_location  # beside the store, not in ./mlruns
    assert tracking.get_run(uri, run_id).data.tags["rayssl.encoder_model"] == model_uri

    images = load_images(str(fmnist_shards), "test", 5)  # another batch size than the input example (2)
    np.save(tmp_path / "images.npy", images)
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_WITHOUT_RAYSSL, uri, model_uri, str(tmp_path / "images.npy"), str(tmp_path / "out.npy")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    schema = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "uint8" in schema["inputs"] and "(-1, 28, 28, 1)" in schema["inputs"]
    assert "float32" in schema["outputs"]
    with torch.no_grad():
        want = EmbeddingModel(method.encoder).eval()(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), want, rtol=1e-5, atol=1e-5)


def test_best_encoder_registered_and_models_uri_accepted_where_checkpoints_are(fmnist_shards, tmp_path, capsys):
    from pipelines.cli import main

    cfg = build_config({}, [f"data.shards={fmnist_shards}", "method.name=simclr", "method.backbone=tiny_cnn"])
    manifest = read_manifest(str(fmnist_shards))
    uri = tracking.resolve_tracking_uri(None, tmp_path)
    run_id = tracking.start_run(uri, "search", "trial", {})
    torch.manual_seed(0)
    method = build_method(cfg, manifest)
    ckpt = tmp_path / "checkpoint.pt"
    state = {"model": method.state_dict(), "config": cfg.model_dump(mode="json"), "epoch": 1}
    torch.save({**state, "manifest": {k: manifest[k] for k in ("mode", "channels", "image_size", "classes")}}, ckpt)
    tracking.log_artifact(uri, run_id, ckpt, "checkpoint")
    tracking.log_metrics(uri, run_id, {"probe/linear_top1": 0.81, "probe/knn_top1": 0.75}, step=2)
    assert tracking.register_encoder(uri, run_id, "fmnist-encoder") is None  # nothing logged yet: nothing to register
    log_encoder(method, cfg, tracking.Run(uri, run_id))

    assert tracking.register_encoder(uri, run_id, "fmnist-encoder") == "models:/fmnist-encoder@best"
    version = tracking.client(uri).get_model_version_by_alias("fmnist-encoder", "best")
    assert version.tags["probe/linear_top1"] == "0.81" and version.tags["rayssl.run_id"] == run_id

    local = checkpoint.local_copy(uri, "models:/fmnist-encoder@best", tmp_path / "dl")
    assert torch.load(local, weights_only=True)["epoch"] == 1
    assert main(["export", "models:/fmnist-encoder@best", "--format", "state-dict", "--out", str(tmp_path / "w"),
                 "--runs-dir", str(tmp_path)]) == 0  # fmt: skip
    assert (tmp_path / "w.safetensors").is_file()
    assert main(["export", "models:/no-such-model@best", "--format", "onnx", "--out", str(tmp_path / "x"),
                 "--runs-dir", str(tmp_path)]) == 2  # fmt: skip
    assert "models:/no-such-model@best: no such registered model version" in capsys.readouterr().err
