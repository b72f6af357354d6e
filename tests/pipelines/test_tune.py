"""Ray Tune searches on a real Ray instance, real Fashion-MNIST shards and a real MLflow store."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from pipelines import tracking
from pipelines.config import ConfigError, build_config
from pipelines.results.compare import compare
from pipelines.search.tune import SearchSettings, run_search
from tests.conftest import own_ray_env
from tune_spaces import SpaceError, read_space

REPO = Path(__file__).resolve().parents[2]


def _base(shards, runs_dir, epochs=2, workers=1):
    return build_config(
        {},
        [
            f"data.shards={shards}",
            "data.batch_size=64",
            "data.max_train_images=512",
            "method.backbone=tiny_cnn",
            f"train.epochs={epochs}",
            f"train.num_workers={workers}",
            "train.timeout_s=900",
            "optim.schedule=constant",
            "optim.warmup_epochs=0",
            "probe.linear_epochs=3",
            "probe.knn_k=20",
            "probe.max_train_images=512",
            "probe.max_test_images=256",
            "probe.baselines=false",
            "probe.epoch_knn_images=200",
            "tracking.log_model=false",  # ~10 s a trial (each a new process): only the ASHA test asserts on models
            f"tracking.runs_dir={runs_dir}",
        ],
    )


def _space(tmp_path, text: str) -> str:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return str(path)


def _trial_runs(result, name: str) -> list:
    """The MLflow runs of a search's trials: the children of its parent run."""
    return tracking.find_runs(result.tracking_uri, name, {"mlflow.parentRunId": result.parent_run_id})


def _search_ranked_by_lr(cfg, tmp_path, lrs: list[float], scheduler: str, name: str):
    """A grid over ``optim.lr`` whose metric is the lr itself, so the scheduler ranks the trials for certain."""
    space = _space(tmp_path, f"optim.lr: {{grid: {lrs}}}\n")
    settings = SearchSettings(space=space, search="grid", scheduler=scheduler, num_samples=1, name=name, metric="train/lr")
    result = run_search(cfg, settings)
    return result, _trial_runs(result, name)


def test_bad_spaces_fail_naming_the_key(tmp_path):
    keys = set(build_config().flat())
    with pytest.raises(SpaceError, match=r"'optim.lrr' is not a config key"):
        read_space(_space(tmp_path, "optim.lrr: {choice: [0.1]}\n"), keys)
    with pytest.raises(SpaceError, match=r"optim.lr: choice needs a non-empty list"):
        read_space(_space(tmp_path, "optim.lr: {choice: []}\n"), keys)
    with pytest.raises(SpaceError, match=r"loguniform needs \[low, high\] with low < high"):
        read_space(_space(tmp_path, "optim.lr: {loguniform: [0.5, 0.1]}\n"), keys)
    with pytest.raises(SpaceError, match=r"nope: no such space file or shipped space; shipped: .*smoke"):
        read_space("nope", keys)


def test_every_shipped_space_reads(fmnist_shards, tmp_path):
    from tune_spaces import list_spaces, to_tune

    keys = set(build_config().flat())
    assert {"augment", "temperature", "schedule", "methods", "smoke"} <= set(list_spaces())
    for name in list_spaces():
        assert to_tune(read_space(name, keys), "random")


def test_a_space_reads_into_typed_entries_that_tune_and_pbt_take(tmp_path):
    from ray import tune

    from pipelines.search.tune import pbt_mutations
    from tune_spaces import SpaceEntry, to_tune

    text = "optim.lr: {loguniform: [0.01, 0.5]}\nmethod.temperature: {choice: [0.1, 0.5]}\ntrain.epochs: {grid: [1, 2]}\n"
    space = read_space(_space(tmp_path, text), set(build_config().flat()))
    assert space["method.temperature"] == SpaceEntry("method.temperature", "choice", [0.1, 0.5])
    assert space["optim.lr"].values == [0.01, 0.5] and not space["optim.lr"].listed
    random = to_tune(space, "random")
    assert isinstance(random["optim.lr"], tune.search.sample.Float) and random["train.epochs"] == {"grid_search": [1, 2]}
    with pytest.raises(SpaceError, match=r"optim.lr: grid search needs choice or grid values, not loguniform"):
        to_tune(space, "grid")
    mutations = pbt_mutations(space)
    assert mutations["train.epochs"] == [1, 2]  # listed ints stay a list
    assert mutations["method.temperature"].lower == 0.1 and mutations["method.temperature"].upper == 0.5  # floats: a range


def test_a_bundle_varies_several_keys_together_and_is_checked_before_ray(tmp_path):
    from pipelines.search.trial import trial_config
    from pipelines.search.tune import check_space_values, searched_keys

    keys = set(build_config().flat())
    text = "recipe: {grid: [{method.name: simclr, data.augment.jitter_strength: 0.7}, {method.name: rotation}]}\n"
    space = read_space(_space(tmp_path, text), keys)
    assert space["recipe"].bundle and len(space["recipe"].args) == 2
    assert searched_keys({k: e.as_yaml() for k, e in space.items()}) == ["method.name", "data.augment.jitter_strength"]
    base = build_config().model_dump(mode="json")
    cfg = trial_config(base, {"recipe": space["recipe"].args[0], "optim.lr": 0.1})
    assert (cfg.method.name, cfg.data.augment.jitter_strength, cfg.optim.lr) == ("simclr", 0.7, 0.1)
    with pytest.raises(SpaceError, match=r"recipe: 'data.augment.jitter' is not a config key"):
        read_space(_space(tmp_path, "recipe: {grid: [{data.augment.jitter: 0.7}]}\n"), keys)
    with pytest.raises(SpaceError, match=r"'method' is a config section"):
        read_space(_space(tmp_path, "method: {grid: [{method.name: simclr}]}\n"), keys)
    bad = read_space(_space(tmp_path, "recipe: {grid: [{method.name: simclr}, {method.name: nope}]}\n"), keys)
    with pytest.raises(ConfigError, match=r"space value recipe=\{'method.name': 'nope'\}: .*unknown method 'nope'"):
        check_space_values(build_config(), bad)


def test_tunes_table_shows_each_bundles_method_and_the_values_that_differ():
    # Tune's progress table cuts every value to 20 characters: a bundle's mapping read
    # "...ent.flip_p': 0.0}" in every row. It gets its method as label, and each differing value an entry.
    from ray.tune.search.variant_generator import generate_variants

    from pipelines.search.trial import trial_config
    from pipelines.search.tune import tune_param_space

    space = read_space("demo", set(build_config().flat()))
    param_space, labels = tune_param_space(space, "grid")
    assert sorted(labels.bundles["recipe"]) == ["rotation", "simclr", "vicreg"]
    assert labels.shown == ("jitter_strength", "jitter_p", "blur_p")  # crop_scale and flip_p: the same in both
    shown = [config for _, config in generate_variants(param_space)]
    assert [(c["recipe"], c["jitter_strength"], c["blur_p"]) for c in shown] == [
        ("simclr", 0.714, 0.575),
        ("vicreg", 0.923, 0.488),
        ("rotation", None, None),
    ]
    params = labels.params(shown[1])
    assert params == {"recipe": labels.bundles["recipe"]["vicreg"]}  # the entries that only show values are left out
    cfg = trial_config(build_config().model_dump(mode="json"), params)
    assert (cfg.method.name, cfg.data.augment.jitter_strength, cfg.data.augment.flip_p) == ("vicreg", 0.923, 0.0)
    # bundles that share a method are numbered; without a method, by the key
    twice = _space_entries({"recipe": {"choice": [{"method.name": "simclr", "optim.lr": 0.1}, {"method.name": "simclr"}]}})
    param_space, labels = tune_param_space(twice, "random")
    assert sorted(labels.bundles["recipe"]) == ["simclr-1", "simclr-2"] and labels.shown == ()  # lr: set by one only
    lrs = _space_entries({"opt": {"grid": [{"optim.lr": 0.1}, {"optim.lr": 0.2}]}, "optim.name": {"grid": ["sgd"]}})
    param_space, labels = tune_param_space(lrs, "grid")
    assert sorted(labels.bundles["opt"]) == ["opt-1", "opt-2"] and labels.shown == ("lr",)
    assert [(c["opt"], c["lr"]) for _, c in generate_variants(param_space)] == [("opt-1", 0.1), ("opt-2", 0.2)]
    assert tune_param_space(space, "optuna")[1].shown == ()  # Optuna takes no sample_from: labels only


def _space_entries(tree: dict):
    from tune_spaces import SpaceEntry

    return {key: SpaceEntry(key, *next(iter(spec.items()))) for key, spec in tree.items()}


def test_bad_space_value_fails_before_ray_starts(fmnist_shards, tmp_path):
    # An unknown method name inside a space is a config error found before any trial runs.
    cfg = _base(fmnist_shards, tmp_path / "runs")
    with pytest.raises(ConfigError, match=r"space value method.name='nope'.*known methods"):
        run_search(cfg, SearchSettings(space=_space(tmp_path, "method.name: {grid: [simclr, nope]}\n"), search="grid"))
    # From the command line: one line on stderr, exit 2, and no Ray instance started.
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "tune", "--space", _space(tmp_path, "optim.lrr: {choice: [1]}\n")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "'optim.lrr' is not a config key" in proc.stderr
    assert "Ray" not in proc.stdout + proc.stderr


def test_seeds_are_checked_before_ray_starts(fmnist_shards, tmp_path):
    cfg = _base(fmnist_shards, tmp_path / "runs")
    with pytest.raises(ConfigError, match=r"--seeds 2: the space varies train.seed itself"):
        run_search(cfg, SearchSettings(space=_space(tmp_path, "train.seed: {grid: [0, 1]}\n"), seeds=2))
    with pytest.raises(ConfigError, match=r"--seeds with --search optuna"):
        run_search(cfg, SearchSettings(space=_space(tmp_path, "optim.lr: {uniform: [0.01, 0.1]}\n"), search="optuna", seeds=2))
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "tune", "--space", "smoke", "--seeds", "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "--seeds: 0: give 1 or more" in proc.stderr


@pytest.mark.e2e
def test_seeds_repeat_each_random_draw_and_compare_gives_mean_and_spread(ray_session, fmnist_shards, tmp_path):
    cfg = _base(fmnist_shards, tmp_path / "runs", epochs=1)
    space = _space(tmp_path, "optim.lr: {uniform: [0.01, 0.1]}\n")
    result = run_search(cfg, SearchSettings(space=space, search="random", num_samples=1, seeds=2, name="seeds-test"))

    children = _trial_runs(result, "seeds-test")
    assert sorted(run.data.params["train.seed"] for run in children) == ["0", "1"]
    assert len({run.data.params["optim.lr"] for run in children}) == 1  # one random draw, run once per seed
    assert all(run.info.status == "FINISHED" for run in children)
    assert tracking.get_run(result.tracking_uri, result.parent_run_id).data.params["seeds"] == "2"

    table, _ = compare(result.tracking_uri, "seeds-test", tmp_path / "compare")
    per_config = table.split("Per configuration over seeds:\n", 1)[1].splitlines()
    linear = [run.data.metrics["probe/linear_top1"] for run in children]
    mean, half_range = sum(linear) / 2, abs(linear[0] - linear[1]) / 2
    assert per_config[2].split()[:2] == ["simclr", "0,1"]
    assert f"{mean:.4f} ± {half_range:.4f}" in per_config[2] and per_config[2].rstrip().endswith("2/2")


@pytest.mark.e2e
def test_asha_grid_search_one_child_run_per_trial_and_compare(ray_session, fmnist_shards, tmp_path):
    # Built so ASHA must stop a trial: grid order puts the larger lr first, trials run one
    # at a time (2 workers on 2 CPUs), and the metric is the lr itself, so at epoch 1 the
    # second trial is below the rung's cutoff set by the first.
    cfg = _base(fmnist_shards, tmp_path / "runs", workers=2)
    cfg.tracking.log_model = True  # each trial's encoder, and the best one registered
    result, children = _search_ranked_by_lr(cfg, tmp_path, [0.1, 0.05], "asha", "asha-test")
    assert len(children) == len(result.trials) == 2
    for run in children:
        assert run.info.status == "FINISHED"
        assert {"probe/linear_top1", "probe/knn_top1"} <= set(run.data.metrics)
    by_lr = {run.data.params["optim.lr"]: run for run in children}
    stopped = by_lr["0.05"]
    assert stopped.data.tags.get("rayssl.stopped_early") == "true"
    assert stopped.data.metrics["epochs"] == 1  # probed at its last checkpoint, epoch 1 of 2
    assert by_lr["0.1"].data.metrics["epochs"] == 2
    parent = tracking.get_run(result.tracking_uri, result.parent_run_id)
    best = max(children, key=lambda r: r.data.metrics["probe/linear_top1"])
    assert parent.data.tags["rayssl.best_run_id"] == best.info.run_id
    assert parent.data.metrics["best/linear_top1"] == best.data.metrics["probe/linear_top1"]
    assert parent.data.params["scheduler"] == "asha" and parent.data.params["search"] == "grid"
    # every trial logged its encoder as an MLflow Model; the best one is in the Model Registry as <experiment>@best
    assert all(run.data.tags["rayssl.encoder_model"].startswith("models:/") for run in children)
    assert result.registered == parent.data.tags["rayssl.best_model"] == "models:/asha-test@best"
    version = tracking.client(result.tracking_uri).get_model_version_by_alias("asha-test", "best")
    assert version.run_id == best.info.run_id
    assert float(version.tags["probe/linear_top1"]) == best.data.metrics["probe/linear_top1"]

    table, plots = compare(result.tracking_uri, "asha-test", tmp_path / "compare")
    for run in children:
        assert run.data.tags["rayssl.trial_id"] in table
    assert "optim.lr" in table.splitlines()[0]  # the searched parameter is a column
    assert {p.name for p in plots} == {
        "accuracy_per_epoch.png",
        "accuracy_per_method.png",
        "accuracy_vs_params.png",
        "embedding_best.png",
    }
    for plot in plots:
        with Image.open(plot) as img:
            assert img.format == "PNG" and img.size[0] > 100
    logged = {a.path for a in tracking.client(result.tracking_uri).list_artifacts(result.parent_run_id, "compare")}
    assert "compare/compare.txt" in logged and "compare/embedding_best.png" in logged


@pytest.mark.e2e
def test_diverging_trial_fails_alone_and_the_parent_names_the_best(ray_session, fmnist_shards, tmp_path):
    cfg = _base(fmnist_shards, tmp_path / "runs", epochs=1)  # 1 worker of 0.5 CPU: both trials at once
    space = _space(tmp_path, "faults.nan_at_step: {grid: [null, 3]}\n")
    result = run_search(cfg, SearchSettings(space=space, search="grid", scheduler="none", num_samples=1, name="nan-test"))

    children = _trial_runs(result, "nan-test")
    by_fault = {run.data.params["faults.nan_at_step"]: run for run in children}
    assert set(by_fault) == {"None", "3"}
    assert by_fault["3"].info.status == "FAILED" and "probe/linear_top1" not in by_fault["3"].data.metrics
    assert "loss is not finite at epoch 1, step 3" in by_fault["3"].data.tags["rayssl.failure"]
    assert by_fault["None"].info.status == "FINISHED" and "probe/linear_top1" in by_fault["None"].data.metrics
    parent = tracking.get_run(result.tracking_uri, result.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["rayssl.best_run_id"] == by_fault["None"].info.run_id


@pytest.mark.e2e
def test_pbt_records_its_perturbations(ray_session, fmnist_shards, tmp_path):
    # Synchronous PBT with a metric that ranks the trials for certain (the lr itself):
    # after epoch 1 the lower trial must clone the upper one and perturb its lr.
    cfg = _base(fmnist_shards, tmp_path / "runs", epochs=2)
    cfg.data.augment_on = "device"  # views made in the Train worker, not in Ray Data
    result, children = _search_ranked_by_lr(cfg, tmp_path, [0.1, 0.02], "pbt", "pbt-test")
    assert len(children) == 2
    followed = {
        run.data.params["optim.lr"]: [v for _, v in tracking.metric_history(result.tracking_uri, run.info.run_id, "pbt/optim.lr")]
        for run in children
    }
    # the trial that started at 0.02 was exploited: it continued with another lr
    assert followed["0.02"][0] == 0.02 and any(v != 0.02 for v in followed["0.02"][1:])
    for run in children:
        assert run.info.status == "FINISHED" and "probe/linear_top1" in run.data.metrics
        assert any(k.startswith("rayssl.pbt.config_from_epoch_") for k in run.data.tags)


def _child_runs(uri, experiment):
    return [r for r in tracking.search_runs(uri, experiment) if r.data.tags.get("rayssl.kind") == "trial"]


@pytest.mark.e2e
def test_interrupted_search_resumes_without_duplicates(fmnist_shards, s3, mlflow_s3_server, tmp_path):
    """Ctrl-C the driver after the first trial finished; --resume runs only what was left, from the Tune
    state and Ray Train checkpoints it kept on S3 (``tracking.storage_path``). The MLflow server keeps
    the artifacts on S3 too, the compare plots among them."""
    _interrupt_and_resume(fmnist_shards, s3, tmp_path, tmp_path / "runs", mlflow_s3_server)


def _interrupt_and_resume(fmnist_shards, s3, tmp_path, runs_dir, uri):
    import pyarrow.fs as pafs

    space = _space(tmp_path, "optim.lr: {grid: [0.1, 0.05]}\n")
    args = [sys.executable, "-m", "pipelines.cli", "tune", "--space", space, "--search", "grid", "--name", "resume-test"]
    args += ["--set", f"data.shards={fmnist_shards}", "--set", f"tracking.runs_dir={runs_dir}"]
    args += ["--set", f"tracking.storage_path={s3}/tune-resume", "--set", f"tracking.tracking_uri={uri}"]
    for item in ("data.batch_size=64", "data.max_train_images=256", "method.backbone=tiny_cnn", "train.epochs=1"):
        args += ["--set", item]
    args += ["--set", "probe.baselines=false", "--set", "probe.max_train_images=256", "--set", "probe.max_test_images=128"]
    args += ["--set", "tracking.log_model=false"]  # ~10 s a trial; nothing here reads the models
    env = own_ray_env()
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # Interrupt once the first trial's run has finished: read the driver's output line by line.
    finished_first = False
    for line in proc.stdout:
        if "Trial" in line and "completed" in line or "TERMINATED" in line:
            runs = _child_runs(uri, "resume-test")
            if any(r.info.status == "FINISHED" for r in runs):
                finished_first = True
                proc.send_signal(signal.SIGINT)
                break
    proc.communicate(timeout=300)
    assert finished_first, "the first trial never finished"
    before = {r.info.run_id: r for r in _child_runs(uri, "resume-test")}
    done_before = {rid for rid, r in before.items() if r.info.status == "FINISHED"}
    assert len(done_before) == 1
    fs, base = pafs.FileSystem.from_uri(f"{s3}/tune-resume/tune/resume-test")
    kept = [f.base_name for f in fs.get_file_info(pafs.FileSelector(base, recursive=True)) if f.type == pafs.FileType.File]
    assert any(name.startswith("experiment_state") for name in kept), kept  # Tune's state is on S3
    assert not (runs_dir / "tune").exists()

    resumed = subprocess.run(args + ["--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    after = _child_runs(uri, "resume-test")
    assert len(after) == 2 and len({r.data.tags["rayssl.trial_id"] for r in after}) == 2
    assert all(r.info.status == "FINISHED" and "probe/linear_top1" in r.data.metrics for r in after)
    for rid in done_before:  # finished trials were not re-run: one loss record, the original one
        history = tracking.metric_history(uri, rid, "train/loss")
        assert len(history) == 1
        assert history == [(1, before[rid].data.metrics["train/loss"])]
    parents = tracking.find_runs(uri, "resume-test", {"rayssl.kind": "tune"})
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert json.loads(parents[0].data.tags["rayssl.best_params"])

    compare(uri, "resume-test", tmp_path / "compare")  # logs its table and plots to the search's parent run
    fs, base = pafs.FileSystem.from_uri(f"{s3}/mlflow-artifacts")  # the server's artifact store
    stored = [f.path for f in fs.get_file_info(pafs.FileSelector(base, recursive=True)) if f.type == pafs.FileType.File]
    parent_artifacts = f"/{parents[0].info.run_id}/artifacts/"
    assert any(parent_artifacts + "compare/accuracy_per_method.png" in p for p in stored), stored[:20]
    assert any(p.endswith("/artifacts/checkpoint/checkpoint.pt") for p in stored)  # and each trial's checkpoint
