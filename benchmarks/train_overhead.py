"""Ray Train overhead: rayssl's training loop against a plain PyTorch DDP loop, the same steps.

    .venv/bin/python benchmarks/train_overhead.py [--images 4096] [--epochs 4] [--workers 2]

Both sides train SimCLR (small_cnn) on the same two views per image, made once and held
in memory (no augmentation cost on either side), with the same number of gloo DDP
processes (1 torch thread each), per-worker batch, optimizer, lr schedule and seed.
rayssl's side is the real ``train_loop_per_worker`` under Ray Train, reading the views
from a materialized Ray Dataset; the plain side is ``torch.multiprocessing`` + DDP over
tensors. Images/s is the step loop of each epoch after the first (warm-up), summed over
workers, as rayssl's ``train/images_per_s`` counts it. Both sides run in this one process
tree, one after the other, and the order alternates over ``--rounds``.
Last line: ``train_overhead ratio=X.XX target=0.97`` (rayssl images/s over plain images/s).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
import ray.data
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from one_process import worker_step
from procs import RaySampler, cpu_seconds, ray_processes

from pipelines import tracking
from pipelines.build import build_method, build_method_optimizer, view_policy
from pipelines.config import Config, build_config, resolve
from pipelines.data import load_labeled, read_manifest
from pipelines.train import fit
from ssl_models.recipes import MAX_WARMUP_SHARE
from ssl_models.schedules import warmup_steps


def make_views(cfg: Config, manifest: dict, images: int) -> dict[str, np.ndarray]:
    """Two SimCLR views per image, made once with rayssl's policy (what Ray Data would stream)."""
    decoded, _ = load_labeled(cfg.data.shards, "train", images)
    return view_policy(cfg, manifest)({"image": decoded})


def plain_worker(rank: int, world: int, port: int, views: dict, cfg_json: dict, manifest: dict, epochs: int, out) -> None:
    """Hand-written DDP: the same model, optimizer, schedule and per-step work as rayssl's loop."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    cfg = Config.model_validate(cfg_json)  # resolved in main(): the recipe's optimizer and head sizes
    torch.manual_seed(cfg.train.seed + rank)
    method = build_method(cfg, manifest)
    optimizer = build_method_optimizer(cfg, method)
    model = torch.nn.parallel.DistributedDataParallel(method)
    mine = {k: torch.from_numpy(np.ascontiguousarray(v[rank::world])) for k, v in views.items()}
    per_worker = cfg.data.batch_size // world
    steps_per_epoch = len(mine["view_0"]) // per_worker
    total = epochs * steps_per_epoch
    warmup = warmup_steps(cfg.optim.warmup_epochs, steps_per_epoch, total, MAX_WARMUP_SHARE)
    step, rates = 0, []
    for _ in range(epochs):
        model.train()
        t0 = time.perf_counter()
        for i in range(steps_per_epoch):
            batch = {k: v[i * per_worker : (i + 1) * per_worker] for k, v in mine.items()}  # uint8 views
            worker_step(method, optimizer, batch, cfg, step, total, warmup, model=model)  # .item() waits for the step
            step += 1
        seconds = torch.tensor([time.perf_counter() - t0])
        dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
        rates.append(steps_per_epoch * per_worker * world / seconds.item())
    if rank == 0:
        out.put(rates)
    dist.destroy_process_group()


def run_plain(views, cfg: Config, manifest: dict, workers: int, epochs: int) -> list[float]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    args = (workers, port, views, cfg.model_dump(mode="json"), manifest, epochs, out)
    procs = [ctx.Process(target=plain_worker, args=(rank, *args)) for rank in range(workers)]
    for p in procs:
        p.start()
    rates = out.get(timeout=1800)
    for p in procs:
        p.join()
    return rates


def run_rayssl(cfg: Config, manifest: dict, runs_dir: Path, views: dict | None = None) -> dict:
    """rayssl's Ray Train loop. ``views``: held in memory, else streamed from the shards.

    Returns per-epoch ``images_per_s`` and ``data_wait_frac``, and the CPU seconds that the
    training workers and Ray's other processes (data tasks, coordinators, controller) used.
    """
    dataset = None
    if views is not None:
        rows = [{k: v[i] for k, v in views.items()} for i in range(len(views["view_0"]))]
        dataset = ray.data.from_items(rows).materialize()
    uri = tracking.resolve_tracking_uri(None, runs_dir)
    run_id = tracking.start_run(uri, "benchmarks", "in-memory" if views is not None else "streamed", {})
    before = {pid: cpu_seconds(pid) or 0.0 for pid in ray_processes()}
    sampler = RaySampler()
    sampler.start()
    fit(cfg, manifest, tracking.Run(uri, run_id), f"bench-{time.time_ns()}", cfg.storage("ray"), dataset=dataset)
    sampler.stop()
    tracking.end_run(uri, run_id, "FINISHED")
    used = {pid: cpu - before.get(pid, 0.0) for pid, cpu in sampler.cpu.items()}
    out_titles = sampler.cpu_by_title(before)
    out = {
        k: [v for _, v in sorted(tracking.metric_history(uri, run_id, f"train/{k}"))] for k in ("images_per_s", "data_wait_frac")
    }
    out["trainer_cpu_s"] = sum(c for pid, c in used.items() if sampler.is_trainer(pid))
    out["other_ray_cpu_s"] = sum(c for pid, c in used.items() if not sampler.is_trainer(pid))
    out["cpu_by_title"] = out_titles
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shards", default="rayssl-data/fashion-mnist")
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2, help="alternate the two sides this many times")
    args = parser.parse_args()
    runs_dir = Path(tempfile.mkdtemp(prefix="rayssl-bench-"))
    cfg = build_config(
        {},
        [
            f"data.shards={args.shards}",
            f"data.batch_size={args.batch_size}",
            f"data.max_train_images={args.images}",
            f"train.epochs={args.epochs}",
            f"train.num_workers={args.workers}",
            "probe.epoch_knn_images=0",
            "probe.rankme_images=0",
            f"tracking.runs_dir={runs_dir}",
        ],
    )
    cfg = resolve(cfg)  # fit() takes a resolved config; its paths are absolute for the workers
    manifest = read_manifest(cfg.data.shards)
    views = make_views(cfg, manifest, args.images)
    ray.init(num_cpus=args.workers, include_dashboard=True, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    plain, rayssl, waits, cpu = [], [], [], []
    for r in range(args.rounds):
        order = [("plain", plain), ("rayssl", rayssl)] if r % 2 == 0 else [("rayssl", rayssl), ("plain", plain)]
        for side, into in order:
            if side == "rayssl":
                got = run_rayssl(cfg, manifest, runs_dir, views)
                rates = got["images_per_s"]
                waits += got["data_wait_frac"][1:]
                cpu.append((got["trainer_cpu_s"], got["other_ray_cpu_s"]))
                print(
                    "  CPU seconds by Ray process: " + ", ".join(f"{t} {c:.0f}" for t, c in got["cpu_by_title"].items() if c >= 1)
                )
            else:
                rates = run_plain(views, cfg, manifest, args.workers, args.epochs)
            into += rates[1:]  # the first epoch warms up
            print(f"round {r + 1} {side:6s}: " + " ".join(f"{x:.0f}" for x in rates[1:]) + " images/s", flush=True)
    ray.shutdown()
    p, q = statistics.median(plain), statistics.median(rayssl)
    print(
        f"images: {args.images}, workers: {args.workers} (gloo, 1 torch thread each), batch {args.batch_size}, SimCLR small_cnn"
    )
    print(f"plain PyTorch DDP loop: {p:8.0f} images/s (median of {len(plain)} epochs)")
    print(f"rayssl Ray Train loop:  {q:8.0f} images/s (median of {len(rayssl)} epochs)")
    print(f"rayssl workers waited for data {100 * statistics.median(waits):.1f}% of each epoch (median)")
    trainer_cpu, other_cpu = (sum(c) for c in zip(*cpu, strict=True))
    print(f"CPU seconds during rayssl's runs: training workers {trainer_cpu:.0f}, Ray's other processes {other_cpu:.0f}")
    print(f"train_overhead ratio={q / p:.2f} target=0.97")


if __name__ == "__main__":
    main()
