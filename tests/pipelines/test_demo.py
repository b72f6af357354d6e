"""The main job's path end to end on a tiny subset: a grid search over methods, shared baselines,
few-label metrics, the compare table, plots and the printed headlines."""

from __future__ import annotations

from pathlib import Path

import torch

from pipelines import tracking
from pipelines.build import build_method
from pipelines.cli import main
from pipelines.config import build_config
from pipelines.data import read_manifest
from pipelines.shared_work import cache_dir, weights_digest
from tests.conftest import TINY_RUN

METHODS = ("simclr", "rotation")


def test_demo_runs_the_search_shares_baselines_and_prints_headlines(ray_session, fmnist_shards, tmp_path, capsys):
    space = tmp_path / "space.yaml"
    # a bundle, as tune_spaces/demo.yaml: each method with its own (here: SimCLR's searched) augmentation
    space.write_text("recipe: {grid: [{method.name: simclr, data.augment.jitter_strength: 0.7}, {method.name: rotation}]}\n")
    overrides = [
        *(s for s in TINY_RUN if not s.startswith(("probe.baselines", "train.epochs", "probe.epoch_knn_images"))),
        "probe.epoch_knn_images=256",  # the metric the demo's search records per epoch
        f"data.shards={fmnist_shards}",
        f"tracking.runs_dir={tmp_path / 'runs'}",
        "train.epochs=1",
        "train.num_workers=1",
        "probe.baselines=true",
        "probe.labels_per_class=[2]",
        "probe.finetune_steps=5",
    ]
    assert main(["demo", "--space", str(space), *(a for s in overrides for a in ("--set", s))]) == 0
    printed = capsys.readouterr().out

    # the printed summary: table, plots, one sentence per headline, the UI command
    assert "Best method:" in printed and "Few labels (2 per class):" in printed and "mlflow ui" in printed
    assert "accuracy_per_method.png" in printed and "few_labels.png" in printed

    # one child run per method, each with its few-label and baseline metrics
    uri = tracking.resolve_tracking_uri(None, tmp_path / "runs")
    experiment = tracking.newest_experiment(uri)
    runs = [r for r in tracking.search_runs(uri, experiment) if r.data.tags.get("rayssl.kind") != "tune"]
    assert sorted(r.data.params["method.name"] for r in runs) == sorted(METHODS)
    jitter = {r.data.params["method.name"]: r.data.params["data.augment.jitter_strength"] for r in runs}
    assert jitter == {"simclr": "0.7", "rotation": "0.4"}  # the bundle's value, and the default where it sets none
    for run in runs:
        assert {"probe/finetune_2pc_top1", "baseline/supervised_2pc_top1", "baseline/pixels_linear_top1"} <= set(run.data.metrics)
    assert len({r.data.metrics["baseline/pixels_linear_top1"] for r in runs}) == 1  # computed once, read back

    # shared work done once per distinct random-init encoder, the probe sets decoded once
    cfgs = [build_config({}, [*overrides, f"method.name={m}"]) for m in METHODS]
    manifest = read_manifest(str(fmnist_shards))
    digests = set()
    for cfg in cfgs:
        torch.manual_seed(cfg.train.seed)
        digests.add(weights_digest(build_method(cfg, manifest).encoder))
    cached = [p.name for p in cache_dir(tmp_path / "runs").iterdir()]
    assert sum(n.startswith("probe-sets-") for n in cached) == 1
    assert sum(n.startswith("baselines-") for n in cached) == len(digests)
    assert sum(n.startswith("from-scratch-") for n in cached) == len(digests)


def test_the_demos_config_is_found_from_any_folder(tmp_path, monkeypatch):
    # `rayssl demo` from outside the checkout said "configs/demo_fmnist.yaml: config file not found"
    from pipelines.cli_args import build_parser
    from pipelines.config import load_config

    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args(["demo"])
    cfg = load_config(args.config)
    assert cfg.data.shards == "rayssl-data/fashion-mnist"  # still where the demo is run
    assert Path(args.config) == Path(__file__).resolve().parents[2] / "configs" / "demo_fmnist.yaml"  # the checkout's
