"""Peak memory of a pretraining run over 1x and 4x the shards: streaming keeps it flat.

    .venv/bin/python benchmarks/memory.py [--images 12000] [--epochs 1]

Writes Fashion-MNIST shards of N and 4N images, then pretrains SimCLR (small_cnn, 2
workers, augment_on=cpu) over each in a fresh driver process with a fresh Ray instance:
the 4N shards for ``--epochs`` epochs and the N shards for 4x as many, so both runs take the
same steps and only the amount of data differs (a Ray worker's memory settles over its first
epochs, whatever the data: comparing runs of different lengths would measure that instead).
Every Ray process's peak RSS is sampled (``VmHWM`` in /proc, so short peaks between samples
count too), and the object store's bytes in use (all nodes). Reported per
role: the driver, each training worker, the largest other Ray process (Ray Data tasks, the
split coordinator). RSS counts the pages of Ray's shared object store that a process has
touched, so the workers' own memory (``RssAnon``, sampled) is shown beside it. Linux only.
Last line: ``memory ratio=X.XX target=1.10`` (largest training-worker peak RSS, 4x over 1x).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from procs import RaySampler, peak_rss_mib


class ObjectStoreSampler(threading.Thread):
    """The largest object-store usage (MiB, all nodes) seen while running, sampled every second."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak_mib = 0.0
        self.done = threading.Event()

    def run(self) -> None:
        from ray._private.internal_api import memory_summary

        while not self.done.wait(1.0):
            found = re.search(r"Plasma memory usage (\d+) MiB", memory_summary(stats_only=True))
            if found:
                self.peak_mib = max(self.peak_mib, float(found.group(1)))

    def stop(self) -> None:
        self.done.set()
        self.join()


def child(shards: str, epochs: int) -> None:
    """One pretraining run over ``shards``; prints the peaks as JSON on its last line."""
    import ray

    from pipelines import tracking
    from pipelines.config import build_config, resolve
    from pipelines.data import read_manifest
    from pipelines.train import fit

    runs_dir = Path(tempfile.mkdtemp(prefix="rayssl-bench-"))
    cfg = build_config(
        {},
        [
            f"data.shards={shards}",
            f"train.epochs={epochs}",
            "probe.epoch_knn_images=0",
            "probe.rankme_images=0",
            f"tracking.runs_dir={runs_dir}",
        ],
    )
    cfg = resolve(cfg)  # fit() takes a resolved config
    manifest = read_manifest(shards)
    ray.init(num_cpus=2, include_dashboard=True, log_to_driver=False)
    sampler = RaySampler()
    sampler.start()
    store = ObjectStoreSampler()
    store.start()
    uri = tracking.resolve_tracking_uri(None, runs_dir)
    run_id = tracking.start_run(uri, "memory", Path(shards).name, {})
    fit(cfg, manifest, tracking.Run(uri, run_id), f"memory-{time.time_ns()}", cfg.storage("ray"))
    tracking.end_run(uri, run_id, "FINISHED")
    sampler.stop()
    store.stop()
    workers = [mib for pid, mib in sampler.peaks.items() if sampler.is_trainer(pid)]
    others = [mib for pid, mib in sampler.peaks.items() if not sampler.is_trainer(pid)]
    private = [mib for pid, mib in sampler.private_peaks.items() if sampler.is_trainer(pid)]
    ray.shutdown()
    result = {
        "driver": peak_rss_mib(os.getpid()),
        "workers": sorted(workers),
        "other_max": max(others, default=0.0),
        "workers_private": sorted(private),
        "object_store_max": store.peak_mib,
    }
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=12_000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.epochs)
        return
    from pipelines.shard import write_shards

    root = Path(tempfile.mkdtemp(prefix="rayssl-memory-"))
    peaks = {}
    for times in (1, 4):
        shards = root / f"x{times}"
        epochs = args.epochs * 4 // times  # the same steps for both: only the amount of data differs
        write_shards("fashion-mnist", shards, rows_per_shard=1000, limit=times * args.images)
        proc = subprocess.run(
            [sys.executable, __file__, "--child", str(shards), "--epochs", str(epochs)],
            capture_output=True,
            text=True,
            check=True,
        )
        peaks[times] = json.loads(proc.stdout.strip().splitlines()[-1])
        p = peaks[times]
        workers = ", ".join(f"{w:.0f}" for w in p["workers"])
        print(
            f"{times}x shards ({times * args.images} images, {epochs} epochs): driver {p['driver']:.0f} MiB, "
            f"training workers {workers} MiB (own memory, without shared object-store pages: "
            f"{', '.join(f'{w:.0f}' for w in p['workers_private'])} MiB), largest other Ray process {p['other_max']:.0f} MiB, "
            f"object store in use at most {p['object_store_max']:.0f} MiB",
            flush=True,
        )
    worker_ratio = max(peaks[4]["workers"]) / max(peaks[1]["workers"])
    private_ratio = max(peaks[4]["workers_private"]) / max(peaks[1]["workers_private"])
    print(f"driver ratio 4x/1x: {peaks[4]['driver'] / peaks[1]['driver']:.2f}")
    print(f"training workers' own memory (RssAnon) 4x/1x: {private_ratio:.2f}")
    print(f"memory ratio={worker_ratio:.2f} target=1.10")


if __name__ == "__main__":
    main()
