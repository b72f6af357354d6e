"""What a ViT method's first steps do to each feature a probe could read: [CLS], and the patch-token means.

    .venv/bin/python benchmarks/mim_early_phase.py --method simmim [--steps 78] [--probe-every 39]
        [--warmup-share 1.0] [--set optim.lr=5e-5] [--blocks 4,6,8]

One process, no Ray: the same `build_method`, view policy, optimizer and schedule as a `rayssl
pretrain` worker, batch 256 on the first 10,000 Fashion-MNIST train images (2 epochs = 78 steps, the
budget of #27's bar). Before the first step and every `--probe-every` steps it fits the same linear
probe as the pipeline (on 5,000 random train images, scored on 5,000 random test images) on each
feature of the online ViT: the [CLS] output (what `rayssl pretrain` probes), the mean of the output
patch tokens, and the mean of the patch tokens after each block in `--blocks` (the authors of SimMIM
probe an intermediate block). RankMe (of 2,000 train images) beside each. `--warmup-share` warms up
for that share of the run, past the pipeline's cap (MAX_WARMUP_SHARE = 0.2), to put the run in the
phase the authors' 10-40 warm-up epochs keep theirs in. A diagnostic: it prints JSON lines, no ratio.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from one_process import worker_step

from pipelines.build import build_method, build_method_optimizer, view_policy
from pipelines.config import build_config, resolve
from pipelines.data import load_labeled, read_manifest
from pipelines.evaluate import model_input
from ssl_models.probes import linear_probe_top1, rankme
from ssl_models.recipes import MAX_WARMUP_SHARE
from ssl_models.schedules import warmup_steps

TRAIN_IMAGES = 10_000


@torch.no_grad()
def vit_features(vit, images: np.ndarray, blocks: set[int]) -> dict[str, torch.Tensor]:
    """[CLS], the output patch-token mean and the patch-token mean after each block in ``blocks``."""
    vit.eval()
    parts: dict[str, list[torch.Tensor]] = {}
    for i in range(0, len(images), 1000):
        x = model_input(images[i : i + 1000])
        tokens = torch.cat([vit.cls_with_pos(x.shape[0]), vit.embed_patches(x)], dim=1)
        feats = {}
        for depth, block in enumerate(vit.blocks, 1):
            tokens = block(tokens)
            if depth in blocks:
                feats[f"mean_block{depth}"] = tokens[:, 1:].mean(1)
        out = vit.norm(tokens)
        feats["cls"], feats["mean_last"] = out[:, 0], out[:, 1:].mean(1)
        for name, value in feats.items():
            parts.setdefault(name, []).append(value)
    vit.train()
    return {name: torch.cat(values) for name, values in parts.items()}


def probe(vit, data, blocks: set[int]) -> dict[str, list[float]]:
    """``{feature: [linear top-1, RankMe]}``."""
    train_x, train_y, test_x, test_y = data
    train_f, test_f = vit_features(vit, train_x, blocks), vit_features(vit, test_x, blocks)
    return {
        name: [
            round(linear_probe_top1(train_f[name], train_y, test_f[name], test_y, 10), 4),
            round(rankme(train_f[name][:2000]), 1),
        ]
        for name in train_f
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shards", default="rayssl-data/fashion-mnist")
    parser.add_argument("--method", default="simmim")
    parser.add_argument("--set", action="append", default=[], help="a config override, as rayssl pretrain --set")
    parser.add_argument("--steps", type=int, default=78)
    parser.add_argument("--probe-every", type=int, default=39)
    parser.add_argument("--warmup-share", type=float, default=None, help="warm-up share of the run (default: the recipe's)")
    parser.add_argument("--blocks", default="4,6,8")
    parser.add_argument("--probe-images", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    blocks = {int(b) for b in args.blocks.split(",") if b}
    cfg = resolve(build_config({}, [f"data.shards={args.shards}", "train.epochs=2", f"method.name={args.method}", *args.set]))
    manifest = read_manifest(args.shards)
    train_x, train_y = load_labeled(args.shards, "train", None)
    test_x, test_y = load_labeled(args.shards, "test", None)
    rng = np.random.default_rng(123)  # the same probe images for every run
    i = rng.choice(len(train_x), args.probe_images, replace=False)
    j = rng.choice(len(test_x), args.probe_images, replace=False)
    data = (train_x[i], train_y[i], test_x[j], test_y[j])
    images = torch.from_numpy(train_x[:TRAIN_IMAGES])

    torch.manual_seed(args.seed)
    method = build_method(cfg, manifest)
    policy = view_policy(cfg, manifest, method)
    optimizer = build_method_optimizer(cfg, method)
    batch = cfg.data.batch_size
    per_epoch = TRAIN_IMAGES // batch
    total = args.steps
    if args.warmup_share is None:
        warmup = warmup_steps(cfg.optim.warmup_epochs, per_epoch, total, MAX_WARMUP_SHARE)
    else:
        warmup = round(args.warmup_share * total)
    print(json.dumps({"method": args.method, "set": args.set, "lr": cfg.optim.lr, "warmup_steps": warmup, "steps": total}))
    print(json.dumps({"step": 0, **probe(method.encoder, data, blocks)}), flush=True)
    step, start = 0, time.perf_counter()
    while step < total:
        order = torch.randperm(len(images))
        for k in range(min(per_epoch, total - step)):
            with torch.no_grad():
                views = policy.apply(images[order[k * batch : (k + 1) * batch]])
            loss = worker_step(method, optimizer, views, cfg, step, total, warmup)
            step += 1
            if step % args.probe_every == 0 or step == total:
                result = probe(method.encoder, data, blocks)
                print(
                    json.dumps({"step": step, "s": round(time.perf_counter() - start), "loss": round(loss, 4), **result}),
                    flush=True,
                )


if __name__ == "__main__":
    main()
