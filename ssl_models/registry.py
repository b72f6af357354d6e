"""The one registry of SSL methods: names -> classes, and the factory that builds them.

Like timm's ``register_model``/``create_model``: the CLI, tests, Tune spaces and
reports all read this one list, so a method exists once it is registered here.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

_METHODS: dict[str, type[nn.Module]] = {}


def register_method(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator that registers a method under ``name``."""

    def add(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _METHODS:
            raise ValueError(f"method {name!r} is registered twice")
        cls.method_name = name
        _METHODS[name] = cls
        return cls

    return add


def list_methods() -> list[str]:
    """Registered method names, sorted."""
    return sorted(_METHODS)


def method_class(name: str) -> type[nn.Module]:
    """The class registered under ``name``; unknown names list the known ones."""
    try:
        return _METHODS[name]
    except KeyError:
        known = ", ".join(list_methods())
        raise ValueError(f"unknown method {name!r}; known methods: {known}") from None


def create_method(name: str, **kwargs) -> nn.Module:
    """Build the method ``name`` with its keyword arguments (paper defaults otherwise)."""
    return method_class(name)(**kwargs)
