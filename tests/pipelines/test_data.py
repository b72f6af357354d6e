import json

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from pipelines.data import load_labeled, read_fashion_mnist
from pipelines.shard import write_shards


def test_fashion_mnist_round_trip(tmp_path):
    result = write_shards("fashion-mnist", tmp_path / "s", rows_per_shard=100, limit=250)
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["splits"]["train"]["rows"] == 250
    assert manifest["splits"]["test"]["rows"] == 250
    assert len(manifest["splits"]["train"]["shards"]) == 3  # 100 + 100 + 50
    assert manifest["image_size"] == [28, 28] and manifest["mode"] == "L" and len(manifest["classes"]) == 10
    assert result.skipped == []
    table = pq.read_table(tmp_path / "s" / "train")
    assert table.column_names == ["image", "label", "id", "height", "width"]
    assert set(table.column("height").to_pylist()) == set(table.column("width").to_pylist()) == {28}
    # the rows are a stratified sample in a mixed order (tests/pipelines/test_data_order.py); each is its original
    index = [int(i.rsplit("/", 1)[1]) for i in table.column("id").to_pylist()]
    images, labels = load_labeled(str(tmp_path / "s"), "train")
    raw_images, raw_labels = read_fashion_mnist("train")
    np.testing.assert_array_equal(images[..., 0], raw_images[index])  # PNG is lossless
    np.testing.assert_array_equal(labels, raw_labels[index])
    assert table.column("label").to_pylist() == raw_labels[index].tolist()


def _folder_with_bad_files(root):
    rng = np.random.default_rng(0)
    for cls in ("cats", "dogs"):
        (root / cls).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)).save(root / "unlabeled.png")
    (root / "cats" / "empty.png").write_bytes(b"")
    (root / "dogs" / "notes.png").write_text("this is not an image")
    good = (root / "cats" / "0.png").read_bytes()
    (root / "dogs" / "truncated.png").write_bytes(good[: len(good) // 2])


def test_folder_shards_label_by_subfolder_and_skip_bad_files(tmp_path):
    _folder_with_bad_files(tmp_path / "src")
    result = write_shards(str(tmp_path / "src"), tmp_path / "out", size=16, test_fraction=0.3)
    m = result.manifest
    assert m["classes"] == ["cats", "dogs"]
    assert m["splits"]["train"]["rows"] + m["splits"]["test"]["rows"] == 13
    assert m["splits"]["train"]["labeled"] + m["splits"]["test"]["labeled"] == 12
    assert m["skipped_count"] == 3
    reasons = {s["file"]: s["reason"] for s in m["skipped"]}
    assert reasons["cats/empty.png"] == "zero-byte file"
    assert "cannot decode" in reasons["dogs/notes.png"]
    assert "dogs/truncated.png" in reasons
    images, labels = load_labeled(str(tmp_path / "out"), "train")
    assert images.shape[1:] == (16, 16, 3) and images.dtype == np.uint8
    assert set(labels.tolist()) <= {0, 1}


# Bad sources, --strict and every other refused input: tests/pipelines/test_bad_inputs.py


def test_pretrain_stream_emits_uint8_views_in_small_blocks(ray_session, fmnist_shards, monkeypatch):
    """The stream Ray Train reads: the V1 Parquet reader, 8-bit views, blocks of at most about
    VIEW_BLOCK_BYTES (so the first batch of an epoch does not wait for a whole shard), and the
    driver's own Ray Data settings left as they were."""
    from ray.data import DataContext

    from pipelines import stream
    from pipelines.config import build_config
    from pipelines.data import read_manifest

    cfg = build_config({}, [f"data.shards={fmnist_shards}"])
    manifest = read_manifest(str(fmnist_shards))
    driver = DataContext.get_current()
    before = (driver.use_datasource_v2, driver.target_max_block_size)
    # 100 kB blocks: each 256-image shard's views (2 x 784 bytes each, ~400 kB) must split into four or more.
    block_bytes = 100_000
    monkeypatch.setattr(stream, "VIEW_BLOCK_BYTES", block_bytes)
    ds = stream.build_pretrain_dataset(cfg, manifest)
    assert (driver.use_datasource_v2, driver.target_max_block_size) == before
    assert (ds.context.use_datasource_v2, ds.context.target_max_block_size) == (False, block_bytes)
    blocks = [m for bundle in ds.materialize().iter_internal_ref_bundles() for m in bundle.metadata]
    assert sum(m.num_rows for m in blocks) == 1024
    assert len(blocks) >= 16 and max(m.size_bytes for m in blocks) <= 1.5 * block_bytes, [m.size_bytes for m in blocks]
    batch = ds.take_batch(8)
    assert set(batch) == {"view_0", "view_1"}
    assert batch["view_0"].dtype == np.uint8 and batch["view_0"].shape == (8, 1, 28, 28)
