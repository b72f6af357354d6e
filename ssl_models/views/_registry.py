"""The registry of view policies, in a module of its own so that a policy module registering itself
never imports the package that imports it (as ``ssl_models.backbones._registry``)."""

from __future__ import annotations

from collections.abc import Callable

from ssl_models.registry import Registry

VIEWS: Registry[Callable[..., object]] = Registry("view policy", "view policies")
register_views = VIEWS.register


def list_views() -> list[str]:
    return VIEWS.names()


def create_views(name: str, **kwargs):
    """Build the view policy ``name`` with its keyword arguments."""
    return VIEWS.get(name)(**kwargs)
