"""Shipped Ray Tune search spaces (YAML) and the loader that turns them into ``ray.tune`` distributions.

A space file maps dotted config keys to one distribution each::

    optim.lr: {loguniform: [0.01, 0.5]}
    method.temperature: {choice: [0.1, 0.2, 0.5]}
    data.augment.crop_scale: {grid: [[0.08, 1.0], [0.2, 1.0]]}

Distributions: ``choice``, ``grid``, ``uniform``, ``loguniform``, ``randint``.

A *bundle* varies several keys together: a key that is not a config key (a label) whose
``choice`` or ``grid`` values are mappings of config keys, each value one setting of all of them::

    recipe: {grid: [{method.name: simclr, data.augment.jitter_strength: 0.7}, {method.name: rotation}]}
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from ray import tune

SPACES_DIR = Path(__file__).parent
LISTED = {"choice": tune.choice, "grid": tune.grid_search}  # args: the values
RANGES = {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}  # args: [low, high]
DISTRIBUTIONS = (*LISTED, *RANGES)


class SpaceError(ValueError):
    """A search space the user can fix; the message names the file and key."""


@dataclass(frozen=True)
class SpaceEntry:
    """One key of a space: the dotted config key, its distribution and that distribution's arguments."""

    key: str
    distribution: str  # one of DISTRIBUTIONS
    args: list

    @property
    def listed(self) -> bool:
        return self.distribution in LISTED

    @property
    def bundle(self) -> bool:
        """Each value sets several config keys at once (a mapping of them)."""
        return self.listed and all(isinstance(v, dict) for v in self.args)

    @property
    def values(self) -> list:
        """Values to check before Ray starts: every listed value, or both ends of a range."""
        return self.args if self.listed else self.args[:2]

    def to_tune(self, search: str):
        """The ``ray.tune`` distribution; grid search turns a choice into a grid."""
        if search == "grid" and not self.listed:
            raise SpaceError(f"{self.key}: grid search needs choice or grid values, not {self.distribution}")
        if search == "grid":
            return tune.grid_search(self.args)
        return (LISTED | RANGES)[self.distribution](*([self.args] if self.listed else self.args))

    def as_yaml(self) -> dict[str, list]:
        return {self.distribution: self.args}


Space = dict[str, SpaceEntry]


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


def _distribution(spec: Any) -> tuple[str, Any] | None:
    """``(name, args)`` of a one-entry mapping such as ``{grid: [0.1, 0.05]}``; None for anything else."""
    if isinstance(spec, dict) and len(spec) == 1:
        ((name, args),) = spec.items()
        return name, args
    return None


def _is_bundle(spec: Any) -> bool:
    """``{choice|grid: [mapping, ...]}``: every value a non-empty mapping of config keys."""
    dist = _distribution(spec)
    if dist is None or dist[0] not in LISTED:
        return False
    values = dist[1]
    return isinstance(values, list) and bool(values) and all(isinstance(v, dict) and v for v in values)


def _entry(path: Path, key: str, spec: Any, known_keys: set[str]) -> SpaceEntry:
    if any(k.startswith(f"{key}.") for k in known_keys):
        raise SpaceError(f"{path}: {key!r} is a config section; name a config key, or label a bundle with another word")
    if key not in known_keys and _is_bundle(spec):  # a label whose values each set several keys
        for setting in _distribution(spec)[1]:
            for inner in setting:
                if inner not in known_keys:
                    raise SpaceError(f"{path}: {key}: {inner!r} is not a config key (e.g. optim.lr, method.name)")
    elif key not in known_keys:
        raise SpaceError(f"{path}: {key!r} is not a config key (e.g. optim.lr, method.temperature, data.augment.blur_p)")
    named = _distribution(spec)
    if named is None or named[0] not in DISTRIBUTIONS:
        raise SpaceError(f"{path}: {key}: expected one of {{{', '.join(DISTRIBUTIONS)}: ...}}")
    dist, args = named
    if dist in LISTED and (not isinstance(args, list) or not args):
        raise SpaceError(f"{path}: {key}: {dist} needs a non-empty list of values")
    if dist in RANGES and (not isinstance(args, list) or len(args) != 2 or args[0] >= args[1]):
        raise SpaceError(f"{path}: {key}: {dist} needs [low, high] with low < high")
    if dist == "loguniform" and args[0] <= 0:
        raise SpaceError(f"{path}: {key}: loguniform needs low > 0")
    return SpaceEntry(key, dist, args)


def read_space(name_or_file: str, known_keys: set[str]) -> Space:
    """The space's entries by key, checked against the config's keys before Ray starts."""
    path = space_path(name_or_file)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise SpaceError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(raw, dict) or not raw:
        raise SpaceError(f"{path}: expected a mapping of config keys to distributions")
    return {key: _entry(path, key, spec, known_keys) for key, spec in raw.items()}


def to_tune(space: Space, search: str = "random") -> dict[str, Any]:
    """``ray.tune`` distributions for every entry; for ``search="grid"`` every choice becomes a grid."""
    return {key: entry.to_tune(search) for key, entry in space.items()}
