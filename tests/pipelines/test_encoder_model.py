"""Every finished run's encoder is an MLflow Model that loads and embeds raw images without rayssl."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import torch

from pipelines import tracking
from pipelines.config import build_config
from pipelines.data import load_images, read_manifest
from pipelines.evaluate import build_method
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
    model_uri = log_encoder(method, cfg, uri, run_id)
    assert model_uri.startswith("models:/")
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
