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
from dataclasses import dataclass, field
from typing import Any

from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from pipelines import checkpoint as saved_checkpoint
from pipelines import names, tracking
from pipelines.config import Config, resolve
from pipelines.evaluate import has_labels
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


def trial_config(base: dict[str, Any], params: dict[str, Any]) -> Config:
    """A trial's config: the base (unresolved), the trial's params, then its method's recipe for what is unset.

    Resolved (``cfg.from_recipe`` names the fields the recipe filled). Resolving per trial matters when
    the trials vary ``method.name``: each method gets its own recipe.
    """
    tree = copy.deepcopy(base)
    for key, value in params.items():
        set_key(tree, key, value)
    return resolve(Config.model_validate(tree))


@dataclass(frozen=True)
class SpaceLabels:
    """How the params Tune hands a trial map back to config keys (``tune.tune_param_space`` makes them).

    A bundle (one space key whose values each set several config keys) reaches Tune as a choice of
    labels, so that Tune's table reads ``simclr``, not a truncated mapping; ``shown`` are entries that
    only show the bundle's values in Tune's output.
    """

    bundles: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # space key -> label -> its keys
    shown: tuple[str, ...] = ()

    def params(self, tune_params: dict[str, Any]) -> dict[str, Any]:
        """The trial's searched values, each bundle as the mapping it stands for, the entries that only show values left out."""
        out = {}
        for key, value in tune_params.items():
            if key in self.shown:
                continue
            by_label = self.bundles.get(key, {})
            out[key] = by_label[value] if isinstance(value, str) and value in by_label else value
        return out


def _child_run(uri: str, experiment: str, parent_run_id: str, trial_id: str, cfg: Config) -> tracking.Run:
    """The trial's one MLflow child run: created once, reopened when Tune restarts the trial."""
    tags = {names.PARENT_RUN_ID: parent_run_id, names.TRIAL_ID: trial_id}
    run = tracking.open_run(
        uri,
        experiment,
        f"trial-{trial_id}",
        cfg.flat(),
        names.KIND_TRIAL,
        tags=tags,
        reopen=tracking.find_run(uri, experiment, {names.TRIAL_ID: trial_id}),
        labeled=has_labels(cfg),
        from_recipe=cfg.from_recipe,
    )
    if not run.reopened:
        log_config(cfg, run)
    return run


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
    labels: SpaceLabels | None = None,
):
    """One Tune trial, recorded as an MLflow child run; ``pbt_interval`` set means PBT segments."""
    trial_id = tune.get_context().get_trial_id()
    params = (labels or SpaceLabels()).params(params)
    cfg = trial_config(base, params)
    run = _child_run(uri, experiment, parent_run_id, trial_id, cfg)
    with run.status():
        if pbt_interval is None:
            # The same Ray Train run name on a resumed trial lets Train continue its last checkpoint.
            fit_and_probe(cfg, manifest, run, trial_id, storage, callbacks=[TuneReportCallback()])
        else:
            _run_pbt_segments(cfg, params, manifest, run, trial_id, storage, pbt_interval)


def _run_pbt_segments(cfg, params, manifest, run: tracking.Run, trial_id, storage: str, interval: int) -> None:
    """Train ``interval`` epochs at a time from the checkpoint Tune hands back (PBT may have cloned it)."""
    start_epoch, init = 0, None
    handed = tune.get_checkpoint()
    if handed is not None:
        init = saved_checkpoint.uri_of(handed)
        with handed.as_directory() as folder:
            start_epoch = saved_checkpoint.completed_epochs(folder)
    # MLflow params cannot change: the values this trial follows from here on are metrics at this epoch.
    followed = {
        f"{names.PBT_PREFIX}{k}": float(v) for k, v in params.items() if isinstance(v, int | float) and not isinstance(v, bool)
    }
    run.log_metrics(followed, step=start_epoch + 1)
    run.set_tag(f"{names.PBT_CONFIG_PREFIX}{start_epoch + 1}", json.dumps(params))
    while start_epoch < cfg.train.epochs:
        stop = min(start_epoch + interval, cfg.train.epochs)
        name = f"{trial_id}-e{start_epoch + 1}-{uuid.uuid4().hex[:6]}"  # fresh name: never auto-resume another segment
        result = fit(cfg, manifest, run, name, storage, init_checkpoint=init, stop_epoch=stop)
        init, start_epoch = saved_checkpoint.uri_of(result.checkpoint), stop
        tune.report(dict(result.metrics), checkpoint=tune.Checkpoint(init))
    probe_checkpoint_and_log(cfg, manifest, run, init)
