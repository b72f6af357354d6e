"""One small registry type for names -> builders, and the registry of SSL methods.

Like timm's ``register_model``/``create_model``: the CLI, tests, Tune spaces and reports all
read one list per kind, so a method, backbone or view policy exists once it is registered.
Modules register by decorator when imported, and each package (``methods``, ``backbones``,
``views``) imports its modules by name in its ``__init__``. Backbones and view policies keep their
registry in a ``_registry`` module of their package, and methods theirs here, so a module that
registers itself never imports the package that imports it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Generic, TypeVar

from torch import nn

T = TypeVar("T", bound=Callable)


class Registry(Generic[T]):
    """Names -> builders (classes or functions) of one kind, filled by ``register(name)``."""

    def __init__(self, kind: str, plural: str | None = None):
        self.kind, self.plural = kind, plural or f"{kind}s"
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers a class or function under ``name``."""

        def add(builder: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = builder
            return builder

        return add

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def get(self, name: str) -> T:
        """The builder registered under ``name``; an unknown name lists the known ones."""
        try:
            return self._entries[name]
        except KeyError:
            raise ValueError(f"unknown {self.kind} {name!r}; known {self.plural}: {', '.join(self.names())}") from None


METHODS: Registry[type[nn.Module]] = Registry("method")


def register_method(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator that registers a method under ``name`` (and names the class after it)."""

    def add(cls: type[nn.Module]) -> type[nn.Module]:
        cls.method_name = name
        return METHODS.register(name)(cls)

    return add


def list_methods() -> list[str]:
    """Registered method names, sorted."""
    return METHODS.names()


def method_class(name: str) -> type[nn.Module]:
    """The class registered under ``name``; unknown names list the known ones."""
    return METHODS.get(name)


def method_arguments(name: str) -> list[str]:
    """The keywords ``create_method(name, ...)`` takes: the method's own, then those it passes on
    (``**encoder_args``) to the classes it builds on, down to the encoder's ``backbone``, ``in_channels``, ``image_size``."""
    names: list[str] = []
    for cls in method_class(name).__mro__:
        if "__init__" not in cls.__dict__:
            continue
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]  # after self
        names += [p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD and p.name not in names]
        if all(p.kind is not p.VAR_KEYWORD for p in params):
            return names
    return names


def create_method(name: str, **kwargs) -> nn.Module:
    """Build the method ``name`` with its keyword arguments (paper defaults otherwise)."""
    accepted = method_arguments(name)
    unknown = [k for k in kwargs if k not in accepted]
    if unknown:
        raise ValueError(f"{name} takes no argument {unknown[0]!r}; it takes {', '.join(accepted)}")
    return method_class(name)(**kwargs)
