"""A class-folder tree against the built-in Fashion-MNIST source: the same budget, the same recipe, one run.

    .venv/bin/python benchmarks/class_folders.py [--per-class 2500] [--images 20000] [--probe-images 5000]

Fashion-MNIST's train images are written as an ImageNet-style tree of PNG files
(``root/<class>/<image>.png``, ``--per-class`` a class), whose sorted walk comes class by class,
and sharded with ``rayssl shard --mode L --size 28``. Then SimCLR pretrains with
``configs/simclr_fmnist.yaml`` (2 epochs) on ``--images`` train images of each source, and the
probes fit on ``--probe-images`` labeled train images and report on as many test images. Both
runs share one Ray instance and one MLflow store. Last line:
``class_folders ratio=X.XX`` (the tree's linear top-1 over the built-in source's; 1.0 = no
difference; before #24 it was 0.35: 0.276 against 0.788).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.config import load_config  # noqa: E402
from pipelines.shard import write_shards  # noqa: E402
from pipelines.train import pretrain  # noqa: E402
from tests.conftest import write_class_tree  # noqa: E402

SHOWN = ("probe/linear_top1", "probe/knn_top1", "probe/train_classes", "train/images_per_s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--per-class", type=int, default=2500)
    parser.add_argument("--images", type=int, default=20_000, help="train images per epoch, each source")
    parser.add_argument("--probe-images", type=int, default=5000, help="labeled images the probes fit on (and test on)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--builtin", default="rayssl-data/fashion-mnist", help="shards of the built-in source")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rayssl-class-folders-"))
    t0 = time.perf_counter()
    tree = write_class_tree(work / "tree", args.per_class)
    result = write_shards(str(tree), work / "tree-shards", mode="L", size=28)
    print(f"tree of {10 * args.per_class} PNG files written and sharded in {time.perf_counter() - t0:.0f} s", flush=True)
    if not Path(args.builtin, "manifest.json").is_file():
        write_shards("fashion-mnist", args.builtin)
    found = {}
    for name, shards in (("class-folder tree", result.out_dir), ("built-in source", str(Path(args.builtin).resolve()))):
        cfg = load_config(
            "configs/simclr_fmnist.yaml",
            [
                f"data.shards={shards}",
                f"data.max_train_images={args.images}",
                f"train.epochs={args.epochs}",
                f"probe.max_train_images={args.probe_images}",
                f"probe.max_test_images={args.probe_images}",
                "probe.labels_per_class=[]",
                f"tracking.runs_dir={work / 'runs'}",
                "tracking.experiment=class-folders",
            ],
        )
        found[name] = pretrain(cfg).metrics
        print(f"{name}: " + "  ".join(f"{k} {found[name].get(k, float('nan')):.3f}" for k in SHOWN), flush=True)
    tree_top1, builtin_top1 = (found[n]["probe/linear_top1"] for n in ("class-folder tree", "built-in source"))
    print(f"linear top-1: tree {tree_top1:.3f}, built-in {builtin_top1:.3f}, difference {tree_top1 - builtin_top1:+.3f}")
    print(f"class_folders ratio={tree_top1 / builtin_top1:.2f}")


if __name__ == "__main__":
    main()
