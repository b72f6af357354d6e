"""Two-view augmentation throughput: rayssl's Ray Data path against a torch DataLoader, or object storage
against local disk.

    .venv/bin/python benchmarks/ingest.py [--images 20000] [--workers 2]
    .venv/bin/python benchmarks/ingest.py --shards s3://BUCKET/PREFIX --against rayssl-data/fashion-mnist
    .venv/bin/python benchmarks/ingest.py --local-s3-server --against rayssl-data/fashion-mnist

With ``--shards s3://...`` (endpoint and credentials from ``AWS_ENDPOINT_URL`` and friends), it times
rayssl's Ray Data stream over those shards and over the same shards on local disk (``--against``),
side by side, and ends with ``ingest_s3 ratio=X.XX`` (object storage images/s over local disk's).
``--local-s3-server`` starts moto's S3 server on 127.0.0.1 (the dev extras), copies ``--against`` there
and uses it: what the streaming costs in protocol and copies, without a network's latency.

Both read the same Fashion-MNIST shards, decode the same PNGs and make the same two
SimCLR views (`ssl_models` multi_view policy, identical parameters) with the same
number of CPU workers. The DataLoader applies the policy per sample, as
torchvision-style pipelines do; Ray Data applies it per batch (vectorised). Each
path runs one warm-up pass, then a timed pass. The last line is
`ingest ratio=X.XX target=1.2` (Ray Data images/s over DataLoader images/s).
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import ray
import torch
from PIL import Image

from pipelines import storage
from pipelines.build import view_policy
from pipelines.config import build_config
from pipelines.data import read_manifest, split_uri
from pipelines.stream import build_pretrain_dataset


class ShardImages(torch.utils.data.Dataset):
    """The shards' PNG bytes held in memory; decode + two views per sample in __getitem__."""

    def __init__(self, shards: str, limit: int, policy):
        table = pads.dataset(split_uri(shards, "train"), format="parquet").to_table(columns=["image"]).slice(0, limit)
        self.pngs = table.column("image").to_pylist()
        self.policy = policy

    def __len__(self) -> int:
        return len(self.pngs)

    def __getitem__(self, i: int):
        image = np.array(Image.open(io.BytesIO(self.pngs[i])))[None, ..., None]  # writable, as torch wants
        views = self.policy({"image": image})  # uint8 views, what Ray Data's tasks emit too
        return torch.from_numpy(views["view_0"][0]), torch.from_numpy(views["view_1"][0])


def time_dataloader(dataset, workers: int, batch_size: int) -> float:
    torch.set_num_threads(1)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers, persistent_workers=True)
    for _ in loader:  # warm-up pass: worker start-up
        pass
    t0 = time.perf_counter()
    n = sum(len(v0) for v0, _ in loader)
    return n / (time.perf_counter() - t0)


def time_ray_data(cfg, manifest, batch_size: int) -> float:
    ds = build_pretrain_dataset(cfg, manifest)
    for _ in ds.iter_batches(batch_size=batch_size):  # warm-up pass: task workers start
        pass
    t0 = time.perf_counter()
    n = sum(len(b["view_0"]) for b in ds.iter_batches(batch_size=batch_size))
    return n / (time.perf_counter() - t0)


def start_local_s3(local_shards: str) -> tuple[str, subprocess.Popen]:
    """moto's S3 server on 127.0.0.1 with a copy of ``local_shards``; returns their URI and the server."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    credentials = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
    os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", **credentials)
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/rayssl-bench", method="PUT"), timeout=2)
            break  # the bucket exists
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError("moto_server did not start; install the dev extras (moto[server])") from None
            time.sleep(0.2)
    uri = "s3://rayssl-bench/shards"
    pafs.copy_files(str(Path(local_shards).resolve()), uri)
    return uri, server


def time_stream(shards: str, images: int, batch_size: int) -> float:
    cfg = build_config({}, [f"data.shards={shards}", f"data.max_train_images={images}"])
    return time_ray_data(cfg, read_manifest(shards), batch_size)


def object_storage_vs_local(args) -> None:
    server = None
    if args.local_s3_server:
        args.shards, server = start_local_s3(args.against)
    remote, local = read_manifest(args.shards), read_manifest(args.against)
    if remote["splits"]["train"]["rows"] != local["splits"]["train"]["rows"]:
        raise SystemExit(f"{args.shards} and {args.against} hold different shards; give the same set twice")
    try:
        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
        remote_ips = time_stream(args.shards, args.images, args.batch_size)
        local_ips = time_stream(args.against, args.images, args.batch_size)
        ray.shutdown()
    finally:
        if server is not None:
            server.terminate()
    print(f"images: {args.images}, CPU workers: {args.workers}, two views each, streamed by Ray Data")
    print(f"object storage ({args.shards} at {storage.endpoint()}): {remote_ips:8.0f} images/s")
    print(f"local disk ({args.against}): {local_ips:8.0f} images/s")
    print(f"ingest_s3 ratio={remote_ips / local_ips:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shards", default="rayssl-data/fashion-mnist")
    parser.add_argument("--against", default=None, help="the same shards on local disk, to compare object storage with")
    parser.add_argument("--local-s3-server", action="store_true", help="serve --against from a local S3 server (moto)")
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    if args.local_s3_server or "://" in args.shards:
        if not args.against:
            raise SystemExit("give --against DIR: the same shards on local disk")
        return object_storage_vs_local(args)
    cfg = build_config({}, [f"data.shards={args.shards}", f"data.max_train_images={args.images}"])
    manifest = read_manifest(args.shards)
    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    ray_ips = time_ray_data(cfg, manifest, args.batch_size)
    ray.shutdown()
    loader_ips = time_dataloader(ShardImages(args.shards, args.images, view_policy(cfg, manifest)), args.workers, args.batch_size)
    print(f"images: {args.images}, CPU workers: {args.workers}, two 28 px views each")
    print(f"Ray Data (batched views):       {ray_ips:8.0f} images/s")
    print(f"DataLoader (per-sample views):  {loader_ips:8.0f} images/s")
    print(f"ingest ratio={ray_ips / loader_ips:.2f} target=1.2")


if __name__ == "__main__":
    main()
