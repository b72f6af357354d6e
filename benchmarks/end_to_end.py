"""Data starvation: pretraining fed by the streamed pipeline against the same trainer fed views held in memory.

    .venv/bin/python benchmarks/end_to_end.py [--images 8192] [--epochs 3] [--rounds 2] [--augment-on cpu|device]
        [--shuffle-buffer 1024]

Both sides run rayssl's Ray Train loop (SimCLR, small_cnn, 2 workers) for the same steps.
"streamed": Ray Data reads the Parquet shards, decodes the PNGs and (with ``cpu``) makes the
two views in CPU tasks, every epoch anew; with ``device`` the workers make the views on
their device. "in memory": the same number of views made once beforehand, materialized in
Ray's object store, so the trainer never waits for data, and taken in order (no shuffle buffer).
"streamed" mixes rows in ``--shuffle-buffer`` rows per worker (``data.shuffle_buffer``). The ratio streamed/in-memory says
how much of the trainer's speed the data pipeline keeps; images/s counts epochs after the
first (medians over ``--rounds`` runs of each side, their order alternating). Last line: ``end_to_end ratio=X.XX target=0.95``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import ray
import ray.data
from train_overhead import make_views, run_rayssl

from pipelines.config import build_config, resolve
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
    parser.add_argument("--rounds", type=int, default=2, help="alternate the two sides this many times")
    parser.add_argument("--shuffle-buffer", type=int, default=1024, help="data.shuffle_buffer of the streamed side")
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
        "probe.rankme_images=0",
        f"tracking.runs_dir={runs_dir}",
    ]
    in_memory_overrides = [*overrides, "data.shuffle_buffer=0"]
    cfg = resolve(build_config({}, in_memory_overrides))  # fit() takes a resolved config (absolute paths, recipe)
    manifest = read_manifest(cfg.data.shards)
    in_memory_views = make_views(cfg, manifest, args.images)
    streamed_cfg = resolve(
        build_config({}, [*overrides, f"data.augment_on={args.augment_on}", f"data.shuffle_buffer={args.shuffle_buffer}"])
    )
    ray.init(num_gpus=args.workers if args.gpu else 0, include_dashboard=True, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    runs: dict[str, list[dict]] = {"in memory": [], "streamed": []}
    for r in range(args.rounds):  # alternate the order: neither side always runs on a fresh Ray
        for side in ("in memory", "streamed") if r % 2 == 0 else ("streamed", "in memory"):
            views = in_memory_views if side == "in memory" else None
            run = run_rayssl(cfg if views is not None else streamed_cfg, manifest, runs_dir, views)
            runs[side].append(run)
            print(f"round {r + 1} {side:9s}: " + " ".join(f"{x:.0f}" for x in run["images_per_s"][1:]) + " images/s", flush=True)
    ray.shutdown()
    streamed_runs = runs["streamed"]

    def after_warmup(side_runs: list[dict], key: str) -> list[float]:  # the first epoch of each run warms up
        return [x for run in side_runs for x in run[key][1:]]

    m = statistics.median(after_warmup(runs["in memory"], "images_per_s"))
    s = statistics.median(after_warmup(streamed_runs, "images_per_s"))
    waits = after_warmup(streamed_runs, "data_wait_frac")
    device = "GPU" if args.gpu else "CPU"
    print(f"images: {args.images}, workers: {args.workers} on {device}, batch {args.batch_size}, {args.backbone}")
    print(f"in-memory views:                     {m:8.0f} images/s")
    print(f"streamed + augment_on={args.augment_on:6s}, shuffle buffer {args.shuffle_buffer}: {s:8.0f} images/s")
    trainer_cpu = sum(run["trainer_cpu_s"] for run in streamed_runs)
    other_cpu = sum(run["other_ray_cpu_s"] for run in streamed_runs)
    print(
        f"streamed runs: workers waited for data {100 * statistics.median(waits):.1f}% of each epoch (median); CPU "
        f"seconds: training workers {trainer_cpu:.0f}, Ray Data and Ray's other processes {other_cpu:.0f}"
    )
    by_title: dict[str, float] = {}
    for run in streamed_runs:
        for title, cpu in run["cpu_by_title"].items():
            by_title[title] = by_title.get(title, 0.0) + cpu
    print("CPU seconds by Ray process (streamed): " + ", ".join(f"{t} {c:.0f}" for t, c in by_title.items() if c >= 1))
    print(f"end_to_end ratio={s / m:.2f} target=0.95")


if __name__ == "__main__":
    main()
