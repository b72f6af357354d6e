"""Every method has a recipe from its paper; Barlow Twins trains stably with its own (LARS), not the shared SGD one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ssl_models
from pipelines.data import read_fashion_mnist
from ssl_models import recipes
from ssl_models.optim import build_optimizer, set_learning_rate
from ssl_models.recipes import MAX_WARMUP_SHARE, method_recipe
from ssl_models.schedules import scaled_lr, warmup_steps


@pytest.mark.parametrize("name", ssl_models.list_methods())
def test_every_method_has_its_own_recipe_with_its_paper(name):
    cls = ssl_models.method_class(name)
    recipe = method_recipe(name)
    assert cls.__dict__["recipe"] is recipe  # beside the method, on its own class (not inherited)
    assert recipe.paper.startswith("https://arxiv.org/abs/")
    assert recipe.optimizer in ("sgd", "lars", "adamw") and recipe.lr > 0 and recipe.notes
    assert 0 <= recipe.warmup_share <= MAX_WARMUP_SHARE
    # the recipe's CPU head sizes are arguments the method takes, and they size its heads
    assert set(recipe.cpu_kwargs) <= set(ssl_models.method_arguments(name))
    channels = 3 if cls.requires_rgb else 1
    method = ssl_models.create_method(name, backbone=cls.tiny_backbone, in_channels=channels, image_size=32, **recipe.cpu_kwargs)
    widths = {size for p in method.parameters() for size in p.shape}
    assert {v for v in recipe.cpu_kwargs.values() if isinstance(v, int)} <= widths


def test_a_method_without_a_recipe_of_its_own_fails_loudly(monkeypatch):
    class VICRegVariant(ssl_models.method_class("vicreg")):  # inherits VICReg's recipe, which does not count
        pass

    monkeypatch.setattr(recipes, "method_class", lambda name: VICRegVariant)
    with pytest.raises(ValueError, match=r"^method 'vicreg_variant' has no recipe; give its class one"):
        method_recipe("vicreg_variant")


def test_warm_up_never_exceeds_its_share_of_the_run():
    # a 1-epoch run asked for 1 warm-up epoch: 20% warm-up, then the schedule decays (before: all warm-up)
    assert warmup_steps(1.0, steps_per_epoch=100, total_steps=100, max_share=MAX_WARMUP_SHARE) == 20
    assert warmup_steps(0.5, steps_per_epoch=100, total_steps=1000, max_share=MAX_WARMUP_SHARE) == 50


def test_rates_scale_with_the_batch_by_the_recipes_rule():
    # linear (the papers' rule): lr x B / 256; sqrt (SimCLR's appendix B.1): lr x sqrt(B / 256)
    assert scaled_lr(0.3, 4096, "linear") == pytest.approx(4.8)
    assert scaled_lr(1.2, 4096, "sqrt") == pytest.approx(4.8)  # 0.075 x sqrt(4096): the two rules meet there
    assert scaled_lr(1.2, 64, "sqrt") == pytest.approx(0.6) and scaled_lr(0.3, 64, "linear") == pytest.approx(0.075)
    with pytest.raises(ValueError, match="unknown lr scaling rule 'cube'"):
        scaled_lr(0.3, 256, "cube")
    # NNCLR keeps its paper's rate at the paper's batch (LARS 0.3 x 4096 / 256 = 4.8) and is 1.2 at 256
    nnclr = method_recipe("nnclr")
    assert scaled_lr(nnclr.lr, 4096, nnclr.lr_scaling) == pytest.approx(scaled_lr(0.3, 4096, "linear"))
    assert scaled_lr(nnclr.lr, 256, nnclr.lr_scaling) == pytest.approx(1.2)
    # every other recipe states its rate linearly, as its paper does
    assert [n for n in ssl_models.list_methods() if method_recipe(n).lr_scaling != "linear"] == ["nnclr"]
    with pytest.raises(ValueError, match="lr_scaling 'cube' is not linear or sqrt"):
        recipes.Recipe(paper="https://arxiv.org/abs/1", lr_scaling="cube")


def _train(optimizer_name: str, lr: float, steps: int = 20) -> tuple[list[float], list[float]]:
    """Barlow Twins (1024-d projector, tiny_cnn) on 128 real Fashion-MNIST images: the first conv's weight norm
    before and after each step, and the loss of each step."""
    torch.manual_seed(0)
    images, _ = read_fashion_mnist("train")
    batch = images[:128, :, :, None].copy()
    policy = ssl_models.create_views("multi_view", image_size=28, num_views=2, seed=0)
    method = ssl_models.create_method(
        "barlow_twins", backbone="tiny_cnn", in_channels=1, image_size=28, projection_dim=1024, hidden_dim=1024
    )
    recipe = method_recipe("barlow_twins")
    optimizer = build_optimizer(
        optimizer_name, method, lr, recipe.weight_decay, recipe.momentum, bias_lr_scale=recipe.bias_lr_scale
    )
    first = next(p for p in method.encoder.parameters() if p.ndim == 4)
    norms, losses = [float(first.detach().norm())], []
    for _ in range(steps):
        views = policy.apply(torch.from_numpy(np.ascontiguousarray(batch)))
        set_learning_rate(optimizer, lr * 128 / 256)
        loss = method.training_step(views)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        norms.append(float(first.detach().norm()))
        losses.append(loss.item())
    return norms, losses


def test_barlow_twins_first_layer_stays_bounded_with_its_recipe():
    recipe = method_recipe("barlow_twins")
    assert recipe.optimizer == "lars"
    lars_norms, lars_losses = _train("lars", recipe.lr)
    sgd_norms, sgd_losses = _train("sgd", 0.06)  # the shared recipe every method used before
    # The loss sums over the embedding's D dimensions, so SGD's steps scale with D: the first layer's
    # weights blow up (measured: x340 in 20 steps) and the loss jumps above its start.
    assert sgd_norms[-1] > 10 * sgd_norms[0] and max(sgd_losses) > 1.5 * sgd_losses[0]
    # LARS bounds each layer's step relative to its weights: the norm stays put and the loss falls.
    assert max(lars_norms) < 1.2 * lars_norms[0] and min(lars_norms) > 0.8 * lars_norms[0]
    assert lars_losses[-1] < 0.9 * lars_losses[0]


def test_barlow_twins_lambda_keeps_the_papers_balance_at_any_width():
    def lam(width):
        return ssl_models.create_method("barlow_twins", backbone="tiny_cnn", projection_dim=width, hidden_dim=width).lambda_

    assert lam(8192) == pytest.approx(5e-3) and lam(1024) == pytest.approx(0.04)
    assert ssl_models.create_method("barlow_twins", backbone="tiny_cnn", projection_dim=64, lambda_=0.1).lambda_ == 0.1


def test_cpc_trains_without_diverging_with_its_recipe():
    # With the shared SGD recipe (lr 0.06) CPC's loss reached NaN by step 9 (methods_fmnist, 2026-11-29).
    torch.manual_seed(0)
    images, _ = read_fashion_mnist("train")
    method = ssl_models.create_method("cpc", backbone="small_cnn", in_channels=1, image_size=28)
    policy = ssl_models.create_views(method.view_policy, image_size=28, num_views=1, seed=0)
    recipe = method_recipe("cpc")
    optimizer = build_optimizer(recipe.optimizer, method, recipe.lr, recipe.weight_decay, recipe.momentum, recipe.beta2)
    losses = []
    for step in range(15):
        views = policy.apply(torch.from_numpy(images[step * 128 : (step + 1) * 128, :, :, None].copy()))
        set_learning_rate(optimizer, recipe.lr * 128 / 256)
        loss = method.training_step(views)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses)) and losses[-1] < 0.8 * losses[0]
