"""Sources: CIFAR-10, CIFAR-100 and STL-10 read from their archives' own file formats, and ImageNet-style folders.

Tiny files written in each real format (pickled dicts with bytes keys and uint8 rows; STL-10's column-major
binary files), from known random images: a shard row's pixels must equal its source image, so a wrong
reshape or transpose fails. No Ray: every source is sharded in this process.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import signal
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines import cli
from pipelines.data import FASHION_MNIST_DIR, DataError
from pipelines.shard import write_shards
from pipelines.sources import KNOWN_SOURCES, _split_spec, open_source
from tests.conftest import write_class_tree

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]


def _images(rng, n: int, size: int) -> np.ndarray:
    """Random uint8 (n, size, size, 3) images: no symmetry, so a flipped or transposed read differs."""
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _cifar_rows(images: np.ndarray) -> np.ndarray:
    """As CIFAR stores images: one row of 3072 bytes each, the red, green and blue 32x32 planes row-major."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), 3 * 32 * 32)


def _pickle(path: Path, obj: dict, protocol: int) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def write_cifar10(root: Path, per_batch: int = 4, test: int = 6) -> dict[str, tuple[np.ndarray, list[int]]]:
    """A cifar-10-batches-py folder (5 train batches of ``per_batch``); its images and labels per split.

    Protocol 2, as the real files: Python 3 spells bytes there with ``_codecs.encode``."""
    rng = np.random.default_rng(10)
    root.mkdir(parents=True)
    _pickle(root / "batches.meta", {b"label_names": [n.encode() for n in CIFAR10_CLASSES], b"num_vis": 3072}, 2)
    splits = {"train": ([], []), "test": ([], [])}
    for name, n, split in [(f"data_batch_{i}", per_batch, "train") for i in range(1, 6)] + [("test_batch", test, "test")]:
        images, labels = _images(rng, n, 32), rng.integers(0, 10, n).tolist()
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": _cifar_rows(images)}
        _pickle(root / name, {**batch, b"filenames": [f"{name}_{i}.png".encode() for i in range(n)]}, 2)
        splits[split][0].append(images)
        splits[split][1].extend(labels)
    return {split: (np.concatenate(images), labels) for split, (images, labels) in splits.items()}


def write_cifar100(root: Path, train: int = 12, test: int = 8) -> dict[str, tuple[np.ndarray, list[int], list[int]]]:
    """A cifar-100-python folder: its images, fine labels and coarse labels per split."""
    rng = np.random.default_rng(100)
    root.mkdir(parents=True)
    meta = {b"fine_label_names": [f"fine_{i}".encode() for i in range(100)]}
    _pickle(root / "meta", {**meta, b"coarse_label_names": [f"coarse_{i}".encode() for i in range(20)]}, 4)
    out = {}
    for split, n in (("train", train), ("test", test)):
        images, fine = _images(rng, n, 32), rng.integers(0, 100, n).tolist()
        coarse = [f % 20 for f in fine]
        batch = {b"filenames": [b"x.png"] * n, b"fine_labels": fine, b"coarse_labels": coarse, b"data": _cifar_rows(images)}
        _pickle(root / split, batch, 4)
        out[split] = (images, fine, coarse)
    return out


def write_stl10(root: Path, train: int = 3, test: int = 2, unlabeled: int = 4) -> dict[str, tuple[np.ndarray, list[int]]]:
    """An stl10_binary folder: each image column-major, (C, W, H) in row-major terms; labels 1..10 as uint8."""
    rng = np.random.default_rng(96)
    root.mkdir(parents=True)
    (root / "class_names.txt").write_text("\n".join(STL10_CLASSES) + "\n")
    out = {}
    for name, n in (("train", train), ("test", test), ("unlabeled", unlabeled)):
        images = _images(rng, n, 96)
        (root / f"{name}_X.bin").write_bytes(images.transpose(0, 3, 2, 1).tobytes())
        if name == "unlabeled":
            out[name] = (images, [-1] * n)
            continue
        labels = rng.integers(1, 11, n).astype(np.uint8)
        (root / f"{name}_y.bin").write_bytes(labels.tobytes())
        out[name] = (images, [int(label) - 1 for label in labels])  # stored 1..10, sharded 0..9
    return out


def _rows(out: Path, split: str) -> dict[str, dict]:
    """Every row of a split by id: label and decoded pixels."""
    rows = {}
    for row in pq.read_table(out / split).to_pylist():
        rows[row["id"]] = {"label": row["label"], "pixels": np.asarray(Image.open(io.BytesIO(row["image"])))}
    return rows


def _index(image_id: str) -> int:
    return int(image_id.rsplit("/", 1)[1])


def test_cifar10_shards_hold_the_pickled_images_and_labels(tmp_path):
    source = write_cifar10(tmp_path / "cifar-10-batches-py")
    result = write_shards(f"cifar10:{tmp_path / 'cifar-10-batches-py'}", tmp_path / "out", rows_per_shard=8, parallel=False)
    m = result.manifest
    assert m["classes"] == CIFAR10_CLASSES and m["image_size"] == [32, 32] and m["mode"] == "RGB"
    assert m["split_by"] == "dataset" and m["label_set"] is None and m["encodings"] == {"png": 26}
    assert (m["splits"]["train"]["rows"], m["splits"]["test"]["rows"]) == (20, 6)
    assert m["splits"]["train"]["class_counts"] == np.bincount(source["train"][1], minlength=10).tolist()
    for split, (images, labels) in source.items():
        rows = _rows(tmp_path / "out", split)
        assert sorted(rows) == [f"cifar10/{split}/{i:05d}" for i in range(len(labels))]
        for image_id, row in rows.items():
            assert row["label"] == labels[_index(image_id)]
            np.testing.assert_array_equal(row["pixels"], images[_index(image_id)])  # PNG is lossless
    again = write_shards(f"cifar10:{tmp_path / 'cifar-10-batches-py'}", tmp_path / "out", rows_per_shard=8, parallel=False)
    assert again.reused == 4 and again.manifest == m  # 3 train parts + 1 test part, kept as they were


def test_cifar100_gives_fine_labels_by_default_and_the_20_superclasses_when_asked(tmp_path):
    source = write_cifar100(tmp_path / "cifar-100-python")
    for label_set, column, names in (
        (None, 1, [f"fine_{i}" for i in range(100)]),
        ("coarse", 2, [f"coarse_{i}" for i in range(20)]),
    ):
        out = tmp_path / f"out-{label_set}"
        m = write_shards(f"cifar100:{tmp_path}", out, label_set=label_set, parallel=False).manifest  # the folder above works
        assert m["classes"] == names and m["label_set"] == (label_set or "fine")
        for split in ("train", "test"):
            for image_id, row in _rows(out, split).items():
                assert row["label"] == source[split][column][_index(image_id)]
                np.testing.assert_array_equal(row["pixels"], source[split][0][_index(image_id)])


def test_stl10_images_are_the_right_way_up_and_the_unlabeled_ones_train_with_label_minus_1(tmp_path):
    source = write_stl10(tmp_path / "stl10_binary")
    m = write_shards(f"stl10:{tmp_path / 'stl10_binary'}", tmp_path / "out", parallel=False).manifest
    assert m["classes"] == STL10_CLASSES and m["image_size"] == [96, 96] and m["mode"] == "RGB"
    assert m["splits"]["train"]["rows"] == 3 + 4 and m["splits"]["train"]["labeled"] == 3
    assert m["splits"]["test"]["rows"] == m["splits"]["test"]["labeled"] == 2
    rows = {**_rows(tmp_path / "out", "train"), **_rows(tmp_path / "out", "test")}
    assert sorted(rows) == sorted(
        [f"stl10/train/{i:05d}" for i in range(3)] + [f"stl10/test/{i:05d}" for i in range(2)]
        + [f"stl10/unlabeled/{i:06d}" for i in range(4)]
    )  # fmt: skip
    for image_id, row in rows.items():
        images, labels = source[image_id.split("/")[1]]
        assert row["label"] == labels[_index(image_id)]
        np.testing.assert_array_equal(row["pixels"], images[_index(image_id)])


def test_stl10_images_encode_in_ray_tasks_by_file_and_index(tmp_path):
    """STL-10's encode function travels to Ray tasks: it pickles, and reads each image from its file."""
    source = write_stl10(tmp_path / "stl10_binary")
    src = open_source(f"stl10:{tmp_path / 'stl10_binary'}", None, None, 512, 0.2)
    assert src.parallel
    image_id, _, key = src.items["train"][-1]  # the last unlabeled image
    (encoded,) = pickle.loads(pickle.dumps(src.encode))([key])
    assert image_id == "stl10/unlabeled/000003" and key == (str(tmp_path / "stl10_binary" / "unlabeled_X.bin"), 3)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(encoded.data))), source["unlabeled"][0][3])


def test_imagenet_style_train_and_val_folders_are_the_splits(tmp_path):
    root = tmp_path / "imagenet"
    write_class_tree(root / "train", 3)
    write_class_tree(root / "val", 2, offset=3)
    m = write_shards(str(root), tmp_path / "out", size=28, test_fraction=0.5, parallel=False).manifest
    classes = sorted(p.name for p in (root / "train").iterdir())
    assert m["split_by"] == "folders" and m["classes"] == classes
    assert m["splits"]["train"]["class_counts"] == [3] * 10 and m["splits"]["test"]["class_counts"] == [2] * 10
    for split, folder in (("train", "train"), ("test", "val")):
        for image_id, row in _rows(tmp_path / "out", split).items():
            top, name, file = image_id.split("/")
            assert top == folder and row["label"] == classes.index(name)
            want = np.asarray(Image.open(root / image_id).convert("RGB"))
            np.testing.assert_array_equal(row["pixels"], want)
    plain = write_shards(str(root / "train"), tmp_path / "plain", size=28, parallel=False).manifest
    assert plain["split_by"] == "hash" and plain["classes"] == classes


def test_imagenet_style_val_must_be_sorted_into_train_classes(tmp_path):
    root = tmp_path / "imagenet"
    write_class_tree(root / "train", 1)
    write_class_tree(root / "val", 1, offset=1)
    (root / "val" / "zebra").mkdir()
    Image.new("RGB", (8, 8)).save(root / "val" / "zebra" / "0.png")
    with pytest.raises(DataError, match=re.escape(f"{root}/val/zebra: a class with no train/zebra folder")):
        write_shards(str(root), tmp_path / "out", parallel=False)
    (root / "val" / "zebra" / "0.png").rename(root / "val" / "ILSVRC2012_val_00000001.png")
    (root / "val" / "zebra").rmdir()
    flat = f"{root}/val/ILSVRC2012_val_00000001.png: an image directly in val/ (ImageNet's flat val); sort val/ into val/<class>/"
    with pytest.raises(DataError, match=re.escape(flat)):
        write_shards(str(root), tmp_path / "out", parallel=False)


def test_a_partial_dataset_folder_is_one_line_naming_the_missing_file(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    write_cifar10(root, per_batch=1, test=1)
    (root / "data_batch_3").unlink()
    expected = (
        f"{root}/data_batch_3: missing; cifar10:PATH expects the cifar-10-batches-py folder "
        "(data_batch_1..5, test_batch, batches.meta)"
    )
    with pytest.raises(DataError, match=f"^{re.escape(expected)}$"):
        write_shards(f"cifar10:{root}", tmp_path / "out", parallel=False)
    write_stl10(tmp_path / "stl10_binary", 1, 1, 1)
    (tmp_path / "stl10_binary" / "unlabeled_X.bin").write_bytes(b"\0" * 1000)  # a download cut short
    with pytest.raises(DataError, match=r"unlabeled_X\.bin: 1000 bytes, not a whole number of 96x96 RGB images"):
        write_shards(f"stl10:{tmp_path / 'stl10_binary'}", tmp_path / "out", parallel=False)
    # labels that are not numbers: the same one line as a wrong count, not a traceback
    _pickle(root / "data_batch_3", {b"data": np.zeros((1, 3072), np.uint8), b"labels": ["cat"]}, 2)
    with pytest.raises(DataError, match=r"data_batch_3: b'labels' is not one label in 0\.\.9 per image"):
        write_shards(f"cifar10:{root}", tmp_path / "out", parallel=False)


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    class RunsCode:
        def __reduce__(self):
            return (os.getcwd, ())  # harmless, but a pickle may name any callable

    root = tmp_path / "cifar-100-python"
    write_cifar100(root, 1, 1)
    _pickle(root / "meta", {b"fine_label_names": RunsCode()}, 4)
    with pytest.raises(DataError, match=r"meta: not a readable CIFAR pickle \(UnpicklingError: refused to load posix\.getcwd"):
        write_shards(f"cifar100:{root}", tmp_path / "out", parallel=False)


def test_source_names_unknown_names_and_folders_with_colons(tmp_path):
    with pytest.raises(
        DataError, match=r"^cifar11:x: unknown source 'cifar11'; known: fashion-mnist, cifar10:PATH, cifar100:PATH"
    ):
        write_shards("cifar11:x", tmp_path / "out")
    assert _split_spec("s3://bucket/cifar10:x") == (None, "s3://bucket/cifar10:x")
    assert _split_spec("cifar10:/data/cifar-10-batches-py") == ("cifar10", "/data/cifar-10-batches-py")
    folder = tmp_path / "photos:2024"  # an existing folder is a folder, whatever its name
    write_class_tree(folder, 1)
    assert write_shards(str(folder), tmp_path / "out", size=28, parallel=False).manifest["splits"]["train"]["rows"] > 0
    with pytest.raises(
        DataError, match=r"^--label-set coarse: cifar10 has one set of labels; only cifar100 \(fine, coarse\) has more$"
    ):
        write_shards(f"cifar10:{tmp_path}", tmp_path / "out", label_set="coarse")
    with pytest.raises(DataError, match=r"^--label-set medium: give one of fine, coarse for cifar100$"):
        write_shards(f"cifar100:{tmp_path}", tmp_path / "out", label_set="medium")
    fashion = write_shards(f"fashion-mnist:{FASHION_MNIST_DIR}", tmp_path / "fm", limit=20, parallel=False).manifest
    assert fashion["split_by"] == "dataset" and fashion["splits"]["test"]["rows"] == 20 and fashion["mode"] == "L"
    with pytest.raises(DataError, match=r"^--size 64: applies to image folders; stl10 keeps its images as they are$"):
        write_shards(f"stl10:{tmp_path}", tmp_path / "out", size=64)


@pytest.fixture
def run_cli(capsys):
    """``rayssl ...`` in-process: exit code, stdout and stderr. main() installs a SIGTERM handler; put it back."""
    before = signal.getsignal(signal.SIGTERM)

    def run(*argv) -> tuple[int, str, str]:
        code = cli.main([str(a) for a in argv])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    yield run
    signal.signal(signal.SIGTERM, before)


def test_cli_shards_cifar10_and_refuses_a_label_set_it_lacks_in_one_line(tmp_path, run_cli):
    write_cifar10(tmp_path / "cifar-10-batches-py", per_batch=2, test=3)
    code, out, err = run_cli("shard", f"cifar10:{tmp_path / 'cifar-10-batches-py'}", "--out", tmp_path / "out", "--serial")
    assert code == 0 and err == ""
    assert "train: 10 rows (10 labeled)" in out and "test: 3 rows (3 labeled)" in out and "32x32 RGB, 10 classes" in out
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["source"] == f"cifar10:{tmp_path / 'cifar-10-batches-py'}" and manifest["classes"] == CIFAR10_CLASSES
    code, out, err = run_cli("shard", f"cifar10:{tmp_path}", "--out", tmp_path / "o2", "--label-set", "coarse")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith("rayssl: error: --label-set coarse:")
    code, out, err = run_cli("shard", "cifar11:x", "--out", tmp_path / "o3")
    assert code == 2 and err.strip() == f"rayssl: error: cifar11:x: unknown source 'cifar11'; known: {KNOWN_SOURCES}"
