"""Two-view augmentation throughput: rayssl's Ray Data path against a torch DataLoader.

    .venv/bin/python benchmarks/ingest.py [--images 20000] [--workers 2]

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
import time

import numpy as np
import pyarrow.dataset as pads
import ray
import torch
from PIL import Image

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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shards", default="rayssl-data/fashion-mnist")
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
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
