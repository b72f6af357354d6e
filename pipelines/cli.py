"""The ``rayssl`` command: shard, pretrain, probe, tune, compare, export, embed, preview, demo.

User errors (bad path, bad image, bad config, unreachable tracking server) end in
one line naming the thing and what to do, and a non-zero exit; ``RAYSSL_TRACEBACK=1``
prints the traceback as well.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import traceback
from pathlib import Path

from pipelines.cli_args import build_parser
from pipelines.config import ConfigError, load_config
from pipelines.data import DataError


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def cmd_shard(args) -> int:
    from pipelines.shard import write_shards

    result = write_shards(
        args.source,
        args.out,
        rows_per_shard=args.rows_per_shard,
        strict=args.strict,
        limit=args.limit,
        mode=args.mode,
        size=args.size,
        keep_labels=args.keep_labels,
        max_size=args.max_size,
        parallel=False if args.serial else None,
        label_set=args.label_set,
    )
    m = result.manifest
    splits = ", ".join(
        f"{s}: {v['rows']} rows ({v['labeled']} labeled) in {len(v['shards'])} shards" for s, v in m["splits"].items()
    )
    if m["image_size"]:
        sizes = f"{m['image_size'][0]}x{m['image_size'][1]}"
    else:
        h, w = m["sizes"]["height"], m["sizes"]["width"]
        sizes = f"own sizes, {h['min']}-{h['max']} px high, {w['min']}-{w['max']} px wide,"
    print(f"wrote {args.out} ({splits}; {sizes} {m['mode']}, {len(m['classes'])} classes)")
    if m.get("split_by") == "folders":
        print("splits: the source's own train/ and val/ (or test/) folders, not a hash of each path")
    if result.reused:
        print(f"kept {result.reused} shards an interrupted run had already written with the same rows")
    if not any(v["labeled"] for v in m["splits"].values()):
        print(
            "note: no labeled images (no class sub-folders): pretraining works on these shards; to probe the encoder, "
            "shard a labeled folder too and pass it with --set probe.shards=DIR"
        )
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
    from pipelines.results.tables import pretrain_table
    from pipelines.train import pretrain

    cfg = _load(args)
    result = pretrain(cfg)
    print(pretrain_table([(cfg.method.name, result.metrics)]))
    print(f"MLflow run {result.run_id} in {result.tracking_uri}")
    return 0


def cmd_probe(args) -> int:
    from pipelines import checkpoint
    from pipelines.build import method_from_checkpoint
    from pipelines.evaluate import has_labels, probe_shards, run_probes
    from pipelines.results.tables import format_table

    with tempfile.TemporaryDirectory() as tmp:
        state = checkpoint.load(_checkpoint_source(args, tmp))
    method, cfg = method_from_checkpoint(state, args.data)
    if not has_labels(cfg):
        raise DataError(f"{probe_shards(cfg)}: no labeled images to probe with; give --data shards with class labels")
    if args.labels_per_class:
        cfg.probe.labels_per_class = args.labels_per_class
    metrics = run_probes(method, cfg)
    print(format_table(["metric", "value"], [[k, v] for k, v in sorted(metrics.items())]))
    if state.get("run_id") and not args.no_log:
        from pipelines import tracking

        tracking.Run(state["tracking_uri"], state["run_id"]).log_metrics(metrics, step=state["epoch"] + 1)
        print(f"logged to MLflow run {state['run_id']} in {state['tracking_uri']}")
    return 0


def cmd_recipe(args) -> int:
    """Print a method's recipe and what a run will use: with ``--config``, that config's run of the method."""
    from dataclasses import fields

    from pipelines.config import load_config, resolve
    from ssl_models.recipes import MAX_WARMUP_SHARE, method_recipe
    from ssl_models.schedules import scaled_lr

    overrides = [f"method.name={args.name}", *(args.set or [])]
    if args.epochs is not None or args.config is None:
        overrides.append(f"train.epochs={args.epochs or 10}")
    cfg = resolve(load_config(args.config, overrides))
    recipe = method_recipe(cfg.method.name)
    flat = cfg.flat()
    print(f"{args.name}: {recipe.paper}")
    for f in fields(recipe):
        if f.name not in ("paper", "notes"):
            print(f"  {f.name:15} {getattr(recipe, f.name)}")
    print(f"  {'max warm-up':15} {MAX_WARMUP_SHARE:.0%} of the run")
    where = "GPUs" if cfg.train.use_gpu else "CPUs"
    print(f"resolved for {cfg.train.epochs} epochs on {where} (set any of these with --set to override):")
    for key in cfg.from_recipe:
        print(f"  {key} = {flat.get(key, cfg.method.kwargs.get(key.rsplit('.', 1)[-1]))}")
    if args.config:
        d = cfg.data
        print(f"from {args.config}:")
        rate = scaled_lr(cfg.optim.lr, d.batch_size, cfg.optim.lr_scaling)
        rule = {"linear": "linear", "sqrt": "square-root"}[cfg.optim.lr_scaling]
        print(f"  data.batch_size = {d.batch_size} (lr x {rate / cfg.optim.lr:g} by {rule} scaling: {rate:g})")
        print(f"  data.crop_size = {d.crop_size}  method.backbone = {cfg.method.backbone}")
        print(f"  train.num_workers = {cfg.train.num_workers}  train.use_gpu = {cfg.train.use_gpu}")
        print(f"  data.augment = {d.augment.model_dump()}")
    print(f"notes: {recipe.notes}")
    return 0


def cmd_demo(args) -> int:
    """Shard Fashion-MNIST once, run the demo space's method comparison, print the compare table."""
    import time

    from pipelines.results.compare import compare, headlines
    from pipelines.results.report import ui_command
    from pipelines.results.runs import collect_runs
    from pipelines.search.tune import SearchSettings, run_search
    from pipelines.shard import write_shards

    cfg = _load(args)
    shards = Path(cfg.data.shards)
    if not (shards / "manifest.json").is_file():
        print(f"sharding {cfg.data.source} into {shards} (once; later runs reuse the shards)")
        write_shards(cfg.data.source, shards)
    else:
        print(f"reusing shards in {shards}")
    name = f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    result = run_search(cfg, SearchSettings(space=args.space, search="grid", num_samples=1, name=name))
    out = Path(cfg.tracking.runs_dir) / "compare" / name
    table, plots = compare(result.tracking_uri, result.experiment, out)
    print()
    print(table)
    print()
    for plot in plots:
        print(f"plot: {plot}")
    print()
    for line in headlines(collect_runs(result.tracking_uri, result.experiment)):
        print(line)
    print()
    print(f"MLflow store: {result.tracking_uri} (experiment {result.experiment!r})")
    print(f"Open the UI:  .venv/bin/{ui_command(result.tracking_uri, result.experiment)}")
    return 0


def cmd_tune(args) -> int:
    from pipelines import names
    from pipelines.results.report import ui_command
    from pipelines.results.tables import trials_table
    from pipelines.search.tune import SearchSettings, run_search

    cfg = _load(args)
    settings = SearchSettings(
        space=args.space,
        search=args.search,
        scheduler=args.scheduler,
        num_samples=args.num_samples or (1 if args.search == "grid" else 4),
        name=args.name,
        resume=args.resume,
        metric=args.metric,
        mode=args.mode,
        pbt_interval=args.pbt_interval,
        register=args.register,
        seeds=args.seeds,
    )
    result = run_search(cfg, settings)
    print(trials_table(result.trials, ranked_by=result.selected_by))
    spent = sum(int(t["metrics"].get(names.EPOCHS, 0)) for t in result.trials)
    print(f"{len(result.trials)} trials, {spent} trial-epochs ({len(result.trials) * cfg.train.epochs} without early stopping)")
    if result.best:
        key = result.best["selected_by"]
        print(f"best trial {result.best['trial_id']}: {key} {result.best['metrics'][key]:.4f}")
    if result.registered:
        print(f"best encoder registered as {result.registered} (rayssl export/probe take it)")
    print(f"MLflow experiment {result.experiment!r} in {result.tracking_uri}")
    print(f"compare the trials: rayssl compare --experiment {result.experiment}")
    print(f"see them in the UI: {ui_command(result.tracking_uri, result.experiment)}")
    return 0


def cmd_compare(args) -> int:
    from pipelines import tracking
    from pipelines.results.compare import compare

    uri = tracking.resolve_tracking_uri(args.tracking_uri, args.runs_dir)
    tracking.check_reachable(uri)
    experiment = args.experiment
    if experiment is None:
        experiment = tracking.newest_experiment(uri)
        if experiment is None:
            print(f"error: the MLflow store {uri} has no runs yet; run `rayssl pretrain` or `rayssl demo` first", file=sys.stderr)
            return 2
        print(f"comparing experiment {experiment!r}, the one with the newest run (--experiment NAME for another)")
    table, plots = compare(uri, experiment, args.out)
    print(table)
    print()
    for plot in plots:
        print(f"plot: {plot}")
    return 0


def _checkpoint_source(args, tmp: str) -> Path:
    """``args.checkpoint`` as a local file: a path, an MLflow run id, or ``models:/NAME@ALIAS`` (downloaded to ``tmp``)."""
    from pipelines import checkpoint, tracking

    source = args.checkpoint
    if not checkpoint.is_remote_checkpoint(source):
        return Path(source)
    uri = tracking.resolve_tracking_uri(getattr(args, "tracking_uri", None), getattr(args, "runs_dir", "rayssl-runs"))
    tracking.check_reachable(uri)
    return checkpoint.local_copy(uri, source, tmp)


def cmd_export(args) -> int:
    from pipelines.export import ExportError, export

    args.checkpoint = args.source
    with tempfile.TemporaryDirectory() as tmp:
        source = _checkpoint_source(args, tmp)
        try:
            out = export(source, args.format, args.out)
        except ExportError as err:
            print(f"rayssl: error: {err}", file=sys.stderr)
            return 2
    print(f"wrote {out} and {out.name}.json (architecture, channels, image size, normalization)")
    return 0


def cmd_embed(args) -> int:
    from pipelines.cluster import ensure_ray
    from pipelines.embed import embed

    args.checkpoint = args.model
    with tempfile.TemporaryDirectory() as tmp:
        source = _checkpoint_source(args, tmp)
        ensure_ray()
        result = embed(source, args.data, args.out, limit=args.limit, batch_size=args.batch_size, actors=args.actors)
    print(f"wrote {result.rows:,} embeddings of {result.dim} floats to {result.out} (Parquet: id, label, split, embedding)")
    return 0


def cmd_preview(args) -> int:
    from pipelines.config import resolve
    from pipelines.preview import preview

    cfg = resolve(_load(args))
    print(f"wrote {preview(cfg, args.out, images=args.images)}")
    return 0


COMMANDS = {
    "shard": cmd_shard,
    "pretrain": cmd_pretrain,
    "demo": cmd_demo,
    "tune": cmd_tune,
    "recipe": cmd_recipe,
    "compare": cmd_compare,
    "export": cmd_export,
    "embed": cmd_embed,
    "preview": cmd_preview,
    "probe": cmd_probe,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.verbose:
        os.environ["RAYSSL_VERBOSE"] = "1"
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)  # SIGTERM ends runs KILLED, like Ctrl-C
    from pipelines.tracking import TrackingError
    from tune_spaces import SpaceError

    try:
        return COMMANDS[args.command](args)
    except (ConfigError, DataError, TrackingError, SpaceError, FileNotFoundError) as err:
        if os.environ.get("RAYSSL_TRACEBACK"):  # asked for: the traceback first, then the one line
            traceback.print_exc()
        return _last_line(f"rayssl: error: {err}", 2)
    except FloatingPointError as err:  # training diverged; the run is marked FAILED
        return _last_line(f"rayssl: training failed: {err}; the MLflow run is marked FAILED", 1)
    except KeyboardInterrupt:
        return _last_line("rayssl: interrupted; the MLflow run is marked KILLED", 130)


def _last_line(text: str, code: int) -> int:
    """The run's outcome as the terminal's last line: Ray's late-forwarded lines are stopped first."""
    from pipelines.cluster import stop_local_ray

    stop_local_ray()
    print(text, file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
