"""Few-label fine-tuning and the views preview, on real Fashion-MNIST images (no Ray needed)."""

import numpy as np
import pytest
import torch
from PIL import Image

import ssl_models
from pipelines.config import build_config
from pipelines.data import load_labeled
from pipelines.evaluate import LabeledSplits
from pipelines.finetune import few_label_indices, few_label_metrics, finetune_top1
from pipelines.preview import preview
from tests.conftest import measured


def test_few_label_indices_take_n_per_class_with_a_fixed_seed():
    labels = np.repeat(np.arange(10), 50)
    idx = few_label_indices(labels, 10)
    assert len(idx) == 100 and list(np.bincount(labels[idx])) == [10] * 10
    np.testing.assert_array_equal(idx, few_label_indices(labels, 10))  # the same labels for both arms
    assert not np.array_equal(idx, few_label_indices(labels, 10, seed=1))
    # a class with fewer images than asked gives what it has
    assert len(few_label_indices(np.array([0, 0, 1]), 5)) == 3


@pytest.fixture(scope="module")
def splits(fmnist_shards):
    train_x, train_y = load_labeled(str(fmnist_shards), "train", 1024)
    test_x, test_y = load_labeled(str(fmnist_shards), "test", 300)
    return LabeledSplits(train_x, train_y, test_x, test_y)


def test_finetune_learns_from_ten_labels_per_class_and_leaves_the_encoder_alone(splits):
    torch.manual_seed(0)
    encoder = ssl_models.create_backbone("tiny_cnn", in_channels=1, image_size=28)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    idx = few_label_indices(splits.train_labels, 10)
    acc = finetune_top1(
        encoder, splits.train_images[idx], splits.train_labels[idx], splits.test_images, splits.test_labels, 10, steps=150
    )
    # well above chance (0.1) from 100 labels, even for the 4-8-16 channel tiny_cnn
    measured("finetune top-1, 100 labels", acc, above=0.25)
    for k, v in encoder.state_dict().items():
        torch.testing.assert_close(v, before[k])


def test_few_label_metrics_name_both_arms_for_every_n(splits):
    torch.manual_seed(0)
    pretrained = ssl_models.create_backbone("tiny_cnn", in_channels=1, image_size=28)
    scratch = ssl_models.create_backbone("tiny_cnn", in_channels=1, image_size=28)
    metrics = few_label_metrics(pretrained, scratch, splits, [1, 2], steps=20)
    assert set(metrics) == {
        "probe/finetune_1pc_top1",
        "baseline/supervised_1pc_top1",
        "probe/finetune_2pc_top1",
        "baseline/supervised_2pc_top1",
    }
    assert all(0.0 <= v <= 1.0 for v in metrics.values())


def test_labels_per_class_must_be_positive():
    from pipelines.config import ConfigError

    assert build_config({}, ["probe.labels_per_class=[100, 10, 10]"]).probe.labels_per_class == [10, 100]
    with pytest.raises(ConfigError, match=r"probe.labels_per_class: .*at least 1"):
        build_config({}, ["probe.labels_per_class=[0]"])


def test_preview_writes_a_grid_of_views(fmnist_shards, tmp_path):
    cfg = build_config({}, [f"data.shards={fmnist_shards}", "method.name=dino"])
    out = preview(cfg, tmp_path / "views.png", images=3, draws=2)
    with Image.open(out) as img:
        assert img.format == "PNG"
        width, height = img.size
    # 3 rows; 1 + 2 draws x 6 DINO crops = 13 columns: wider than tall
    assert width > 3 * height
