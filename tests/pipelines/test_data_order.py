"""Data order: a class-folder tree (its walk comes class by class) trains and probes as a shuffled source does.

Real Fashion-MNIST PNG files in 10 class folders of 60 (``fmnist_class_tree``), real Ray.
"""

import json
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import ray.data

from pipelines.cli import main
from pipelines.config import build_config
from pipelines.data import SCHEMA, encode_png, load_labeled, read_fashion_mnist, read_manifest, read_sample
from pipelines.evaluate import EpochKNN, load_splits
from pipelines.finetune import few_label_indices
from pipelines.sampling import mixed_order, stratified_sample
from pipelines.shard import write_shards
from pipelines.stream import build_pretrain_dataset, train_batches


def _shard(tree, out, **kwargs):
    return write_shards(str(tree), out, mode="L", size=28, **kwargs)


def _assert_in_proportion(labels, split_counts, slack=2):
    """Every class of the split is in ``labels``, each within ``slack`` rows of its share."""
    counts = np.bincount(labels, minlength=len(split_counts))
    expected = len(labels) * np.asarray(split_counts) / sum(split_counts)
    assert (counts > 0).all(), counts
    assert np.abs(counts - expected).max() <= slack, (counts, expected.round(1))


def test_mixed_order_spreads_every_class_and_depends_only_on_the_ids():
    ids = [f"c{c}/{i}" for c in range(3) for i in range(40 * (c + 1))]  # sorted, class by class, unequal classes
    labels = [int(i[1]) for i in ids]
    order = mixed_order(ids, labels)
    assert sorted(order) == list(range(len(ids)))
    ordered = np.asarray(labels)[order]
    for start in range(0, len(ids), 24):  # every stretch holds each class in proportion, within one
        window = ordered[start : start + 24]
        expected = len(window) * np.array([40, 80, 120]) / 240
        assert np.abs(np.bincount(window, minlength=3) - expected).max() <= 2
    # listed in another order, the same items come out in the same order
    reversed_order = mixed_order(ids[::-1], labels[::-1])
    assert [ids[::-1][p] for p in reversed_order] == [ids[p] for p in order]


def test_stratified_sample_keeps_every_class_within_one():
    labels = np.repeat([0, 1, 2, -1], [500, 300, 150, 50])
    picked = stratified_sample(labels, 100)
    assert len(picked) == 100 and len(set(picked.tolist())) == 100 and (np.diff(picked) > 0).all()
    assert dict(zip(*np.unique(labels[picked], return_counts=True), strict=True)) == {-1: 5, 0: 50, 1: 30, 2: 15}
    assert (stratified_sample(labels, 100) == picked).all()  # seeded
    assert len(stratified_sample(labels, 5_000)) == 1_000


def test_every_shard_of_a_class_tree_holds_every_class_and_a_rerun_keeps_them(fmnist_class_tree, tmp_path):
    result = _shard(fmnist_class_tree, tmp_path / "s", rows_per_shard=100)
    splits = result.manifest["splits"]
    for split, summary in splits.items():
        assert summary["rows"] == summary["labeled"] == sum(summary["class_counts"])
        all_labels = pq.read_table(tmp_path / "s" / split).column("label").to_numpy()
        assert np.bincount(all_labels, minlength=10).tolist() == summary["class_counts"]
        for name in summary["shards"]:
            labels = pq.read_table(tmp_path / "s" / split / name).column("label").to_numpy()
            if len(labels) >= 50:  # the last part of a split may be a few rows
                _assert_in_proportion(labels, summary["class_counts"])
    assert (
        len(splits["train"]["shards"]) == 5 and sum(splits["train"]["class_counts"]) + sum(splits["test"]["class_counts"]) == 600
    )
    again = _shard(fmnist_class_tree, tmp_path / "s", rows_per_shard=100)
    assert again.reused == len(splits["train"]["shards"]) + len(splits["test"]["shards"])  # the same order: nothing rewritten


def test_limit_takes_a_sample_of_every_class(fmnist_class_tree, tmp_path):
    full = _shard(fmnist_class_tree, tmp_path / "full").manifest["splits"]
    out = tmp_path / "limited"
    assert main(["shard", str(fmnist_class_tree), "--out", str(out), "--mode", "L", "--size", "28", "--limit", "100"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    for split in ("train", "test"):
        labels = pq.read_table(out / split).column("label").to_numpy()
        assert len(labels) == min(100, full[split]["rows"])
        _assert_in_proportion(labels, full[split]["class_counts"])
        assert manifest["splits"][split]["class_counts"] == np.bincount(labels, minlength=10).tolist()


def test_probe_subsets_hold_every_class_in_proportion(fmnist_class_tree, tmp_path):
    shards = tmp_path / "s"
    counts = _shard(fmnist_class_tree, shards).manifest["splits"]
    train_counts, test_counts = counts["train"]["class_counts"], counts["test"]["class_counts"]
    cfg = build_config(
        {},
        [
            f"data.shards={shards}",
            "probe.max_train_images=100",
            "probe.max_test_images=50",
            "probe.epoch_knn_images=120",
        ],
    )
    splits = load_splits(str(shards), cfg.probe)
    assert len(splits.train_labels) == 100 and len(splits.test_labels) == 50
    _assert_in_proportion(splits.train_labels, train_counts)
    _assert_in_proportion(splits.test_labels, test_counts)
    knn = EpochKNN(cfg)  # the per-epoch kNN that ASHA and PBT act on: bank and queries from the train split
    assert len(knn.train_labels) == 120
    _assert_in_proportion(knn.train_labels, train_counts)
    _assert_in_proportion(knn.test_labels, train_counts)
    rankme = read_sample(str(shards), "train", 80)  # RankMe's images (and the preview's)
    _assert_in_proportion(rankme.column("label").to_numpy(), train_counts)
    embedding_images, embedding_labels = load_labeled(str(shards), "test", 40)  # compare's embedding plot
    _assert_in_proportion(embedding_labels, test_counts)
    few = splits.train_labels[few_label_indices(splits.train_labels, 2)]  # the few-label picks
    assert np.bincount(few, minlength=10).tolist() == [2] * 10


def test_probe_subsets_of_class_sorted_shards_written_elsewhere_still_hold_every_class(tmp_path, capsys):
    """Shards another tool wrote class by class: a sample of them is not their first rows."""
    images, labels = read_fashion_mnist("test")
    order = np.concatenate([np.flatnonzero(labels == c)[:200] for c in range(10)])  # 2,000 rows by class, two files
    split = tmp_path / "sorted" / "train"
    split.mkdir(parents=True)
    for part, rows in enumerate(np.array_split(order, 2)):
        table = pa.table(
            {"image": [encode_png(images[i]) for i in rows], "label": labels[rows], "id": [f"row/{i}" for i in rows]},
            schema=pa.schema(list(SCHEMA)[:3]),  # no height and width columns: another tool's shards
        )
        pq.write_table(table, split / f"part-{part:05d}.parquet", row_group_size=256)
    sample = read_sample(str(tmp_path / "sorted"), "train", 200, labeled_only=True)
    sorted_counts = np.bincount(labels[order], minlength=10)
    _assert_in_proportion(sample.column("label").to_numpy(), sorted_counts)
    # the rows are the images their ids name
    ids = [int(i.split("/")[1]) for i in sample.column("id").to_pylist()]
    assert sample.column("image").to_pylist() == [encode_png(images[i]) for i in ids]


def _epoch_fingerprints(dataset, cfg, epoch):
    """Per batch: the set of crc32s of its images (which images met in it), and its number of classes."""
    batches = []
    for batch in train_batches(dataset, cfg, 64, epoch, 0, "cpu"):
        images = batch["image"].numpy()
        batches.append((frozenset(zlib.crc32(x.tobytes()) for x in images), len(set(batch["label"].tolist()))))
    return batches


def test_a_one_file_split_is_mixed_anew_every_epoch(ray_session, fmnist_class_tree, tmp_path):
    """A folder smaller than one shard is one file: only the shuffle buffer changes its batches between epochs."""
    shards = tmp_path / "s"
    _shard(fmnist_class_tree, shards)
    manifest = read_manifest(str(shards))
    assert len(manifest["splits"]["train"]["shards"]) == 1
    by_buffer = {}
    # Ray Data may hand blocks of concurrent tasks over in either order (a busy machine did, once in a suite
    # run); kept in order here, so that only the buffer can change the batches
    options = ray.data.DataContext.get_current().execution_options
    before, options.preserve_order = options.preserve_order, True
    try:
        for buffer in (0, 128):
            cfg = build_config({}, [f"data.shards={shards}", "data.augment_on=device", f"data.shuffle_buffer={buffer}"])
            dataset = build_pretrain_dataset(cfg, manifest, with_labels=True)
            by_buffer[buffer] = [_epoch_fingerprints(dataset, cfg, epoch) for epoch in range(2)]
    finally:
        options.preserve_order = before
    unshuffled, shuffled = by_buffer[0], by_buffer[128]
    assert [b for b, _ in unshuffled[0]] == [b for b, _ in unshuffled[1]]  # without the buffer: one fixed order
    first, second = ({b for b, _ in epoch} for epoch in shuffled)
    assert not first & second  # with it: no batch of epoch 2 is a batch of epoch 1
    assert min(classes for epoch in shuffled for _, classes in epoch) >= 7


@pytest.mark.e2e
def test_every_batch_a_worker_receives_holds_most_classes_and_changes_every_epoch(ray_session, fmnist_class_tree, tmp_path):
    """Two Ray Train workers read the streamed shards of the class tree as pretraining does, for two epochs."""
    import ray.train
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    shards = tmp_path / "s"
    _shard(fmnist_class_tree, shards, rows_per_shard=150)
    cfg = build_config({}, [f"data.shards={shards}", "data.augment_on=device", "data.shuffle_buffer=128"])
    out = tmp_path / "batches"
    out.mkdir()

    def loop(config):
        rank = ray.train.get_context().get_world_rank()
        shard = ray.train.get_dataset_shard("train")
        epochs = [[(sorted(b), n) for b, n in _epoch_fingerprints(shard, cfg, epoch)] for epoch in range(2)]
        (out / f"rank{rank}.json").write_text(json.dumps(epochs))

    TorchTrainer(
        loop,
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
        run_config=RunConfig(name="batches", storage_path=str(tmp_path / "ray")),
        datasets={"train": build_pretrain_dataset(cfg, read_manifest(str(shards)), with_labels=True)},
    ).fit()
    for rank in (0, 1):
        epochs = json.loads((out / f"rank{rank}.json").read_text())
        assert all(len(epoch) >= 2 for epoch in epochs)  # about 240 rows a worker: 3 batches of 64
        assert min(n for epoch in epochs for _, n in epoch) >= 7  # every 64-image batch: at least 7 of 10 classes
        first, second = ({tuple(b) for b, _ in epoch} for epoch in epochs)
        assert not first & second  # the batches of epoch 2 are new ones


@pytest.mark.e2e
def test_a_class_tree_pretrains_and_probes_as_the_builtin_source_does(ray_session, tmp_path):
    """The same budget on a class-folder tree and on the built-in (pre-shuffled) source, compared in one run.

    Before #24 the tree's linear probe was fit on its first classes: 0.276 against 0.788 at full size.
    """
    from pipelines.train import pretrain
    from tests.conftest import TINY_RUN, measured, write_class_tree

    tree = write_class_tree(tmp_path / "tree", 150)  # about 1,200 train and 300 test images
    sources = {
        "tree": write_shards(str(tree), tmp_path / "tree-shards", mode="L", size=28).out_dir,
        "builtin": write_shards("fashion-mnist", tmp_path / "builtin-shards", limit=1200).out_dir,
    }
    found = {}
    for name, shards in sources.items():
        overrides = [o for o in TINY_RUN if not o.startswith(("train.epochs", "probe.max_t", "data.max_train"))]
        cfg = build_config(
            {},
            [
                *overrides,
                f"data.shards={shards}",
                "data.max_train_images=1150",
                "train.epochs=2",
                "probe.max_train_images=1150",
                "probe.max_test_images=290",
                f"tracking.runs_dir={tmp_path / 'runs'}",
                f"tracking.experiment=order-{name}",
            ],
        )
        metrics = pretrain(cfg).metrics
        assert metrics["probe/train_classes"] == 10
        found[name] = {k: metrics[f"probe/{k}"] for k in ("knn_top1", "linear_top1")}
    # The tree's test images are a hash split of Fashion-MNIST's train set, the built-in source's are its own test
    # set: the tree came out ahead in the runs measured (kNN +0.031 in one, linear +0.045 and +0.052 in two).
    # What #24 fixed is the tree falling far behind (at full size: kNN 0.044 against 0.672, linear 0.276 against
    # 0.788), so both checks are one-sided. e2e runs of this size vary by sd 0.010 (kNN) and 0.033 (linear): -0.07
    # sits ~7 sd under the measured kNN difference, -0.15 ~4 sd under the linear one.
    knn = found["tree"]["knn_top1"] - found["builtin"]["knn_top1"]
    measured("knn_top1 tree - builtin", knn, above=-0.07, detail=found)
    linear = found["tree"]["linear_top1"] - found["builtin"]["linear_top1"]
    measured("linear_top1 tree - builtin", linear, above=-0.15, detail=found)
