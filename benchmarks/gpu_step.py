"""SimCLR training-step throughput on one GPU: views on the device or ahead, fp32 or bf16, channels_last, compile.

    python3 benchmarks/gpu_step.py [--batch 512] [--steps 30] [--out gpu_step.json]
    python3 benchmarks/gpu_step.py --cpu-smoke      # the same code on CPU, in seconds (a test runs it)

Setup (issue #17): SimCLR with ResNet-18 and the CIFAR stem, 32 px RGB uint8 batches already on
the GPU, batch 512, SGD. It needs only torch and `ssl_models` (no Ray, no MLflow), so it runs on
a GPU machine that has neither. For every combination of
- views made on the device each step (`ssl_models` batched augmentations) vs views made ahead
  (the same tensors every step): the difference is what the device augmentation costs;
- fp32 vs bf16 autocast;
- channels_last on/off;
- `torch.compile` on/off (the method's module; views are made outside it),
it prints pairs/s (source images per second, each giving a pair of views), views/s and the
GPU memory peak; then the step-time split of the best uncompiled device-views setting
(augmentation, forward, backward, optimizer; synchronized between phases) and the probes'
time on a fixed feature set. The last line reads
`gpu_step pairs_per_s=X anchor=4200 ratio=Y`: the best setting with views made on the device
(the whole step a user runs with `data.augment_on: device`) against a public SimCLR CIFAR-10
ResNet-18 figure of about 4,200 pairs/s on one A100.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing rayssl

import ssl_models  # noqa: E402
from ssl_models.optim import build_optimizer  # noqa: E402
from ssl_models.probes import knn_top1, linear_probe_top1  # noqa: E402
from ssl_models.views import create_views  # noqa: E402

ANCHOR_PAIRS_PER_S = 4200


@dataclass(frozen=True)
class Setting:
    views: str  # "device": made every step on the device; "ahead": made once, reused
    precision: str  # "fp32" | "bf16"
    channels_last: bool
    compile: bool

    def label(self) -> str:
        return f"views={self.views} {self.precision} channels_last={int(self.channels_last)} compile={int(self.compile)}"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Step:
    """One SimCLR training step under a setting, with no host sync inside (the loss stays on the device)."""

    def __init__(self, setting: Setting, args, device: torch.device):
        torch.manual_seed(0)
        self.setting, self.device = setting, device
        method = ssl_models.create_method("simclr", backbone=args.backbone, in_channels=3, image_size=32).to(device)
        if setting.channels_last:
            method = method.to(memory_format=torch.channels_last)
        self.method = method
        self.model = torch.compile(method, backend=args.compile_backend) if setting.compile else method
        self.optimizer = build_optimizer("sgd", method, lr=0.06 * args.batch / 256, weight_decay=5e-4)
        self.policy = create_views("multi_view", image_size=32, num_views=2, seed=0)
        gen = torch.Generator(device=device).manual_seed(0)
        self.images = torch.randint(0, 256, (args.batch, 32, 32, 3), dtype=torch.uint8, device=device, generator=gen)
        self.ahead = self.views() if setting.views == "ahead" else None
        self.loss_sum = torch.zeros((), device=device)

    def autocast(self):
        if self.setting.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def views(self) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            views = self.policy.apply(self.images)
        if self.setting.channels_last:
            views = {k: v.contiguous(memory_format=torch.channels_last) for k, v in views.items()}
        return views

    def forward(self, views):
        with self.autocast():
            return self.model(views)["loss"]

    def __call__(self) -> None:
        loss = self.forward(self.ahead if self.ahead is not None else self.views())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.loss_sum += loss.detach().float()


def measure(setting: Setting, args, device: torch.device) -> dict:
    """Pairs/s over ``args.steps`` steps after ``args.warmup`` (compilation happens in the warm-up)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    step = Step(setting, args, device)
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        step()
    sync(device)
    warmup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(device)
    seconds = time.perf_counter() - t0
    mean_loss = float(step.loss_sum) / (args.warmup + args.steps)  # the one host sync, after timing
    if not np.isfinite(mean_loss):
        raise RuntimeError(f"{setting.label()}: loss is not finite")
    pairs_per_s = args.batch * args.steps / seconds
    return {
        **asdict(setting),
        "pairs_per_s": pairs_per_s,
        "views_per_s": 2 * pairs_per_s,
        "step_ms": 1000 * seconds / args.steps,
        "warmup_s": warmup_s,
        "peak_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        "mean_loss": mean_loss,
    }


def step_split(setting: Setting, args, device: torch.device) -> dict[str, float]:
    """Milliseconds per phase of an uncompiled step, synchronized between phases (so they add up)."""
    step = Step(setting, args, device)
    phases = {"augmentation": 0.0, "forward": 0.0, "backward": 0.0, "optimizer": 0.0}
    for i in range(args.warmup + args.steps):
        sync(device)
        t0 = time.perf_counter()
        views = step.views()
        sync(device)
        t1 = time.perf_counter()
        loss = step.forward(views)
        sync(device)
        t2 = time.perf_counter()
        step.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        sync(device)
        t3 = time.perf_counter()
        step.optimizer.step()
        sync(device)
        t4 = time.perf_counter()
        if i >= args.warmup:
            for name, seconds in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                phases[name] += 1000 * seconds / args.steps
    return phases


def probe_seconds(args, device: torch.device) -> dict[str, float]:
    """kNN and linear probes on a fixed random feature set the size of Fashion-MNIST's (train, test)."""
    gen = torch.Generator().manual_seed(0)
    n_train, n_test, dim = args.probe_train, args.probe_test, 512
    train_x = torch.randn(n_train, dim, generator=gen).to(device)
    test_x = torch.randn(n_test, dim, generator=gen).to(device)
    train_y = np.arange(n_train) % 10
    test_y = np.arange(n_test) % 10
    out = {}
    for name, probe in (
        ("knn", lambda: knn_top1(train_x, train_y, test_x, test_y, 10, k=200)),
        ("linear", lambda: linear_probe_top1(train_x, train_y, test_x, test_y, 10, epochs=args.probe_epochs)),
    ):
        sync(device)
        t0 = time.perf_counter()
        probe()
        sync(device)
        out[f"{name}_probe_s"] = time.perf_counter() - t0
    return out


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per setting")
    parser.add_argument("--warmup", type=int, default=8, help="untimed steps first (compilation happens here)")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--budget-s", type=float, default=330, help="settings not started by then are skipped, and say so")
    parser.add_argument("--probe-train", type=int, default=60_000)
    parser.add_argument("--probe-test", type=int, default=10_000)
    parser.add_argument("--probe-epochs", type=int, default=30)
    parser.add_argument("--out", help="also write every figure to this JSON file")
    parser.add_argument(
        "--cpu-smoke", action="store_true", help="CPU, tiny_cnn, batch 8, 2 steps, compile via the eager backend: seconds"
    )
    args = parser.parse_args(argv)
    if args.cpu_smoke:
        args.batch, args.steps, args.warmup, args.backbone = 8, 2, 1, "tiny_cnn"
        args.compile_backend = "eager"  # traces with dynamo, generates no code: no C compiler, seconds not minutes
        args.probe_train, args.probe_test, args.probe_epochs = 2000, 500, 1
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device("cpu" if args.cpu_smoke or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu" and not args.cpu_smoke:
        raise SystemExit("gpu_step: no CUDA device here; run with --cpu-smoke to check the code on CPU")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"gpu_step: {name}, torch {torch.__version__}, SimCLR {args.backbone}, batch {args.batch}, {args.steps} timed steps")
    torch.backends.cudnn.benchmark = True
    start = time.perf_counter()
    rows, skipped = [], []
    settings = [
        Setting(*combo) for combo in itertools.product(("device", "ahead"), ("fp32", "bf16"), (False, True), (False, True))
    ]
    for setting in settings:
        if time.perf_counter() - start > args.budget_s:
            skipped.append(setting.label())
            print(f"skipped (past --budget-s {args.budget_s:g}): {setting.label()}", flush=True)
            continue
        row = measure(setting, args, device)
        rows.append(row)
        peak = f"{row['peak_mib']:.0f} MiB" if row["peak_mib"] is not None else "-"
        print(
            f"{setting.label():52s} {row['pairs_per_s']:9.0f} pairs/s {row['views_per_s']:9.0f} views/s "
            f"{row['step_ms']:8.2f} ms/step  peak {peak}  warm-up {row['warmup_s']:.1f} s",
            flush=True,
        )
    on_device = [r for r in rows if r["views"] == "device"]
    best = max(on_device, key=lambda r: r["pairs_per_s"])
    best_eager = max((r for r in on_device if not r["compile"]), key=lambda r: r["pairs_per_s"])
    split_setting = Setting("device", best_eager["precision"], best_eager["channels_last"], False)
    split = step_split(split_setting, args, device)
    total = sum(split.values())
    print(f"step split ({split_setting.label()}), ms: " + ", ".join(f"{k} {v:.2f} ({v / total:.0%})" for k, v in split.items()))
    ahead = {(r["precision"], r["channels_last"], r["compile"]): r["pairs_per_s"] for r in rows if r["views"] == "ahead"}
    same_ahead = ahead.get((best["precision"], best["channels_last"], best["compile"]))
    if same_ahead:
        print(f"device augmentation costs {1 - best['pairs_per_s'] / same_ahead:.0%} of the best setting's throughput")
    probes = probe_seconds(args, device)
    knn_s, linear_s = probes["knn_probe_s"], probes["linear_probe_s"]
    print(f"probes on {args.probe_train:,} x 512 features: kNN {knn_s:.1f} s, linear {linear_s:.1f} s")
    result = {
        "device": name,
        "torch": torch.__version__,
        "batch": args.batch,
        "rows": rows,
        "skipped": skipped,
        "best": best,
        "step_split_ms": split,
        "probes": probes,
        "ratio": best["pairs_per_s"] / ANCHOR_PAIRS_PER_S,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"best: {Setting(best['views'], best['precision'], best['channels_last'], best['compile']).label()}")
    print(f"gpu_step pairs_per_s={best['pairs_per_s']:.0f} anchor={ANCHOR_PAIRS_PER_S} ratio={result['ratio']:.2f}")
    return result


if __name__ == "__main__":
    main()
