"""The ``rayssl`` command line: every subcommand and its options (``pipelines.cli`` runs them)."""

from __future__ import annotations

import argparse
from pathlib import Path

# The demo's config by its place in the checkout rayssl is installed from (pip install -e .), so that `rayssl
# demo` runs from any folder; it writes rayssl-data/ and rayssl-runs/ where it is run, as every command does.
_CHECKOUT_DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo_fmnist.yaml"
DEMO_CONFIG = str(_CHECKOUT_DEMO) if _CHECKOUT_DEMO.is_file() else "configs/demo_fmnist.yaml"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: give 1 or more")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rayssl", description="Self-supervised pretraining on Ray, tracked in MLflow.")
    parser.add_argument(
        "--verbose", action="store_true", help="also show Ray's, Ray Train's and Ray Data's own log lines (RAYSSL_VERBOSE=1)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "shard", help="write validated Parquet shards from fashion-mnist, cifar10, cifar100, stl10 or an image folder"
    )
    p.add_argument(
        "source",
        help="'fashion-mnist'; cifar10:PATH, cifar100:PATH or stl10:PATH (the folder the dataset's archive unpacks to: "
        "cifar-10-batches-py, cifar-100-python, stl10_binary); or a folder of images, local or s3:// "
        "(class sub-folders give labels; train/<class>/ and val/<class>/ folders give the splits)",
    )
    p.add_argument("--out", required=True, help="output folder (gets train/, test/, manifest.json)")
    p.add_argument("--rows-per-shard", type=int, default=10_000)
    p.add_argument("--strict", action="store_true", help="stop at the first unreadable file instead of skipping it")
    p.add_argument("--limit", type=int, default=None, help="at most this many rows per split")
    p.add_argument("--mode", choices=["L", "RGB"], default=None, help="image mode for folders (default RGB)")
    p.add_argument(
        "--size",
        type=int,
        default=None,
        help="store folder images as SIZE x SIZE centre crops (PNG); default: each image at its own size",
    )
    p.add_argument(
        "--max-size",
        type=int,
        default=512,
        help="cap the shorter side of folder images at this many px (default 512; 0 = keep every size)",
    )
    p.add_argument(
        "--serial", action="store_true", help="decode in this process instead of Ray tasks on every core of the cluster"
    )
    p.add_argument(
        "--keep-labels",
        type=float,
        default=None,
        metavar="SHARE",
        help="keep this share (0-1) of the train split's labels, the rest unlabeled (semi-supervised); test keeps all",
    )
    p.add_argument(
        "--label-set",
        choices=["fine", "coarse"],
        default=None,
        help="cifar100: the 100 fine classes (default) or the 20 coarse superclasses",
    )

    for name, default_config, text in (
        ("pretrain", None, "pretrain one method with Ray Train, probe it, record it in MLflow"),
        ("demo", DEMO_CONFIG, "the main job: shard Fashion-MNIST once, compare a few methods, print the table"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--config", default=default_config, help="YAML config (see configs/)")
        p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field, e.g. optim.lr=0.1")
        p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: sqlite in tracking.runs_dir)")
        if name == "demo":
            p.add_argument("--space", default="demo", help="the methods to compare (a tune space; default tune_spaces/demo.yaml)")

    p = sub.add_parser("tune", help="Ray Tune search: every trial a Ray Train run and an MLflow child run")
    p.add_argument(
        "--space", required=True, help="a shipped space (augment, temperature, schedule, methods, smoke) or a YAML file"
    )
    p.add_argument("--config", default=None, help="base YAML config the space varies (see configs/)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a base config field")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: sqlite in tracking.runs_dir)")
    p.add_argument("--name", default=None, help="experiment name (MLflow experiment and Tune folder); reuse it with --resume")
    p.add_argument("--search", choices=["random", "grid", "optuna"], default="random")
    p.add_argument("--scheduler", choices=["none", "asha", "pbt"], default="none")
    p.add_argument("--num-samples", type=int, default=None, help="trials (grid: repeats of the grid; default 4, grid 1)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted experiment --name; finished trials stay")
    p.add_argument(
        "--metric",
        default=None,
        help="per-epoch metric the search and scheduler act on (default probe/epoch_knn_top1; "
        "probe/epoch_rankme when the shards have no labels)",
    )
    p.add_argument("--mode", choices=["max", "min"], default="max")
    p.add_argument("--pbt-interval", type=int, default=1, help="epochs between PBT exploit/explore steps")
    p.add_argument(
        "--seeds",
        type=_positive_int,
        default=1,
        help="run every configuration with N seeds (train.seed, +1, ...); compare shows mean ± spread per configuration",
    )
    p.add_argument(
        "--register", default=None, metavar="NAME", help="Model Registry name of the best encoder, alias 'best' (default: --name)"
    )

    p = sub.add_parser("recipe", help="a method's training recipe (from its paper) and what it resolves to")
    p.add_argument("name", help="a registered method name")
    p.add_argument("--config", default=None, help="YAML config: show what a run of this method with it will use")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field, e.g. train.use_gpu=true")
    p.add_argument(
        "--epochs", type=int, default=None, help="run length the warm-up is resolved for (default: the config's, or 10)"
    )

    p = sub.add_parser("compare", help="table and plots over every run of an MLflow experiment")
    p.add_argument(
        "--experiment", default=None, help="MLflow experiment (a tune --name, or tracking.experiment); default: the newest"
    )
    p.add_argument("--out", default="rayssl-runs/compare", help="folder for the table and PNG plots")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: sqlite in --runs-dir)")
    p.add_argument("--runs-dir", default="rayssl-runs", help="where the default SQLite store lives")

    p = sub.add_parser("export", help="a pretrained encoder as ONNX, a torch.export program or safetensors weights")
    p.add_argument("source", help="a checkpoint (file or folder), the MLflow run id of a pretraining run, or models:/NAME@best")
    p.add_argument("--format", required=True, choices=["onnx", "torch-export", "state-dict"])
    p.add_argument("--out", required=True, help="output file (.onnx, .pt2 or .safetensors is added when missing)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI, for a run id (default: sqlite in --runs-dir)")
    p.add_argument("--runs-dir", default="rayssl-runs", help="where the default SQLite store lives")

    p = sub.add_parser("embed", help="embed an image set with a pretrained encoder (Ray Data batch inference) into Parquet")
    p.add_argument("model", help="a checkpoint (file or folder), an MLflow run id, or models:/NAME@best")
    p.add_argument("--data", required=True, help="shards (folder or URI) or a folder of images")
    p.add_argument("--out", required=True, help="output folder or URI for the Parquet files")
    p.add_argument("--limit", type=int, default=None, help="embed at most this many images")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--actors", type=int, default=None, help="encoder replicas (default: one per GPU, else CPUs - 1; never more)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI, for a run id or models:/ (default: sqlite)")
    p.add_argument("--runs-dir", default="rayssl-runs", help="where the default SQLite store lives")

    p = sub.add_parser("preview", help="a PNG grid of the views a config makes from a few real images")
    p.add_argument("--config", default=None, help="YAML config (see configs/)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field, e.g. data.augment.blur_p=1")
    p.add_argument("--out", default="views.png")
    p.add_argument("--images", type=int, default=6)

    p = sub.add_parser("probe", help="linear + kNN probes (and baselines) of a saved checkpoint")
    p.add_argument("checkpoint", help="a checkpoint folder or file, an MLflow run id, or models:/NAME@best")
    p.add_argument("--data", default=None, help="shards folder or URI (default: the one the run used)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI, for a run id or models:/ (default: sqlite)")
    p.add_argument("--runs-dir", default="rayssl-runs", help="where the default SQLite store lives")
    p.add_argument(
        "--labels-per-class",
        type=int,
        action="append",
        metavar="N",
        help="also fine-tune on N labels per class, against the same net from scratch (repeatable: 10, 100)",
    )
    p.add_argument("--no-log", action="store_true", help="print only; do not log to the run that made the checkpoint")

    return parser
