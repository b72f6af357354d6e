"""Unlabeled data, the case SSL exists for: pretraining never needs labels; probes use labeled rows or a labeled set.

Real photos (crops of scikit-image's sample photographs), real Fashion-MNIST, a real local
Ray instance and a real MLflow store.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import cli, tracking
from pipelines.config import ConfigError, build_config
from pipelines.data import DataError, labeled_rows, read_manifest
from pipelines.search.tune import SearchSettings, run_search
from pipelines.shard import write_shards
from pipelines.train import pretrain, validate
from tests.conftest import correct_of

LABEL_METRICS = ("probe/linear_top1", "probe/knn_top1", "probe/epoch_knn_top1", "baseline/")
TINY_FEATURES = 16  # tiny_cnn's feature size: RankMe lies in [1, 16]


def _config(shards, runs_dir, *extra: str):
    # photos at their own sizes: 32 px views and probe crops (Fashion-MNIST keeps its 28 px)
    photos = read_manifest(str(shards))["image_size"] is None
    return build_config(
        {},
        [
            f"data.shards={shards}",
            "data.batch_size=64",
            *(["data.crop_size=32"] if photos else []),
            "method.backbone=tiny_cnn",
            "train.num_workers=1",  # a second worker costs a process (~7 s of CPU a run on 2 cores)
            "train.epochs=2",
            "train.timeout_s=400",
            "probe.linear_epochs=3",
            "probe.knn_k=20",
            "probe.baselines=false",
            "probe.epoch_knn_images=64",
            f"tracking.runs_dir={runs_dir}",
            "tracking.experiment=unlabeled",
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def unlabeled_shards(unlabeled_photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("unlabeled") / "shards"
    write_shards(str(unlabeled_photos), out, rows_per_shard=64)
    return out


@pytest.fixture(scope="module")
def labeled_photo_shards(labeled_photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("labeled-photos") / "shards"
    write_shards(str(labeled_photos), out)
    return out


def _only_run(uri: str):
    runs = tracking.search_runs(uri, "unlabeled")
    assert len(runs) == 1
    return runs[0]


# ---------------------------------------------------------------- before Ray


def test_keep_labels_keeps_that_share_of_train_labels_and_every_test_label(tmp_path):
    full = write_shards("fashion-mnist", tmp_path / "full", limit=2000).manifest
    part = write_shards("fashion-mnist", tmp_path / "part", limit=2000, keep_labels=0.1).manifest
    assert labeled_rows(full) == {"train": 2000, "test": 2000}
    kept = labeled_rows(part)["train"]
    assert 140 <= kept <= 260  # 10% of 2,000 by a hash: binomial sd ~13
    assert labeled_rows(part)["test"] == 2000 and part["splits"]["train"]["rows"] == 2000
    # kept labels are the true ones, and the same rows on a re-run
    a = pq.read_table(tmp_path / "part" / "train").to_pydict()
    b = pq.read_table(tmp_path / "full" / "train").to_pydict()
    assert all(la in (-1, lb) for la, lb in zip(a["label"], b["label"], strict=True))
    again = write_shards("fashion-mnist", tmp_path / "again", limit=2000, keep_labels=0.1).manifest
    assert labeled_rows(again)["train"] == kept
    with pytest.raises(DataError, match=r"--keep-labels 1.5: give the share"):
        write_shards("fashion-mnist", tmp_path / "bad", limit=10, keep_labels=1.5)


def test_no_labels_is_a_note_and_bad_probe_sets_fail_in_one_line(
    unlabeled_shards, labeled_photo_shards, fmnist_shards, labeled_photos, tmp_path, capsys
):
    cfg = _config(unlabeled_shards, tmp_path / "runs")
    validate(cfg)
    out = capsys.readouterr().out
    assert out.count("note:") == 1 and "no labeled images" in out and "probe.shards" in out

    # a labeled set of the right kind: no note
    validate(_config(unlabeled_shards, tmp_path / "runs", f"probe.shards={labeled_photo_shards}"))
    assert "no labeled images" not in capsys.readouterr().out

    # grey Fashion-MNIST cannot probe an encoder of RGB photos; neither can photos of another size
    with pytest.raises(ConfigError, match=r"probe.shards=.*: holds 1-channel images, the pretraining shards 3-channel"):
        validate(_config(unlabeled_shards, tmp_path / "runs", f"probe.shards={fmnist_shards}"))
    small = write_shards(str(labeled_photos), tmp_path / "small", size=24).out_dir
    message = r"probe.shards=.*: gives the encoder 24 px images, the pretraining shards 32 px; re-shard"
    with pytest.raises(ConfigError, match=message):
        validate(_config(unlabeled_shards, tmp_path / "runs", f"probe.shards={small}"))
    with pytest.raises(DataError, match=r"nowhere/manifest.json: not found"):
        validate(_config(unlabeled_shards, tmp_path / "runs", f"probe.shards={tmp_path / 'nowhere'}"))

    # the CLI says each in one line, before Ray starts
    args = ["pretrain", "--set", f"data.shards={unlabeled_shards}", "--set", f"probe.shards={fmnist_shards}"]
    assert cli.main(args + ["--set", f"tracking.runs_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "probe.shards=" in err
    # a search cannot act on the kNN probe without labels
    args = ["tune", "--space", "smoke", "--metric", "probe/epoch_knn_top1", "--set", f"data.shards={unlabeled_shards}"]
    args += ["--set", "data.batch_size=64"]  # the default 256 is more than the shards' 192 images
    assert cli.main(args + ["--set", f"tracking.runs_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "needs labeled images; use --metric probe/epoch_rankme" in err


# ---------------------------------------------------------------- on Ray


@pytest.mark.e2e
def test_unlabeled_pretraining_probes_on_a_separate_labeled_set(ray_session, unlabeled_shards, labeled_photo_shards, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = _config(unlabeled_shards, tmp_path / "runs", f"tracking.tracking_uri={uri}", f"probe.shards={labeled_photo_shards}")
    pretrain(cfg)

    run = _only_run(uri)
    assert run.info.status == "FINISHED" and "rayssl.probes" not in run.data.tags
    n = labeled_rows(read_manifest(str(labeled_photo_shards)))["test"]
    assert run.data.metrics["probe/test_images"] == n
    # Accuracies over the labeled set's own test rows (k / n). No threshold: on these 44 test crops a
    # random-init tiny_cnn alone ranges 0.45-0.77 over seeds, too wide to pin a 2-epoch run.
    for key in ("probe/linear_top1", "probe/knn_top1"):
        correct_of(run.data.metrics[key], n)
    assert "probe/epoch_knn_top1" in run.data.metrics and "probe/epoch_rankme" in run.data.metrics


@pytest.mark.e2e
def test_partly_labeled_shards_pretrain_on_every_row_and_probe_on_labeled_rows(ray_session, tmp_path):
    shards = tmp_path / "shards"
    manifest = write_shards("fashion-mnist", shards, limit=1024, keep_labels=0.1).manifest
    labeled = labeled_rows(manifest)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = _config(
        shards,
        tmp_path / "runs",
        f"tracking.tracking_uri={uri}",
        "train.epochs=1",
        "probe.labels_per_class=[2]",
        "probe.finetune_steps=10",
        "probe.max_test_images=256",
    )
    result = pretrain(cfg)

    m = _only_run(uri).data.metrics
    # pretraining read all 1,024 rows; the probes fit on the ~10% that carry a label
    assert tracking.metric_history(uri, result.run_id, "train/images") == [(1, 1024.0)]
    assert m["probe/train_images"] == labeled["train"] < 200
    assert m["probe/test_images"] == 256  # probe.max_test_images of the test split's labeled rows
    for key in ("probe/linear_top1", "probe/finetune_2pc_top1"):
        correct_of(m[key], m["probe/test_images"])


@pytest.mark.e2e
def test_unlabeled_photos_pretrain_with_rankme_only_and_tune_acts_on_it(ray_session, unlabeled_shards, tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text("optim.lr: {grid: [0.05]}\n")
    cfg = _config(unlabeled_shards, tmp_path / "runs", "tracking.log_model=false")  # ~10 s in a trial's new process
    result = run_search(cfg, SearchSettings(space=str(space), search="grid", num_samples=1, name="unlabeled-tune"))

    assert "the search acts on probe/epoch_rankme" in capsys.readouterr().out
    parent = tracking.get_run(result.tracking_uri, result.parent_run_id)
    assert parent.data.params["metric"] == "probe/epoch_rankme"
    assert result.selected_by == "probe/rankme" and parent.data.tags["rayssl.best_selected_by"] == "probe/rankme"
    # The trial is an unlabeled pretraining run like any other (one Ray Train run serves both checks here):
    # it finishes with RankMe only, and trains on every one of the 192 photos each epoch (3 steps of 64).
    [trial] = result.trials
    uri, run_id = result.tracking_uri, trial["run_id"]
    run = tracking.get_run(uri, run_id)
    assert trial["status"] == "FINISHED" and 1.0 <= trial["metrics"]["probe/rankme"] <= TINY_FEATURES
    assert not [k for k in trial["metrics"] if k.startswith(LABEL_METRICS)]  # what the search saw, and MLflow:
    assert run.info.status == "FINISHED"
    assert run.data.tags["rayssl.probes"] == "skipped: no labels"
    assert not [k for k in run.data.metrics if k.startswith(LABEL_METRICS)]
    rankme = tracking.metric_history(uri, run_id, "probe/epoch_rankme")
    assert [step for step, _ in rankme] == [1, 2]
    assert all(1.0 <= value <= TINY_FEATURES for _, value in rankme)
    assert 1.0 <= run.data.metrics["probe/rankme"] <= TINY_FEATURES
    assert [v for _, v in tracking.metric_history(uri, run_id, "train/images")] == [192.0, 192.0]
    assert "checkpoint" in {a.path for a in tracking.client(uri).list_artifacts(run_id)}


@pytest.mark.e2e
def test_a_shard_damaged_after_sharding_fails_the_run_once_in_one_line(ray_session, fmnist_shards, tmp_path):
    # A copy of the shards with one PNG cut short in the second train file; footers and schema stay valid.
    import shutil

    shards = tmp_path / "shards"
    shutil.copytree(fmnist_shards, shards)
    part = shards / "train" / "part-00001.parquet"
    table = pq.read_table(part)
    images = table.column("image").to_pylist()
    images[5] = images[5][:40]
    pq.write_table(table.set_column(0, "image", pa.array(images, pa.binary())), part)
    damaged_id = table.column("id")[5].as_py()

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = _config(shards, tmp_path / "runs", f"tracking.tracking_uri={uri}", "train.max_failures=2")
    cfg.probe.epoch_knn_images = cfg.probe.rankme_images = 0  # the damage is met by the stream, mid-run
    with pytest.raises(DataError, match=rf"image '{damaged_id}': cannot decode its image bytes") as caught:
        pretrain(cfg)
    assert "\n" not in str(caught.value)
    run = _only_run(uri)
    assert run.info.status == "FAILED" and damaged_id in run.data.tags["rayssl.failure"]
