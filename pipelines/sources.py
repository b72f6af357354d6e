"""What ``rayssl shard`` reads: the items of each split of a source, listed before anything is decoded.

``open_source(spec, ...)`` takes one of

- ``fashion-mnist`` (the Debian package's IDX files), or ``fashion-mnist:PATH`` for a folder of them;
- ``cifar10:PATH``: the ``cifar-10-batches-py`` folder (``data_batch_1``..``5``, ``test_batch``, ``batches.meta``);
- ``cifar100:PATH``: the ``cifar-100-python`` folder (``train``, ``test``, ``meta``), fine labels or the 20 coarse ones;
- ``stl10:PATH``: the ``stl10_binary`` folder; its 100,000 unlabeled images join the train split with label -1;
- any image folder, local or ``s3://``: class sub-folders give labels and a hash of each path the test split,
  or, ImageNet-style, ``train/<class>/`` and ``val/<class>/`` (or ``test/<class>/``) give the splits.

Each benchmark is read in the format its archive unpacks to; nothing is downloaded. The folder is the
archive's own, or the one holding it. A wrong or partial folder is one ``DataError`` line naming the file.
"""

from __future__ import annotations

import functools
import os
import pickle
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs

from pipelines import storage
from pipelines.data import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    IMAGE_SUFFIXES,
    DataError,
    EncodedImage,
    encode_image_file,
    encode_png,
    read_fashion_mnist,
)
from pipelines.sampling import hash_fraction

# What an encode function returns for each item: the encoded image, or why the item was unreadable.
Encoded = EncodedImage | str


@dataclass
class Source:
    """What a source holds, listed before anything is decoded: ``(id, label, key)`` items per split.

    ``encode(keys)`` decodes, checks and encodes items (an ``EncodedImage``, or the reason one is
    unreadable); the writer calls it only for the items it writes. ``encode`` is a picklable function
    when the source can be encoded in Ray tasks (``parallel``).
    """

    mode: str
    image_size: list[int] | None  # None: every image keeps its own size
    classes: list[str]
    items: dict[str, list[tuple[str, int, object]]]
    encode: Callable[[list], list[Encoded]]
    parallel: bool = False
    split_by: str = "dataset"  # "dataset": its own train/test; "folders": train/ and val/ folders; "hash": of each path
    label_set: str | None = None  # which of a dataset's label sets the labels are (CIFAR-100: fine or coarse)


def open_source(
    spec: str, mode: str | None, size: int | None, max_size: int, test_fraction: float, label_set: str | None = None
) -> Source:
    """The source ``spec`` names: ``fashion-mnist`` or ``NAME:PATH`` for a dataset (``DATASETS``), else an image folder."""
    name, path = _split_spec(spec)
    if name is not None and name not in DATASETS:
        raise DataError(f"{spec}: unknown source '{name}'; known: {KNOWN_SOURCES}")
    dataset = DATASETS.get(name)
    label_sets = dataset.label_sets if dataset else ()
    _check_label_set(label_set, name or spec, label_sets)
    if dataset is None:
        return _folder_source(spec, mode or "RGB", size, max_size, test_fraction)
    for flag, value in (("--size", size), ("--mode", mode)):
        if value is not None:
            raise DataError(f"{flag} {value}: applies to image folders; {name} keeps its images as they are")
    if path == "":
        raise DataError(f"{spec}: give the dataset's folder after the colon ({name}:PATH)")
    if path is not None and storage.is_remote(path):
        raise DataError(f"{spec}: {name} is read from a local folder; copy it to local disk first")
    return dataset.read(path, label_set or label_sets[0]) if label_sets else dataset.read(path)


def _check_label_set(label_set: str | None, source: str, label_sets: tuple[str, ...]) -> None:
    if label_set is None or label_set in label_sets:
        return
    if label_sets:
        raise DataError(f"--label-set {label_set}: give one of {', '.join(label_sets)} for {source}")
    with_sets = ", ".join(f"{n} ({', '.join(d.label_sets)})" for n, d in DATASETS.items() if d.label_sets)
    raise DataError(f"--label-set {label_set}: {source} has one set of labels; only {with_sets} has more")


# A dataset name before the first colon ("cifar10:/data/x"); "s3://bucket" has "//" after its colon and is a folder.
_SOURCE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


def _split_spec(spec: str) -> tuple[str | None, str | None]:
    """``(name, path)`` of a dataset spec, ``(None, spec)`` for a folder (an existing path always is one)."""
    if spec == "fashion-mnist":  # the Debian package's files: no path needed
        return spec, None
    name, colon, path = spec.partition(":")
    if not colon or path.startswith("//") or not _SOURCE_NAME.fullmatch(name) or Path(spec).exists():
        return None, spec
    return name.lower(), path


# ---------------------------------------------------------------- Fashion-MNIST and CIFAR: arrays in memory


def _in_memory_source(name: str, arrays: dict, labels: dict, classes: list[str], mode: str, **fields) -> Source:
    """A source whose images are uint8 arrays in memory: encoded in-process (small PNGs are fast; no tasks needed)."""
    items = {}
    for split, split_labels in labels.items():
        items[split] = [(f"{name}/{split}/{i:05d}", int(label), (split, i)) for i, label in enumerate(split_labels)]

    def encode(keys):
        return [EncodedImage(encode_png(arrays[split][i]), *arrays[split].shape[1:3], "png") for split, i in keys]

    height, width = next(iter(arrays.values())).shape[1:3]
    return Source(mode, [int(height), int(width)], classes, items, encode, **fields)


def _fashion_mnist_source(path: str | None) -> Source:
    root = Path(path).expanduser() if path else FASHION_MNIST_DIR
    arrays, labels = {}, {}
    for split in ("train", "test"):
        arrays[split], labels[split] = read_fashion_mnist(split, root)
    return _in_memory_source("fashion-mnist", arrays, labels, FASHION_MNIST_CLASSES, "L")


CIFAR10_LAYOUT = "cifar10:PATH expects the cifar-10-batches-py folder (data_batch_1..5, test_batch, batches.meta)"
CIFAR100_LAYOUT = "cifar100:PATH expects the cifar-100-python folder (train, test, meta)"


def _cifar10_source(path: str) -> Source:
    train = [f"data_batch_{i}" for i in range(1, 6)]
    root = _dataset_folder(path, "cifar-10-batches-py", [*train, "test_batch", "batches.meta"], CIFAR10_LAYOUT)
    classes = _names(_load_pickle(root / "batches.meta", CIFAR10_LAYOUT), b"label_names", root / "batches.meta")
    arrays, labels = {}, {}
    for split, files in (("train", train), ("test", ["test_batch"])):
        batches = [_cifar_batch(root / f, b"labels", len(classes), CIFAR10_LAYOUT) for f in files]
        arrays[split] = np.concatenate([images for images, _ in batches])
        labels[split] = np.concatenate([batch_labels for _, batch_labels in batches])
    return _in_memory_source("cifar10", arrays, labels, classes, "RGB")


def _cifar100_source(path: str, label_set: str) -> Source:
    root = _dataset_folder(path, "cifar-100-python", ["train", "test", "meta"], CIFAR100_LAYOUT)
    key = b"fine_labels" if label_set == "fine" else b"coarse_labels"
    meta = _load_pickle(root / "meta", CIFAR100_LAYOUT)
    classes = _names(meta, b"fine_label_names" if label_set == "fine" else b"coarse_label_names", root / "meta")
    arrays, labels = {}, {}
    for split in ("train", "test"):
        arrays[split], labels[split] = _cifar_batch(root / split, key, len(classes), CIFAR100_LAYOUT)
    return _in_memory_source("cifar100", arrays, labels, classes, "RGB", label_set=label_set)


def _cifar_batch(path: Path, label_key: bytes, num_classes: int, layout: str) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR pickle's images as uint8 (N, 32, 32, 3) and its labels: rows of 3072 bytes, red then green then blue planes."""
    batch = _load_pickle(path, layout)
    data = batch.get(b"data")
    try:
        labels = np.asarray(batch.get(label_key, []), dtype=np.int64)
    except (TypeError, ValueError):  # labels that are not whole numbers: the same one line as a wrong count
        labels = np.array([], dtype=np.int64)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: b'data' is not uint8 rows of 3072 values (32x32 RGB); {layout}")
    if len(labels) != len(data) or (len(labels) and not 0 <= labels.min() <= labels.max() < num_classes):
        raise DataError(f"{path}: {label_key!r} is not one label in 0..{num_classes - 1} per image; {layout}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels


def _names(meta: dict, key: bytes, path: Path) -> list[str]:
    if key not in meta:
        raise DataError(f"{path}: no {key!r} in it; is it the dataset's own meta file?")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in meta[key]]


# The pickle globals CIFAR's files need: NumPy's array reconstruction, and bytes as Python 3's protocol 2 spells
# them. A pickle names any callable it likes and unpickling calls it, so a file handed to rayssl as a dataset
# could run code; with every other global refused, unpickling builds plain data and nothing else.
_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),  # arrays pickled by NumPy < 2 (CIFAR's own files)
    ("numpy._core.multiarray", "_reconstruct"),  # by NumPy >= 2
    ("numpy.core.numeric", "_frombuffer"),  # pickle protocol 5
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # bytes in a protocol-2 pickle written by Python 3
    ("builtins", "bytearray"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
}


class _PlainDataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if ({"__builtin__": "builtins"}.get(module, module), name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}: not plain data")
        return super().find_class(module, name)


def _load_pickle(path: Path, layout: str) -> dict:
    """A CIFAR pickle as a dict with bytes keys (the files were written by Python 2: encoding="bytes")."""
    try:
        with open(path, "rb") as f:
            loaded = _PlainDataUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as err:
        raise DataError(f"{path}: not a readable CIFAR pickle ({type(err).__name__}: {err}); {layout}") from None
    if not isinstance(loaded, dict):
        raise DataError(f"{path}: holds a {type(loaded).__name__}, not a dict; {layout}")
    return loaded


def _dataset_folder(path: str, folder: str, files: list[str], layout: str) -> Path:
    """The archive's folder: ``path`` itself, or ``path/folder`` when given the folder that holds it."""
    root = Path(path).expanduser()
    if not (root / files[0]).exists() and (root / folder).is_dir():
        root = root / folder
    if not root.is_dir():
        raise DataError(f"{root}: no such folder; {layout}")
    for name in files:
        if not (root / name).is_file():
            raise DataError(f"{root / name}: missing; {layout}")
    return root


# ---------------------------------------------------------------- STL-10: binary files read per image

STL10_LAYOUT = (
    "stl10:PATH expects the stl10_binary folder (train_X.bin, train_y.bin, test_X.bin, test_y.bin, "
    "unlabeled_X.bin, class_names.txt)"
)
STL10_IMAGE_BYTES = 3 * 96 * 96


def _stl10_source(path: str) -> Source:
    """5,000 labeled train, 8,000 test and 100,000 unlabeled images; the unlabeled ones join train with label -1."""
    files = ["train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin", "unlabeled_X.bin", "class_names.txt"]
    root = _dataset_folder(path, "stl10_binary", files, STL10_LAYOUT)
    classes = [line.strip() for line in (root / "class_names.txt").read_text().splitlines() if line.strip()]
    items: dict[str, list] = {"train": [], "test": []}
    for split, name in (("train", "train"), ("test", "test"), ("train", "unlabeled")):
        count = _stl10_image_count(root / f"{name}_X.bin")
        if name == "unlabeled":
            labels = np.full(count, -1)
        else:
            labels = np.fromfile(root / f"{name}_y.bin", dtype=np.uint8).astype(np.int64) - 1  # stored 1..10
            if len(labels) != count or (count and not 0 <= labels.min() <= labels.max() < len(classes)):
                raise DataError(f"{root / name}_y.bin: not one label in 1..{len(classes)} per image; {STL10_LAYOUT}")
        images = str(root / f"{name}_X.bin")
        digits = 6 if name == "unlabeled" else 5
        items[split] += [(f"stl10/{name}/{i:0{digits}d}", int(label), (images, i)) for i, label in enumerate(labels)]
    return Source("RGB", [96, 96], classes, items, encode_stl10_images, parallel=True)


def _stl10_image_count(path: Path) -> int:
    size = path.stat().st_size
    if size % STL10_IMAGE_BYTES:
        raise DataError(f"{path}: {size} bytes, not a whole number of 96x96 RGB images; {STL10_LAYOUT}")
    return size // STL10_IMAGE_BYTES


def encode_stl10_images(keys: list[tuple[str, int]]) -> list[Encoded]:
    """``(file, index)`` keys as PNGs, each image read alone: unlabeled_X.bin (2.7 GB) is never read whole.

    STL-10 stores each image's three planes column-major: (3, 96, 96) read row-major is (C, W, H).
    """
    files: dict[str, np.ndarray] = {}
    out: list[Encoded] = []
    for path, index in keys:
        if path not in files:
            files[path] = np.memmap(path, dtype=np.uint8, mode="r").reshape(-1, 3, 96, 96)
        image = np.ascontiguousarray(files[path][index].transpose(2, 1, 0))  # (C, W, H) -> (H, W, C)
        out.append(EncodedImage(encode_png(image), 96, 96, "png"))
    return out


# ---------------------------------------------------------------- image folders, local or s3://


def _folder_source(root: str, mode: str, size: int | None, max_size: int, test_fraction: float) -> Source:
    """Class sub-folders give labels (sorted names); images directly in ``root`` are unlabeled (-1).

    ImageNet-style, ``train/<class>/`` and ``val/<class>/`` (or ``test/<class>/``) are the splits. Otherwise a
    labeled image goes to ``test`` by a hash of its path, with probability ``test_fraction``.
    """
    files = _listed_files(root)
    held_out = _held_out_folder(files)
    if held_out:
        classes, items = _items_by_folders(root, files, held_out)
    else:
        classes, items = _items_by_hash(root, files, test_fraction)
    encode = functools.partial(encode_files, mode=mode, size=size, max_size=max_size)
    split_by = "folders" if held_out else "hash"
    return Source(mode, [size, size] if size else None, classes, items, encode, parallel=True, split_by=split_by)


def _items_by_hash(root: str, files: list[tuple[str, str]], test_fraction: float) -> tuple[list[str], dict]:
    classes = _class_folders(root, files, "")
    class_index = {name: i for i, name in enumerate(classes)}
    items: dict[str, list] = {"train": [], "test": []}
    for rel, path in files:
        label = class_index[rel.split("/", 1)[0]] if "/" in rel else -1
        split = "test" if label >= 0 and hash_fraction(rel) < test_fraction else "train"
        items[split].append((rel, label, path))
    return classes, items


def _held_out_folder(files: list[tuple[str, str]]) -> str | None:
    """``val`` or ``test`` when the folder is ImageNet-style: ``train/`` holds class folders beside that folder."""
    tops = {rel.split("/", 1)[0] for rel, _ in files if "/" in rel}
    if not any(rel.startswith("train/") and rel.count("/") >= 2 for rel, _ in files):
        return None
    return next((name for name in ("val", "test") if name in tops), None)


def _items_by_folders(root: str, files: list[tuple[str, str]], held_out: str) -> tuple[list[str], dict]:
    """Items of ``train/<class>/`` and ``<held_out>/<class>/`` (the test split); classes are train's class folders.

    Images directly in ``train/`` are unlabeled, as in a folder's root; images outside the two folders are not read.
    """
    classes = _class_folders(root, files, "train/")
    class_index = {name: i for i, name in enumerate(classes)}
    items: dict[str, list] = {"train": [], "test": []}
    for rel, path in files:
        top, _, inner = rel.partition("/")
        if top not in ("train", held_out):
            continue
        name = inner.split("/", 1)[0] if "/" in inner else None
        if name is None and top == held_out:
            raise DataError(
                f"{root}/{rel}: an image directly in {held_out}/ (ImageNet's flat val); "
                f"sort {held_out}/ into {held_out}/<class>/ folders named as in train/"
            )
        if name is not None and name not in class_index:
            raise DataError(f"{root}/{top}/{name}: a class with no train/{name} folder; {held_out}/ classes must be train's")
        items["train" if top == "train" else "test"].append((rel, -1 if name is None else class_index[name], path))
    return classes, items


def _class_folders(root: str, files: list[tuple[str, str]], under: str) -> list[str]:
    """The class names: sub-folders of ``root/under`` (locally, an empty one too), sorted."""
    if storage.is_remote(root):
        inner = (rel[len(under) :] for rel, _ in files if rel.startswith(under))
        return sorted({name.split("/", 1)[0] for name in inner if "/" in name})
    folders = sorted(p.name for p in Path(root, under).iterdir() if p.is_dir() and not p.is_symlink())
    return [_as_text(name) for name in folders]


def _folder_walk(root: str) -> Iterator[tuple[str, str]]:
    """``(path relative to root, path)`` of each image file under ``root``, sorted, symlinks neither followed nor
    listed, so the walk never leaves root. Strings and ``os.scandir`` rather than pathlib: listing ImageNet's
    1.28 M files is the driver's work."""
    folders = [""]
    while folders:
        rel_dir = folders.pop()
        try:
            entries = sorted(os.scandir(os.path.join(root, rel_dir)), key=lambda entry: entry.name, reverse=True)
        except OSError:  # a folder that cannot be read is passed over, as os.walk does
            continue
        files, subdirs = [], []
        for entry in entries:
            if entry.is_symlink():
                continue
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            if entry.is_dir():
                subdirs.append(rel)
            elif os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES:
                files.append((rel, entry.path))
        yield from reversed(files)
        folders.extend(subdirs)  # reversed names on a stack: the walk goes down in sorted order


def _listed_files(root: str) -> list[tuple[str, str]]:
    """``(relative path, path or URI)`` of every image file under a local folder or an object-store prefix, sorted."""
    if not storage.is_remote(root):
        base = Path(root)
        if not base.exists():
            raise DataError(f"{root}: no such file or folder; give an image folder or 'fashion-mnist', or {DATASET_SPECS}")
        if not base.is_dir():
            raise DataError(f"{root}: not a folder; give a folder of images (class sub-folders give labels)")
        return [(_as_text(rel), path) for rel, path in _folder_walk(str(base))]
    fs, base = pafs.FileSystem.from_uri(root.rstrip("/"))
    found = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    scheme = root.split("://", 1)[0]
    files = sorted(f.path[len(base) + 1 :] for f in found if f.type == pafs.FileType.File)
    files = [rel for rel in files if Path(rel).suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise DataError(f"{root}: no image files under this prefix; give a folder of images (class sub-folders give labels)")
    return [(rel, f"{scheme}://{base}/{rel}") for rel in files]


def _as_text(name: str) -> str:
    """A file name as valid text: bytes that are not UTF-8 become ``\\xe9`` escapes, so distinct names stay distinct."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def encode_files(paths: list[str], mode: str, size: int | None, max_size: int) -> list[Encoded]:
    """Read, decode, check and encode image files (local paths or URIs): one Ray task's work, or the in-process loop's."""
    out: list[Encoded] = []
    for path in paths:
        try:
            out.append(encode_image_file(_read_file(path), mode, size, max_size))
        except (ValueError, OSError) as err:
            out.append(str(err))
    return out


def _read_file(path: str) -> bytes:
    if not storage.is_remote(path):
        return Path(path).read_bytes()
    fs, where = pafs.FileSystem.from_uri(path)
    with fs.open_input_stream(where) as f:
        return f.read()


@dataclass(frozen=True)
class Dataset:
    """A benchmark dataset ``NAME:PATH`` reads: ``read(path)``, or ``read(path, label_set)`` where it has label sets."""

    read: Callable[..., Source]
    label_sets: tuple[str, ...] = ()  # the first is the default


DATASETS = {
    "fashion-mnist": Dataset(_fashion_mnist_source),
    "cifar10": Dataset(_cifar10_source),
    "cifar100": Dataset(_cifar100_source, label_sets=("fine", "coarse")),  # 100 classes, or the 20 superclasses
    "stl10": Dataset(_stl10_source),
}
KNOWN_SOURCES = "fashion-mnist, cifar10:PATH, cifar100:PATH, stl10:PATH, or an image folder (local or s3://)"
DATASET_SPECS = "a dataset as NAME:PATH (cifar10, cifar100, stl10)"
