"""Pretrain every registered method for the same budget on Fashion-MNIST and tabulate the probes.

    .venv/bin/python benchmarks/methods_fmnist.py [--epochs 1] [--train-images 10000] [--methods simclr,byol]

Each method runs through the same `pipelines.train.pretrain` as `rayssl pretrain`
(2 Ray Train workers, Ray Data views, probes, one MLflow run each, experiment
`methods-fmnist`). RGB-only methods are skipped on this 1-channel data and listed as such.
The last line reads `methods_fmnist ratio=X.XX target=1.0`: the best method's linear
top-1 over SimCLR's, measured in the same run.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import ssl_models
from pipelines.config import build_config, with_recipe
from pipelines.data import read_manifest, write_shards
from pipelines.report import format_table
from pipelines.train import ensure_ray, pretrain


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shards", default="rayssl-data/fashion-mnist")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--train-images", type=int, default=10_000)
    parser.add_argument("--probe-images", type=int, default=10_000)
    parser.add_argument("--methods", default=",".join(ssl_models.list_methods()))
    parser.add_argument("--runs-dir", default="rayssl-runs")
    args = parser.parse_args()
    if not (Path(args.shards) / "manifest.json").is_file():
        write_shards("fashion-mnist", args.shards)
    channels = read_manifest(args.shards)["channels"]
    ensure_ray()
    rows, results = [], {}
    for name in args.methods.split(","):
        cls = ssl_models.method_class(name)
        if cls.requires_rgb and channels != 3:
            rows.append([name, "skipped: needs RGB images (Fashion-MNIST is gray)", "", "", "", "", "", ""])
            continue
        backbone = "vit_tiny" if cls.tiny_backbone.startswith("vit") else "small_cnn"
        cfg = build_config(
            {},
            [
                f"data.shards={args.shards}",
                f"data.max_train_images={args.train_images}",
                f"method.name={name}",
                f"method.backbone={backbone}",
                f"train.epochs={args.epochs}",
                f"probe.max_train_images={args.probe_images}",
                f"tracking.runs_dir={args.runs_dir}",
                "tracking.experiment=methods-fmnist",
            ],  # everything else from the method's recipe (CPU head sizes included)
        )
        t0 = time.perf_counter()
        try:
            m = pretrain(cfg).metrics
        except Exception as err:  # one broken method must not hide the others' figures
            rows.append([name, f"failed: {type(err).__name__}: {str(err).splitlines()[0][:80]}", "", "", "", "", "", ""])
            continue
        results[name] = m
        rows.append(
            [
                name,
                f"{backbone}, {cfg_recipe(cfg)}",
                f"{m['probe/linear_top1']:.4f}",
                f"{m['probe/knn_top1']:.4f}",
                f"{m['baseline/random_init_linear_top1']:.4f}",
                f"{m['baseline/pixels_linear_top1']:.4f}",
                f"{m.get('train/images_per_s', float('nan')):.0f}",
                f"{time.perf_counter() - t0:.0f}",
            ]
        )
    print(f"\nbudget: {args.epochs} epoch(s) on {args.train_images} Fashion-MNIST train images, probes on {args.probe_images}")
    headers = ["method", "backbone, optimizer", "linear top-1", "kNN top-1", "random-init linear", "pixels linear"]
    print(format_table([*headers, "images/s", "wall s"], rows))
    if "simclr" in results and results:
        best = max(results, key=lambda k: results[k]["probe/linear_top1"])
        ratio = results[best]["probe/linear_top1"] / results["simclr"]["probe/linear_top1"]
        print(f"best: {best}")
        print(f"methods_fmnist ratio={ratio:.2f} target=1.0")


def cfg_recipe(cfg) -> str:
    """The optimizer and head width the method's recipe resolves to, for the table."""
    resolved, _ = with_recipe(cfg)
    width = resolved.method.projection_dim
    return f"{resolved.optim.name} {resolved.optim.lr:g}" + (f", {width}-d head" if width else "")


if __name__ == "__main__":
    main()
