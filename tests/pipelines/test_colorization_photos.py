"""Colorization end to end on real colour photographs: shard, pretrain, probe."""

from __future__ import annotations

import pytest

from pipelines import tracking
from pipelines.config import build_config
from pipelines.data import labeled_rows, read_manifest
from pipelines.shard import write_shards
from pipelines.train import pretrain
from tests.conftest import correct_of


@pytest.mark.e2e
def test_colorization_on_real_photos_shards_pretrains_and_probes(ray_session, labeled_photos, tmp_path):
    shards = write_shards(str(labeled_photos), tmp_path / "shards").out_dir
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = build_config(
        {},
        [
            f"data.shards={shards}",
            "data.batch_size=32",
            "data.crop_size=32",  # cropped from the photos at their own sizes
            "method.name=colorization",
            "method.backbone=tiny_cnn",
            "train.num_workers=1",  # a second worker costs a process (~7 s of CPU a run on 2 cores)
            "train.epochs=2",
            "train.timeout_s=400",
            "probe.linear_epochs=3",
            "probe.baselines=false",  # the test reads the encoder's probes only
            "probe.knn_k=10",
            "probe.epoch_knn_images=32",
            f"tracking.runs_dir={tmp_path / 'runs'}",
            f"tracking.tracking_uri={uri}",
            "tracking.experiment=colorization",
        ],
    )
    result = pretrain(cfg)

    run = tracking.search_runs(uri, "colorization")[0]
    assert run.info.status == "FINISHED" and run.data.params["method.name"] == "colorization"
    losses = [v for _, v in tracking.metric_history(uri, result.run_id, "train/loss")]
    assert len(losses) == 2 and all(0 < v < 1.0 for v in losses)  # MSE of chroma in [-1, 1] units
    # probes ran on the photos' labeled test crops, through the encoder that sees luma only
    n = run.data.metrics["probe/test_images"]
    assert n == labeled_rows(read_manifest(str(shards)))["test"] > 0  # every labeled test crop
    for key in ("probe/linear_top1", "probe/knn_top1"):
        correct_of(run.data.metrics[key], n)
    assert "checkpoint" in {a.path for a in tracking.client(uri).list_artifacts(result.run_id)}
