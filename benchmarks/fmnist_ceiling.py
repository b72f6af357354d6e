"""Where Fashion-MNIST linear top-1 is capped: SimCLR variants against the same encoder trained with labels.

    .venv/bin/python benchmarks/fmnist_ceiling.py [--epochs 4] [--train-images 30000] [--variants default,jitter08]

One process, no Ray: views are made in the training process with the same batched augmentations
(`ssl_models`), the same recipe (`config.resolve`), optimizer, schedule and probes as `rayssl pretrain`,
so that many variants fit in minutes. Each variant prints its linear and kNN top-1 and RankMe after
every epoch. The `supervised` rows train the same backbone with labels (cross-entropy, light crops)
for the same number of images, then probe its frozen features with the same linear probe: the most
this backbone's features give at this budget. The last line reads
`fmnist_ceiling simclr_best=X supervised=Y gap_points=Z` for the default backbone.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from one_process import worker_step

from pipelines.build import build_method, build_method_optimizer, view_policy
from pipelines.config import build_config, resolve
from pipelines.data import load_labeled, read_manifest
from pipelines.evaluate import extract_features
from ssl_models.backbones import SmallCNN, register_backbone
from ssl_models.probes import knn_top1, linear_probe_top1, rankme
from ssl_models.recipes import MAX_WARMUP_SHARE
from ssl_models.schedules import warmup_steps
from ssl_models.views import create_views

# small_cnn with every width doubled: 2.7x the compute per image.
register_backbone("wide_cnn")(lambda in_channels=3, image_size=32: SmallCNN(in_channels, image_size, (32, 64, 128, 512)))

VARIANTS = {
    "default": [],
    "crop05": ["data.augment.crop_scale=[0.5,1.0]"],
    "no_jitter": ["data.augment.jitter_p=0.0"],
    "no_blur": ["data.augment.blur_p=0.0"],
    "jitter08": ["data.augment.jitter_strength=0.8"],
    "temp02": ["method.temperature=0.2"],
    "jitter08_temp02": ["data.augment.jitter_strength=0.8", "method.temperature=0.2"],
    "wide_jitter08_temp02": ["data.augment.jitter_strength=0.8", "method.temperature=0.2", "method.backbone=wide_cnn"],
}


def probe(encoder, data) -> dict[str, float]:
    train_x, train_y, test_x, test_y = data
    train_f, test_f = extract_features(encoder, train_x), extract_features(encoder, test_x)
    return {
        "linear": linear_probe_top1(train_f, train_y, test_f, test_y, 10),
        "knn": knn_top1(train_f, train_y, test_f, test_y, 10),
        "rankme": rankme(train_f[:2000]),
    }


def simclr(name: str, args, data, images: torch.Tensor) -> float:
    cfg = build_config({}, [f"data.shards={args.shards}", f"train.epochs={args.epochs}", "method.name=simclr", *VARIANTS[name]])
    cfg = resolve(cfg)
    manifest = read_manifest(args.shards)
    torch.manual_seed(args.seed)
    method = build_method(cfg, manifest)
    policy = view_policy(cfg, manifest, method)
    optimizer = build_method_optimizer(cfg, method)
    batch = cfg.data.batch_size
    per_epoch = len(images) // batch
    total = per_epoch * args.epochs
    warmup = warmup_steps(cfg.optim.warmup_epochs, per_epoch, total, MAX_WARMUP_SHARE)
    step, linear, start = 0, 0.0, time.perf_counter()
    for epoch in range(args.epochs):
        method.train()
        order = torch.randperm(len(images))
        for i in range(per_epoch):
            with torch.no_grad():
                views = policy.apply(images[order[i * batch : (i + 1) * batch]])
            worker_step(method, optimizer, views, cfg, step, total, warmup)
            step += 1
        result = probe(method.encoder, data)
        linear = result["linear"]
        print(json.dumps({"variant": name, "epoch": epoch + 1, **{k: round(v, 4) for k, v in result.items()},
                          "s": round(time.perf_counter() - start)}), flush=True)  # fmt: skip
    return linear


def supervised(backbone: str, args, data, images: torch.Tensor, labels: np.ndarray) -> float:
    """The same backbone trained with labels for the same images, probed frozen with the same linear probe."""
    torch.manual_seed(args.seed)
    encoder = SmallCNN(1, 28) if backbone == "small_cnn" else SmallCNN(1, 28, (32, 64, 128, 512))
    head = torch.nn.Linear(encoder.num_features, 10)
    params = [*encoder.parameters(), *head.parameters()]
    optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4)
    crops = create_views("multi_view", image_size=28, num_views=1, crop_scale=(0.5, 1.0), jitter_p=0.0, blur_p=0.0)
    targets = torch.as_tensor(labels, dtype=torch.long)
    for _ in range(args.epochs):
        order = torch.randperm(len(images))
        for i in range(0, len(images) - 255, 256):
            idx = order[i : i + 256]
            loss = F.cross_entropy(head(encoder(crops.apply(images[idx])["view_0"])), targets[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    linear = probe(encoder, data)["linear"]
    print(json.dumps({"variant": f"supervised_{backbone}", "epochs": args.epochs, "linear": round(linear, 4)}), flush=True)
    return linear


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shards", default="rayssl-data/fashion-mnist")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--train-images", type=int, default=30_000)
    parser.add_argument("--probe-images", type=int, default=20_000)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    train_x, train_y = load_labeled(args.shards, "train", None)
    test_x, test_y = load_labeled(args.shards, "test", None)
    data = (train_x[: args.probe_images], train_y[: args.probe_images], test_x, test_y)
    images = torch.from_numpy(train_x[: args.train_images])
    results = {name: simclr(name, args, data, images) for name in args.variants.split(",")}
    ceiling = supervised("small_cnn", args, data, images, train_y[: args.train_images])
    if any(name.startswith("wide") for name in results):
        supervised("wide_cnn", args, data, images, train_y[: args.train_images])
    best = max(v for k, v in results.items() if not k.startswith("wide"))
    print(f"fmnist_ceiling simclr_best={best:.4f} supervised={ceiling:.4f} gap_points={100 * (ceiling - best):.1f}")


if __name__ == "__main__":
    main()
