import numpy as np
import pytest
import torch

import ssl_models
from ssl_models.views.pixels import quantize


def _batch(n=16, size=28, channels=1):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (n, size, size, channels), dtype=np.uint8)
    image[: n // 2] = image[0]  # identical inputs still get different views
    return {"image": image, "label": np.arange(n)}


def test_views_shapes_dtypes_and_passthrough():
    policy = ssl_models.create_views("multi_view", image_size=24)
    out = policy(_batch())
    assert set(out) == {"label", "view_0", "view_1"}
    for key in ("view_0", "view_1"):
        assert out[key].shape == (16, 1, 24, 24) and out[key].dtype == np.uint8  # a quarter of float32's bytes
        assert out[key].max() > 200 and out[key].min() < 50  # the full 8-bit range is used, not a sliver of it
    np.testing.assert_array_equal(out["label"], np.arange(16))
    model_in = ssl_models.model_views({k: torch.from_numpy(v) for k, v in out.items()})
    assert model_in["view_0"].dtype == torch.float32 and model_in["label"].dtype == torch.int64
    assert -1.0 <= model_in["view_0"].min() and model_in["view_0"].max() <= 1.0
    # uint8 v -> (v / 255 - 0.5) / 0.5 exactly: 0 -> -1, 255 -> 1
    expected = torch.from_numpy(out["view_1"]).float() / 255 * 2 - 1
    torch.testing.assert_close(model_in["view_1"], expected)
    assert ssl_models.model_views(model_in)["view_0"] is model_in["view_0"]  # float views pass through


def test_views_differ_per_sample_per_view_and_per_call():
    policy = ssl_models.create_views("multi_view", image_size=28)
    first, second = policy(_batch()), policy(_batch())
    same_input = first["view_0"][:8]  # eight copies of one image
    assert all(not np.allclose(same_input[0], same_input[i]) for i in range(1, 8))
    assert not np.allclose(first["view_0"], first["view_1"])
    assert not np.allclose(first["view_0"], second["view_0"])  # a new epoch draws new views


def test_seeded_policy_is_reproducible_and_apply_matches_call():
    a = ssl_models.create_views("multi_view", image_size=28, seed=3)
    b = ssl_models.create_views("multi_view", image_size=28, seed=3)
    batch = _batch(channels=3)
    out = a(batch)
    np.testing.assert_array_equal(out["view_0"], b(batch)["view_0"])
    on_tensor = b.apply(torch.from_numpy(batch["image"]))
    # The numpy path rounds each pixel to 8 bits: at most half a level, 1/255 after normalizing to [-1, 1].
    from_numpy = ssl_models.model_views({"view_1": torch.from_numpy(out["view_1"])})["view_1"]
    torch.testing.assert_close(from_numpy, on_tensor["view_1"], atol=1 / 255 + 1e-6, rtol=0)


def _policy_for(method):
    return ssl_models.create_views(method.view_policy, image_size=32, num_views=method.num_views)


@pytest.mark.parametrize("name", ssl_models.list_methods())
@pytest.mark.parametrize("place", ["cpu", "device"])
def test_both_augmentation_places_feed_every_method(name, place):
    """data.augment_on=cpu runs the policy on numpy batches in Ray Data; =device runs .apply on the
    training device. Both must give each method the views it trains on, different per sample."""
    cls = ssl_models.method_class(name)
    channels = 3 if cls.requires_rgb else 1
    method = ssl_models.create_method(name, backbone=cls.tiny_backbone, in_channels=channels, image_size=32)
    policy = _policy_for(method)
    batch = _batch(n=8, size=36, channels=channels)
    device = "cuda" if place == "device" and torch.cuda.is_available() else "cpu"
    if place == "cpu":
        views = ssl_models.model_views({k: torch.from_numpy(v) for k, v in policy(batch).items() if k.startswith("view_")})
    else:
        views = policy.apply(torch.from_numpy(batch["image"]).to(device))
    assert sorted(views) == [f"view_{i}" for i in range(method.num_views)]
    for v in views.values():
        assert v.dtype == torch.float32 and v.shape[:2] == (8, channels)
    copies = views["view_0"][:4]  # four copies of one image: four different views
    assert all(not torch.allclose(copies[0], copies[i]) for i in range(1, 4))
    out = method.to(device)(views)
    assert torch.isfinite(out["loss"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_device_views_stay_on_the_gpu():
    policy = ssl_models.create_views("multi_view", image_size=28)
    views = policy.apply(torch.from_numpy(_batch()["image"]).cuda())
    assert all(v.is_cuda for v in views.values())


def test_methods_take_the_uint8_views_ray_data_ships():
    """A method's forward normalizes uint8 views itself: the same loss as from the normalized floats."""
    torch.manual_seed(0)
    method = ssl_models.create_method("simclr", backbone="tiny_cnn", in_channels=1, image_size=28)
    views = {k: torch.from_numpy(v) for k, v in _policy_for(method)(_batch(n=8, size=32)).items() if k.startswith("view_")}
    assert views["view_0"].dtype == torch.uint8
    torch.testing.assert_close(method(views)["loss"], method(ssl_models.model_views(views))["loss"])


def test_views_can_differ_per_view_as_byol_asks():
    import ssl_models
    from ssl_models.augment import solarize

    gen = torch.Generator().manual_seed(0)
    x = torch.linspace(0, 1, 2 * 3 * 8 * 8).reshape(2, 3, 8, 8)
    flipped = solarize(x, gen, p=1.0)
    assert torch.equal(flipped, torch.where(x >= 0.5, 1 - x, x)) and torch.equal(solarize(x, gen, p=0.0), x)

    images = torch.randint(0, 256, (64, 16, 16, 3), dtype=torch.uint8, generator=gen)
    plain = dict(crop_scale=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0, seed=0)
    views = ssl_models.create_views("multi_view", image_size=16, blur_p=(1.0, 0.0), solarize_p=(0.0, 1.0), **plain).unit_views(
        images
    )
    unaugmented = ssl_models.create_views("multi_view", image_size=16, blur_p=0.0, **plain).unit_views(images)["view_0"]
    # view 0 blurred (same crops as the unblurred policy: the same seed draws the same crops), never solarized;
    # view 1 solarized: no pixel above 0.5
    assert views["view_0"].std() < 0.8 * unaugmented.std() and views["view_0"].max() > 0.5
    assert views["view_1"].max() <= 0.5
    assert ssl_models.method_class("byol").view_kwargs == {"blur_p": (1.0, 0.1), "solarize_p": (0.0, 0.2)}


def test_colour_jitter_is_brightness_then_contrast_around_the_mean_then_saturation_around_the_luma():
    """Every jittered image is b c x + b m (1 - c) (m: its mean) before saturation, and saturation blends each
    pixel with its own luma, so it keeps the luma (it once blended with the luma of the image already scaled by s,
    which darkened every saturated image by s (2 - s))."""
    from ssl_models.augment import LUMA_WEIGHTS, color_jitter

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 8, 8, generator=gen) * 0.2 + 0.4  # mid-range: no clamping below
    luma = torch.tensor(LUMA_WEIGHTS).view(1, 3, 1, 1)
    saturated = color_jitter(x, gen, brightness=0.0, contrast=0.0, saturation=0.4, p=1.0)
    torch.testing.assert_close((saturated * luma).sum(1), (x * luma).sum(1), atol=1e-6, rtol=0)
    assert (saturated - x).abs().amax(dim=(1, 2, 3)).mean() > 0.01  # and it did change the colours

    grey = x[:, :1]
    out = color_jitter(grey, gen, brightness=0.4, contrast=0.4, saturation=0.4, p=1.0)
    for before, after in zip(grey, out, strict=True):  # per image: after = alpha before + beta
        m = before.mean()
        b = after.mean() / m  # brightness: the mean scales by b
        alpha = ((after - after.mean()) * (before - m)).sum() / ((before - m) ** 2).sum()  # b c
        c = alpha / b
        assert 0.6 - 1e-5 <= b <= 1.4 + 1e-5 and 0.6 - 1e-5 <= c <= 1.4 + 1e-5
        torch.testing.assert_close(after, alpha * before + b * m * (1 - c), atol=1e-5, rtol=0)
    skipped = color_jitter(x, gen, p=0.0)
    assert torch.equal(skipped, x)  # an image the jitter skips is left exactly as it was


def test_large_views_are_made_a_chunk_at_a_time_and_small_ones_in_one():
    """The numpy path makes 224 px views ~13 rows at a time (cache-sized float chunks); Fashion-MNIST's batches of
    256 are one chunk, so their draws are the ones a whole batch gets."""
    small = ssl_models.create_views("multi_view", image_size=28, seed=1)
    assert small._chunk_rows(channels=1) >= 256
    batch = _batch(n=40, size=28)
    whole = small.unit_views(torch.from_numpy(batch["image"]))
    np.testing.assert_array_equal(small(batch)["view_0"], quantize(whole["view_0"]).numpy())

    large = ssl_models.create_views("multi_view", image_size=224, seed=1)
    assert large._chunk_rows(channels=3) == 13
    crops = np.random.default_rng(0).integers(0, 255, (30, 224, 224, 3), dtype=np.uint8)
    out = large({"crop_0": crops, "crop_1": crops, "label": np.arange(30)})
    assert out["view_0"].shape == (30, 3, 224, 224) and list(out["label"]) == list(range(30))
    np.testing.assert_array_equal(out["view_1"], large({"crop_0": crops, "crop_1": crops})["view_1"])  # seeded
    assert not np.array_equal(out["view_0"][0], out["view_0"][13])  # the second chunk draws anew
