"""Ray Tune search: every trial one Ray Train run with its own MLflow child run.

The driver validates the space, opens a parent run, runs the trials (random, grid
or Optuna search; ASHA early stopping or PBT on the per-epoch kNN probe), probes
trials that ASHA stopped at their last checkpoint, and names the best trial on the
parent. One MLflow experiment per search, named by ``--name``.

One trial (its config, child run and Ray Train run) lives in ``pipelines.search.trial``.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import ray.data
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining
from ray.tune.search.basic_variant import BasicVariantGenerator

from pipelines import checkpoint, names, tracking
from pipelines.cluster import ensure_ray
from pipelines.config import Config, ConfigError, absolute_paths, build_config, resolve
from pipelines.evaluate import has_labels
from pipelines.results.runs import best_run
from pipelines.search.trial import SpaceLabels, run_trial, set_key, trial_config
from pipelines.train import probe_checkpoint_and_log, validate
from tune_spaces import Space, SpaceEntry, read_space

TRIAL_DRIVER = "trial_driver"  # custom resource: trial drivers take none of the CPUs the workers need


@dataclass
class SearchSettings:
    space: str  # shipped space name or YAML file
    search: str = "random"  # random | grid | optuna
    scheduler: str = "none"  # none | asha | pbt
    num_samples: int = 4  # trials (per grid point for grid search)
    name: str | None = None  # experiment name; also the Tune run folder, reused by --resume
    resume: bool = False
    metric: str | None = None  # what the search and ASHA act on, every epoch; None: kNN with labels, else RankMe
    mode: str = "max"
    pbt_interval: int = 1  # epochs between PBT exploit/explore decisions
    seed: int | None = None  # fixes the sampled configs (random and Optuna search)
    register: str | None = None  # Model Registry name for the best trial's encoder (alias "best"); None: the experiment
    seeds: int = 1  # runs of every configuration, with train.seed, train.seed + 1, ...


@dataclass
class SearchResult:
    parent_run_id: str
    tracking_uri: str
    experiment: str
    trials: list[dict[str, Any]]  # one per trial: trial_id, run_id, params, status, metrics
    best: dict[str, Any] | None  # the best trial, with "selected_by": the final metric that chose it
    selected_by: str = names.LINEAR_TOP1  # probe/rankme when the probe set has no labels
    registered: str | None = None  # models:/NAME@best, the best trial's encoder in the Model Registry


KNN_METRIC, RANKME_METRIC = names.EPOCH_KNN_TOP1, names.EPOCH_RANKME


def resolve_metric(cfg: Config, metric: str | None, labeled: bool) -> str:
    """The per-epoch metric a search acts on: kNN when there are labels, else RankMe (label-free)."""
    if metric is None:
        metric = KNN_METRIC if labeled and cfg.probe.epoch_knn_images else RANKME_METRIC
        if not labeled:
            print(f"note: no labeled images to probe with; the search acts on {RANKME_METRIC} (RankMe, label-free)")
    if metric == KNN_METRIC and not labeled:
        raise ConfigError(f"--metric {KNN_METRIC} needs labeled images; use --metric {RANKME_METRIC} or set probe.shards")
    if metric == KNN_METRIC and not cfg.probe.epoch_knn_images:
        raise ConfigError(f"--metric {KNN_METRIC}: probe.epoch_knn_images is 0; set it above 0 or use {RANKME_METRIC}")
    if metric == RANKME_METRIC and not cfg.probe.rankme_images:
        raise ConfigError(f"--metric {RANKME_METRIC}: probe.rankme_images is 0; set it above 0")
    return metric


def known_keys(cfg: Config) -> set[str]:
    return set(cfg.flat())


def check_space_values(cfg: Config, space: Space) -> None:
    """Every listed value (and both ends of every range) must make a valid config (e.g. a known method name)."""
    base = cfg.model_dump(mode="json")
    for key, entry in space.items():
        for value in entry.values:
            try:
                build_config(set_key(copy.deepcopy(base), key, value))
            except ConfigError as err:
                raise ConfigError(f"space value {key}={value!r}: {err}") from None


def _search_alg(settings: SearchSettings, max_concurrent: int):
    if settings.search == "optuna":
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        searcher = OptunaSearch(metric=settings.metric, mode=settings.mode, seed=settings.seed)
        return ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)
    # random and grid: Tune's basic variant generator, seeded so two searches can share their configs.
    # It takes the concurrency limit itself (Tune ignores max_concurrent_trials for it). With --seeds,
    # train.seed is a grid, and constant_grid_search keeps each random draw the same across its seeds.
    return BasicVariantGenerator(
        random_state=settings.seed, max_concurrent=max_concurrent, constant_grid_search=settings.seeds > 1
    )


def with_seeds(tune_space: dict[str, Any], space: Space, cfg: Config, settings: SearchSettings) -> dict:
    """The space with ``train.seed`` as a grid of ``settings.seeds`` seeds, so every configuration runs once per seed."""
    if settings.seeds == 1:
        return tune_space
    if "train.seed" in space:
        raise ConfigError(f"--seeds {settings.seeds}: the space varies train.seed itself; drop one of them")
    if settings.search == "optuna":
        raise ConfigError("--seeds with --search optuna: Optuna proposes each trial anew; use --search random or grid")
    return {**tune_space, "train.seed": tune.grid_search([cfg.train.seed + i for i in range(settings.seeds)])}


def _scheduler(settings: SearchSettings, cfg: Config, space: Space):
    if settings.scheduler == "asha":
        return ASHAScheduler(time_attr="training_iteration", max_t=cfg.train.epochs, grace_period=1, reduction_factor=2)
    if settings.scheduler == "pbt":
        # Synchronous PBT decides once every trial reached the interval, so the outcome
        # does not depend on which trial happens to report first on a busy machine.
        return PopulationBasedTraining(
            time_attr="training_iteration",
            perturbation_interval=1,
            hyperparam_mutations=pbt_mutations(space),
            synch=True,
        )
    if settings.scheduler == "none":
        return FIFOScheduler()
    raise ConfigError(f"--scheduler {settings.scheduler!r}: known schedulers are none, asha, pbt")


def pbt_mutations(space: Space) -> dict[str, Any]:
    """What PBT may perturb: continuous ranges as distributions, listed values as lists."""
    out: dict[str, Any] = {}
    for key, entry in space.items():
        if entry.listed:
            numbers = [v for v in entry.args if isinstance(v, int | float) and not isinstance(v, bool)]
            if len(numbers) == len(entry.args) and len(set(numbers)) > 1:
                # Listed floats span a range PBT may move through; listed ints stay a list.
                floats = any(isinstance(v, float) for v in numbers)
                out[key] = tune.uniform(min(numbers), max(numbers)) if floats else sorted(set(numbers))
        elif entry.distribution in ("uniform", "loguniform"):
            out[key] = entry.to_tune("random")
    if not out:
        raise ConfigError("--scheduler pbt: the space has no numeric key PBT can perturb (e.g. optim.lr, data.augment.*)")
    return out


def trial_driver_resources() -> dict[str, float]:
    """What a trial's driver process holds: the custom ``trial_driver`` token that rayssl's own
    ``ray.init`` (and cluster.yaml) declare, else a sliver of CPU on clusters without it.
    Either way the driver takes nothing the trial's Train workers need."""
    return {TRIAL_DRIVER: 1} if ray.cluster_resources().get(TRIAL_DRIVER) else {"CPU": 0.01}


def max_concurrent_trials(cfg: Config) -> int:
    """Trials that fit at once. One logical CPU stays free for Ray Data's read and view tasks.

    Ray's logical CPUs are scheduling tokens, not cores: on a 2-core machine a trial of
    2 workers at 0.5 CPU each runs alone, one of 1 worker at 0.5 CPU runs beside another.
    """
    cpus = ray.cluster_resources().get("CPU", 1)
    per_trial = cfg.train.num_workers * cfg.train.cpus_per_worker
    return max(1, int((cpus - 1) // per_trial))


def bundle_labels(entry: SpaceEntry) -> list[str]:
    """What Tune's table calls each value of a bundle: its method (``simclr``; ``simclr-1``, ``simclr-2`` when
    bundles share one), else ``KEY-1``, ``KEY-2``, ..."""
    methods = [v.get("method.name") for v in entry.args]
    if None in methods:
        return [f"{entry.key}-{i + 1}" for i in range(len(entry.args))]
    if len(set(methods)) == len(methods):
        return [str(m) for m in methods]
    return [f"{m}-{i + 1}" for i, m in enumerate(methods)]


def _bundle_value(key: str, by_label: dict[str, dict], inner: str, config: dict) -> Any:
    return by_label[config[key]].get(inner)


def _shown_values(key: str, by_label: dict[str, dict], taken: set[str]) -> dict[str, Any]:
    """Param-space entries that only show a bundle's values: each config key whose value differs between
    the bundles that set it, under its short name, resolved from the trial's bundle."""
    shown: dict[str, Any] = {}
    for inner in dict.fromkeys(k for v in by_label.values() for k in v):
        if inner == "method.name" or len({json.dumps(v[inner]) for v in by_label.values() if inner in v}) < 2:
            continue  # the method is in the label; a value all bundles share says nothing
        name = inner.rsplit(".", 1)[-1]
        shown[inner if name in taken or name in shown else name] = tune.sample_from(
            functools.partial(_bundle_value, key, by_label, inner)
        )
    return shown


def tune_param_space(space: Space, search: str) -> tuple[dict[str, Any], SpaceLabels]:
    """The ``ray.tune`` param space of a rayssl space, and how its trials' params map back to config keys.

    Tune's progress table shows each searched value cut to 20 characters: a bundle's mapping read
    ``...ent.flip_p': 0.0}`` in every row. So a bundle goes to Tune as a choice of labels (its method),
    and the values that differ between bundles are entries of their own, which Tune prints with each
    trial's config and the best trial (Tune 2.60 leaves ``sample_from`` entries out of the table's
    columns). Optuna takes no ``sample_from``: it gets the labels only.
    """
    tune_space: dict[str, Any] = {}
    bundles: dict[str, dict[str, dict]] = {}
    shown: dict[str, Any] = {}
    for key, entry in space.items():
        if not entry.bundle:
            tune_space[key] = entry.to_tune(search)
            continue
        labels = bundle_labels(entry)
        bundles[key] = dict(zip(labels, entry.args, strict=True))
        tune_space[key] = dataclasses.replace(entry, args=labels).to_tune(search)
        if search != "optuna":
            shown |= _shown_values(key, bundles[key], set(space) | set(shown))
    return {**tune_space, **shown}, SpaceLabels(bundles, tuple(shown))


def _finish_unfinished_trials(cfg: Config, search: _Search, results) -> None:
    """Trials stopped by ASHA never reached their probes: probe their last checkpoint and close their run."""
    for result in results:
        trial_id = (result.metrics or {}).get("trial_id")
        runs = tracking.find_runs(search.uri, search.name, {names.TRIAL_ID: trial_id}) if trial_id else []
        if not runs or names.EPOCHS in runs[0].data.metrics:  # "epochs" is logged with the final probes
            continue
        run = tracking.Run(search.uri, runs[0].info.run_id)
        if result.error is not None:
            run.end("FAILED")
            continue
        reported = (result.metrics or {}).get("checkpoint_path")
        if reported:
            last = checkpoint.under_storage(reported, cfg.storage())
        else:
            last = checkpoint.uri_of(result.checkpoint) if result.checkpoint else None
        if not last:
            run.end("KILLED")  # stopped before its first epoch ended: nothing to probe
            continue
        trial_cfg = trial_config(cfg.model_dump(mode="json"), search.labels.params(result.config))
        run.reopen()
        with run.status():
            metrics = probe_checkpoint_and_log(trial_cfg, search.manifest, run, last)
            # ASHA also stops trials that reached max_t, right after their last report: not early.
            if metrics[names.EPOCHS] < trial_cfg.train.epochs:
                run.set_tag(names.STOPPED_EARLY, "true")


@dataclass
class _Search:
    """A search checked before Ray starts: the settings with the metric resolved, the space, the data and the store."""

    settings: SearchSettings
    space: Space
    tune_space: dict[str, Any]
    labels: SpaceLabels
    manifest: dict
    labeled: bool
    scheduler: Any
    uri: str
    name: str  # also the MLflow experiment: `rayssl compare --experiment NAME` reads it


def _check_search(cfg: Config, settings: SearchSettings) -> _Search:
    """Everything that can fail on the user's input, before Ray starts."""
    space = read_space(settings.space, known_keys(cfg))
    if settings.search == "optuna" and any(entry.distribution == "grid" for entry in space.values()):
        raise ConfigError(f"--search optuna: space {settings.space!r} has grid keys; use choice for Optuna")
    tune_space, labels = tune_param_space(space, settings.search)
    tune_space = with_seeds(tune_space, space, cfg, settings)
    check_space_values(cfg, space)
    manifest = validate(resolve(cfg))  # the base as its own method trains; trials resolve their own
    labeled = has_labels(cfg)
    settings = dataclasses.replace(settings, metric=resolve_metric(cfg, settings.metric, labeled))
    scheduler = _scheduler(settings, cfg, space)
    uri = tracking.resolve_tracking_uri(cfg.tracking.tracking_uri, cfg.tracking.runs_dir)
    tracking.check_reachable(uri)
    name = settings.name or f"tune-{Path(settings.space).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    return _Search(settings, space, tune_space, labels, manifest, labeled, scheduler, uri, name)


def _open_parent_run(search: _Search) -> tracking.Run:
    """The search's parent run: the interrupted one again with ``--resume``, else a new one."""
    settings, tags = search.settings, {names.TUNE_NAME: search.name}
    previous = None
    if settings.resume:
        previous = tracking.find_run(search.uri, search.name, {names.KIND: names.KIND_TUNE, **tags})
    params = {
        "space": settings.space,
        "space.definition": json.dumps({k: e.as_yaml() for k, e in search.space.items()}),
        "search": settings.search,
        "scheduler": settings.scheduler,
        "num_samples": settings.num_samples,
        "seeds": settings.seeds,
        "metric": settings.metric,
    }
    return tracking.open_run(search.uri, search.name, search.name, params, names.KIND_TUNE, tags=tags, reopen=previous)


def _tuner(cfg: Config, search: _Search, parent: tracking.Run) -> tune.Tuner:
    """Tune's run of the trials: restored with ``--resume`` when Tune kept its state, else a new one."""
    settings, name = search.settings, search.name
    trainable = tune.with_resources(
        functools.partial(
            run_trial,
            base=cfg.model_dump(mode="json"),
            manifest=search.manifest,
            uri=search.uri,
            parent_run_id=parent.run_id,
            experiment=name,
            storage=cfg.storage("ray", name),
            pbt_interval=settings.pbt_interval if settings.scheduler == "pbt" else None,
            labels=search.labels,
        ),
        trial_driver_resources(),
    )
    # every trial is recorded in MLflow: no TensorBoard, CSV and JSON copies of it in Tune's folder (and no
    # TensorBoard hint in the terminal); Tune's own experiment state, which --resume restores, stays
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    tune_dir = cfg.storage("tune", name)
    if settings.resume and tune.Tuner.can_restore(tune_dir):
        return tune.Tuner.restore(tune_dir, trainable, resume_errored=True)
    return tune.Tuner(
        trainable,
        param_space=search.tune_space,
        tune_config=tune.TuneConfig(
            metric=settings.metric,
            mode=settings.mode,
            search_alg=_search_alg(settings, max_concurrent_trials(cfg)),
            scheduler=search.scheduler,
            num_samples=settings.num_samples,
        ),
        run_config=tune.RunConfig(name=name, storage_path=cfg.storage("tune")),
    )


def run_search(cfg: Config, settings: SearchSettings) -> SearchResult:
    """Validate everything, then run the search; returns the trials and the best one."""
    cfg = absolute_paths(cfg)  # the trials' base: paths absolute (trials run in their own folders), no recipe yet
    search = _check_search(cfg, settings)
    ensure_ray(resources={TRIAL_DRIVER: 100})
    ray.data.DataContext.get_current().enable_progress_bars = False
    parent = _open_parent_run(search)
    # The final linear probe picks the best trial; without labels, the final RankMe does.
    selected_by = names.LINEAR_TOP1 if search.labeled else names.RANKME
    with parent.status():
        results = _tuner(cfg, search, parent).fit()
        _finish_unfinished_trials(cfg, search, results)
        trials = summarize_trials(search.uri, search.name, parent.run_id)
        best, registered = record_best(parent, trials, selected_by, search.settings.register or search.name)
    return SearchResult(parent.run_id, search.uri, search.name, trials, best, selected_by, registered)


BEST_FINALS = (names.LINEAR_TOP1, names.KNN_TOP1, names.RANKME)


def record_best(
    parent: tracking.Run, trials: list[dict[str, Any]], selected_by: str, register_as: str
) -> tuple[dict[str, Any] | None, str | None]:
    """Name the best trial on the parent run (tags, ``best/*`` metrics) and register its encoder.

    Returns the best trial (with ``selected_by``) and its registered model URI; (None, None) when no
    trial has ``selected_by``."""
    best = best_run(trials, selected_by, metrics=lambda t: t["metrics"])
    if best is None:
        return None, None
    best["selected_by"] = selected_by
    parent.set_tags(
        {
            names.BEST_TRIAL: best["trial_id"],
            names.BEST_RUN_ID: best["run_id"],
            names.BEST_PARAMS: json.dumps(best["params"]),
            names.BEST_SELECTED_BY: selected_by,
        }
    )
    finals = {k.replace(names.PROBE_PREFIX, names.BEST_PREFIX): best["metrics"][k] for k in BEST_FINALS if k in best["metrics"]}
    parent.log_metrics(finals)
    registered = tracking.Run(parent.uri, best["run_id"]).register_encoder(register_as)
    if registered:
        parent.set_tag(names.BEST_MODEL, registered)
    return best, registered


def searched_keys(definition: dict[str, dict[str, list]]) -> list[str]:
    """The config keys a space varies: its keys, with each bundle's label replaced by the keys it sets."""
    keys: list[str] = []
    for key, spec in definition.items():
        (values,) = spec.values()
        inner = [k for v in values if isinstance(v, dict) for k in v]
        keys += [k for k in dict.fromkeys(inner or [key]) if k not in keys]
    return keys


def summarize_trials(uri: str, experiment: str, parent_run_id: str) -> list[dict[str, Any]]:
    """The parent's child runs: trial id, run id, method, searched params (as the trial used them), status, metrics."""
    parent = tracking.Run(uri, parent_run_id).get()
    searched = searched_keys(json.loads(parent.data.params.get("space.definition", "{}")))
    if int(parent.data.params.get("seeds", "1")) > 1:  # --seeds: which seed each trial ran with
        searched.append("train.seed")
    out = []
    for run in tracking.find_runs(uri, experiment, {names.PARENT_RUN_ID: parent_run_id}):
        out.append(
            {
                "trial_id": run.data.tags.get(names.TRIAL_ID),
                "run_id": run.info.run_id,
                "method": run.data.params.get("method.name"),
                "params": {k: run.data.params.get(k) for k in searched},
                "status": run.info.status,
                "stopped_early": run.data.tags.get(names.STOPPED_EARLY) == "true",
                "metrics": dict(run.data.metrics),
            }
        )
    return out
