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
