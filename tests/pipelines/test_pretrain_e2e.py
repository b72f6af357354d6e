"""End to end on a real local Ray instance, real Fashion-MNIST shards and a real MLflow server."""

import math

import pytest

from pipelines import cli, tracking
from pipelines.config import ConfigError, build_config
from pipelines.data import DataError
from pipelines.train import validate
from tests.conftest import correct_of, measured

PROBE_KEYS = {
    "probe/linear_top1",
    "probe/knn_top1",
    "baseline/pixels_linear_top1",
    "baseline/random_init_linear_top1",
}


def _tiny_config(shards, runs_dir, uri):
    return build_config(
        {}, [f"data.shards={shards}", "method.backbone=tiny_cnn", f"tracking.runs_dir={runs_dir}", f"tracking.tracking_uri={uri}"]
    )


@pytest.mark.e2e
def test_pretrain_probe_and_mlflow_server_record(shared_pretrain_run, fmnist_shards, capsys):
    result, uri = shared_pretrain_run.result, shared_pretrain_run.uri  # run once, relative shards path (conftest)

    runs = tracking.search_runs(uri, "e2e")
    assert [r.info.run_id for r in runs] == [result.run_id]
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["method.name"] == "simclr" and run.data.params["data.batch_size"] == "64"
    assert run.data.params["train.sync_batchnorm"] == "True" and run.data.params["optim.name"] == "sgd"
    assert "optim.lr" in run.data.tags["rayssl.from_recipe"].split(",")
    assert PROBE_KEYS <= set(run.data.metrics)
    # one record per epoch, in order, for each per-epoch metric
    for key in ("train/loss", "train/images_per_s", "train/lr", "train/proxy_acc"):
        assert [step for step, _ in tracking.metric_history(uri, result.run_id, key)][:2] == [1, 2]
    losses = [v for _, v in tracking.metric_history(uri, result.run_id, "train/loss")][:2]
    assert all(0 < v < math.log(2 * 64 - 1) + 0.5 for v in losses)  # below chance-level NT-Xent for batch 64
    # probes are real accuracies on 10 classes, far from chance (0.1)
    measured("probe/knn_top1", run.data.metrics["probe/knn_top1"], above=0.3)
    # 6 full suite runs gave 0.407, 0.408, 0.356, 0.411, 0.333, 0.371 (mean 0.381, sd 0.033): 0.21 sits 5.2 sd
    # under their mean, 2x chance
    measured("probe/linear_top1", run.data.metrics["probe/linear_top1"], above=0.21)
    measured("baseline/pixels_linear_top1", run.data.metrics["baseline/pixels_linear_top1"], above=0.5)
    artifacts = {a.path for a in tracking.client(uri).list_artifacts(result.run_id)}
    assert {"config.yaml", "checkpoint"} <= artifacts

    # the saved checkpoint probes again from the command line, with few labels too, logging to its run
    assert cli.main(["probe", result.checkpoint_dir, "--data", str(fmnist_shards), "--labels-per-class", "2"]) == 0
    printed = capsys.readouterr().out
    assert "probe/linear_top1" in printed and "baseline/pixels_linear_top1" in printed
    few = tracking.get_run(uri, result.run_id).data.metrics
    for key in ("probe/finetune_2pc_top1", "baseline/supervised_2pc_top1"):  # over the probe's test images
        correct_of(few[key], few["probe/test_images"])


def test_invalid_config_fails_before_ray(fmnist_shards, tmp_path):
    cfg = _tiny_config(fmnist_shards, tmp_path, "sqlite:///" + str(tmp_path / "m.db"))
    cfg.data.crop_size = 64
    with pytest.raises(ConfigError, match=r"data\.crop_size=64 is larger than the shards' 28 px images"):
        validate(cfg)
    cfg.data.crop_size = None
    cfg.data.shards = str(tmp_path / "missing")
    with pytest.raises(DataError, match=r"manifest\.json: not found; write shards first"):
        validate(cfg)


def test_cli_reports_config_errors_in_one_line(capsys):
    assert cli.main(["pretrain", "--config", "configs/simclr_fmnist.yaml", "--set", "method.temperature=-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "method.temperature" in err
