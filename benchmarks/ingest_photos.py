"""JPEG photos at 224 px: rayssl's shards and stream against the pipeline solo-learn and lightly users run.

    .venv/bin/python benchmarks/ingest_photos.py [--images 800] [--classes 8] [--seconds 15] [--rounds 3]

The input: ``--images`` JPEG photos of about 500 x 375 (rescaled crops of scikit-image's sample
photographs, aspect ratios 4:3 and 3:4, quality 90) in ``--classes`` class folders. Measured side by
side on the same files and the same CPUs, in one run:

- **sharding**: ``write_shards`` in one process against Ray tasks on every core (images/s; ratio), each side
  warmed up first on a few files (the first write in a process pays imports; Ray's worker processes start).
- **views**: 224 px SimCLR view pairs per second (random resized crop, flip, colour jitter, grayscale,
  blur), from
  - rayssl: the Ray Data stream of the shards (``pipelines.stream.build_pretrain_dataset``), each
    view cropped from the original as it is decoded, the colour steps batched;
  - the peer: torchvision ``ImageFolder`` on the JPEG files, ``RandomResizedCrop(224)`` on the PIL
    original, ``RandomHorizontalFlip``, ``ColorJitter(0.4, 0.4, 0.4)`` (p 0.8), ``RandomGrayscale(0.2)``,
    ``GaussianBlur(9, (0.1, 2.0))`` (p 0.5), ``ToTensor``, two views, ``DataLoader`` with one worker per core
    (persistent across epochs);
  - the ceiling: plain PIL decoding of the same files on the same cores (images/s; no crop, no colour).

The two view pipelines take turns for ``--rounds`` rounds of at least ``--seconds`` each, in whole epochs (a
slow spell of this machine falls on both). Last lines: ``ingest_photos
shard_ratio=X.XX`` and ``ingest_photos ratio=X.XX`` (rayssl's pairs/s over the peer's in each round,
the median; the goal is 1.5 or more).
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg")


def write_photos(root: Path, count: int, classes: int, seed: int = 0) -> Path:
    """``count`` JPEG photos of about 500 x 375 (or 375 x 500) in ``classes`` folders."""
    source = Path(importlib.util.find_spec("skimage").submodule_search_locations[0]) / "data"
    photos = [Image.open(source / name).convert("RGB") for name in PHOTOS]
    rng = np.random.default_rng(seed)
    for i in range(count):
        photo = photos[i % len(photos)]
        w, h = photo.size
        cw, ch = int(w * rng.uniform(0.6, 1)), int(h * rng.uniform(0.6, 1))
        x, y = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
        size = (500, 375) if rng.random() < 0.7 else (375, 500)
        folder = root / f"class_{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        photo.crop((x, y, x + cw, y + ch)).resize(size, Image.Resampling.BICUBIC).save(folder / f"{i:05d}.jpg", quality=90)
    return root


def _decode(path: str) -> int:
    with Image.open(path) as img:
        return img.convert("RGB").size[0]


def ceiling(files: list[str], cores: int) -> float:
    """Images/s of plain PIL decoding on ``cores`` processes."""
    with multiprocessing.get_context("spawn").Pool(cores) as pool:
        pool.map(_decode, files[:cores])  # start-up
        t0 = time.perf_counter()
        pool.map(_decode, files, chunksize=16)
        return len(files) / (time.perf_counter() - t0)


def peer_batches(root: Path, cores: int):
    import torch
    from torchvision import datasets, transforms

    view = transforms.Compose(
        [
            transforms.RandomResizedCrop(224, scale=(0.2, 1.0)),
            transforms.RandomHorizontalFlip(),
            transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.4)], p=0.8),
            transforms.RandomGrayscale(p=0.2),
            transforms.RandomApply([transforms.GaussianBlur(9, (0.1, 2.0))], p=0.5),
            transforms.ToTensor(),
        ]
    )
    dataset = datasets.ImageFolder(str(root), transform=lambda img: (view(img), view(img)))
    # persistent workers: the peer does not restart its worker processes every epoch (the kinder setting for it)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=64, shuffle=True, num_workers=cores, drop_last=True, persistent_workers=True
    )
    return lambda: (len(pair[0]) for pair, _ in loader)


def rayssl_batches(shards: str):
    from pipelines.config import build_config
    from pipelines.data import read_manifest
    from pipelines.stream import build_pretrain_dataset

    cfg = build_config({}, [f"data.shards={shards}", "data.crop_size=224"])  # blur sigma 0.1-2.0 at 224 px
    manifest = read_manifest(shards)

    dataset = build_pretrain_dataset(cfg, manifest)  # once, iterated every epoch, as the trainer does

    def epoch():
        return (len(batch["view_0"]) for batch in dataset.iter_batches(batch_size=64, batch_format="numpy"))

    return epoch


def _pairs_per_s(epoch, seconds: float) -> float:
    """Pairs per second over whole epochs (``epoch()``: one epoch's batch sizes), from the first batch (start-up
    excluded) to the end of the epoch in which ``seconds`` have passed. Whole epochs, as a trainer takes them: a
    stream left in mid-epoch keeps its prefetched blocks, and the next rounds slowed by a third."""
    sizes = epoch()
    next(sizes)
    t0, pairs = time.perf_counter(), 0
    while True:
        pairs += sum(sizes)
        if time.perf_counter() - t0 > seconds:
            return pairs / (time.perf_counter() - t0)
        sizes = epoch()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=800)
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=15, help="measured time of each view pipeline in a round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, the two view pipelines taking turns in each")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="rayssl-photos-"))
    root = write_photos(work / "photos", args.images, args.classes)
    files = sorted(str(p) for p in root.rglob("*.jpg"))
    megabytes = sum(Path(f).stat().st_size for f in files) / 1e6
    print(f"{len(files)} JPEG photos, {megabytes:.0f} MB, {cores} cores", flush=True)

    import ray

    from pipelines.shard import write_shards

    # both sides warm: the first write in a process pays its imports and the first touch of Arrow's memory
    write_shards(str(root), work / "serial-warm-up", limit=cores * 32, parallel=False)
    t0 = time.perf_counter()
    write_shards(str(root), work / "serial", parallel=False)
    serial = len(files) / (time.perf_counter() - t0)
    ray.init(num_cpus=cores, include_dashboard=False)
    write_shards(str(root), work / "warm-up", limit=cores * 32, parallel=True)  # Ray's worker processes start
    t0 = time.perf_counter()
    result = write_shards(str(root), work / "tasks", parallel=True)
    tasks = len(files) / (time.perf_counter() - t0)
    shard_mb = sum(p.stat().st_size for p in (work / "tasks").rglob("*.parquet")) / 1e6
    print(
        f"sharding: one process {serial:.0f} images/s, Ray tasks {tasks:.0f} images/s; shards {shard_mb / megabytes:.2f}x "
        f"the JPEG bytes; encodings {result.manifest['encodings']}",
        flush=True,
    )

    # the two view pipelines take turns, so that a slow spell of this machine falls on both; Ray stays up (idle)
    # while the peer runs
    ours_batches, peer_batches_of = rayssl_batches(result.out_dir), peer_batches(root, cores)
    ours, peer = [], []
    for _ in range(args.rounds):
        ours.append(_pairs_per_s(ours_batches, args.seconds))
        peer.append(_pairs_per_s(peer_batches_of, args.seconds))
        print(f"224 px view pairs/s: rayssl {ours[-1]:.0f}, torchvision ImageFolder + DataLoader {peer[-1]:.0f}", flush=True)
    ray.shutdown()
    top = ceiling(files, cores)
    ratio = float(np.median([o / p for o, p in zip(ours, peer, strict=True)]))
    print(f"ceiling (PIL decode only): {top:.0f} images/s; rayssl's pairs/s are {np.median(ours) / top:.2f} of it")
    print(f"ingest_photos shard_ratio={tasks / serial:.2f}")
    print(f"ingest_photos ratio={ratio:.2f} (median of {args.rounds} rounds)")


if __name__ == "__main__":
    main()
