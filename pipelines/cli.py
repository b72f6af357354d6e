"""The ``rayssl`` command: shard, pretrain, probe, demo.

User errors (bad path, bad image, bad config, unreachable tracking server) end in
one line naming the thing and what to do, and a non-zero exit.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from pipelines.config import ConfigError, load_config
from pipelines.data import DataError

DEMO_CONFIG = "configs/demo_fmnist.yaml"


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def cmd_shard(args) -> int:
    from pipelines.data import write_shards

    result = write_shards(
        args.source,
        args.out,
        rows_per_shard=args.rows_per_shard,
        strict=args.strict,
        limit=args.limit,
        mode=args.mode,
        size=args.size,
    )
    m = result.manifest
    splits = ", ".join(f"{s}: {v['rows']} rows in {len(v['shards'])} shards" for s, v in m["splits"].items())
    print(f"wrote {args.out} ({splits}; {m['image_size'][0]}x{m['image_size'][1]} {m['mode']}, {len(m['classes'])} classes)")
    if m["skipped_count"]:
        print(f"skipped {m['skipped_count']} unreadable files (listed with reasons in {args.out}/manifest.json):")
        for item in m["skipped"][:10]:
            print(f"  {item['file']}: {item['reason']}")
    return 0


def _load(args):
    overrides = list(args.set or [])
    if getattr(args, "tracking_uri", None):
        overrides.append(f"tracking.tracking_uri={args.tracking_uri}")
    return load_config(args.config, overrides)


def cmd_pretrain(args) -> int:
    from pipelines.report import pretrain_table
    from pipelines.train import pretrain

    cfg = _load(args)
    result = pretrain(cfg)
    print(pretrain_table([(cfg.method.name, result.metrics)]))
    print(f"MLflow run {result.run_id} in {result.tracking_uri}")
    return 0


def cmd_probe(args) -> int:
    from pipelines.evaluate import load_checkpoint, method_from_checkpoint, run_probes
    from pipelines.report import format_table

    state = load_checkpoint(args.checkpoint)
    method, cfg = method_from_checkpoint(state, args.data)
    metrics = run_probes(method, cfg)
    print(format_table(["metric", "value"], [[k, v] for k, v in sorted(metrics.items())]))
    return 0


def cmd_demo(args) -> int:
    from pipelines import tracking
    from pipelines.data import write_shards
    from pipelines.report import pretrain_table
    from pipelines.train import pretrain

    cfg = _load(args)
    shards = Path(cfg.data.shards)
    if not (shards / "manifest.json").is_file():
        print(f"sharding {cfg.data.source} into {shards} (once; later runs reuse the shards)")
        write_shards(cfg.data.source, shards)
    else:
        print(f"reusing shards in {shards}")
    result = pretrain(cfg)
    print()
    print(pretrain_table([(cfg.method.name, result.metrics)]))
    print()
    print(f"MLflow store: {result.tracking_uri} (experiment {cfg.tracking.experiment!r}, run {result.run_id})")
    print(f"Open the UI:  .venv/bin/{tracking.ui_command(result.tracking_uri)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rayssl", description="Self-supervised pretraining on Ray, tracked in MLflow.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("shard", help="write validated Parquet shards from fashion-mnist or an image folder")
    p.add_argument("source", help="'fashion-mnist' or a folder of images (class sub-folders give labels)")
    p.add_argument("--out", required=True, help="output folder (gets train/, test/, manifest.json)")
    p.add_argument("--rows-per-shard", type=int, default=10_000)
    p.add_argument("--strict", action="store_true", help="stop at the first unreadable file instead of skipping it")
    p.add_argument("--limit", type=int, default=None, help="at most this many rows per split")
    p.add_argument("--mode", choices=["L", "RGB"], default=None, help="image mode for folders (default RGB)")
    p.add_argument("--size", type=int, default=None, help="square size for folders (default 32)")
    p.set_defaults(func=cmd_shard)

    for name, func, default_config, text in (
        ("pretrain", cmd_pretrain, None, "pretrain one method with Ray Train, probe it, record it in MLflow"),
        ("demo", cmd_demo, DEMO_CONFIG, "the main job: shard Fashion-MNIST once, pretrain SimCLR, probe, print the table"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--config", default=default_config, help="YAML config (see configs/)")
        p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field, e.g. optim.lr=0.1")
        p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: sqlite in tracking.runs_dir)")
        p.set_defaults(func=func)

    p = sub.add_parser("probe", help="linear + kNN probes (and baselines) of a saved checkpoint")
    p.add_argument("checkpoint", help="a checkpoint folder (holding checkpoint.pt) or the file itself")
    p.add_argument("--data", default=None, help="shards folder or URI (default: the one the run used)")
    p.set_defaults(func=cmd_probe)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)  # SIGTERM ends runs KILLED, like Ctrl-C
    from pipelines.tracking import TrackingError

    try:
        return args.func(args)
    except (ConfigError, DataError, TrackingError, FileNotFoundError) as err:
        print(f"rayssl: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rayssl: interrupted; the MLflow run is marked KILLED", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
