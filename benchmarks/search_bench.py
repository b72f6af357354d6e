"""What the search benchmarks share: their command-line arguments and the base config of their trials."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipelines.config import Config, build_config
from pipelines.shard import write_shards


def search_arguments(trials: int, epochs: int, train_images: int) -> argparse.ArgumentParser:
    """Arguments of a benchmark that runs searches on Fashion-MNIST shards (sharded when missing)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--shards", default="rayssl-data/fashion-mnist")
    parser.add_argument("--trials", type=int, default=trials)
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--train-images", type=int, default=train_images)
    parser.add_argument("--probe-images", type=int, default=10_000)
    parser.add_argument("--runs-dir", default="rayssl-runs")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def search_base_config(args: argparse.Namespace, *overrides: str) -> Config:
    """The trials' base config: ``--train-images`` for ``--epochs``, probes on ``--probe-images``, no baselines."""
    if not (Path(args.shards) / "manifest.json").is_file():
        write_shards("fashion-mnist", args.shards)
    return build_config(
        {},
        [
            f"data.shards={args.shards}",
            f"data.max_train_images={args.train_images}",
            f"train.epochs={args.epochs}",
            f"probe.max_train_images={args.probe_images}",
            "probe.baselines=false",
            f"tracking.runs_dir={args.runs_dir}",
            *overrides,
        ],
    )
