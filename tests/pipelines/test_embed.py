"""`rayssl embed`: Ray Data batch inference over real shards and an image folder, into Parquet."""

from __future__ import annotations

import numpy as np
import pyarrow.dataset as pads
import torch

from pipelines.cli import main
from pipelines.data import load_images, read_manifest
from tests.pipelines.test_export import _checkpoint


def test_embed_shards_writes_every_row_with_the_models_embedding(ray_session, fmnist_shards, tmp_path, capsys):
    ckpt = _checkpoint(tmp_path, fmnist_shards, "tiny_cnn")
    out = tmp_path / "embeddings"
    assert main(["embed", str(ckpt), "--data", str(fmnist_shards), "--out", str(out), "--limit", "300", "--actors", "1"]) == 0
    assert "wrote 300 embeddings of 16 floats" in capsys.readouterr().out

    table = pads.dataset(str(out), format="parquet").to_table()
    assert table.num_rows == 300 and set(table.column_names) == {"id", "label", "split", "embedding"}
    assert set(table.column("split").to_pylist()) <= {"train", "test"}
    embeddings = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    assert embeddings.shape == (300, 16) and embeddings.dtype == np.float32

    # The same numbers as the model on the same images, matched by id.
    from pipelines.export import embedding_model_from_checkpoint

    model, _ = embedding_model_from_checkpoint(ckpt)
    images = load_images(str(fmnist_shards), "train", 1024)
    ids = pads.dataset(f"{fmnist_shards}/train", format="parquet").to_table(columns=["id"]).column("id").to_pylist()
    row_of = {i: n for n, i in enumerate(ids[: len(images)])}
    picked = [(k, row_of[i]) for k, i in enumerate(table.column("id").to_pylist()) if i in row_of][:20]
    with torch.no_grad():
        want = model(torch.from_numpy(images[[r for _, r in picked]])).numpy()
    np.testing.assert_allclose(embeddings[[k for k, _ in picked]], want, rtol=1e-5, atol=1e-5)


def test_embed_every_row_once_over_many_blocks(ray_session, fmnist_shards, tmp_path):
    """Every row of both splits (8 shard files, 32 batches of 64) embedded exactly once, with its split and label."""
    ckpt = _checkpoint(tmp_path, fmnist_shards, "tiny_cnn")
    out = tmp_path / "all"
    assert main(["embed", str(ckpt), "--data", str(fmnist_shards), "--out", str(out), "--batch-size", "64", "--actors", "1"]) == 0
    written = pads.dataset(str(out), format="parquet").to_table(columns=["id", "split", "label"])
    want = {
        (i, split, label)
        for split in ("train", "test")
        for i, label in zip(
            *pads.dataset(f"{fmnist_shards}/{split}", format="parquet").to_table(columns=["id", "label"]).to_pydict().values(),
            strict=True,
        )
    }
    rows = read_manifest(str(fmnist_shards))["splits"]
    assert len(want) == rows["train"]["rows"] + rows["test"]["rows"] == 2048
    got = list(zip(*written.to_pydict().values(), strict=True))
    assert len(got) == 2048 and set(got) == want  # each id once, with the split and label it has in the shards


def test_embed_an_image_folder_shards_it_at_the_encoders_size(ray_session, fmnist_shards, unlabeled_photos, tmp_path):
    ckpt = _checkpoint(tmp_path, fmnist_shards, "tiny_cnn")  # a 1-channel 28 px encoder; the photos are RGB, larger
    out = tmp_path / "photo-embeddings"
    assert main(["embed", str(ckpt), "--data", str(unlabeled_photos), "--out", str(out), "--actors", "1"]) == 0
    table = pads.dataset(str(out), format="parquet").to_table()
    assert table.num_rows > 0 and set(table.column("label").to_pylist()) == {-1}  # unlabeled


def test_encoder_replicas_leave_a_cpu_for_reading():
    from pipelines.embed import encoder_replicas

    assert encoder_replicas(None, gpus=0, cpus=2) == 1  # 2 actors on 2 CPUs left no CPU to read with: a hang
    assert encoder_replicas(4, gpus=0, cpus=2) == 1
    assert encoder_replicas(None, gpus=4, cpus=32) == 4 and encoder_replicas(2, gpus=4, cpus=32) == 2
