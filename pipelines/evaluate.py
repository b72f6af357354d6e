"""Probes of a frozen encoder: linear probe and weighted kNN, plus the two baselines; RankMe without labels.

``rayssl probe CHECKPOINT --data DIR`` and the end of every pretraining run both
call ``probe_checkpoint``/``run_probes``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from pipelines import names
from pipelines.build import build_method, view_size
from pipelines.config import Config, ConfigError, ProbeConfig
from pipelines.data import check_shards, labeled_rows, load_images, load_labeled, read_manifest, resolve_uri
from pipelines.sampling import SUBSET_SEED, stratified_sample
from pipelines.shared_work import cache_dir, digest, shared_arrays, shared_metrics, weights_digest
from ssl_models.probes import knn_top1, linear_probe_top1, rankme
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


# ---------------------------------------------------------------- which images the probes use


def probe_shards(cfg: Config) -> str:
    """The labeled set the probes fit and report on: ``probe.shards``, else the pretraining shards."""
    return cfg.probe.shards or cfg.data.shards


def probe_crop(cfg: Config) -> int:
    """The side in px of the probes' images of photos that keep their own sizes: the views' (``build.view_size``)."""
    return view_size(cfg, read_manifest(cfg.data.shards))


def _probe_image_size(manifest: dict, crop: int) -> int:
    """The side of the images a probe set gives the encoder: its one image size, or the centre crop of its photos."""
    return manifest["image_size"][0] if manifest.get("image_size") else crop


def has_labels(cfg: Config) -> bool:
    """True when the probe set has labeled images in both splits (the manifest counted them)."""
    return _labeled_in_both_splits(labeled_rows(read_manifest(probe_shards(cfg))))


def _labeled_in_both_splits(rows: dict[str, int]) -> bool:
    return rows.get("train", 0) > 0 and rows.get("test", 0) > 0


def check_probe_set(cfg: Config, manifest: dict) -> bool:
    """Check ``probe.shards`` against the pretraining shards (before Ray starts); True when probes have labels.

    A probe set must hold images the encoder takes: the same channels and image size
    as the shards it pretrains on.
    """
    probe = manifest
    if cfg.probe.shards is not None:
        probe = read_manifest(cfg.probe.shards)
        check_shards(cfg.probe.shards, probe)
        where = f"probe.shards={cfg.probe.shards}"
        if probe["channels"] != manifest["channels"]:
            raise ConfigError(
                f"{where}: holds {probe['channels']}-channel images, the pretraining shards {manifest['channels']}-channel; "
                f"re-shard it with --mode {'L' if manifest['channels'] == 1 else 'RGB'}"
            )
        crop = view_size(cfg, manifest)
        size, probed = _probe_image_size(manifest, crop), _probe_image_size(probe, crop)
        if probed != size:
            raise ConfigError(
                f"{where}: gives the encoder {probed} px images, the pretraining shards {size} px; "
                f"re-shard it with --size {size}, or without --size to keep each image's own size"
            )
    rows = labeled_rows(probe)
    labeled = _labeled_in_both_splits(rows)  # as has_labels, from the manifest in hand
    if not labeled:
        print(
            f"note: {probe_shards(cfg)} has no labeled images to probe with (train {rows.get('train', 0)}, "
            f"test {rows.get('test', 0)}); pretraining goes on, RankMe (label-free) is logged, and the probes that "
            "need labels are skipped. To probe, set probe.shards to shards of a folder with class sub-folders "
            "('rayssl shard LABELED_DIR --out DIR')",
            flush=True,
        )
    return labeled


def load_splits(shards: str, probe: ProbeConfig, crop: int | None = None) -> LabeledSplits:
    """The probe's train and test sets: every labeled row, or ``probe.max_*_images`` drawn across each split by class.

    One warning line when the train set holds fewer classes than the test set: the probe cannot
    predict a class it never saw, so its accuracy would mostly say which classes it was given.
    """
    train_x, train_y = load_labeled(shards, "train", probe.max_train_images, crop)
    test_x, test_y = load_labeled(shards, "test", probe.max_test_images, crop)
    seen, tested = np.unique(train_y), np.unique(test_y)
    if len(np.setdiff1d(tested, seen)):
        print(
            f"warning: {shards}: the probe's train set holds {len(seen)} of the {len(tested)} classes in the test split; "
            "give the missing classes labeled train images (or raise probe.max_train_images)",
            flush=True,
        )
    return LabeledSplits(train_x, train_y, test_x, test_y)


@torch.no_grad()
def extract_features(encoder: nn.Module, images: np.ndarray, batch_size: int = 1024, device: str = "cpu") -> torch.Tensor:
    """Pooled features (N, F) of un-augmented images, in eval mode."""
    was_training = encoder.training
    encoder.eval().to(device)
    feats = [encoder(model_input(images[i : i + batch_size]).to(device)).float().cpu() for i in range(0, len(images), batch_size)]
    encoder.train(was_training)
    return torch.cat(feats)


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


class EpochKNN:
    """A cheap probe for every epoch: weighted kNN on a small labeled subset of the probe set.

    Ray Tune's ASHA and PBT act on it; the full probes run once at the end. Both the
    memory bank and the queries come from the train split, so model selection never
    sees the test split the final probes report.
    """

    def __init__(self, cfg: Config):
        n = cfg.probe.epoch_knn_images
        # stratified across the split
        images, labels = load_labeled(probe_shards(cfg), "train", n + max(10, n // 4), probe_crop(cfg))
        n = min(n, len(images) * 4 // 5)  # small shards: keep a fifth for queries
        in_bank = np.zeros(len(labels), dtype=bool)
        in_bank[stratified_sample(labels, n, seed=SUBSET_SEED + 1)] = True  # bank and queries both hold every class
        self.train_images, self.train_labels = images[in_bank], labels[in_bank]
        self.test_images, self.test_labels = images[~in_bank], labels[~in_bank]
        self.k = min(cfg.probe.knn_k, len(self.train_images))
        self.temperature = cfg.probe.knn_temperature
        self.num_classes = int(max(self.train_labels.max(), self.test_labels.max())) + 1

    def __call__(self, encoder, device) -> float:
        train_f = extract_features(encoder, self.train_images, device=device)
        test_f = extract_features(encoder, self.test_images, device=device)
        return knn_top1(train_f, self.train_labels, test_f, self.test_labels, self.num_classes, self.k, self.temperature)


class EpochRankMe:
    """RankMe of the encoder's features on ``probe.rankme_images`` pretraining images drawn across the split.

    Label-free, so runs and searches on unlabeled data still see how the encoder develops.
    Measured on the representation the probes use (the encoder's pooled features).
    """

    def __init__(self, cfg: Config):
        self.images = load_images(cfg.data.shards, "train", cfg.probe.rankme_images, probe_crop(cfg))

    def __call__(self, encoder, device) -> float:
        return rankme(extract_features(encoder, self.images, device=device))


def run_probes(method: nn.Module, cfg: Config, splits: LabeledSplits | None = None, device: str = "cpu") -> dict[str, float]:
    """Probe metrics of a pretrained method plus, if configured, both baselines of the same architecture.

    RankMe always (it needs no labels); the rest only when the probe set has labels. The decoded probe
    sets and every baseline are shared by the trials of a search (``pipelines.shared_work``).
    """
    metrics = {}
    if cfg.probe.rankme_images:
        metrics[names.RANKME] = EpochRankMe(cfg)(method.encoder, device)
    if splits is None and not has_labels(cfg):
        return metrics
    cache = cache_dir(cfg.tracking.runs_dir) if cfg.probe.share_baselines else None
    data_key = probe_set_key(cfg)
    splits = splits or shared_splits(cfg, cache, data_key)
    metrics.update({f"probe/{k}": v for k, v in probe_encoder(method.encoder, splits, cfg.probe, device).items()})
    # How many labeled images the probes fit on and report on (partly labeled shards: only the labeled rows).
    metrics["probe/train_images"], metrics["probe/test_images"] = len(splits.train_labels), len(splits.test_labels)
    metrics["probe/train_classes"] = len(np.unique(splits.train_labels))  # the classes the probe was fit on
    if not (cfg.probe.baselines or cfg.probe.labels_per_class):
        return metrics
    torch.manual_seed(cfg.train.seed)
    untrained = build_method(cfg, read_manifest(cfg.data.shards)).encoder  # random init, same architecture and seed
    arch_key = weights_digest(untrained)
    if cfg.probe.baselines:
        metrics.update(
            shared_metrics(
                cache,
                "baselines",
                digest(data_key, arch_key),
                lambda: {
                    names.RANDOM_INIT_LINEAR_TOP1: probe_encoder(untrained, splits, cfg.probe, device)["linear_top1"],
                    names.PIXELS_LINEAR_TOP1: pixels_linear_top1(splits, cfg.probe),
                },
            )
        )
    if cfg.probe.labels_per_class:
        from pipelines.finetune import few_label_top1

        counts, steps = cfg.probe.labels_per_class, cfg.probe.finetune_steps
        finetuned = few_label_top1(method.encoder, splits, counts, steps, device)
        metrics.update({names.finetune_top1(n): finetuned[n] for n in counts})
        metrics.update(
            shared_metrics(
                cache,
                "from-scratch",
                digest(data_key, arch_key, counts, steps),
                lambda: {
                    names.supervised_top1(n): top1 for n, top1 in few_label_top1(untrained, splits, counts, steps, device).items()
                },
            )
        )
    return metrics


def probe_set_key(cfg: Config) -> str:
    """What the probe results depend on besides the encoder: the probe set and the probe settings."""
    shards = probe_shards(cfg)
    probe = cfg.probe.model_dump(exclude={"labels_per_class", "finetune_steps", "epoch_knn_images", "rankme_images"})
    return digest(resolve_uri(shards), read_manifest(shards), probe, probe_crop(cfg))


def shared_splits(cfg: Config, cache, data_key: str) -> LabeledSplits:
    """The decoded probe sets, decoded once per search."""
    arrays = shared_arrays(
        cache,
        "probe-sets",
        data_key,
        lambda: vars(load_splits(probe_shards(cfg), cfg.probe, probe_crop(cfg))),
    )
    return LabeledSplits(**arrays)
