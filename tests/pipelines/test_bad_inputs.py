"""Bad inputs are refused in one line, odd but valid ones are kept: every case generates its own files.

No test here starts Ray: config and shard checks all run before it would.
"""

from __future__ import annotations

import ast
import io
import os
import re
import resource
import signal
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines import cli
from pipelines.config import ConfigError, build_config, load_config
from pipelines.data import DataError, check_shards, load_labeled, read_manifest
from pipelines.shard import write_shards
from pipelines.sources import _folder_walk

REPO = Path(__file__).resolve().parents[2]
RNG = np.random.default_rng(0)


# ---------------------------------------------------------------- file makers


def _noise(height=40, width=50) -> Image.Image:
    return Image.fromarray(RNG.integers(0, 255, (height, width, 3), dtype=np.uint8))


def _encoded(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_declaring(width: int, height: int) -> bytes:
    """A valid grayscale PNG header declaring width x height, with one row of pixel data: a few dozen bytes."""
    header = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + _png_chunk(b"IDAT", zlib.compress(b"\0" * (width + 1))) + _png_chunk(b"IEND", b"")


def _jpeg_declaring(width: int, height: int) -> bytes:
    """A small real JPEG whose frame header (SOF0) is patched to declare width x height."""
    data = bytearray(_encoded(_noise(8, 8), "JPEG"))
    sof = data.index(b"\xff\xc0")  # marker, length (2), precision (1), height (2), width (2)
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _png_idat_offset(png: bytes) -> tuple[int, int]:
    """Start of the first IDAT chunk's data, and its length."""
    at = png.index(b"IDAT")
    return at + 4, struct.unpack(">I", png[at - 4 : at])[0]


def _truncated_jpeg() -> bytes:
    good = _encoded(_noise(), "JPEG")
    return good[: len(good) // 2]


def _png_bad_crc() -> bytes:
    """Pixel data intact, only the IDAT checksum wrong: PIL's load() alone accepts this file."""
    png = bytearray(_encoded(_noise(), "PNG"))
    start, length = _png_idat_offset(png)
    png[start + length] ^= 0xFF
    return bytes(png)


def _png_flipped_idat() -> bytes:
    """A flipped bit in the compressed pixels, with the chunk checksum recomputed so that only zlib can notice."""
    png = bytearray(_encoded(_noise(), "PNG"))
    start, length = _png_idat_offset(png)
    png[start + length // 2] ^= 0x01
    png[start + length : start + length + 4] = struct.pack(">I", zlib.crc32(png[start - 4 : start + length]))
    return bytes(png)


def _shard_rows(out: Path) -> dict[str, dict]:
    """Every row of every split by id: label, decoded pixels and PIL mode."""
    rows = {}
    for part in sorted(out.glob("*/part-*.parquet")):
        for row in pq.read_table(part).to_pylist():
            img = Image.open(io.BytesIO(row["image"]))
            rows[row["id"]] = {"label": row["label"], "mode": img.mode, "pixels": np.asarray(img)}
    return rows


def _one_good_image_and(root: Path, name: str, data: bytes) -> Path:
    root.mkdir(parents=True)
    _noise().save(root / "good.png")
    (root / name).write_bytes(data)
    return root


@pytest.fixture
def run_cli(capsys):
    """``rayssl ...`` in-process: exit code, stdout and stderr. main() installs a SIGTERM handler; put it back."""
    before = signal.getsignal(signal.SIGTERM)

    def run(*argv: str) -> tuple[int, str, str]:
        code = cli.main([str(a) for a in argv])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    yield run
    signal.signal(signal.SIGTERM, before)


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("rayssl: error: ")
    return lines[0]


# ---------------------------------------------------------------- 1. unreadable files are skipped with a reason


@pytest.mark.parametrize(
    ("name", "make", "reason"),
    [
        ("truncated.jpg", _truncated_jpeg, r"cannot decode \(OSError: image file is truncated"),
        ("zero.png", lambda: b"", r"zero-byte file$"),
        ("notes.png", lambda: b"this is a text file, not an image\n", r"cannot decode \(UnidentifiedImageError: cannot identify"),
        ("bad-crc.png", _png_bad_crc, r"cannot decode \(SyntaxError: broken PNG file \(bad header checksum in b'IDAT'\)\)"),
        ("flipped-idat.png", _png_flipped_idat, r"cannot decode \(OSError: broken data stream"),
    ],
    ids=["truncated-jpeg", "zero-byte", "text-named-png", "png-bad-crc", "png-flipped-idat-bytes"],
)
def test_unreadable_file_is_skipped_with_its_reason(tmp_path, name, make, reason):
    src = _one_good_image_and(tmp_path / "src", name, make())
    result = write_shards(str(src), tmp_path / "out", size=8)
    assert result.manifest["skipped_count"] == 1
    [skipped] = result.skipped
    assert skipped["file"] == name
    assert len(skipped["reason"].splitlines()) == 1
    assert re.search(reason, skipped["reason"]), skipped["reason"]
    assert list(_shard_rows(tmp_path / "out")) == ["good.png"]


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        # 1e10 pixels: over twice PIL's own limit, so PIL refuses while opening; we still give the count.
        ("bomb.png", _png_declaring(100_000, 100_000), "declares 10000000000 pixels, over the 64000000 pixel limit"),
        # 1e8 pixels: under PIL's error threshold, refused by rayssl's MAX_IMAGE_PIXELS check on the header.
        ("bomb-1e8.png", _png_declaring(10_000, 10_000), "declares 10000x10000 pixels, over the 64000000 pixel limit"),
        ("bomb.jpg", _jpeg_declaring(65_000, 65_000), "declares 4225000000 pixels, over the 64000000 pixel limit"),
    ],
    ids=["png-100000x100000", "png-10000x10000", "jpeg-65000x65000"],
)
def test_decompression_bomb_is_refused_from_its_header(tmp_path, name, data, reason):
    assert len(data) < 2000  # the size is only declared: nothing huge is on disk
    src = _one_good_image_and(tmp_path / "src", name, data)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    result = write_shards(str(src), tmp_path / "out", size=8)
    assert time.perf_counter() - start < 2
    # Coarse: decoding even the smallest bomb as RGB would need 300 MB; the peak must not move by a fraction of that.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_kib < 50_000
    assert result.skipped == [{"file": name, "reason": f"{reason} (a decompression bomb?)"}]


def test_cli_lists_skipped_files_with_their_reasons(tmp_path, run_cli):
    src = _one_good_image_and(tmp_path / "src", "zero.png", b"")
    (src / "bomb.png").write_bytes(_png_declaring(10_000, 10_000))
    code, out, err = run_cli("shard", src, "--out", tmp_path / "out", "--size", "8")
    assert code == 0 and err == ""
    assert f"skipped 2 unreadable files (listed with reasons in {tmp_path / 'out'}/manifest.json):" in out
    assert "  bomb.png: declares 10000x10000 pixels, over the 64000000 pixel limit" in out
    assert "  zero.png: zero-byte file" in out


# ---------------------------------------------------------------- 2. odd but valid images are kept


def _odd_images(root: Path) -> None:
    """One folder mixing 16-bit, CMYK, RGBA, palette, grayscale, 1x1 and smaller-than-crop images (all 8 px or less)."""
    root.mkdir(parents=True)
    sixteen = np.repeat(np.array([[0, 256, 32768, 65535]], dtype=np.uint16), 2, axis=1).repeat(8, axis=0)
    Image.fromarray(sixteen).save(root / "sixteen.png")  # 8x8, columns 0, 256, 32768, 65535 (two each)
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(root / "cmyk.jpg", quality=95)  # pure red
    Image.new("RGBA", (8, 8), (10, 200, 30, 128)).save(root / "rgba.png")
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 40, 80, 160] + [0] * 762)
    palette.save(root / "palette.png")
    Image.new("L", (8, 8), 77).save(root / "gray.png")
    Image.new("RGB", (1, 1), (200, 100, 50)).save(root / "one-pixel.png")
    halves = np.zeros((4, 4, 3), dtype=np.uint8)
    halves[:, 2:] = 255  # left half black, right half white
    Image.fromarray(halves).save(root / "small.png")


# Expected pixel (RGB) per file after conversion; small.png is checked separately.
ODD_PIXELS = {
    "gray.png": (77, 77, 77),
    "rgba.png": (10, 200, 30),  # alpha dropped
    "palette.png": (40, 80, 160),
    "one-pixel.png": (200, 100, 50),
    "cmyk.jpg": (255, 0, 0),
}


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_odd_images_are_kept_in_the_configured_mode(tmp_path, mode):
    _odd_images(tmp_path / "src")
    result = write_shards(str(tmp_path / "src"), tmp_path / "out", mode=mode, size=8)
    assert result.skipped == []
    assert result.manifest["mode"] == mode and result.manifest["channels"] == (3 if mode == "RGB" else 1)
    rows = _shard_rows(tmp_path / "out")
    assert sorted(rows) == sorted([*ODD_PIXELS, "sixteen.png", "small.png"])
    for image_id, row in rows.items():
        assert row["mode"] == mode and row["label"] == -1, image_id
        assert row["pixels"].shape == ((8, 8, 3) if mode == "RGB" else (8, 8)), image_id
        assert row["pixels"].dtype == np.uint8
    for name, rgb in ODD_PIXELS.items():
        expected = np.array(rgb) if mode == "RGB" else np.array(Image.new("RGB", (1, 1), rgb).convert("L").getpixel((0, 0)))
        tolerance = 6 if name.endswith(".jpg") else 0  # JPEG is lossy
        assert np.abs(rows[name]["pixels"].astype(int) - expected).max() <= tolerance, name
    # 16-bit values are scaled (v / 257), not clipped at 255 as PIL's convert("L") does.
    gray16 = rows["sixteen.png"]["pixels"] if mode == "L" else rows["sixteen.png"]["pixels"][..., 0]
    np.testing.assert_array_equal(gray16[0], [0, 0, 1, 1, 128, 128, 255, 255])
    # Smaller than the size: upscaled (black left edge, white right edge, same in every row), not padded.
    small = rows["small.png"]["pixels"] if mode == "L" else rows["small.png"]["pixels"][..., 0]
    assert (small[:, 0] == 0).all() and (small[:, -1] == 255).all()
    assert (small == small[0]).all()


def test_non_utf8_file_names_become_distinct_valid_ids(tmp_path):
    src = os.fsencode(tmp_path / "src")
    os.makedirs(os.path.join(src, b"gar\xe7on"))
    for name in (b"caf\xe9.png", b"caf\xe8.png", os.path.join(b"gar\xe7on", b"\xff.png")):
        _noise(6, 6).save(os.path.join(src, name), format="PNG")
    os.makedirs(os.path.join(src, b"junk"))
    open(os.path.join(src, b"junk", b"\xfe.png"), "wb").close()  # zero bytes: skipped, named in the manifest
    result = write_shards(os.fsdecode(src), tmp_path / "out", size=8, test_fraction=0)
    assert result.manifest["classes"] == ["gar\\xe7on", "junk"]
    assert result.skipped == [{"file": "junk/\\xfe.png", "reason": "zero-byte file"}]
    rows = _shard_rows(tmp_path / "out")
    assert sorted(rows) == ["caf\\xe8.png", "caf\\xe9.png", "gar\\xe7on/\\xff.png"]
    for image_id, row in rows.items():
        image_id.encode("utf-8")  # valid text: no lone surrogates
        assert row["pixels"].shape == (8, 8, 3)
    assert rows["gar\\xe7on/\\xff.png"]["label"] == 0 and rows["caf\\xe9.png"]["label"] == -1
    assert read_manifest(str(tmp_path / "out"))["classes"] == ["gar\\xe7on", "junk"]


# ---------------------------------------------------------------- 3. folder walking stays inside the root


def test_symlink_loop_ends_and_links_out_of_the_root_are_not_followed(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "cats").mkdir(parents=True)
    outside.mkdir()
    _noise(6, 6).save(root / "cats" / "in.png")
    _noise(6, 6).save(outside / "secret.png")
    (root / "cats" / "loop").symlink_to(root)  # root/cats/loop -> root
    (root / "self").symlink_to(".")  # root/self -> root
    (root / "outside-dir").symlink_to(outside)
    (root / "outside-file.png").symlink_to(outside / "secret.png")
    (root / "dangling.png").symlink_to(tmp_path / "nothing.png")
    assert list(_folder_walk(str(root))) == [("cats/in.png", str(root / "cats" / "in.png"))]
    result = write_shards(str(root), tmp_path / "out", size=8, test_fraction=0)
    assert result.manifest["classes"] == ["cats"]  # a linked folder is no class either
    assert result.skipped == []
    assert list(_shard_rows(tmp_path / "out")) == ["cats/in.png"]


# ---------------------------------------------------------------- 4. --strict stops at the first bad file


def test_cli_strict_stops_at_the_first_bad_file_naming_it(tmp_path, run_cli):
    src = _one_good_image_and(tmp_path / "src", "b-truncated.jpg", _truncated_jpeg())
    (src / "c-zero.png").write_bytes(b"")
    code, out, err = run_cli("shard", src, "--out", tmp_path / "out", "--strict")
    assert code == 2
    line = _one_error_line(err)
    assert line.startswith(f"rayssl: error: {src / 'b-truncated.jpg'}: cannot decode (OSError: image file is truncated")
    assert line.endswith("; fix or remove it, or run without --strict to skip it")
    assert "c-zero.png" not in line
    assert not (tmp_path / "out" / "manifest.json").exists()  # no half-made shards look usable


# ---------------------------------------------------------------- 5. unusable sources and shards


def _empty_folder(tmp: Path) -> Path:
    (tmp / "empty").mkdir()
    return tmp / "empty"


def _only_text(tmp: Path) -> Path:
    (tmp / "text-only").mkdir()
    (tmp / "text-only" / "readme.txt").write_text("no images here")
    (tmp / "text-only" / "notes.md").write_text("nor here")
    return tmp / "text-only"


def _a_file(tmp: Path) -> Path:
    _noise(6, 6).save(tmp / "a.png")
    return tmp / "a.png"


def _all_unreadable(tmp: Path) -> Path:
    (tmp / "all-bad").mkdir()
    (tmp / "all-bad" / "x.png").write_bytes(b"")
    (tmp / "all-bad" / "y.jpg").write_bytes(_truncated_jpeg())
    return tmp / "all-bad"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: tmp / "missing", "missing: no such file or folder; give an image folder or 'fashion-mnist'"),
        (_empty_folder, "empty: no image files found; image suffixes read: .bmp, .gif,"),
        (_only_text, "text-only: no image files found; image suffixes read: .bmp, .gif,"),
        (_a_file, "a.png: not a folder; give a folder of images"),
        (_all_unreadable, "all-bad: all 2 image files were unreadable; image suffixes read:"),
    ],
    ids=["missing-path", "empty-folder", "no-images-only-text", "file-not-folder", "every-image-unreadable"],
)
def test_cli_unusable_source_is_one_line_and_non_zero_exit(tmp_path, run_cli, make, message):
    source = make(tmp_path)
    code, out, err = run_cli("shard", source, "--out", tmp_path / "out")
    assert code == 2 and out == ""
    assert _one_error_line(err).startswith(f"rayssl: error: {tmp_path}/{message}")
    assert not (tmp_path / "out" / "manifest.json").exists()


@pytest.fixture
def tiny_shards(tmp_path) -> Path:
    src = tmp_path / "src"
    for cls in ("a", "b"):
        (src / cls).mkdir(parents=True)
        for i in range(3):
            _noise(6, 6).save(src / cls / f"{i}.png")
    write_shards(str(src), tmp_path / "shards", size=8, test_fraction=0.5)
    return tmp_path / "shards"


def _foreign_table() -> pa.Table:
    return pa.table({"a": [1, 2], "b": ["x", "y"]})


@pytest.mark.parametrize(
    ("spoil", "problem"),
    [
        (lambda f: f.write_bytes(b"\x00garbage, not parquet" * 10), r"not a readable Parquet file \(.*magic bytes"),
        (lambda f: f.write_bytes(f.read_bytes()[:-20]), r"not a readable Parquet file \("),
        (lambda f: f.unlink(), r"listed in manifest\.json but missing"),
        (lambda f: pq.write_table(_foreign_table(), f), r"not a rayssl shard \(no 'image' column; it has a, b\)"),
        (
            lambda f: pq.write_table(pa.table({"image": [b"x"], "label": ["cat"], "id": ["1"]}), f),
            r"not a rayssl shard \(column 'label' is string\)",
        ),
    ],
    ids=["garbage-bytes", "truncated-footer", "missing-file", "foreign-columns", "label-not-int"],
)
def test_check_shards_names_the_bad_shard_file(tiny_shards, spoil, problem):
    manifest = read_manifest(str(tiny_shards))
    assert check_shards(str(tiny_shards), manifest) is None  # fresh shards pass, as a path
    assert check_shards(f"file://{tiny_shards}", manifest) is None  # and as a pyarrow URI
    spoil(tiny_shards / "train" / "part-00000.parquet")
    with pytest.raises(DataError) as caught:
        check_shards(str(tiny_shards), manifest)
    message = str(caught.value)
    assert len(message.splitlines()) == 1
    assert message.startswith(f"{tiny_shards}/train/part-00000.parquet: ")
    assert re.search(problem, message), message
    assert message.endswith(f"; re-run 'rayssl shard SOURCE --out {tiny_shards}'")


def test_corrupt_shards_fail_in_the_probes(tiny_shards):
    (tiny_shards / "train" / "part-00000.parquet").write_bytes(b"garbage" * 20)
    with pytest.raises(DataError, match=r"/train: cannot read shards \(.*\); re-run 'rayssl shard'$"):
        load_labeled(str(tiny_shards), "train")


def test_validate_refuses_corrupt_shards_before_ray(tiny_shards):
    from pipelines.train import validate

    (tiny_shards / "train" / "part-00000.parquet").write_bytes(b"garbage" * 20)
    cfg = build_config({}, [f"data.shards={tiny_shards}", "data.batch_size=8"])
    with pytest.raises(DataError, match=r"train/part-00000\.parquet: not a readable Parquet file"):
        validate(cfg)  # returns before Ray starts either way


# ---------------------------------------------------------------- 6. invalid configs fail before Ray, naming the field


@pytest.fixture
def no_pretrain(monkeypatch):
    """Replace pretrain so that a config which wrongly passed could never start Ray; it only runs validate()."""
    from pipelines import train

    def validate_only(cfg):
        train.validate(cfg)
        raise AssertionError("the config passed validation; it should not have")

    monkeypatch.setattr(train, "pretrain", validate_only)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["method.name=nope"], r"method\.name: unknown method 'nope'; known methods: .*byol.*simclr"),
        (["method.temperature=0"], r"method\.temperature: Input should be greater than 0$"),
        (["method.temperature=-1"], r"method\.temperature: Input should be greater than 0$"),
        (
            ["data.batch_size=3", "train.num_workers=2"],
            r"config: data\.batch_size=3 gives 1 images per worker for 2 workers; simclr needs at least 2$",
        ),
    ],
    ids=["unknown-method", "temperature-0", "temperature-negative", "batch-1-per-worker"],
)
def test_bad_config_names_the_field(run_cli, no_pretrain, overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_config({}, overrides)
    code, out, err = run_cli("pretrain", *[arg for o in overrides for arg in ("--set", o)])
    assert code == 2
    assert re.search(message, _one_error_line(err)), err


def test_crop_larger_than_the_images_fails_in_validate(tmp_path, run_cli, no_pretrain):
    from pipelines.train import validate

    write_shards("fashion-mnist", tmp_path / "fm", limit=50)
    overrides = [f"data.shards={tmp_path / 'fm'}", "data.crop_size=64", "data.batch_size=8"]
    message = (
        "data.crop_size=64 is larger than the shards' 28 px images; use at most 28, "
        "or re-shard without --size so that each image keeps its own size"
    )
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(build_config({}, overrides))
    code, out, err = run_cli("pretrain", *[arg for o in overrides for arg in ("--set", o)])
    assert code == 2 and _one_error_line(err) == f"rayssl: error: {message}"


def test_a_misspelt_method_argument_names_it_and_what_the_method_takes(tmp_path, run_cli, no_pretrain):
    write_shards("fashion-mnist", tmp_path / "fm", limit=50)
    overrides = [f"data.shards={tmp_path / 'fm'}", "method.name=rotation", "method.kwargs={all_rotation: false}"]
    code, out, err = run_cli("pretrain", *[arg for o in overrides for arg in ("--set", o)])
    assert code == 2
    assert _one_error_line(err) == (
        "rayssl: error: method: rotation takes no argument 'all_rotation'; "
        "it takes all_rotations, hidden_dim, backbone, in_channels, image_size"
    )


# ---------------------------------------------------------------- 7. security


def test_yaml_tags_that_run_code_are_refused_and_nothing_runs(tmp_path, run_cli):
    marker = tmp_path / "executed"
    payload = f'!!python/object/apply:os.system ["touch {marker}"]'
    config = tmp_path / "evil.yaml"
    config.write_text(f"data:\n  shards: {payload}\n")
    with pytest.raises(ConfigError, match=r"evil\.yaml: not valid YAML \(could not determine a constructor for the tag"):
        load_config(config)
    with pytest.raises(ConfigError, match=r"--set 'data\.shards=.*': value is not valid YAML \(could not determine"):
        build_config({}, [f"data.shards={payload}"])
    code, out, err = run_cli("pretrain", "--config", config)
    assert code == 2 and "not valid YAML" in _one_error_line(err)
    assert not marker.exists()


def _calls(package: str):
    for path in sorted((REPO / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name):
                yield f"{path.relative_to(REPO)}:{node.lineno}", f"{node.func.value.id}.{node.func.attr}", node


def test_every_torch_load_passes_weights_only_true():
    loads = [(where, node) for pkg in ("pipelines", "ssl_models") for where, name, node in _calls(pkg) if name == "torch.load"]
    assert loads, "expected torch.load calls in pipelines/ (checkpoints)"
    for where, node in loads:
        flags = [k.value for k in node.keywords if k.arg == "weights_only"]
        assert flags and isinstance(flags[0], ast.Constant) and flags[0].value is True, (
            f"{where}: torch.load without weights_only=True"
        )


def test_yaml_is_only_read_with_safe_load():
    unsafe = {"yaml.load", "yaml.unsafe_load", "yaml.full_load", "yaml.load_all", "yaml.unsafe_load_all"}
    found = [where for pkg in ("pipelines", "ssl_models", "tune_spaces") for where, name, _ in _calls(pkg) if name in unsafe]
    assert found == []


def test_fewer_images_than_one_batch_fails_in_validate(tmp_path, run_cli, no_pretrain):
    from pipelines.train import validate

    # drop_last leaves an epoch of 50 images and batches of 256 with no step; the run used to finish untrained
    write_shards("fashion-mnist", tmp_path / "fm", limit=50)
    overrides = [f"data.shards={tmp_path / 'fm'}", "train.num_workers=2"]
    code, out, err = run_cli("pretrain", *[arg for o in overrides for arg in ("--set", o)])
    rows = read_manifest(str(tmp_path / "fm"))["splits"]["train"]["rows"]
    assert code == 2 and _one_error_line(err) == (
        f"rayssl: error: data.batch_size=256 needs 128 training images for each of 2 worker(s), and the shards give "
        f"{rows}: no step would run; set data.batch_size to at most {rows // 2 * 2}"
    )
    capped = [f"data.shards={tmp_path / 'fm'}", "data.batch_size=32", "data.max_train_images=20"]
    with pytest.raises(
        ConfigError, match=r"needs 32 training images for each of 1 worker\(s\), and data.max_train_images give 20: "
    ):
        validate(build_config({}, capped + ["train.num_workers=1"]))
    validate(build_config({}, capped + ["data.batch_size=20", "train.num_workers=1"]))  # one full batch: allowed
