"""Typed experiment config: pydantic v2 models loaded from YAML with ``--set a.b=c`` overrides.

Every field is checked before Ray starts; a bad one raises ``ConfigError`` with
one line naming the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A config the user can fix: the message names the field and the problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class AugmentConfig(_Strict):
    crop_scale: tuple[float, float] = (0.2, 1.0)  # RandomResizedCrop area range; SimCLR's default
    flip_p: float = Field(0.5, ge=0, le=1)  # horizontal flip probability
    jitter_strength: float = Field(0.4, ge=0, le=1)  # brightness/contrast/saturation jitter strength
    jitter_p: float = Field(0.8, ge=0, le=1)  # probability of applying colour jitter
    grayscale_p: float = Field(0.2, ge=0, le=1)  # RGB only
    blur_p: float = Field(0.5, ge=0, le=1)  # Gaussian blur probability
    # blur sigma range in view pixels; None: (0.1, 1.0) up to 112 px views, then SimCLR's (0.1, 2.0) at 224 px
    # scaled with the view size (build.blur_sigma_for)
    blur_sigma: tuple[float, float] | None = None

    @field_validator("crop_scale")
    @classmethod
    def _scale_range(cls, v):
        if not 0 < v[0] <= v[1] <= 1:
            raise ValueError("needs 0 < min <= max <= 1")
        return v


class DataConfig(_Strict):
    shards: str = "rayssl-data/fashion-mnist"  # folder or URI written by `rayssl shard` (has train/ and test/)
    source: str = "fashion-mnist"  # what `rayssl demo` shards into `shards` when they are missing
    # View size in px, and the probes' centre crop of photos. None: the shards' image size (shards written with
    # --size, Fashion-MNIST), or 224 for photos that keep their own sizes (pipelines/build.py: view_size).
    crop_size: int | None = Field(None, ge=4)
    batch_size: int = Field(256, ge=1)  # global batch, split across workers
    max_train_images: int | None = Field(None, ge=1)  # pretrain on a subset (tests, quick runs)
    # Rows each worker mixes before cutting a batch, anew every epoch (0 = off): with shards read in a new
    # file order each epoch, batches differ from epoch to epoch. Holds this many rows of views in the
    # worker's memory (2 views of 224 px RGB: ~0.3 MB a row). Cost measured in benchmarks/end_to_end.py.
    shuffle_buffer: int = Field(1024, ge=0)
    augment_on: Literal["cpu", "device"] = "cpu"  # where views are made: Ray Data CPU tasks or the training device
    augment: AugmentConfig = AugmentConfig()


class MethodConfig(_Strict):
    name: str = "simclr"  # a name from ssl_models.list_methods()
    # None: the method's own (small_cnn; vit_tiny for the masked-image methods), set by resolve(). resnet18/50 on GPUs.
    backbone: str | None = None
    # Shared head/temperature settings; None keeps each method's paper default.
    temperature: float | None = Field(None, gt=0)  # contrastive temperature (simclr 0.5, moco 0.2, triplet: none)
    projection_dim: int | None = Field(None, ge=1)  # output size of the projection head
    hidden_dim: int | None = Field(None, ge=1)  # hidden size of the projection head
    kwargs: dict[str, Any] = {}  # further method-specific arguments passed to create_method
    # Start the encoder from these weights (heads start fresh): a rayssl checkpoint, an MLflow run id,
    # models:/NAME@ALIAS, or a state dict of the same backbone (.pt/.pth/.safetensors, e.g. torchvision's).
    init_from: str | None = None

    @field_validator("name")
    @classmethod
    def _known_name(cls, v):
        import ssl_models

        ssl_models.method_class(v)  # raises with the known names; here the error names method.name
        return v


class OptimConfig(_Strict):
    # None (the default) takes the method's recipe (`rayssl recipe NAME`, ssl_models/recipes.py); a value set wins.
    name: Literal["sgd", "lars", "adamw"] | None = None
    lr: float | None = Field(None, gt=0)  # base lr for a batch of 256; scaled with the batch by lr_scaling
    # linear: lr x batch / 256 (the papers' rule); sqrt: lr x sqrt(batch / 256) (SimCLR's, for small batches)
    lr_scaling: Literal["linear", "sqrt"] | None = None
    weight_decay: float | None = Field(None, ge=0)  # never on biases and norms
    momentum: float | None = Field(None, ge=0, lt=1)  # SGD/LARS momentum, AdamW beta1
    beta2: float | None = Field(None, gt=0, lt=1)  # AdamW only
    bias_lr_scale: float | None = Field(None, gt=0)  # LARS only: lr factor for biases and norms
    # Linear warm-up, then the schedule; capped at MAX_WARMUP_SHARE of the run (ssl_models/recipes.py).
    warmup_epochs: float | None = Field(None, ge=0)
    schedule: Literal["cosine", "step", "constant"] = "cosine"  # cosine to 0; step: /10 at 60% and 80%; constant


class TrainConfig(_Strict):
    epochs: int = Field(10, ge=1)
    num_workers: int = Field(2, ge=1)  # Ray Train workers (processes), one DDP rank each
    cpus_per_worker: float = Field(0.5, gt=0)  # logical CPUs per worker; <1 leaves room for Ray Data tasks
    use_gpu: bool = False  # NCCL + bf16 autocast when true
    channels_last: bool = False  # NHWC layout for model and images: faster convolutions on recent GPUs
    compile: bool = False  # torch.compile the model: slower first steps, faster after (GPUs; needs a C compiler)
    placement_strategy: Literal["PACK", "SPREAD"] = "PACK"  # SPREAD puts workers on different nodes when it can
    # Batch-norm statistics over all workers' batches (SyncBatchNorm; CPUs too). None: the method's recipe on GPUs
    # (on for SimCLR, BYOL, SimSiam, Barlow Twins, VICReg, VIbCReg, as their papers train), off on CPUs (30% slower).
    sync_batchnorm: bool | None = None
    seed: int = 0
    max_failures: int = Field(1, ge=0)  # worker-group restarts from the last checkpoint
    timeout_s: float | None = Field(None, gt=0)  # abort the run if fit() takes longer
    # An hour-long epoch needs points in between: rank 0's mean loss since the last point and the lr, every this
    # many optimizer steps, as `train/loss_step` and `train/lr_step` at MLflow step = optimizer steps done (the
    # per-epoch `train/loss` is at step = epoch). None: about 20 points per epoch (steps per epoch // 20); 0 = off.
    log_every_steps: int | None = Field(None, ge=0)
    progress_every_s: float = Field(60, ge=0)  # rank 0 prints progress and ETAs at most this often in an epoch; 0 = off


class FaultConfig(_Strict):
    """Deliberate failures for tests and fire drills (all off by default). Steps count from 0 over the run."""

    exit_at_step: int | None = Field(None, ge=0)  # worker `exit_rank` dies (os._exit) at this step, once per run
    exit_rank: int = Field(0, ge=0)
    nan_at_step: int | None = Field(None, ge=0)  # the loss turns NaN at this step on every worker


class ProbeConfig(_Strict):
    # Labeled shards for every probe that needs labels (any folder or URI from `rayssl shard`, with its own
    # train/test splits); None = the pretraining shards' labeled rows. Pretraining itself never needs labels.
    shards: str | None = None
    knn_k: int = Field(200, ge=1)  # weighted kNN neighbours (InstDisc / solo-learn default)
    knn_temperature: float = Field(0.07, gt=0)
    linear_epochs: int = Field(30, ge=1)
    linear_lr: float = Field(1e-3, gt=0)
    max_train_images: int | None = Field(None, ge=10)  # labeled images used to fit probes (None = all)
    max_test_images: int | None = Field(None, ge=10)
    baselines: bool = True  # also probe raw pixels and a random-init encoder
    # Decoded probe sets and baselines computed once per search, in <runs_dir>/cache (pipelines/shared_work.py).
    share_baselines: bool = True
    labels_per_class: list[int] = []  # few-label fine-tuning vs training from scratch, e.g. [10, 100]
    finetune_steps: int = Field(300, ge=1)  # steps of each few-label fine-tune (more for larger label sets)
    epoch_knn_images: int = Field(2000, ge=0)  # labeled images for the cheap per-epoch kNN (0 = off); Tune acts on it
    # Every subset above is a seeded sample across the whole split, stratified by class (pipelines/sampling.py).
    # Pretraining images (labels not needed) for RankMe, the label-free effective rank, every epoch (0 = off).
    # RankMe wants clearly more images than feature dimensions (small_cnn: 256, resnet50: 2048).
    rankme_images: int = Field(2000, ge=0)

    @field_validator("labels_per_class")
    @classmethod
    def _positive(cls, v):
        if any(n < 1 for n in v):
            raise ValueError("every labels-per-class count must be at least 1")
        return sorted(set(v))


class TrackingConfig(_Strict):
    runs_dir: str = "rayssl-runs"  # checkpoints, Ray storage and the default SQLite MLflow store
    tracking_uri: str | None = None  # None: MLFLOW_TRACKING_URI, else sqlite:///<runs_dir>/mlflow.db
    experiment: str = "rayssl"
    run_name: str | None = None  # defaults to <method>-<timestamp>; rerunning a name that did not finish resumes it
    storage_path: str | None = None  # Ray checkpoints and Tune state: a folder or s3://...; None = runs_dir
    # The encoder as an MLflow Model of each finished run (`encoder`: pytorch flavour, a torch.export program).
    log_model: bool = True


class Config(_Strict):
    data: DataConfig = DataConfig()
    method: MethodConfig = MethodConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    probe: ProbeConfig = ProbeConfig()
    tracking: TrackingConfig = TrackingConfig()
    faults: FaultConfig = FaultConfig()
    # Set by resolve(), never by a user (build_config refuses it): the fields the method's recipe filled, and the
    # mark of a resolved config (None: not resolved). Kept out of model_dump, so out of the MLflow params, the
    # config.yaml artifact and checkpoints; the run's rayssl.from_recipe tag records it.
    from_recipe: list[str] | None = Field(None, exclude=True)

    @model_validator(mode="after")
    def _batch_fits_the_method(self):
        import ssl_models

        cls = ssl_models.method_class(self.method.name)
        per_worker = self.data.batch_size // self.train.num_workers
        if per_worker < cls.min_batch_per_worker:
            raise ValueError(
                f"data.batch_size={self.data.batch_size} gives {per_worker} images per worker for "
                f"{self.train.num_workers} workers; {self.method.name} needs at least {cls.min_batch_per_worker}"
            )
        return self

    def storage(self, *parts: str) -> str:
        """The folder or URI under ``tracking.storage_path`` (default ``runs_dir``) for Ray's state."""
        root = self.tracking.storage_path or self.tracking.runs_dir  # absolute once resolve() ran
        return "/".join([root.rstrip("/"), *parts])

    def flat(self) -> dict[str, Any]:
        """The resolved config as ``{"method.name": ..., "optim.lr": ...}``."""
        return flatten(self.model_dump(mode="json"))


# Config fields a method's recipe fills when they are unset (None), and the recipe attribute for each.
RECIPE_FIELDS = {
    "optim.name": "optimizer",
    "optim.lr": "lr",
    "optim.lr_scaling": "lr_scaling",
    "optim.weight_decay": "weight_decay",
    "optim.momentum": "momentum",
    "optim.beta2": "beta2",
    "optim.bias_lr_scale": "bias_lr_scale",
}


def resolve(cfg: Config) -> Config:
    """The config a run trains with: its method's recipe applied, every local path absolute, ``from_recipe`` set.

    Called once, where a config enters: the CLI, ``trial_config`` (each trial resolves its own method's
    recipe), and ``train.pretrain`` for library callers (benchmarks, tests) that build a config themselves.
    Below those, functions take the config as it is given. A resolved config comes back unchanged, so
    resolving twice is harmless; resolve a config once it is complete (a recipe follows ``method.name``).
    """
    if cfg.from_recipe is not None:
        return cfg
    tree = absolute_paths(cfg).model_dump(mode="json")
    taken = _apply_recipe(tree, cfg)
    return Config.model_validate({**tree, "from_recipe": taken})


def absolute_paths(cfg: Config) -> Config:
    """A copy of ``cfg`` whose local paths are absolute: Ray workers and Tune trials run in other folders.

    URIs (``s3://``...) stay as they are; ``method.init_from`` only when it names a local file (not a run id
    or ``models:/``). A search's base config takes only this: each trial applies its own method's recipe.
    """
    out = cfg.model_copy(deep=True)
    d, t = out.data, out.tracking
    d.shards = absolute(d.shards)
    out.probe.shards = absolute(out.probe.shards) if out.probe.shards else None
    t.runs_dir = absolute(t.runs_dir)
    t.storage_path = absolute(t.storage_path) if t.storage_path else None
    source = out.method.init_from
    if source and "://" not in source and Path(source).expanduser().exists():
        out.method.init_from = absolute(source)
    return out


def absolute(path_or_uri: str) -> str:
    """An absolute local path, or the URI unchanged (``s3://``, ``gs://``, ...)."""
    return path_or_uri if "://" in path_or_uri else str(Path(path_or_uri).expanduser().resolve())


def _apply_recipe(tree: dict[str, Any], cfg: Config) -> list[str]:
    """Fill every unset field of the config ``tree`` from ``cfg``'s method recipe; returns the fields filled.

    Fields the user set stay. On CPUs the recipe's head sizes (``method.projection_dim``,
    ``method.hidden_dim`` and method kwargs) apply where the user set none.
    """
    from ssl_models import method_class
    from ssl_models.recipes import method_recipe

    recipe = method_recipe(cfg.method.name)
    taken = []
    if tree["method"]["backbone"] is None:
        # the method's own: a ViT method given the CNN default would fail before training
        tree["method"]["backbone"] = method_class(cfg.method.name).default_backbone
        taken.append("method.backbone")
    for key, attribute in RECIPE_FIELDS.items():
        section, name = key.split(".")
        if tree[section][name] is None:
            tree[section][name] = getattr(recipe, attribute)
            taken.append(key)
    if tree["train"]["sync_batchnorm"] is None:
        # On GPUs as the paper trains. On CPUs off: its all-reduces cost 30% of SimCLR's throughput on 2 gloo
        # workers for the same accuracy (0.795 vs 0.792 linear, 2 epochs on 20,000 images).
        tree["train"]["sync_batchnorm"] = recipe.sync_batchnorm and cfg.train.use_gpu
        taken.append("train.sync_batchnorm")
    if tree["optim"]["warmup_epochs"] is None:
        tree["optim"]["warmup_epochs"] = round(recipe.warmup_share * cfg.train.epochs, 6)
        taken.append("optim.warmup_epochs")
    if not cfg.train.use_gpu:
        for name, value in recipe.cpu_kwargs.items():
            if name in ("projection_dim", "hidden_dim"):
                if tree["method"][name] is None:
                    tree["method"][name] = value
                    taken.append(f"method.{name}")
            elif name not in tree["method"]["kwargs"]:
                tree["method"]["kwargs"][name] = value
                taken.append(f"method.kwargs.{name}")
    return taken


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value, for example optim.lr=0.1")
    key, raw = item.split("=", 1)
    try:
        return key.strip().split("."), yaml.safe_load(raw) if raw else None
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {item!r}: value is not valid YAML ({str(err).splitlines()[0]})") from None


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        path, value = _parse_override(item)
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is not a section")
        node[path[-1]] = value
    return tree


def _describe(err: ValidationError) -> str:
    first = err.errors()[0]
    field = ".".join(str(p) for p in first["loc"])  # empty for checks across sections: their message names the fields
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown field (check the spelling; see configs/ for the known fields)"
    elif first["type"] == "value_error":
        msg = msg.removeprefix("Value error, ")
    more = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{field}: {msg}{more}" if field else f"{msg}{more}"


def build_config(tree: dict[str, Any] | None = None, overrides: list[str] | None = None, source: str = "config") -> Config:
    """Validate a config tree plus ``key=value`` overrides; ``ConfigError`` names the bad field."""
    tree = apply_overrides(dict(tree or {}), overrides or [])
    if "from_recipe" in tree:
        raise ConfigError(f"{source}: from_recipe: set by rayssl (the fields a method's recipe filled), not a setting")
    try:
        return Config.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(f"{source}: {_describe(err)}") from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (``safe_load``) and apply overrides."""
    tree: dict[str, Any] = {}
    source = "config"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found; ready ones are in configs/")
        try:
            tree = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{p}: not valid YAML ({str(err).splitlines()[0]})") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{p}: expected a mapping of sections (data, method, optim, ...)")
        source = str(p)
    return build_config(tree, overrides, source)
