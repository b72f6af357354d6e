"""The names rayssl writes to MLflow: metric keys and run tags, in one place.

They are a public contract (``rayssl compare``, the MLflow UI, users' queries read them), so each
is spelled once here and every module imports it.
"""

from __future__ import annotations

PROBE_PREFIX, BASELINE_PREFIX = "probe/", "baseline/"
BEST_PREFIX = "best/"  # on a search's parent run: the best trial's final probes
# Final probes of a run, logged at its last epoch.
LINEAR_TOP1 = "probe/linear_top1"
KNN_TOP1 = "probe/knn_top1"
RANKME = "probe/rankme"  # label-free: the one probe of unlabeled runs
# Per-epoch probes: what a search and its scheduler act on.
EPOCH_KNN_TOP1 = "probe/epoch_knn_top1"
EPOCH_RANKME = "probe/epoch_rankme"
# Baselines: the same probe on raw pixels and on the untrained encoder.
PIXELS_LINEAR_TOP1 = "baseline/pixels_linear_top1"
RANDOM_INIT_LINEAR_TOP1 = "baseline/random_init_linear_top1"
BASELINES = (PIXELS_LINEAR_TOP1, RANDOM_INIT_LINEAR_TOP1)
FINETUNE_PREFIX, SUPERVISED_PREFIX = "probe/finetune_", "baseline/supervised_"


def finetune_top1(labels_per_class: int) -> str:
    """The encoder fine-tuned on ``labels_per_class`` labels a class."""
    return f"{FINETUNE_PREFIX}{labels_per_class}pc_top1"


def supervised_top1(labels_per_class: int) -> str:
    """The same network trained from scratch on those labels."""
    return f"{SUPERVISED_PREFIX}{labels_per_class}pc_top1"


EPOCHS = "epochs"  # logged with the final probes: a run that has it was probed
WALL_S = "wall_s"
IMAGES_PER_S = "train/images_per_s"
PBT_PREFIX = "pbt/"  # the values a PBT trial follows from an epoch on (params cannot change)

# Run tags.
KIND = "rayssl.kind"  # pretrain | trial | tune
KIND_PRETRAIN, KIND_TRIAL, KIND_TUNE = "pretrain", "trial", "tune"
TRIAL_ID = "rayssl.trial_id"
TUNE_NAME = "rayssl.tune_name"
PROBES = "rayssl.probes"  # set when the probes needing labels did not run, to PROBES_SKIPPED
PROBES_SKIPPED = "skipped: no labels"
FROM_RECIPE = "rayssl.from_recipe"  # the config fields the method's recipe filled
FAILURE = "rayssl.failure"
STOPPED_EARLY = "rayssl.stopped_early"
ENCODER_MODEL = "rayssl.encoder_model"
RUN_ID = "rayssl.run_id"  # on a registered model version: the run that logged it
BEST_TRIAL = "rayssl.best_trial"
BEST_RUN_ID = "rayssl.best_run_id"
BEST_PARAMS = "rayssl.best_params"
BEST_SELECTED_BY = "rayssl.best_selected_by"
BEST_MODEL = "rayssl.best_model"
WORKER_NODES_PREFIX = "rayssl.worker_nodes.from_epoch_"
PBT_CONFIG_PREFIX = "rayssl.pbt.config_from_epoch_"
# MLflow's own tags.
PARENT_RUN_ID = "mlflow.parentRunId"
RUN_NAME = "mlflow.runName"

# How tables and plots name a metric in a column or a legend.
SHORT_NAMES = {
    LINEAR_TOP1: "linear",
    KNN_TOP1: "kNN",
    RANKME: "RankMe",
    PIXELS_LINEAR_TOP1: "pixels linear",
    RANDOM_INIT_LINEAR_TOP1: "random-init linear",
}
