"""Work the trials of a search share is done once: the decoded probe sets and every baseline, on real images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines.build import build_method
from pipelines.config import build_config
from pipelines.data import read_manifest
from pipelines.evaluate import run_probes
from pipelines.shared_work import cache_dir, shared_metrics, weights_digest
from ssl_models.backbones import create_backbone


def test_shared_metrics_computes_once_and_reads_back(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"baseline/pixels_linear_top1": 0.84}

    assert shared_metrics(tmp_path, "baselines", "k1", compute) == {"baseline/pixels_linear_top1": 0.84}
    assert shared_metrics(tmp_path, "baselines", "k1", compute) == {"baseline/pixels_linear_top1": 0.84}
    assert len(calls) == 1 and [p.name for p in tmp_path.iterdir()] == ["baselines-k1.json"]
    shared_metrics(None, "baselines", "k1", compute)  # no cache folder: always computed
    assert len(calls) == 2


def test_weights_digest_tells_architectures_and_seeds_apart():
    def encoder(name, seed, channels=1):
        torch.manual_seed(seed)
        return create_backbone(name, in_channels=channels, image_size=28)

    assert weights_digest(encoder("tiny_cnn", 0)) == weights_digest(encoder("tiny_cnn", 0))
    assert weights_digest(encoder("tiny_cnn", 0)) != weights_digest(encoder("tiny_cnn", 1))
    assert weights_digest(encoder("tiny_cnn", 0)) != weights_digest(encoder("small_cnn", 0))
    assert weights_digest(encoder("tiny_cnn", 0)) != weights_digest(encoder("tiny_cnn", 0, channels=3))


@pytest.fixture
def probe_config(fmnist_shards, tmp_path):
    def make(method="simclr", seed=0):
        return build_config(
            {},
            [
                f"data.shards={fmnist_shards}",
                f"method.name={method}",
                "method.backbone=tiny_cnn",
                f"train.seed={seed}",
                f"tracking.runs_dir={tmp_path}",
                "probe.linear_epochs=2",
                "probe.knn_k=20",
                "probe.max_train_images=400",
                "probe.max_test_images=200",
                "probe.rankme_images=0",
                "probe.labels_per_class=[2]",
                "probe.finetune_steps=5",
            ],
        )

    return make


def test_trials_share_probe_sets_and_baselines_of_one_architecture(probe_config, tmp_path):
    cfg = probe_config()
    manifest = read_manifest(cfg.data.shards)
    torch.manual_seed(123)  # a "trained" encoder: other weights than the seed-0 random init
    first = run_probes(build_method(cfg, manifest), cfg)
    written = sorted(p.name.split("-")[0] for p in cache_dir(tmp_path).iterdir())
    assert written == ["baselines", "from", "probe"]  # baselines-*, from-scratch-*, probe-sets-*

    # A second trial of the same architecture and seed reads all three back: the same baseline values.
    torch.manual_seed(456)
    second = run_probes(build_method(cfg, manifest), cfg)
    shared = ["baseline/random_init_linear_top1", "baseline/pixels_linear_top1", "baseline/supervised_2pc_top1"]
    assert {k: second[k] for k in shared} == {k: first[k] for k in shared}
    assert len(list(cache_dir(tmp_path).iterdir())) == 3
    assert first["probe/train_images"] == 400 and first["probe/test_images"] == 200

    # Another method head / seed is another random-init encoder: its own baselines, the same probe sets.
    other = probe_config(method="byol", seed=1)
    run_probes(build_method(other, manifest), other)
    names = sorted(p.name.split("-")[0] for p in cache_dir(tmp_path).iterdir())
    assert names == ["baselines", "baselines", "from", "from", "probe"]


def test_cached_probe_sets_equal_the_decoded_ones(probe_config):
    from pipelines.evaluate import load_splits, probe_set_key, shared_splits

    cfg = probe_config()
    decoded = load_splits(cfg.data.shards, cfg.probe)
    cache = cache_dir(cfg.tracking.runs_dir)
    shared_splits(cfg, cache, probe_set_key(cfg))  # writes
    read_back = shared_splits(cfg, cache, probe_set_key(cfg))  # reads
    for name in ("train_images", "train_labels", "test_images", "test_labels"):
        np.testing.assert_array_equal(getattr(read_back, name), getattr(decoded, name))
