import numpy as np
import torch

import ssl_models


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
        assert out[key].shape == (16, 1, 24, 24) and out[key].dtype == np.float32
        assert -1.0 - 1e-5 <= out[key].min() and out[key].max() <= 1.0 + 1e-5
    np.testing.assert_array_equal(out["label"], np.arange(16))


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
    np.testing.assert_allclose(out["view_0"], b(batch)["view_0"])
    on_tensor = b.apply(torch.from_numpy(batch["image"]))
    np.testing.assert_allclose(on_tensor["view_1"].numpy(), out["view_1"], atol=1e-6)
