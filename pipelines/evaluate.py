"""Probes of a frozen encoder: linear probe and weighted kNN, plus the two baselines.

``rayssl probe CHECKPOINT --data DIR`` and the end of every pretraining run both
call ``probe_checkpoint``/``run_probes``.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import ssl_models
from pipelines.config import Config, ProbeConfig
from pipelines.data import load_labeled, read_manifest
from ssl_models.views import model_input


@dataclass
class LabeledSplits:
    """Decoded labeled images (N, H, W, C) uint8 and labels for the probe's train and test sets."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray

    @property
    def num_classes(self) -> int:
        return int(max(self.train_labels.max(), self.test_labels.max())) + 1


def load_splits(shards: str, probe: ProbeConfig) -> LabeledSplits:
    train_x, train_y = load_labeled(shards, "train", probe.max_train_images)
    test_x, test_y = load_labeled(shards, "test", probe.max_test_images)
    return LabeledSplits(train_x, train_y, test_x, test_y)


@torch.no_grad()
def extract_features(encoder: nn.Module, images: np.ndarray, batch_size: int = 1024, device: str = "cpu") -> torch.Tensor:
    """Pooled features (N, F) of un-augmented images, in eval mode."""
    was_training = encoder.training
    encoder.eval().to(device)
    feats = [encoder(model_input(images[i : i + batch_size]).to(device)).float().cpu() for i in range(0, len(images), batch_size)]
    encoder.train(was_training)
    return torch.cat(feats)


def linear_probe_top1(
    train_x: torch.Tensor,
    train_y: np.ndarray,
    test_x: torch.Tensor,
    test_y: np.ndarray,
    num_classes: int,
    epochs: int = 30,
    lr: float = 1e-3,
    batch_size: int = 256,
    weight_decay: float = 1e-5,
    seed: int = 0,
    min_steps: int = 300,
) -> float:
    """Top-1 test accuracy of a softmax classifier trained on standardized frozen features."""
    gen = torch.Generator().manual_seed(seed)
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    xtr, xte = (train_x - mean) / std, (test_x - mean) / std
    ytr = torch.tensor(np.asarray(train_y), dtype=torch.long)
    clf = nn.Linear(xtr.shape[1], num_classes)
    opt = torch.optim.AdamW(clf.parameters(), lr=lr, weight_decay=weight_decay)
    # Small labeled sets still get enough steps to converge (at least ``min_steps``).
    epochs = max(epochs, math.ceil(min_steps / math.ceil(len(xtr) / batch_size)))
    steps = epochs * math.ceil(len(xtr) / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(epochs):
        order = torch.randperm(len(xtr), generator=gen)
        for i in range(0, len(xtr), batch_size):
            idx = order[i : i + batch_size]
            loss = F.cross_entropy(clf(xtr[idx]), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        pred = clf(xte).argmax(1).numpy()
    return float((pred == test_y).mean())


@torch.no_grad()
def knn_top1(
    train_x: torch.Tensor,
    train_y: np.ndarray,
    test_x: torch.Tensor,
    test_y: np.ndarray,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.07,
    chunk: int = 512,
) -> float:
    """Weighted kNN on cosine similarity (Wu et al. 2018, https://arxiv.org/abs/1805.01978):
    each of the k nearest training features votes for its class with weight exp(sim / T)."""
    train_n = F.normalize(train_x, dim=1)
    test_n = F.normalize(test_x, dim=1)
    labels = torch.tensor(np.asarray(train_y), dtype=torch.long)
    k = min(k, len(train_n))
    correct = 0
    for i in range(0, len(test_n), chunk):
        sim = test_n[i : i + chunk] @ train_n.T
        top_sim, top_idx = sim.topk(k, dim=1)
        votes = torch.zeros(len(sim), num_classes)
        votes.scatter_add_(1, labels[top_idx], (top_sim / temperature).exp())
        correct += int((votes.argmax(1).numpy() == test_y[i : i + chunk]).sum())
    return correct / len(test_n)


def probe_encoder(encoder: nn.Module, splits: LabeledSplits, probe: ProbeConfig, device: str = "cpu") -> dict[str, float]:
    """``linear_top1`` and ``knn_top1`` of a frozen encoder."""
    train_f = extract_features(encoder, splits.train_images, device=device)
    test_f = extract_features(encoder, splits.test_images, device=device)
    n = splits.num_classes
    return {
        "linear_top1": linear_probe_top1(
            train_f, splits.train_labels, test_f, splits.test_labels, n, probe.linear_epochs, probe.linear_lr
        ),
        "knn_top1": knn_top1(train_f, splits.train_labels, test_f, splits.test_labels, n, probe.knn_k, probe.knn_temperature),
    }


def pixels_linear_top1(splits: LabeledSplits, probe: ProbeConfig) -> float:
    """Baseline: the same linear probe on raw (normalized) pixels."""
    train_x = model_input(splits.train_images).flatten(1)
    test_x = model_input(splits.test_images).flatten(1)
    return linear_probe_top1(
        train_x, splits.train_labels, test_x, splits.test_labels, splits.num_classes, probe.linear_epochs, probe.linear_lr
    )


def method_parameters(name: str) -> set[str]:
    return set(inspect.signature(ssl_models.method_class(name)).parameters)


def shared_method_fields(cfg: Config) -> dict:
    """The shared ``method`` fields the config sets (None means: the method's own default)."""
    m = cfg.method
    shared = {"temperature": m.temperature, "projection_dim": m.projection_dim, "hidden_dim": m.hidden_dim}
    return {k: v for k, v in shared.items() if v is not None}


def ignored_method_fields(cfg: Config) -> list[str]:
    """Shared fields set in the config that this method has no use for (e.g. a temperature for BYOL)."""
    return [f"method.{k}" for k in shared_method_fields(cfg) if k not in method_parameters(cfg.method.name)]


def build_method(cfg: Config, manifest: dict) -> nn.Module:
    """The configured method for images of the shards' channels and size.

    The shared ``method`` fields (temperature, projection sizes) go to the methods
    whose constructor takes them; ``method.kwargs`` go as given, so a misspelt one fails.
    """
    m = cfg.method
    kwargs = {k: v for k, v in shared_method_fields(cfg).items() if k in method_parameters(m.name)}
    kwargs.update(m.kwargs)
    image_size = cfg.data.crop_size or manifest["image_size"][0]
    return ssl_models.create_method(
        m.name, backbone=m.backbone, in_channels=manifest["channels"], image_size=image_size, **kwargs
    )


def run_probes(method: nn.Module, cfg: Config, splits: LabeledSplits | None = None, device: str = "cpu") -> dict[str, float]:
    """Probe metrics of a pretrained method plus, if configured, both baselines of the same architecture."""
    splits = splits or load_splits(cfg.data.shards, cfg.probe)
    metrics = {f"probe/{k}": v for k, v in probe_encoder(method.encoder, splits, cfg.probe, device).items()}
    if cfg.probe.baselines:
        torch.manual_seed(cfg.train.seed)
        manifest = read_manifest(cfg.data.shards)
        random_init = build_method(cfg, manifest).encoder
        metrics["baseline/random_init_linear_top1"] = probe_encoder(random_init, splits, cfg.probe, device)["linear_top1"]
        metrics["baseline/pixels_linear_top1"] = pixels_linear_top1(splits, cfg.probe)
    if cfg.probe.labels_per_class:
        from pipelines.finetune import few_label_metrics

        torch.manual_seed(cfg.train.seed)
        scratch = build_method(cfg, read_manifest(cfg.data.shards)).encoder
        metrics.update(
            few_label_metrics(method.encoder, scratch, splits, cfg.probe.labels_per_class, cfg.probe.finetune_steps, device)
        )
    return metrics


def load_checkpoint(path: str | Path) -> dict:
    """A rayssl checkpoint (a ``checkpoint.pt`` file or the folder holding it), loaded safely."""
    p = Path(path)
    if p.is_dir():
        p = p / "checkpoint.pt"
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no rayssl checkpoint here; give a checkpoint folder from a pretraining run")
    return torch.load(p, map_location="cpu", weights_only=True)


def method_from_checkpoint(state: dict, shards: str | None = None) -> tuple[nn.Module, Config]:
    cfg = Config.model_validate(state["config"])
    if shards is not None:
        cfg.data.shards = shards
    method = build_method(cfg, state["manifest"])
    method.load_state_dict(state["model"])
    return method, cfg
