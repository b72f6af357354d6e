"""Few labels: fine-tune a pretrained encoder on N labels per class, against the same net trained from scratch.

SSL exists because labels are scarce; this is the measurement that shows it.
Both arms see the same labeled images, augmentation, steps and optimizer, so the
only difference is the starting weights.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipelines import names
from ssl_models.augment import random_resized_crop_flip
from ssl_models.views import normalize, to_float


def few_label_indices(labels: np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
    """``per_class`` indices of every class (fewer when a class has fewer), drawn with a fixed seed."""
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(picked))


def finetune_top1(
    encoder: nn.Module,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    num_classes: int,
    steps: int = 300,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    device: str = "cpu",
) -> float:
    """Test top-1 after training a copy of ``encoder`` plus a linear head end to end on the given labels.

    Light augmentation (crop of 60-100% of the area, flip) keeps tiny label sets from
    being memorized in a few steps; the encoder passed in is left untouched.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = nn.Sequential(copy.deepcopy(encoder), nn.Linear(encoder.num_features, num_classes)).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    images = to_float(torch.from_numpy(np.ascontiguousarray(train_images)))
    labels = torch.as_tensor(np.asarray(train_labels), dtype=torch.long)
    size = images.shape[-1]
    batch_size = min(batch_size, len(images))
    net.train()
    for _ in range(steps):
        idx = torch.randint(len(images), (batch_size,), generator=gen)
        x = normalize(random_resized_crop_flip(images[idx], size, gen, scale=(0.6, 1.0)))
        loss = F.cross_entropy(net(x.to(device)), labels[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    net.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(test_images), 1024):
            x = normalize(to_float(torch.from_numpy(np.ascontiguousarray(test_images[i : i + 1024]))))
            correct += int((net(x.to(device)).argmax(1).cpu().numpy() == test_labels[i : i + 1024]).sum())
    return correct / len(test_images)


def few_label_top1(
    encoder: nn.Module, splits, labels_per_class: list[int], steps: int = 300, device: str = "cpu"
) -> dict[int, float]:
    """Test top-1 of ``encoder`` fine-tuned on N labels per class, for every N (the same labels every call)."""
    top1 = {}
    for n in labels_per_class:
        idx = few_label_indices(splits.train_labels, n)
        args = (splits.train_images[idx], splits.train_labels[idx], splits.test_images, splits.test_labels, splits.num_classes)
        # More labels deserve more steps: at least ~10 passes over the labeled set.
        top1[n] = finetune_top1(encoder, *args, steps=max(steps, math.ceil(10 * len(idx) / 64)), device=device)
    return top1


def few_label_metrics(
    pretrained: nn.Module,
    scratch: nn.Module,
    splits,
    labels_per_class: list[int],
    steps: int = 300,
    device: str = "cpu",
) -> dict[str, float]:
    """``probe/finetune_<N>pc_top1`` and ``baseline/supervised_<N>pc_top1`` for every N."""
    finetuned = few_label_top1(pretrained, splits, labels_per_class, steps, device)
    from_scratch = few_label_top1(scratch, splits, labels_per_class, steps, device)
    metrics: dict[str, float] = {}
    for n in labels_per_class:
        metrics[names.finetune_top1(n)] = finetuned[n]
        metrics[names.supervised_top1(n)] = from_scratch[n]
    return metrics
