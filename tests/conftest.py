"""Session-wide real components: one local Ray instance, Fashion-MNIST shards, an MLflow server."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pipelines.data import FASHION_MNIST_DIR
from pipelines.shard import write_shards

VENV_BIN = Path(sys.executable).parent

# Ray Train on a 2-core test machine, set before any Ray starts so that every raylet, Tune trial and rayssl
# driver a test starts inherits them (~10 s less a run, 52-56 s against 42-45 s for a 3-epoch TINY_RUN):
# - its controller polls the workers every 2 s by default: each start, report, restart and end waits for the
#   next poll. A missed poll is not an error (only one hanging for RAY_TRAIN_WORKER_HEALTH_CHECK_TIMEOUT_S is).
# - the preemption watcher (an extra actor process each run) watches for spot-instance notices, which a
#   local machine never gets.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
# Ray keeps as many idle worker processes as the node has CPUs (2 here) and ends the rest after 1 s idle, so
# every run's Ray Data tasks started new processes that import pyarrow, torch and ssl_models again: a warm
# 3-epoch TINY_RUN spent ~10 s of its first epoch waiting on them (epoch 1's stream 10.9 s against 0.5 s once
# kept; measured 2026-12-03, test_unlabeled.py 202 -> 180 s). Kept idle, a task process serves later runs
# of the same driver. Actors still got a new process each (6 a run, counted with ray.util.state.list_workers).
os.environ.setdefault("RAY_num_workers_soft_limit", "16")


# A tiny real run: tiny_cnn on 512 Fashion-MNIST images, 3 epochs of 8 steps, small probes (fault and 2-node
# tests). One worker: a second costs a process (~7 s of CPU a run on 2 cores); tests of two add TWO_WORKERS.
TINY_RUN = [
    "data.batch_size=64",
    "train.num_workers=1",
    "data.max_train_images=512",
    "method.backbone=tiny_cnn",
    "train.epochs=3",
    "train.timeout_s=400",
    "probe.baselines=false",
    "probe.linear_epochs=3",
    "probe.knn_k=20",
    "probe.max_train_images=512",
    "probe.max_test_images=256",
    "probe.epoch_knn_images=0",
    "probe.rankme_images=0",
]

TWO_WORKERS = "train.num_workers=2"  # after TINY_RUN: still 8 steps an epoch (32 images a worker)


@pytest.fixture(scope="session")
def fmnist_shards(tmp_path_factory) -> Path:
    """A small real Fashion-MNIST subset: 1,024 train and 512 test images."""
    if not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.fail("Fashion-MNIST missing: run 'make test' (installs dataset-fashion-mnist)")
    out = tmp_path_factory.mktemp("fmnist") / "shards"
    write_shards("fashion-mnist", out, rows_per_shard=256, limit=1024)
    # keep the test split smaller than train
    return out


def write_class_tree(root: Path, per_class: int, offset: int = 0) -> Path:
    """Fashion-MNIST train images written as an ImageNet-style class-folder tree of PNG files, ``per_class`` a class.

    The layout users bring: a sorted walk of it comes class by class. ``offset`` skips that many
    images of each class (two trees of other images).
    """
    import numpy as np
    from PIL import Image

    from pipelines.data import FASHION_MNIST_CLASSES, read_fashion_mnist

    images, labels = read_fashion_mnist("train")
    for c, name in enumerate(FASHION_MNIST_CLASSES):
        folder = root / name.replace("/", "-")
        folder.mkdir(parents=True, exist_ok=True)
        for j, i in enumerate(np.flatnonzero(labels == c)[offset : offset + per_class]):
            Image.fromarray(images[i]).save(folder / f"{j:05d}.png")
    return root


@pytest.fixture(scope="session")
def fmnist_class_tree(tmp_path_factory) -> Path:
    """600 real Fashion-MNIST PNG files in 10 class folders of 60."""
    return write_class_tree(tmp_path_factory.mktemp("class-tree") / "fmnist", 60)


# Real colour photographs shipped in scikit-image's wheel (a pinned dev dependency); crops of them make
# real RGB image folders of many sizes. One class per photograph in the labeled folder.
PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg")


def photo_crops(names, count: int, seed: int):
    """``count`` random crops (48 to 160 px a side, RGB) cut from the named scikit-image sample photos."""
    import importlib.util

    import numpy as np
    from PIL import Image

    root = Path(importlib.util.find_spec("skimage").submodule_search_locations[0]) / "data"
    photos = [np.asarray(Image.open(root / name).convert("RGB")) for name in names]
    rng = np.random.default_rng(seed)
    for i in range(count):
        photo = photos[i % len(photos)]
        h, w = rng.integers(48, 161, size=2)
        y, x = rng.integers(0, photo.shape[0] - h), rng.integers(0, photo.shape[1] - w)
        yield i % len(photos), Image.fromarray(photo[y : y + h, x : x + w])


@pytest.fixture(scope="session")
def unlabeled_photos(tmp_path_factory) -> Path:
    """A folder of 192 unlabeled JPEG photos of mixed sizes, no class sub-folders: the case SSL exists for."""
    root = tmp_path_factory.mktemp("unlabeled-photos")
    for i, (_, img) in enumerate(photo_crops(PHOTOS, 192, seed=0)):
        img.save(root / f"photo_{i:04d}.jpg", quality=90)
    return root


@pytest.fixture(scope="session")
def labeled_photos(tmp_path_factory) -> Path:
    """A folder of 160 PNG photo crops in one class sub-folder per source photograph."""
    root = tmp_path_factory.mktemp("labeled-photos")
    for i, (label, img) in enumerate(photo_crops(PHOTOS, 160, seed=1)):
        folder = root / PHOTOS[label].split(".")[0]
        folder.mkdir(exist_ok=True)
        img.save(folder / f"crop_{i:04d}.png")
    return root


def start_ray():
    """The session's one local Ray instance (start-up costs ~8 s); started again only if a test stopped it."""
    import ray
    import ray.data

    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            object_store_memory=256 << 20,
            resources={"trial_driver": 100},
            # Ray Train's PlacementGroupCleaner asks the State API (the dashboard) whether a run's controller
            # is alive: without it, a trial Tune stops keeps its workers' CPUs reserved for good
            include_dashboard=True,
            log_to_driver=True,
        )
    ray.data.DataContext.get_current().enable_progress_bars = False
    return ray


@pytest.fixture
def ray_session(s3):
    """A real local Ray instance, shared by every test of the session.

    It starts after the S3 server, so that Ray's workers inherit its endpoint and credentials.
    """
    yield start_ray()


@dataclass
class SharedRun:
    """One finished pretraining run that several tests assert on: its config, result and MLflow URI."""

    cfg: Any
    result: Any
    uri: str


# The shared run's per-step points: every 3 optimizer steps (16 an epoch: 1,024 images / 2 workers / 32)
SHARED_RUN_LOG_EVERY = 3


@pytest.fixture(scope="session")
def shared_pretrain_run(s3, fmnist_shards, mlflow_server, tmp_path_factory) -> SharedRun:
    """SimCLR on tiny_cnn, 2 epochs over the 1,024 Fashion-MNIST shards, probes and baselines, recorded by the
    session's MLflow server; one Ray Train run (~30 s) that the end-to-end and step-logging tests share.

    The shards path is given relative, as users type it: workers run in another folder, so the driver must
    resolve it."""
    from pipelines.config import build_config
    from pipelines.train import pretrain

    start_ray()
    runs_dir = tmp_path_factory.mktemp("shared-run") / "runs"
    overrides = [
        f"data.shards={fmnist_shards.name}",
        "data.batch_size=64",
        "method.backbone=tiny_cnn",
        "train.epochs=2",
        "train.sync_batchnorm=true",  # GlobalBatchNorm under DDP on 2 CPU workers (off by default on CPUs)
        f"train.log_every_steps={SHARED_RUN_LOG_EVERY}",
        "train.timeout_s=400",
        "probe.linear_epochs=5",
        "probe.knn_k=20",
        f"tracking.runs_dir={runs_dir}",
        f"tracking.tracking_uri={mlflow_server}",
        "tracking.experiment=e2e",
    ]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(fmnist_shards.parent)
        cfg = build_config({}, overrides)
        result = pretrain(cfg)
    return SharedRun(cfg, result, mlflow_server)


@pytest.fixture(scope="session", autouse=True)
def _stop_ray_at_the_end():
    yield
    import ray

    ray.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@functools.cache
def _migrated_mlflow_store() -> Path:
    """An empty SQLite tracking store with MLflow's migrations applied, made once a session in this process (~2 s).

    A new server's store starts as a copy of it: a server migrating a fresh file itself spends ~8 s of its
    start-up on that. The default experiment is left out, so that each server creates its own, with its own
    artifact root, as on a fresh file."""
    import atexit
    import sqlite3
    import tempfile

    from pipelines import tracking

    folder = Path(tempfile.mkdtemp(prefix="rayssl-mlflow-store-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    db = folder / "mlflow.db"
    tracking.client(f"sqlite:///{db}").search_experiments()  # opening the store migrates it
    with contextlib.closing(sqlite3.connect(db)) as con, con:
        con.execute("DELETE FROM experiments WHERE experiment_id = 0")
    return db


class MlflowServer:
    """A real `mlflow server` process on 127.0.0.1 with a SQLite store; it can stop and start again on the same port."""

    def __init__(self, root: Path, artifacts: str | None = None):
        self.root, self.port = root, _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.artifacts = artifacts or str(root / "artifacts")  # a folder, or s3://... (the server uploads there)
        self.proc = None

    def start(self) -> str:
        env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        db = self.root / "mlflow.db"
        if not db.exists():
            shutil.copyfile(_migrated_mlflow_store(), db)
        cmd = [str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{db}"]
        cmd += ["--artifacts-destination", self.artifacts, "--host", "127.0.0.1", "--port", str(self.port)]
        cmd += ["--workers", "1"]
        log = self.root / "server.log"
        with open(log, "a") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 120
        while True:  # poll the health endpoint until the server answers
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2):
                    return self.uri
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.proc.kill()
                    raise RuntimeError(f"mlflow server did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.5)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` process on 127.0.0.1 with a SQLite store; yields its URI."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    yield server.start()
    server.stop()


@pytest.fixture(scope="session")
def mlflow_s3_server(s3, tmp_path_factory):
    """A second real `mlflow server` that stores artifacts in the session's bucket, under ``{s3}/mlflow-artifacts``;
    yields its URI. Shared by the S3 drill and the resumed search (a server takes ~10 s to start); each test
    reads its own experiment and its own runs' artifacts."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-s3-server"), artifacts=f"{s3}/mlflow-artifacts")
    yield server.start()
    server.stop()


S3_BUCKET = "rayssl-test"


class S3Server:
    """A real S3-compatible server (moto's standalone server) on 127.0.0.1, with credentials it checks.

    Its first three requests create an IAM user allowed ``s3:*`` and that user's access key; every
    request after them must be signed with that key, as on a real store, so wrong credentials fail.
    """

    def __init__(self, root: Path):
        self.root, self.port = root, _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def start(self) -> dict[str, str]:
        import json

        import boto3

        env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="3")
        log = self.root / "moto.log"
        with open(log, "a") as out:
            cmd = [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)]
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.proc.kill()
                    raise RuntimeError(f"moto_server did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.2)
        setup = {"aws_access_key_id": "setup", "aws_secret_access_key": "setup"}  # the unchecked first requests
        iam = boto3.client("iam", endpoint_url=self.endpoint, region_name="us-east-1", **setup)
        iam.create_user(UserName="rayssl")
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        iam.put_user_policy(UserName="rayssl", PolicyName="s3", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="rayssl")["AccessKey"]
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            # An MLflow server with S3 artifacts hands clients presigned URLs to download from the store
            # itself; moto's credential checks fail on presigned URLs (a 500, KeyError 'Authorization'
            # in moto 5.2.5), so downloads go through the MLflow server here.
            "MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD": "false",
        }

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """A session's S3 server with one bucket; its endpoint and credentials are in the environment, the
    way rayssl's users give them (pyarrow, Ray and MLflow read them from there). Yields the bucket's URI."""
    import boto3

    server = S3Server(tmp_path_factory.mktemp("s3"))
    env = server.start()
    os.environ.update(env)
    boto3.client("s3").create_bucket(Bucket=S3_BUCKET)
    yield f"s3://{S3_BUCKET}"
    server.stop()
    for name in env:
        os.environ.pop(name, None)


class TcpOutage:
    """A TCP forwarder on 127.0.0.1 in front of a server: ``cut()`` drops every open connection and
    refuses new ones (the endpoint went away); ``restore()`` listens again on the same port."""

    def __init__(self, upstream_port: int):
        self.upstream_port, self.port = upstream_port, _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._open: list[socket.socket] = []
        self._listener: socket.socket | None = None

    def restore(self) -> None:
        import threading

        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        if self._listener is not None:
            # shutdown first: a bare close() leaves the socket listening while _accept's thread blocks in accept(),
            # and the next client's connection (a pooled one, kept alive) would still be forwarded
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        for conn in self._open:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
                conn.close()
        self._open.clear()

    def _accept(self, listener: socket.socket) -> None:
        import threading

        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # closed by cut()
                return
            if self._listener is not listener:  # accepted as cut() ran: refused, as every one after it
                client.close()
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                client.close()
                continue
            self._open += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)


def measured(name: str, value: float, *, above: float | None = None, below: float | None = None, detail=None) -> float:
    """Assert ``above < value < below`` (each bound where given) and return ``value``: each threshold is written
    once, here in the call. When ``RAYSSL_MEASURED`` names a file, the value is first appended there with the
    test's id and its thresholds: ``benchmarks/threshold_spread.py`` reads several full runs of the suite and says
    how many standard deviations each threshold sits from the mean. ``detail`` goes into the failure message."""
    log = os.environ.get("RAYSSL_MEASURED")
    if log:
        import json

        test = os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" ", 1)[0]
        row = {"test": test, "name": name, "value": float(value), "above": above, "below": below}
        with open(log, "a") as out:
            out.write(json.dumps(row) + "\n")
    assert above is None or value > above, f"{name} = {value:.4f}, not above {above} ({detail})"
    assert below is None or value < below, f"{name} = {value:.4f}, not below {below} ({detail})"
    return value


def correct_of(top1: float, n: float) -> int:
    """How many of ``n`` test images a probe's top-1 accuracy says it classified right; asserts that it is a
    share of them (a whole k in [0, n] over n), not a mean of batch means or a value off another set."""
    k = round(top1 * n)
    assert 0 <= k <= n and top1 * n == pytest.approx(k, abs=1e-6), f"top-1 {top1} is not k / {n}"
    return k


def own_ray_env(**extra: str) -> dict:
    """The environment for a rayssl driver that starts its own Ray, as from a user's shell. The session's
    Ray instance stops first: one instance at a time on 2 cores."""
    import ray

    ray.shutdown()
    return dict(os.environ, RAY_ADDRESS="local", **extra)


def start_driver(args: list[str], env: dict, cwd: Path) -> subprocess.Popen:
    """A driver in its own process group (so that SIGKILL takes its whole Ray with it), its output as text lines."""
    return subprocess.Popen(
        args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


def sigkill_driver_at(
    args: list[str], env: dict, cwd: Path, marker: str, at: dict[str, Callable] | None = None, after: str | None = None
) -> str:
    """Run a driver until the first output line holding ``marker``, then SIGKILL it with its whole Ray; its output.

    ``at`` maps a text to what to do at the first line holding it (the kill comes after them). With ``after``, only
    a ``marker`` line that follows a line holding ``after`` counts. A driver that ends before ``marker`` is not an
    error here: the caller asserts on the output.
    """
    at = dict(at or {})
    armed = after is None
    proc = start_driver(args, env, cwd)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            for text in [t for t in at if t in line]:
                at.pop(text)()
            if armed and marker in line:
                os.killpg(proc.pid, signal.SIGKILL)
                break
            armed = armed or after in line
        proc.wait(timeout=60)
    finally:
        proc.kill()
        stop_leftover_ray()
    return "".join(lines)


def stop_leftover_ray() -> None:
    """Stop whatever a SIGKILLed driver's Ray left running."""
    subprocess.run([str(VENV_BIN / "ray"), "stop", "--force"], capture_output=True, timeout=120)
