"""Shipped Ray Tune search spaces (YAML) and the loader that turns them into ``ray.tune`` distributions.

A space file maps dotted config keys to one distribution each::

    optim.lr: {loguniform: [0.01, 0.5]}
    method.temperature: {choice: [0.1, 0.2, 0.5]}
    data.augment.crop_scale: {grid: [[0.08, 1.0], [0.2, 1.0]]}

Distributions: ``choice``, ``grid``, ``uniform``, ``loguniform``, ``randint``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from ray import tune

SPACES_DIR = Path(__file__).parent
DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform", "randint")


class SpaceError(ValueError):
    """A search space the user can fix; the message names the file and key."""


def list_spaces() -> list[str]:
    return sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))


def space_path(name_or_file: str) -> Path:
    path = Path(name_or_file)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    shipped = SPACES_DIR / f"{name_or_file}.yaml"
    if shipped.is_file():
        return shipped
    raise SpaceError(f"{name_or_file}: no such space file or shipped space; shipped: {', '.join(list_spaces())}")


def read_space(name_or_file: str, known_keys: set[str]) -> dict[str, dict[str, Any]]:
    """The raw space ``{key: {dist: args}}``, checked against the config's keys before Ray starts."""
    path = space_path(name_or_file)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise SpaceError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(raw, dict) or not raw:
        raise SpaceError(f"{path}: expected a mapping of config keys to distributions")
    for key, spec in raw.items():
        if key not in known_keys:
            raise SpaceError(f"{path}: {key!r} is not a config key (e.g. optim.lr, method.temperature, data.augment.blur_p)")
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
            raise SpaceError(f"{path}: {key}: expected one of {{{', '.join(DISTRIBUTIONS)}: ...}}")
        dist, args = next(iter(spec.items()))
        if dist in ("choice", "grid") and (not isinstance(args, list) or not args):
            raise SpaceError(f"{path}: {key}: {dist} needs a non-empty list of values")
        if dist in ("uniform", "loguniform", "randint") and (not isinstance(args, list) or len(args) != 2 or args[0] >= args[1]):
            raise SpaceError(f"{path}: {key}: {dist} needs [low, high] with low < high")
        if dist == "loguniform" and args[0] <= 0:
            raise SpaceError(f"{path}: {key}: loguniform needs low > 0")
    return raw


def to_tune(raw: dict[str, dict[str, Any]], search: str = "random") -> dict[str, Any]:
    """``ray.tune`` distributions for ``raw``; for ``search="grid"`` every choice becomes a grid."""
    out: dict[str, Any] = {}
    for key, spec in raw.items():
        dist, args = next(iter(spec.items()))
        if search == "grid" and dist not in ("choice", "grid"):
            raise SpaceError(f"{key}: grid search needs choice or grid values, not {dist}")
        if dist == "grid" or (search == "grid" and dist == "choice"):
            out[key] = tune.grid_search(args)
        elif dist == "choice":
            out[key] = tune.choice(args)
        elif dist == "uniform":
            out[key] = tune.uniform(*args)
        elif dist == "loguniform":
            out[key] = tune.loguniform(*args)
        else:
            out[key] = tune.randint(*args)
    return out
