"""Photos at their own resolution: shards keep each image (the JPEG's own bytes where they can), views are
cropped from the original, probes see a resize of 8/7 and a centre crop, and Ray tasks shard as one process does.

Real JPEG photos of 300-600 px, rescaled crops of scikit-image's sample photographs in four class folders.
"""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines.crops import _decoded, crop_batch, random_box, resized_box
from pipelines.data import eval_crop, load_labeled
from pipelines.shard import write_shards
from ssl_models.views import CropSpec

PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg")


@pytest.fixture(scope="module")
def jpeg_photos(tmp_path_factory) -> Path:
    """40 JPEG photos, longer side 300-600 px, aspect ratios 1:2 to 2:1, in one class folder per photograph."""
    source = Path(importlib.util.find_spec("skimage").submodule_search_locations[0]) / "data"
    photos = [Image.open(source / name).convert("RGB") for name in PHOTOS]
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("jpeg-photos")
    for i in range(40):
        photo = photos[i % len(photos)]
        w, h = photo.size
        cw, ch = int(w * rng.uniform(0.5, 1)), int(h * rng.uniform(0.5, 1))
        x, y = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
        scale = rng.integers(300, 601) / max(cw, ch)
        img = photo.crop((x, y, x + cw, y + ch)).resize((round(cw * scale), round(ch * scale)), Image.Resampling.BICUBIC)
        folder = root / PHOTOS[i % len(PHOTOS)].split(".")[0]
        folder.mkdir(exist_ok=True)
        img.save(folder / f"{i:04d}.jpg", quality=90)
    return root


def _rows(shards: Path) -> dict[str, dict]:
    rows = {}
    for split in ("train", "test"):
        for row in pq.read_table(shards / split).to_pylist():
            rows[row["id"]] = {**row, "split": split}
    return rows


def test_shards_keep_each_photo_its_jpeg_bytes_and_its_size_under_the_cap(jpeg_photos, tmp_path):
    kept = write_shards(str(jpeg_photos), tmp_path / "kept", max_size=0, parallel=False)
    assert kept.manifest["image_size"] is None and kept.manifest["encodings"] == {"original": 40}
    for image_id, row in _rows(tmp_path / "kept").items():
        original = (jpeg_photos / image_id).read_bytes()
        assert row["image"] == original  # not re-encoded
        assert (row["width"], row["height"]) == Image.open(io.BytesIO(original)).size

    capped = write_shards(str(jpeg_photos), tmp_path / "capped", max_size=256, parallel=False)
    sizes = capped.manifest["sizes"]
    assert min(sizes["height"]["min"], sizes["width"]["min"]) <= 256 < max(sizes["height"]["max"], sizes["width"]["max"])
    for image_id, row in _rows(tmp_path / "capped").items():
        width, height = Image.open(jpeg_photos / image_id).size
        stored = Image.open(io.BytesIO(row["image"]))
        assert (row["width"], row["height"]) == stored.size
        if min(width, height) > 256:  # resized: the shorter side is the cap, the aspect ratio kept
            assert min(stored.size) == 256 and stored.format == "JPEG"
            assert abs(stored.width / stored.height - width / height) < 0.02
        else:
            assert row["image"] == (jpeg_photos / image_id).read_bytes()


def test_a_broken_jpeg_that_would_keep_its_bytes_is_still_read_whole_and_skipped(jpeg_photos, tmp_path):
    """A JPEG kept as its own bytes is checked at 1/8 scale, which still reads every byte: a cut file fails."""
    import shutil

    src = tmp_path / "src"
    shutil.copytree(jpeg_photos / "coffee", src / "coffee")
    good = sorted((src / "coffee").glob("*.jpg"))[0].read_bytes()
    (src / "coffee" / "cut.jpg").write_bytes(good[: len(good) // 2])
    (src / "coffee" / "no-end.jpg").write_bytes(good[:-2])
    result = write_shards(str(src), tmp_path / "out", max_size=0, parallel=False)
    reasons = {s["file"]: s["reason"] for s in result.skipped}
    assert sorted(reasons) == ["coffee/cut.jpg", "coffee/no-end.jpg"]
    assert all(r.startswith("cannot decode (OSError: image file is truncated") for r in reasons.values()), reasons
    assert result.manifest["encodings"] == {"original": 10}


def test_fixed_size_keeps_its_meaning_a_png_square(jpeg_photos, tmp_path):
    manifest = write_shards(str(jpeg_photos), tmp_path / "s", size=24, parallel=False).manifest
    assert manifest["image_size"] == [24, 24] and manifest["encodings"] == {"png": 40}
    row = next(iter(_rows(tmp_path / "s").values()))
    assert Image.open(io.BytesIO(row["image"])).size == (24, 24) and (row["height"], row["width"]) == (24, 24)


def test_ray_tasks_shard_the_same_rows_as_one_process(ray_session, jpeg_photos, tmp_path, monkeypatch):
    monkeypatch.setattr("pipelines.shard.FILES_PER_TASK", 8)  # 41 files: six tasks, their results merged in order
    (jpeg_photos / "chelsea" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    try:
        serial = write_shards(str(jpeg_photos), tmp_path / "serial", rows_per_shard=8, max_size=256, parallel=False)
        tasks = write_shards(str(jpeg_photos), tmp_path / "tasks", rows_per_shard=8, max_size=256, parallel=True)
        again = write_shards(str(jpeg_photos), tmp_path / "tasks", rows_per_shard=8, max_size=256, parallel=True)
    finally:
        (jpeg_photos / "chelsea" / "broken.jpg").unlink()
    assert tasks.manifest == {**serial.manifest}
    assert serial.manifest["skipped_count"] == 1 and serial.manifest["skipped"][0]["file"] == "chelsea/broken.jpg"
    for split in ("train", "test"):
        assert pq.read_table(tmp_path / "serial" / split).equals(pq.read_table(tmp_path / "tasks" / split))
    assert again.reused == len(serial.manifest["splits"]["train"]["shards"]) + len(serial.manifest["splits"]["test"]["shards"])


def test_crop_boxes_cover_the_whole_original_not_only_its_centre():
    rng = np.random.default_rng(0)
    spec = CropSpec(224, (0.2, 1.0))
    covered = np.zeros((375, 500), dtype=bool)
    areas = []
    for _ in range(400):
        left, top, right, bottom = random_box(500, 375, spec, rng)
        assert 0 <= left < right <= 500 and 0 <= top < bottom <= 375
        covered[int(top) : int(bottom), int(left) : int(right)] = True
        areas.append((right - left) * (bottom - top) / (500 * 375))
    # the strips outside the centre square (what a stored centre crop loses), and the corners, nearly all of them
    # (a box reaches a corner's last pixel only when it starts there, as in torchvision)
    assert covered[:, :62].mean() > 0.95 and covered[:, -62:].mean() > 0.95 and covered.mean() > 0.99
    assert min(covered[:40, :40].mean(), covered[:40, -40:].mean(), covered[-40:, :40].mean(), covered[-40:, -40:].mean()) > 0.8
    assert 0.15 < min(areas) < 0.3 and max(areas) > 0.9


def test_views_are_crops_of_the_original_at_the_asked_sizes(jpeg_photos, tmp_path):
    write_shards(str(jpeg_photos), tmp_path / "s", max_size=0, parallel=False)
    table = pq.read_table(tmp_path / "s" / "train")
    batch = {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}
    specs = [CropSpec(64, (0.4, 1.0))] * 2 + [CropSpec(24, (0.05, 0.4))] * 3  # multi-crop: global and local
    crops = crop_batch(batch, specs, "RGB", seed=0)
    assert [crops[f"crop_{i}"].shape for i in range(5)] == [(len(batch["id"]), 64, 64, 3)] * 2 + [
        (len(batch["id"]), 24, 24, 3)
    ] * 3
    assert "image" not in crops and list(crops["label"]) == list(batch["label"])
    # a full-area crop of one photo equals the photo resized: the box is in the original's pixels
    full = crop_batch({"image": batch["image"][:1]}, [CropSpec(64, (1.0, 1.0), (0.1, 10.0))], "RGB", seed=0)["crop_0"][0]
    photo = Image.open(io.BytesIO(batch["image"][0])).convert("RGB")
    want = np.asarray(photo.resize((64, 64), Image.Resampling.BILINEAR)).astype(int)
    assert np.abs(full.astype(int) - want).mean() < 3  # the draft decode (DCT scaling) differs by a few levels


def test_a_crop_is_resized_as_pil_resizes_it_and_decoded_as_pil_decodes_it(jpeg_photos):
    """The crops' fast path (torchvision's JPEG decoder, torch's uint8 antialiased resize) gives PIL's pixels, and
    the box is cut before it is resized, as torchvision's RandomResizedCrop does (``crop`` then ``resize``)."""
    import torch

    data = next(iter(sorted(jpeg_photos.rglob("*.jpg")))).read_bytes()
    photo = Image.open(io.BytesIO(data))
    pixels, sx, sy = _decoded(photo, data, "RGB", smallest_ratio=1.0)
    assert (sx, sy) == (1.0, 1.0)
    np.testing.assert_array_equal(pixels.numpy(), np.asarray(photo.convert("RGB")))  # the same libjpeg-turbo decode
    for mode in ("RGB", "L"):
        image = photo.convert(mode)
        array = torch.from_numpy(np.array(image)).reshape(image.height, image.width, -1)
        for box, size in (((10, 20, 250, 200), 64), ((0, 0, 40, 30), 64), ((5, 5, image.width, image.height), 224)):
            want = np.asarray(image.crop(box).resize((size, size), Image.Resampling.BILINEAR)).reshape(size, size, -1)
            got = resized_box(array, box, size)
            assert got.shape == want.shape and got.dtype == np.uint8
            assert np.abs(got.astype(int) - want).max() <= 1, (mode, box, size)  # down- and upscaling alike


def test_a_view_task_yields_its_views_a_block_at_a_time_and_tasks_are_large():
    """Ray Data's slots idle between tasks: a task takes many rows and passes each block of views on as made."""
    from pipelines.build import view_policy
    from pipelines.config import build_config
    from pipelines.data import encode_png
    from pipelines.stream import ViewsFromShards, rows_per_view_block, rows_per_views_task

    pairs_224, pairs_28 = [CropSpec(224, (0.2, 1.0))] * 2, [CropSpec(28, (0.2, 1.0))] * 2
    assert (rows_per_views_task(pairs_224, 3), rows_per_view_block(pairs_224, 3)) == (222, 32)
    assert (rows_per_views_task(pairs_28, 1), rows_per_view_block(pairs_28, 1)) == (256, 668)  # one part a task
    manifest = {"channels": 1, "image_size": [28, 28], "mode": "L", "classes": [], "splits": {}}
    stage = ViewsFromShards(view_policy(build_config(), manifest), rows_per_yield=3)
    image = encode_png(np.arange(28 * 28, dtype=np.uint8).reshape(28, 28))
    parts = list(stage({"image": np.array([image] * 4, dtype=object), "id": np.array(list("abcd"), dtype=object)}))
    assert [part["view_0"].shape for part in parts] == [(3, 1, 28, 28), (1, 1, 28, 28)]


def test_blocks_of_large_views_hold_many_rows_and_small_ones_stay_small():
    """A block of 224 px view pairs holds VIEW_BLOCK_ROWS rows (1 MiB held 3); Fashion-MNIST's stay at 1 MiB."""
    from pipelines.stream import VIEW_BLOCK_BYTES, VIEW_BLOCK_ROWS, view_block_bytes

    assert view_block_bytes([CropSpec(28, (0.2, 1.0))] * 2, channels=1) == VIEW_BLOCK_BYTES == 1024**2
    assert view_block_bytes([CropSpec(224, (0.2, 1.0))] * 2, channels=3) == VIEW_BLOCK_ROWS * 2 * 3 * 224**2
    multi_crop = [CropSpec(224, (0.4, 1.0))] * 2 + [CropSpec(96, (0.05, 0.4))] * 6
    assert view_block_bytes(multi_crop, channels=3) == VIEW_BLOCK_ROWS * 3 * (2 * 224**2 + 6 * 96**2)


def test_probes_see_a_resize_to_8_7_of_the_crop_and_a_centre_crop(jpeg_photos, tmp_path):
    data = next(iter(sorted(jpeg_photos.rglob("*.jpg")))).read_bytes()
    photo = Image.open(io.BytesIO(data)).convert("RGB")
    image = eval_crop(data, 56, "RGB")
    assert image.shape == (56, 56, 3)
    scale = 64 / min(photo.size)  # 56 x 8/7
    resized = photo.resize((round(photo.width * scale), round(photo.height * scale)), Image.Resampling.BILINEAR)
    left, top = (resized.width - 56) // 2, (resized.height - 56) // 2
    want = np.asarray(resized.crop((left, top, left + 56, top + 56))).astype(int)
    assert np.abs(image.astype(int) - want).mean() < 4

    write_shards(str(jpeg_photos), tmp_path / "s", parallel=False)
    images, labels = load_labeled(str(tmp_path / "s"), "train", None, crop=56)
    assert images.shape[1:] == (56, 56, 3) and len(images) == len(labels)


@pytest.mark.e2e
def test_photo_shards_pretrain_resnet18_at_64_px_and_probe(ray_session, jpeg_photos, tmp_path):
    from pipelines import tracking
    from pipelines.config import build_config
    from pipelines.train import pretrain

    shards = write_shards(str(jpeg_photos), tmp_path / "shards", max_size=128).out_dir
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = build_config(
        {},
        [
            f"data.shards={shards}",
            "data.crop_size=64",
            "data.batch_size=8",
            "method.backbone=resnet18",
            "train.epochs=1",
            "train.timeout_s=400",
            "probe.linear_epochs=2",
            "probe.baselines=false",  # the test reads the encoder's probes only
            "probe.knn_k=5",
            "probe.epoch_knn_images=16",
            "probe.rankme_images=16",
            f"tracking.runs_dir={tmp_path / 'runs'}",
            f"tracking.tracking_uri={uri}",
            "tracking.experiment=photos",
        ],
    )
    result = pretrain(cfg)
    run = tracking.search_runs(uri, "photos")[0]
    assert run.info.status == "FINISHED"
    losses = [v for _, v in tracking.metric_history(uri, result.run_id, "train/loss")]
    assert len(losses) == 1 and np.isfinite(losses[0]) and losses[0] > 0
    assert {"probe/linear_top1", "probe/knn_top1", "probe/rankme"} <= set(run.data.metrics)  # probed on 64 px centre crops


def test_an_s3_source_folder_shards_as_the_same_folder_on_disk(ray_session, s3, jpeg_photos, tmp_path):
    """``rayssl shard s3://bucket/prefix``: listed on the driver, read by one process or by Ray tasks; the same
    rows, labels, ids and splits as the folder on disk."""
    import pyarrow.fs as pafs

    source = f"{s3}/photo-source"
    fs, base = pafs.FileSystem.from_uri(source)
    for path in sorted(jpeg_photos.rglob("*.jpg")):
        with fs.open_output_stream(f"{base}/{path.relative_to(jpeg_photos).as_posix()}") as out:
            out.write(path.read_bytes())
    local = write_shards(str(jpeg_photos), tmp_path / "local", rows_per_shard=8, max_size=256, parallel=False)
    serial = write_shards(source, tmp_path / "serial", rows_per_shard=8, max_size=256, parallel=False)
    tasks = write_shards(source, tmp_path / "tasks", rows_per_shard=8, max_size=256, parallel=True)
    for result in (serial, tasks):
        assert result.manifest["splits"] == local.manifest["splits"]
        assert result.manifest["classes"] == local.manifest["classes"] == sorted(p.split(".")[0] for p in PHOTOS)
        for split in ("train", "test"):
            assert pq.read_table(Path(result.out_dir) / split).equals(pq.read_table(tmp_path / "local" / split))


def test_blur_sigma_defaults_to_simclrs_at_224_px_and_stays_for_small_views(jpeg_photos, tmp_path):
    """No ``data.augment.blur_sigma``: SimCLR's 0.1-2.0 px at 224 px views, scaled with the size, 0.1-1.0 at 28-112 px."""
    from pipelines.build import view_policy
    from pipelines.config import build_config

    manifest = write_shards(str(jpeg_photos), tmp_path / "s", max_size=256, parallel=False).manifest
    sigma = {}
    for crop in (32, 112, 224):
        cfg = build_config({}, [f"data.shards={tmp_path / 's'}", f"data.crop_size={crop}"])
        sigma[crop] = view_policy(cfg, manifest).blur_sigma
    cfg = build_config({}, [f"data.shards={tmp_path / 's'}", "data.crop_size=224", "data.augment.blur_sigma=[0.2,0.5]"])
    assert sigma == {32: (0.1, 1.0), 112: (0.1, 1.0), 224: (0.1, 2.0)}
    assert view_policy(cfg, manifest).blur_sigma == (0.2, 0.5)
