"""Losses of embeddings only, with the papers' defaults: one loss (or family) per module.

Every public name of every module here (its ``__all__``) is re-exported, so
``from ssl_models.losses import nt_xent`` works for each of them.
"""

import importlib
import pkgutil

__all__: list[str] = []
for _module in pkgutil.iter_modules(__path__):
    _mod = importlib.import_module(f"{__name__}.{_module.name}")
    for _name in getattr(_mod, "__all__", []):
        globals()[_name] = getattr(_mod, _name)
        __all__.append(_name)
