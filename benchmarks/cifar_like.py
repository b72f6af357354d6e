"""A benchmark config run end to end on CPU with its sizes cut down: the path a CIFAR-10 reproduction takes.

    .venv/bin/python benchmarks/cifar_like.py [--config configs/cifar10_resnet18.yaml] [--cifar PATH]
        [--images 600] [--epochs 1] [--method simclr]

``--cifar`` is a ``cifar-10-batches-py`` folder (``--config configs/cifar100_resnet18.yaml``: a
``cifar-100-python`` one). Without it, one is written in the real format (pickled ``data_batch_1..5``,
``test_batch``, ``batches.meta``) from Fashion-MNIST's real images, padded to 32 px and made RGB, so the
path runs on this offline machine. Then, as a user would: ``rayssl shard cifar10:PATH``, the config's
run with ``--images`` train images, one epoch, one CPU worker pair and ResNet-18 (the config's backbone,
CIFAR stem) at 32 px, its probes, and MLflow. Last line: ``cifar_like ratio=X.XX``, the trained
encoder's linear top-1 over its random-init twin's, both probed in the same run (1.0 = nothing learnt).

This checks the path, not the published figure: solo-learn's 90.74 (SimCLR, ResNet-18, CIFAR-10,
1,000 epochs) needs the real CIFAR-10 and 1,000 epochs on a GPU; see the config's header.
"""

from __future__ import annotations

import argparse
import pickle
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.config import load_config  # noqa: E402
from pipelines.data import FASHION_MNIST_CLASSES, read_fashion_mnist  # noqa: E402
from pipelines.shard import write_shards  # noqa: E402
from pipelines.train import pretrain  # noqa: E402

SHOWN = ("probe/linear_top1", "probe/knn_top1", "baseline/random_init_linear_top1", "train/images_per_s")


def cifar_rows(images: np.ndarray) -> np.ndarray:
    """28 px grey images as CIFAR's rows: 32 x 32 RGB (padded by 2 px), flattened channel-major (N, 3072)."""
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2)))
    return np.repeat(padded[:, None], 3, axis=1).reshape(len(images), 3 * 32 * 32)


def write_cifar10_folder(root: Path, train: int, test: int) -> Path:
    """A ``cifar-10-batches-py`` folder of Fashion-MNIST images, in CIFAR-10's own file format."""
    root.mkdir(parents=True, exist_ok=True)
    for name, split, count, parts in (("data_batch", "train", train, 5), ("test_batch", "test", test, 1)):
        images, labels = read_fashion_mnist(split)
        rows, labels = cifar_rows(images[:count]), [int(x) for x in labels[:count]]
        for part, index in enumerate(np.array_split(np.arange(count), parts)):
            batch = {b"batch_label": b"fashion-mnist as cifar-10", b"labels": [labels[i] for i in index]}
            batch.update({b"data": rows[index], b"filenames": [f"{split}_{i:05d}.png".encode() for i in index]})
            file = f"{name}_{part + 1}" if parts > 1 else name
            (root / file).write_bytes(pickle.dumps(batch))
    meta = {b"label_names": [c.encode() for c in FASHION_MNIST_CLASSES], b"num_cases_per_batch": train // 5}
    (root / "batches.meta").write_bytes(pickle.dumps(meta))
    return root


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/cifar10_resnet18.yaml")
    parser.add_argument("--cifar", default=None, help="a cifar-10-batches-py (or cifar-100-python) folder")
    parser.add_argument("--images", type=int, default=600, help="train images the run pretrains on")
    parser.add_argument("--probe-images", type=int, default=600, help="labeled images the probes fit on (and test on)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--method", default=None, help="method.name (default: the config's)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rayssl-cifar-like-"))
    name = "cifar100" if "cifar100" in args.config else "cifar10"
    folder = args.cifar or str(write_cifar10_folder(work / "cifar-10-batches-py", 5 * args.images, 2 * args.probe_images))
    if args.cifar is None and name == "cifar100":
        parser.error("--config cifar100: give --cifar PATH (the stand-in folder is written in CIFAR-10's format)")
    t0 = time.perf_counter()
    shards = write_shards(f"{name}:{folder}", work / "shards", limit=max(args.images, args.probe_images))
    print(f"sharded {name}:{folder} in {time.perf_counter() - t0:.1f} s: {shards.manifest['splits']['train']['rows']} train rows")
    overrides = [
        f"data.shards={shards.out_dir}",
        f"data.max_train_images={args.images}",
        "data.batch_size=64",  # a CPU's batch; the config's 256 is a GPU's
        f"train.epochs={args.epochs}",
        "train.use_gpu=false",
        "train.num_workers=2",
        "train.cpus_per_worker=0.5",
        f"probe.max_train_images={args.probe_images}",
        f"probe.max_test_images={args.probe_images}",
        "probe.linear_epochs=30",
        "probe.epoch_knn_images=0",
        "probe.rankme_images=0",
        f"tracking.runs_dir={work / 'runs'}",
        "tracking.experiment=cifar-like",
    ] + ([f"method.name={args.method}"] if args.method else [])
    cfg = load_config(args.config, overrides)
    t0 = time.perf_counter()
    metrics = pretrain(cfg).metrics
    print(
        f"{args.config} cut down ({cfg.method.name}, {cfg.method.backbone}, {args.images} images, {args.epochs} epoch): "
        + "  ".join(f"{k} {metrics.get(k, float('nan')):.3f}" for k in SHOWN)
        + f"  ({time.perf_counter() - t0:.0f} s)"
    )
    trained, untrained = metrics["probe/linear_top1"], metrics["baseline/random_init_linear_top1"]
    print(f"cifar_like ratio={trained / untrained:.2f}")


if __name__ == "__main__":
    main()
