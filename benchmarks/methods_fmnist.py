"""The quality table: every registered method with its recipe, the same budget, two seeds, on Fashion-MNIST.

    .venv/bin/python benchmarks/methods_fmnist.py [--epochs 2] [--train-images 30000] [--seeds 0,1]
                                                  [--methods simclr,byol]

Each run goes through the same `pipelines.train.pretrain` as `rayssl pretrain` (2 Ray Train
workers, Ray Data views, probes, one MLflow run each, experiment `methods-fmnist`), with
nothing set but the method, its small-image backbone, the budget and `train.seed`: everything
else comes from the method's recipe (`rayssl recipe NAME`). RGB-only methods are skipped on
this 1-channel data and listed as such. Per method it prints the mean linear and kNN top-1
over the seeds with their spread (max - min), and the baselines measured in the same runs:
raw pixels and a random-init encoder of the same architecture, through the same probe.
The last line reads `methods_fmnist worst_vs_pixels_points=X best_linear=Y best_knn=Z`:
the lowest (mean linear - pixels) over the methods that ran, in points, and the best means.

`--resume` reuses every FINISHED run of the experiment with the same method, seed and budget
(an interrupted table continues where it stopped); `--report-only` trains nothing and tabulates
the runs that exist (the seeds column says how many each row averages).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import ssl_models
from pipelines import tracking
from pipelines.cluster import ensure_ray
from pipelines.config import build_config, resolve
from pipelines.data import read_manifest
from pipelines.results.tables import format_table, mean_spread
from pipelines.shard import write_shards
from pipelines.train import pretrain

EXPERIMENT = "methods-fmnist"

HEADERS = [
    "method",
    "backbone, optimizer",
    "linear top-1",
    "kNN top-1",
    "random-init linear",
    "pixels linear",
    "vs pixels (pts)",
    "vs random init (pts)",
    "images/s",
    "wall s / seed",
    "seeds",
]


def column(runs: list[dict], key: str) -> list[float]:
    return [metrics[key] for metrics in runs]


def method_config(name: str, seed: int, args) -> object:
    backbone = "vit_tiny" if ssl_models.method_class(name).tiny_backbone.startswith("vit") else "small_cnn"
    return build_config(
        {},
        [
            f"data.shards={args.shards}",
            f"data.max_train_images={args.train_images}",
            f"method.name={name}",
            f"method.backbone={backbone}",
            f"train.epochs={args.epochs}",
            f"train.seed={seed}",
            f"probe.max_train_images={args.probe_images}",
            f"tracking.runs_dir={args.runs_dir}",
            f"tracking.experiment={EXPERIMENT}",
        ],  # everything else from the method's recipe (CPU head sizes included)
    )


def finished_run(uri: str, name: str, seed: int, args) -> dict | None:
    """Metrics of the newest FINISHED run of this method, seed and budget, if the experiment has one."""
    same = {
        "method.name": name,
        "train.seed": seed,
        "train.epochs": args.epochs,
        "data.max_train_images": args.train_images,
        "probe.max_train_images": args.probe_images,
    }
    query = " and ".join(f"params.`{k}` = '{v}'" for k, v in same.items()) + " and attributes.status = 'FINISHED'"
    runs = sorted(tracking.search_runs(uri, EXPERIMENT, query), key=lambda r: -r.info.start_time)
    done = [r for r in runs if "probe/linear_top1" in r.data.metrics]
    return dict(done[0].data.metrics) if done else None


def recipe_summary(cfg) -> str:
    """The backbone, optimizer and head width the method's recipe resolves to, for the table."""
    resolved = resolve(cfg)
    width = resolved.method.projection_dim
    head = f", {width}-d head" if width else ""
    return f"{resolved.method.backbone}, {resolved.optim.name} {resolved.optim.lr:g}{head}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shards", default="rayssl-data/fashion-mnist")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-images", type=int, default=30_000)
    parser.add_argument("--probe-images", type=int, default=20_000, help="labeled train images the probes fit on")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--methods", default=",".join(ssl_models.list_methods()))
    parser.add_argument("--runs-dir", default="rayssl-runs")
    parser.add_argument("--resume", action="store_true", help="reuse FINISHED runs of the same method, seed and budget")
    parser.add_argument("--report-only", action="store_true", help="train nothing; tabulate the runs that exist")
    args = parser.parse_args()
    uri = tracking.resolve_tracking_uri(None, args.runs_dir)
    if not (Path(args.shards) / "manifest.json").is_file():
        write_shards("fashion-mnist", args.shards)
    channels = read_manifest(args.shards)["channels"]
    seeds = [int(s) for s in args.seeds.split(",")]
    if not args.report_only:
        ensure_ray()
    rows, means = [], {}
    for name in args.methods.split(","):
        if ssl_models.method_class(name).requires_rgb and channels != 3:
            rows.append([name, "skipped: needs RGB images (Fashion-MNIST is gray)", *[""] * (len(HEADERS) - 2)])
            continue
        runs, wall, failure = [], [], None
        for seed in seeds:
            cfg = method_config(name, seed, args)
            earlier = finished_run(uri, name, seed, args) if args.resume or args.report_only else None
            if earlier is not None:
                runs.append(earlier)
                wall.append(earlier.get("wall_s", float("nan")))
                print(f"{name} seed {seed}: reusing the finished run", flush=True)
                continue
            if args.report_only:
                continue  # tabulate the seeds that ran; the seeds column says how many
            t0 = time.perf_counter()
            try:
                runs.append(pretrain(cfg).metrics)
            except Exception as err:  # one broken method must not hide the others' figures
                failure = f"failed (seed {seed}): {type(err).__name__}: {str(err).splitlines()[0][:80]}"
                break
            wall.append(time.perf_counter() - t0)
            print(f"{name} seed {seed}: linear {runs[-1]['probe/linear_top1']:.4f}", flush=True)
        if failure or not runs:
            rows.append([name, failure or "not run", *[""] * (len(HEADERS) - 2)])
            continue

        linear, knn = column(runs, "probe/linear_top1"), column(runs, "probe/knn_top1")
        pixels, random_init = column(runs, "baseline/pixels_linear_top1"), column(runs, "baseline/random_init_linear_top1")
        means[name] = {"linear": float(np.mean(linear)), "knn": float(np.mean(knn)), "pixels": float(np.mean(pixels))}
        rows.append(
            [
                name,
                recipe_summary(cfg),
                mean_spread(linear, 3),
                mean_spread(knn, 3),
                mean_spread(random_init, 3),
                f"{np.mean(pixels):.3f}",
                f"{100 * (np.mean(linear) - np.mean(pixels)):+.1f}",
                f"{100 * (np.mean(linear) - np.mean(random_init)):+.1f}",
                f"{np.mean(column(runs, 'train/images_per_s')):.0f}",
                f"{np.mean(wall):.0f}",
                str(len(runs)),
            ]
        )
    rows.sort(key=lambda r: -float(r[2].split()[0]) if r[2] else 1.0)
    print(
        f"\nbudget: {args.epochs} epoch(s) on {args.train_images:,} Fashion-MNIST train images per run, seeds {args.seeds}; "
        f"probes fit on {args.probe_images:,} labeled train images and scored on the 10,000 test images"
    )
    print(format_table(HEADERS, rows))
    if means:
        worst = min(100 * (m["linear"] - m["pixels"]) for m in means.values())
        best_linear = max(m["linear"] for m in means.values())
        best_knn = max(m["knn"] for m in means.values())
        print(f"methods_fmnist worst_vs_pixels_points={worst:.1f} best_linear={best_linear:.3f} best_knn={best_knn:.3f}")


if __name__ == "__main__":
    main()
