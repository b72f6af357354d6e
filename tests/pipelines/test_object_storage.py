"""Object storage for real: a moto S3 server on 127.0.0.1 (the ``s3`` fixture), spoken to over HTTP
with checked credentials, by pyarrow, Ray Data, Ray Train, Ray Tune and an MLflow server."""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pytest

from pipelines import shard, storage, tracking
from pipelines.cli import main
from pipelines.config import build_config
from pipelines.data import read_manifest
from pipelines.train import validate
from tests.conftest import TINY_RUN, TWO_WORKERS, TcpOutage, own_ray_env, sigkill_driver_at, start_driver

REPO = Path(__file__).resolve().parents[2]
EPOCHS = 3


def _objects(uri: str) -> list[str]:
    """Every object under ``uri``, relative to it."""
    fs, base = pafs.FileSystem.from_uri(uri)
    found = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    return sorted(f.path[len(base) + 1 :] for f in found if f.type == pafs.FileType.File)


def _rows(uri: str) -> list[str]:
    return pads.dataset(uri, format="parquet").to_table(columns=["id"]).column("id").to_pylist()


def test_shards_go_straight_to_s3_manifest_last_and_a_rerun_continues(s3, monkeypatch):
    out = f"{s3}/shards-rerun"
    published = []
    real_flush = shard._SplitWriter.flush

    def interrupted_flush(self):  # the run dies after two shards were published, as a killed process would
        if not self.rows:
            return
        if len(published) == 2:
            raise KeyboardInterrupt("interrupted")
        real_flush(self)
        published.append(self.files[-1])

    monkeypatch.setattr(shard._SplitWriter, "flush", interrupted_flush)
    with pytest.raises(KeyboardInterrupt):
        shard.write_shards("fashion-mnist", out, rows_per_shard=100, limit=300)
    assert _objects(out) == ["train/part-00000.parquet", "train/part-00001.parquet"]  # no manifest: not a shard set
    monkeypatch.setattr(shard._SplitWriter, "flush", real_flush)

    result = shard.write_shards("fashion-mnist", out, rows_per_shard=100, limit=300)
    assert result.reused == 2  # the two published shards were kept, not written again
    manifest = read_manifest(out)
    assert manifest["splits"]["train"]["rows"] == 300 and manifest["splits"]["test"]["rows"] == 300
    for split in ("train", "test"):  # what a reader of the folder sees: every row once
        ids = _rows(f"{out}/{split}")
        assert len(ids) == len(set(ids)) == 300

    # Different settings over the same prefix: the old layout's extra part is removed, not read twice.
    again = shard.write_shards("fashion-mnist", out, rows_per_shard=200, limit=300)
    assert again.reused == 0
    assert [p for p in _objects(out) if p.startswith("train/")] == ["train/part-00000.parquet", "train/part-00001.parquet"]
    assert len(_rows(f"{out}/train")) == 300


def test_the_cli_shards_to_s3_and_pretraining_checks_read_them(s3, capsys):
    assert main(["shard", "fashion-mnist", "--out", f"{s3}/shards-cli", "--limit", "64", "--rows-per-shard", "32"]) == 0
    assert f"wrote {s3}/shards-cli (train: 64 rows (64 labeled) in 2 shards" in capsys.readouterr().out
    cfg = build_config({}, [f"data.shards={s3}/shards-cli", f"tracking.storage_path={s3}/ray", "data.batch_size=32"])
    assert validate(cfg)["splits"]["test"]["rows"] == 64


def test_missing_bucket_and_refused_credentials_fail_in_one_line_before_ray(s3, monkeypatch, capsys):
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    shard.write_shards("fashion-mnist", f"{s3}/shards-checks", limit=32)
    good = [f"data.shards={s3}/shards-checks"]
    cases = {
        "data.shards": ["data.shards=s3://no-such-bucket/shards"],
        "tracking.storage_path": [*good, "tracking.storage_path=s3://no-such-bucket/ray"],
        "probe.shards": [*good, "probe.shards=s3://no-such-bucket/probe"],
    }
    for field, overrides in cases.items():
        with pytest.raises(storage.StorageError) as caught:
            validate(build_config({}, overrides))
        assert str(caught.value) == (
            f"s3://no-such-bucket ({field}): no such bucket at {endpoint}; "
            "create it (for example 'aws s3 mb s3://no-such-bucket') or fix the name"
        )
    assert main(["shard", "fashion-mnist", "--out", "s3://no-such-bucket/x", "--limit", "8"]) != 0
    assert "s3://no-such-bucket (--out): no such bucket" in capsys.readouterr().err

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    refused = rf"^{s3} \(data\.shards\): {endpoint} refused the credentials \(ACCESS_DENIED\); check AWS_ACCESS_KEY_ID"
    with pytest.raises(storage.StorageError, match=refused):
        validate(build_config({}, good))
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(storage.StorageError, match=r"cannot reach http://127\.0\.0\.1:9 .*check AWS_ENDPOINT_URL"):
        validate(build_config({}, good))


def _cli(*overrides: str) -> list[str]:
    args = [sys.executable, "-m", "pipelines.cli", "pretrain"]
    for item in overrides:
        args += ["--set", item]
    return args


@pytest.mark.e2e
def test_on_s3_a_lost_worker_a_lost_tracking_server_and_a_killed_driver_lose_no_work_and_no_records(
    s3, mlflow_s3_server, tmp_path
):
    """Shards, Ray Train checkpoints and MLflow artifacts all on S3, and three faults in one run:
    a worker process dies in epoch 1; the MLflow server goes away after epoch 1 (training goes on,
    metrics are buffered); the driver is SIGKILLed in a later epoch. The local runs folder is then
    deleted (a new cluster) and, with the server back, the same command resumes the same MLflow run
    from the S3 checkpoint and finishes, with every epoch's metrics recorded once.

    The server is reached through a forwarder whose cut drops every open connection and refuses new
    ones: what a client sees of a server that went away, without the ~20 s of a server's restart.
    (One drill, not two: each costs two driver starts, each with its own Ray, ~60 s of the suite.)"""
    import shutil

    shards = f"{s3}/e2e-shards"
    shard.write_shards("fashion-mnist", shards, rows_per_shard=256, limit=1024)
    outage = TcpOutage(int(mlflow_s3_server.rsplit(":", 1)[1]))  # the server keeps artifacts in {s3}/mlflow-artifacts
    outage.restore()
    uri = outage.endpoint
    runs = tmp_path / "runs"
    storage_path = f"{s3}/ray-e2e"
    args = _cli(
        f"data.shards={shards}",
        f"tracking.runs_dir={runs}",
        f"tracking.tracking_uri={uri}",
        f"tracking.storage_path={storage_path}",
        "tracking.run_name=drill",
        "tracking.experiment=drill",
        *TINY_RUN,
        # 5 steps into epoch 1 (8 steps an epoch). The marker that makes the exit fire once is local: the new
        # machine's rerun would die again at a step it trains again, and restart once more (~20 s) for nothing.
        "faults.exit_at_step=5",
        "faults.exit_rank=1",
        TWO_WORKERS,
    )
    # Ray Train's default 2 s poll (the session sets 0.25 s, conftest), the timing the tracking drill was written for
    env = own_ray_env(RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="2")
    registered = functools.partial(_wait_for_object, storage_path, "checkpoint_manager_snapshot.json")

    def server_goes_away() -> None:
        outage.cut()
        registered()  # epoch 1's checkpoint is on S3 (trained by the worker group Ray Train restarted)

    try:
        # The cut comes as the test reads epoch 1's line; epoch 2 (0.4-3 s in the runs seen) may have sent its
        # metrics by then. So the kill comes at the first epoch's line after metrics found no server (epoch 2's,
        # else epoch 3's): they are buffered, and saved in that epoch's checkpoint, which the rerun sends from
        unsent = f"warning: MLflow at {uri} did not take metrics"
        first = sigkill_driver_at(args, env, REPO, "epoch ", at={f"epoch 1/{EPOCHS}": server_goes_away}, after=unsent)
        assert "faults: worker rank 1 exits at step 5" in first, first[-3000:]  # the process really died
        assert first.index("exits at step 5") < first.index(f"epoch 1/{EPOCHS}"), first[-3000:]  # then epoch 1 ran
        assert f"epoch 2/{EPOCHS}" in first, first[-3000:]
        assert unsent in first, first[-3000:]  # buffered, training went on
        assert any(p.endswith("/checkpoint.pt") for p in _objects(storage_path))  # Ray Train wrote to S3

        outage.restore()
        (run,) = tracking.search_runs(uri, "drill")
        assert run.info.status == "RUNNING"  # SIGKILL gives the driver no chance to close it; the rerun does
        shutil.rmtree(runs)  # a new machine: nothing local survives, only S3 and the tracking server
        rerun = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        out = rerun.stdout + rerun.stderr
        assert rerun.returncode == 0, out[-4000:]
        assert f"resuming run drill (MLflow {run.info.run_id}, was RUNNING)" in out
        assert f"epoch 1/{EPOCHS}" not in out  # continued from the S3 checkpoint, not from scratch
        assert "Reporting training result" not in out  # Ray Train's per-report INFO lines stay out of the terminal
        runs_now = tracking.search_runs(uri, "drill")
        assert [r.info.run_id for r in runs_now] == [run.info.run_id]  # still one run
        run = runs_now[0]
        assert run.info.status == "FINISHED" and "probe/linear_top1" in run.data.metrics
        for key in ("train/loss", "train/lr", "train/images_per_s"):
            assert sorted(step for step, _ in tracking.metric_history(uri, run.info.run_id, key)) == [1, 2, 3], key
        assert not (runs / "ray").exists()  # Ray's state went to S3 only
    finally:
        outage.cut()

    artifacts = _objects(f"{s3}/mlflow-artifacts")  # the server stored the run's artifacts on S3
    for name in ("config.yaml", "checkpoint/checkpoint.pt"):
        assert any(p.endswith(f"{run.info.run_id}/artifacts/{name}") for p in artifacts), (name, artifacts[:20])
    model_id = run.data.tags["rayssl.encoder_model"].rsplit("/", 1)[-1]  # MLflow 3 keeps logged models apart
    assert any(p.endswith(f"models/{model_id}/artifacts/MLmodel") for p in artifacts), artifacts[:20]
    inputs = {i.dataset.name: json.loads(i.dataset.source)["uri"] for i in run.inputs.dataset_inputs}
    assert inputs["e2e-shards/train"] == f"{shards}/train"  # the dataset input names the S3 source


def _wait_for_object(uri: str, name: str, timeout_s: float = 120) -> None:
    """Poll the store (directly, not through the outage) until an object called ``name`` exists under ``uri``."""
    import time

    deadline = time.monotonic() + timeout_s
    while not any(p.endswith(name) for p in _objects(uri)):
        assert time.monotonic() < deadline, f"no {name} under {uri} after {timeout_s} s"
        time.sleep(0.2)


@pytest.mark.e2e
def test_the_endpoint_going_away_mid_epoch_fails_in_one_line_and_keeps_what_was_written(s3, tmp_path):
    """The object store stops answering after epoch 1 (every connection dropped, new ones refused).
    The run fails with one line naming the bucket and the endpoint, MLflow keeps it FAILED with epoch
    1's metrics, and once the endpoint is back the same command resumes from epoch 1's S3 checkpoint."""

    shards = f"{s3}/outage-shards"
    shard.write_shards("fashion-mnist", shards, rows_per_shard=256, limit=1024)
    outage = TcpOutage(int(os.environ["AWS_ENDPOINT_URL"].rsplit(":", 1)[1]))  # in front of the session's server
    outage.restore()
    runs = tmp_path / "runs"
    uri = tracking.resolve_tracking_uri(None, runs)
    args = _cli(
        f"data.shards={shards}",
        f"tracking.runs_dir={runs}",
        f"tracking.storage_path={s3}/ray-outage",
        "tracking.run_name=outage",
        "tracking.log_model=false",  # costs a new driver ~10 s (its first torch.export); nothing here reads it
        *TINY_RUN,
        TWO_WORKERS,  # with one, the drill took 147 s against ~100-120 (one full-suite run each; the timing it was written for)
    )
    # Ray Train's default 2 s poll (the session sets 0.25 s, conftest): the failure this test expects is the
    # controller's next write of its snapshot to the cut store. With a fast poll that write is done before the
    # cut, and epoch 2's shard reads meet the dead endpoint instead: they were seen to hang until
    # train.timeout_s, with no error line (a run of 2026-12-03; open).
    endpoint = {"AWS_ENDPOINT_URL": outage.endpoint, "MLFLOW_S3_ENDPOINT_URL": outage.endpoint}
    env = own_ray_env(**endpoint, RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="2")
    proc = start_driver(args, env, REPO)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if f"epoch 1/{EPOCHS}" in line:
                # Ray Train has registered epoch 1's checkpoint once its snapshot is on S3; cut after that
                _wait_for_object(f"{s3}/ray-outage/ray", "checkpoint_manager_snapshot.json")
                outage.cut()
        proc.wait(timeout=600)
    finally:
        proc.kill()
        outage.cut()
    first = "".join(lines)
    assert proc.returncode == 2, first[-4000:]
    unreachable = rf"rayssl: error: {s3}: cannot reach {outage.endpoint} \((NETWORK_CONNECTION|UNKNOWN)\); "
    assert re.match(unreachable + "check AWS_ENDPOINT_URL and that the object store is up", lines[-1]), lines[-1]
    assert 'File "<frozen runpy>"' not in first  # the driver's own traceback is not printed
    (run,) = tracking.search_runs(uri, "rayssl")
    assert run.info.status == "FAILED"
    before = [step for step, _ in tracking.metric_history(uri, run.info.run_id, "train/loss")]
    assert before[:1] == [1] and len(before) == len(set(before))  # epoch 1 (and any epoch after it) kept, once

    outage.restore()  # the endpoint is back: the same command resumes from what S3 kept
    rerun = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    outage.cut()
    out = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, out[-4000:]
    assert f"resuming run outage (MLflow {run.info.run_id}, was FAILED)" in out and f"epoch 1/{EPOCHS}" not in out
    # An epoch trained after the last checkpoint S3 took is trained again; MLflow keeps its first values.
    assert sorted(step for step, _ in tracking.metric_history(uri, run.info.run_id, "train/loss")) == [1, 2, 3]
    assert tracking.get_run(uri, run.info.run_id).info.status == "FINISHED"
