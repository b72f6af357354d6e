import pytest
import torch

import ssl_models


def test_unknown_method_lists_known_names():
    with pytest.raises(ValueError, match=r"unknown method 'nope'; known methods: .*simclr"):
        ssl_models.create_method("nope")


def test_every_method_takes_the_encoder_arguments_after_its_own():
    for name in ssl_models.list_methods():
        assert ssl_models.method_arguments(name)[-3:] == ["backbone", "in_channels", "image_size"], name
    # VIbCReg builds on VICReg: its own arguments, then VICReg's loss weights, then the encoder's
    assert {"iternorm_groups", "sim_weight", "cov_weight"} <= set(ssl_models.method_arguments("vibcreg"))
    assert ssl_models.create_method("mae").backbone_name == "vit_tiny"  # a method's own default backbone
    with pytest.raises(ValueError, match=r"^simclr takes no argument 'temprature'; it takes temperature, "):
        ssl_models.create_method("simclr", temprature=0.1)


@pytest.mark.parametrize("name", ssl_models.list_methods())
def test_one_training_step_trains_every_encoder_parameter(name):
    torch.manual_seed(0)
    cls = ssl_models.method_class(name)
    channels = 3 if cls.requires_rgb else 1
    # Small heads, as build_method passes them from the config: paper-sized 8192-d projectors
    # (Barlow Twins, VICReg) would only make this test slow.
    accepted = ssl_models.method_arguments(name)
    heads = {k: 32 for k in ("projection_dim", "hidden_dim") if k in accepted}
    method = ssl_models.create_method(name, backbone=cls.tiny_backbone, in_channels=channels, image_size=32, **heads)
    views = method.make_views(seed=0)  # the contract: views for a method, then a step on what they return
    images = torch.randint(0, 255, (8, 36, 36, channels), dtype=torch.uint8)
    on_uint8 = method.training_step(views({"image": images.numpy()}))  # the numpy path's uint8 views
    assert torch.isfinite(on_uint8["loss"])
    out = method(views.apply(images))
    assert torch.isfinite(out["loss"])
    # the method's own accuracy: a detached scalar (logging it keeps no graph alive), a fraction
    acc = out["proxy_acc"]
    assert acc.ndim == 0 and not acc.requires_grad and acc.is_floating_point() and 0.0 <= acc.item() <= 1.0
    out["loss"].backward()
    for pname, p in method.encoder.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname
    assert method.embed(torch.zeros(2, channels, 32, 32)).shape == (2, method.encoder.num_features)


@pytest.mark.parametrize("backbone", ["small_cnn", "resnet18"])
def test_backbones_expose_num_features(backbone):
    net = ssl_models.create_backbone(backbone, in_channels=1, image_size=28)
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, net.num_features)


def test_one_registry_type_names_every_kind_and_refuses_twice():
    from ssl_models.registry import Registry

    with pytest.raises(ValueError, match=r"unknown backbone 'nope'; known backbones: .*small_cnn"):
        ssl_models.create_backbone("nope")
    with pytest.raises(ValueError, match=r"unknown view policy 'nope'; known view policies: .*multi_view"):
        ssl_models.create_views("nope")
    things = Registry("thing")
    things.register("a")(dict)
    with pytest.raises(ValueError, match=r"thing 'a' is registered twice"):
        things.register("a")(list)


def test_the_methods_space_lists_every_registered_method_that_trains_on_grey_images():
    """tune_spaces/methods.yaml is the grid over methods; held here to the registry, so a new method joins it."""
    from tune_spaces import read_space

    space = read_space("methods", {"method.name"})
    grey = {
        name
        for name in ssl_models.list_methods()
        if not ssl_models.method_class(name).requires_rgb and not ssl_models.method_class(name).tiny_backbone.startswith("vit")
    }
    assert set(space["method.name"].args) == grey
