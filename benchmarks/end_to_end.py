"""Data starvation: pretraining fed by the streamed pipeline against the same trainer fed views held in memory.

    .venv/bin/python benchmarks/end_to_end.py [--images 8192] [--epochs 3] [--augment-on cpu|device]

Both sides run rayssl's Ray Train loop (SimCLR, small_cnn, 2 workers) for the same steps.
"streamed": Ray Data reads the Parquet shards, decodes the PNGs and (with ``cpu``) makes the
two views in CPU tasks, every epoch anew; with ``device`` the workers make the views on
their device. "in memory": the same number of views made once beforehand, materialized in
Ray's object store, so the trainer never waits for data. The ratio streamed/in-memory says
how much of the trainer's speed the data pipeline keeps; images/s counts epochs after the
first. Last line: ``end_to_end ratio=X.XX target=0.95``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import ray
import ray.data
from train_overhead import make_views, run_rayssl

from pipelines.config import build_config
from pipelines.data import read_manifest


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shards", default="rayssl-data/fashion-mnist")
    parser.add_argument("--images", type=int, default=8192)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--backbone", default="small_cnn")
    parser.add_argument("--augment-on", choices=["cpu", "device"], default="cpu")
    parser.add_argument("--gpu", action="store_true", help="train on GPUs (one per worker)")
    args = parser.parse_args()
    runs_dir = Path(tempfile.mkdtemp(prefix="rayssl-bench-"))
    overrides = [
        f"data.shards={args.shards}",
        f"data.batch_size={args.batch_size}",
        f"data.max_train_images={args.images}",
        f"method.backbone={args.backbone}",
        f"train.epochs={args.epochs}",
        f"train.num_workers={args.workers}",
        f"train.use_gpu={str(args.gpu).lower()}",
        "probe.epoch_knn_images=0",
        f"tracking.runs_dir={runs_dir}",
    ]
    cfg = build_config({}, overrides)
    cfg.data.shards = str(Path(cfg.data.shards).resolve())
    manifest = read_manifest(cfg.data.shards)
    in_memory_views = make_views(cfg, manifest, args.images)
    streamed_cfg = build_config({}, [*overrides, f"data.augment_on={args.augment_on}"])
    streamed_cfg.data.shards = cfg.data.shards
    ray.init(num_gpus=args.workers if args.gpu else 0, include_dashboard=True, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    memory = run_rayssl(cfg, manifest, runs_dir, in_memory_views)["images_per_s"][1:]
    print("in memory: " + " ".join(f"{x:.0f}" for x in memory) + " images/s", flush=True)
    streamed_run = run_rayssl(streamed_cfg, manifest, runs_dir)
    streamed = streamed_run["images_per_s"][1:]
    print("streamed:  " + " ".join(f"{x:.0f}" for x in streamed) + " images/s", flush=True)
    ray.shutdown()
    m, s = statistics.median(memory), statistics.median(streamed)
    device = "GPU" if args.gpu else "CPU"
    print(f"images: {args.images}, workers: {args.workers} on {device}, batch {args.batch_size}, {args.backbone}")
    print(f"in-memory views:                     {m:8.0f} images/s")
    print(f"streamed + augment_on={args.augment_on:6s}:       {s:8.0f} images/s")
    wait = statistics.median(streamed_run["data_wait_frac"][1:])
    print(
        f"streamed run: workers waited for data {100 * wait:.1f}% of each epoch; CPU seconds: training workers "
        f"{streamed_run['trainer_cpu_s']:.0f}, Ray Data and Ray's other processes {streamed_run['other_ray_cpu_s']:.0f}"
    )
    print(
        "CPU seconds by Ray process (streamed): "
        + ", ".join(f"{t} {c:.0f}" for t, c in streamed_run["cpu_by_title"].items() if c >= 1)
    )
    print(f"end_to_end ratio={s / m:.2f} target=0.95")


if __name__ == "__main__":
    main()
