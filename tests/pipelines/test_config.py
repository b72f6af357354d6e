from pathlib import Path

import pytest

from pipelines.config import ConfigError, build_config, load_config


def test_overrides_are_typed_and_flattened():
    cfg = build_config({}, ["optim.lr=0.1", "train.epochs=3", "data.augment.crop_scale=[0.3, 1.0]"])
    assert cfg.optim.lr == 0.1 and cfg.train.epochs == 3 and cfg.data.augment.crop_scale == (0.3, 1.0)
    flat = cfg.flat()
    assert flat["method.name"] == "simclr" and flat["optim.lr"] == 0.1


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optim.lrr=0.1"], r"optim\.lrr: unknown field"),
        (["method.temperature=0"], r"method\.temperature: Input should be greater than 0"),
        (["method.name=nope"], r"unknown method 'nope'; known methods: .*simclr"),
        (["data.batch_size=3", "train.num_workers=2"], r"gives 1 images per worker"),
        (["train.epochs=zero"], r"train\.epochs: "),
        (["optim"], r"expected key=value"),
    ],
)
def test_bad_values_name_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_config({}, overrides)


def test_shipped_configs_load_and_missing_file_is_one_line(tmp_path):
    assert load_config("configs/simclr_fmnist.yaml").method.name == "simclr"
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [1, 2")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_unset_fields_take_the_methods_recipe_and_set_ones_win():
    from pipelines.config import resolve

    cfg = resolve(build_config({}, ["method.name=barlow_twins", "train.epochs=10"]))
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.bias_lr_scale) == ("lars", 0.2, 1.5e-6, 0.024)
    assert cfg.optim.warmup_epochs == 1.0  # 10% of 10 epochs
    assert cfg.optim.lr_scaling == "linear" and "optim.lr_scaling" in cfg.from_recipe
    nnclr = resolve(build_config({}, ["method.name=nnclr"]))
    assert (nnclr.optim.lr, nnclr.optim.lr_scaling) == (1.2, "sqrt")
    assert resolve(build_config({}, ["method.name=nnclr", "optim.lr_scaling=linear"])).optim.lr_scaling == "linear"
    assert (cfg.method.projection_dim, cfg.method.hidden_dim) == (1024, 1024)  # CPU head sizes
    assert {"optim.name", "optim.lr", "method.projection_dim"} <= set(cfg.from_recipe)
    # what the user sets wins and is not reported as the recipe's
    mine = resolve(build_config({}, ["method.name=barlow_twins", "optim.lr=0.1", "method.projection_dim=64"]))
    assert mine.optim.lr == 0.1 and mine.method.projection_dim == 64 and mine.optim.name == "lars"
    assert "optim.lr" not in mine.from_recipe and "method.projection_dim" not in mine.from_recipe
    # resolving twice changes nothing (and keeps what the recipe filled); GPUs keep the paper's head sizes
    assert resolve(cfg) == cfg and resolve(cfg).from_recipe == cfg.from_recipe
    gpu = resolve(build_config({}, ["method.name=barlow_twins", "train.use_gpu=true"]))
    assert gpu.method.projection_dim is None  # the method's own default: the paper's 8192
    assert gpu.train.sync_batchnorm is True and cfg.train.sync_batchnorm is False  # the paper's on GPUs, off on CPUs
    forced = resolve(build_config({}, ["method.name=barlow_twins", "train.sync_batchnorm=true"]))
    assert forced.train.sync_batchnorm is True and "train.sync_batchnorm" not in forced.from_recipe
    mae = resolve(build_config({}, ["method.name=mae", "method.backbone=vit_micro"]))
    assert (mae.optim.name, mae.optim.momentum, mae.optim.beta2, mae.optim.weight_decay) == ("adamw", 0.9, 0.95, 0.05)
    assert mae.method.backbone == "vit_micro" and "method.backbone" not in mae.from_recipe  # the user's stays
    # with only method.name set, each method gets its own backbone: a ViT method is not given the CNN default
    for name, backbone in (("simclr", "small_cnn"), ("ijepa", "vit_tiny"), ("simmim", "vit_tiny"), ("ibot", "vit_tiny")):
        only_name = resolve(build_config({}, [f"method.name={name}"]))
        assert only_name.method.backbone == backbone and "method.backbone" in only_name.from_recipe, name


def test_resolve_makes_local_paths_absolute_and_leaves_the_callers_config_and_uris_alone(tmp_path, monkeypatch):
    from pipelines.config import resolve

    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights.pt").write_bytes(b"")
    given = build_config(
        {},
        [
            "data.shards=shards",
            "probe.shards=s3://bucket/labeled",
            "tracking.runs_dir=~/runs",
            "tracking.storage_path=ray-state",
            "method.init_from=weights.pt",
        ],
    )
    cfg = resolve(given)
    assert cfg.data.shards == str(tmp_path / "shards") and cfg.probe.shards == "s3://bucket/labeled"
    assert cfg.tracking.runs_dir == str(Path("~/runs").expanduser().resolve())
    assert cfg.storage("ray") == str(tmp_path / "ray-state/ray")
    assert cfg.method.init_from == str(tmp_path / "weights.pt")
    assert given.data.shards == "shards" and given.from_recipe is None  # a new config: the caller's is unchanged
    # an MLflow run id or a registered model is not a path
    assert resolve(build_config({}, ["method.init_from=models:/enc@best"])).method.init_from == "models:/enc@best"


def test_from_recipe_is_rayssls_not_a_setting():
    from pipelines.config import resolve

    cfg = resolve(build_config({}, ["method.name=simclr"]))
    assert cfg.from_recipe and "from_recipe" not in cfg.flat() and "from_recipe" not in cfg.model_dump()
    with pytest.raises(ConfigError, match=r"from_recipe: set by rayssl .*, not a setting"):
        build_config({"from_recipe": ["optim.lr"]})


def test_fit_refuses_a_config_that_was_not_resolved():
    from pipelines.train import fit

    with pytest.raises(ValueError, match=r"fit\(\) takes a resolved config: pass pipelines\.config\.resolve\(cfg\)"):
        fit(build_config({}), {}, None, None, "name", "/tmp")  # refused before the other arguments are read


def test_each_trial_of_a_methods_search_gets_its_own_recipe():
    from pipelines.search.trial import trial_config

    base = build_config({}, ["optim.weight_decay=1e-4"]).model_dump(mode="json")
    simclr = trial_config(base, {"method.name": "simclr"})
    barlow = trial_config(base, {"method.name": "barlow_twins"})
    taken = barlow.from_recipe
    assert "optim.name" in taken and "optim.name" in simclr.from_recipe  # each filled by its own recipe
    assert simclr.optim.name == "sgd" and barlow.optim.name == "lars"
    assert simclr.optim.weight_decay == barlow.optim.weight_decay == 1e-4  # the base's setting wins for both
    assert "optim.weight_decay" not in taken
