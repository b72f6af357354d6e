"""One Tune trial: its config, its MLflow child run, and its Ray Train run (or PBT's segments of one).

Trials are Tune function trainables that start a Ray Train ``TorchTrainer`` (the Ray 2.60 /
Train V2 way): without PBT one Train run per trial reports every epoch to Tune through
``TuneReportCallback``; with PBT a trial runs in segments of ``pbt_interval`` epochs, each a
Train run continuing the previous checkpoint, and reports each segment's checkpoint to Tune so
PBT can clone and perturb it.
"""

from __future__ import annotations

import copy
import json
import uuid
from typing import Any

from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from pipelines import checkpoint as saved_checkpoint
from pipelines import tracking
from pipelines.config import Config, resolve
from pipelines.evaluate import PROBES_SKIPPED, has_labels
from pipelines.train import fit, fit_and_probe, log_config, probe_checkpoint_and_log


def set_key(tree: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """Set one dotted key; a bundle's label (not a key of ``tree``) with a mapping sets each of its keys."""
    if isinstance(value, dict) and not _has_key(tree, dotted):
        for key, inner in value.items():
            set_key(tree, key, inner)
        return tree
    node = tree
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = list(value) if isinstance(value, tuple) else value
    return tree


def _has_key(tree: dict[str, Any], dotted: str) -> bool:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def trial_config(base: dict[str, Any], params: dict[str, Any]) -> tuple[Config, list[str]]:
    """A trial's config: the base (unresolved), the trial's params, then its method's recipe for what is unset.

    Returns the config and the fields the recipe filled. Resolving per trial matters when the
    trials vary ``method.name``: each method gets its own recipe.
    """
    tree = copy.deepcopy(base)
    for key, value in params.items():
        set_key(tree, key, value)
    cfg = resolve(Config.model_validate(tree))
    return cfg, cfg.from_recipe


def _child_run(uri: str, experiment: str, parent_run_id: str, trial_id: str, cfg: Config) -> str:
    """The trial's one MLflow child run: created once, reopened when Tune restarts the trial."""
    existing = tracking.find_runs(uri, experiment, {"rayssl.trial_id": trial_id})
    if existing:
        run_id = existing[0].info.run_id
        tracking.reopen_run(uri, run_id)
        return run_id
    tags = {"mlflow.parentRunId": parent_run_id, "rayssl.kind": "trial", "rayssl.trial_id": trial_id}
    if not has_labels(cfg):
        tags["rayssl.probes"] = PROBES_SKIPPED
    run_id = tracking.start_run(uri, experiment, f"trial-{trial_id}", cfg.flat(), tags=tags)
    log_config(cfg, uri, run_id)
    return run_id


def run_trial(
    params: dict[str, Any],
    *,
    base: dict,
    manifest: dict,
    uri: str,
    parent_run_id: str,
    experiment: str,
    storage: str,
    pbt_interval: int | None = None,
):
    """One Tune trial, recorded as an MLflow child run; ``pbt_interval`` set means PBT segments."""
    trial_id = tune.get_context().get_trial_id()
    cfg, from_recipe = trial_config(base, params)
    run_id = _child_run(uri, experiment, parent_run_id, trial_id, cfg)
    tracking.set_tag(uri, run_id, "rayssl.from_recipe", ",".join(from_recipe) or "none")
    with tracking.run_status(uri, run_id):
        if pbt_interval is None:
            # The same Ray Train run name on a resumed trial lets Train continue its last checkpoint.
            fit_and_probe(cfg, manifest, uri, run_id, trial_id, storage, callbacks=[TuneReportCallback()])
        else:
            _run_pbt_segments(cfg, params, manifest, uri, run_id, trial_id, storage, pbt_interval)


def _run_pbt_segments(cfg, params, manifest, uri, run_id, trial_id, storage: str, interval: int) -> None:
    """Train ``interval`` epochs at a time from the checkpoint Tune hands back (PBT may have cloned it)."""
    start_epoch, init = 0, None
    handed = tune.get_checkpoint()
    if handed is not None:
        init = saved_checkpoint.uri_of(handed)
        with handed.as_directory() as folder:
            start_epoch = saved_checkpoint.completed_epochs(folder)
    # MLflow params cannot change: the values this trial follows from here on are metrics at this epoch.
    followed = {f"pbt/{k}": float(v) for k, v in params.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    tracking.log_metrics(uri, run_id, followed, step=start_epoch + 1)
    tracking.set_tag(uri, run_id, f"rayssl.pbt.config_from_epoch_{start_epoch + 1}", json.dumps(params))
    while start_epoch < cfg.train.epochs:
        stop = min(start_epoch + interval, cfg.train.epochs)
        name = f"{trial_id}-e{start_epoch + 1}-{uuid.uuid4().hex[:6]}"  # fresh name: never auto-resume another segment
        result = fit(cfg, manifest, uri, run_id, name, storage, init_checkpoint=init, stop_epoch=stop)
        init, start_epoch = saved_checkpoint.uri_of(result.checkpoint), stop
        tune.report(dict(result.metrics), checkpoint=tune.Checkpoint(init))
    probe_checkpoint_and_log(cfg, manifest, uri, run_id, init)
