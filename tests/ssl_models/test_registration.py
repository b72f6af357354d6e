"""One registration idiom: each registering package imports its modules by name, and no import makes a circle.

Read from the source (``ast``), so a module left out of its package's ``__init__`` (whose names would
never register) or an import circle fails here, before it fails at some caller's first import.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import ssl_models

ROOT = Path(ssl_models.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def _imports_at_import_time(path: Path) -> list[tuple[str, list[str]]]:
    """(module, imported names) of the imports a module runs when it is imported (not those inside functions)."""
    found = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, [alias.name for alias in node.names]))
    return found


def _ssl_models_edges(name: str) -> set[str]:
    """The ssl_models modules that importing ``name`` imports first: each one it names (a ``from P import m`` of
    a submodule names P.m), and the package around each one, unless that package is already being imported (one
    of ``name``'s own packages) or is ``ssl_models`` itself, the facade that imports everything."""
    edges = set()
    for module, names in _imports_at_import_time(MODULES[name]):
        if module.split(".")[0] != "ssl_models":
            continue
        targets = [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES]
        if len(targets) < len(names) or not names:  # some names are defined by ``module`` itself
            targets.append(module)
        for target in targets:
            parts = target.split(".")
            for i in range(2, len(parts) + 1):
                ancestor = ".".join(parts[:i])
                if not name.startswith(ancestor + ".") and ancestor != name:
                    edges.add(ancestor)
    return edges


def _circle_from(start: str, graph: dict[str, set[str]]) -> list[str] | None:
    """A path start -> ... -> start through ``graph``, or None."""
    stack, seen = [(start, [start])], set()
    while stack:
        node, path = stack.pop()
        for nxt in graph.get(node, ()):
            if nxt == start:
                return path + [start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, path + [nxt]))
    return None


def test_no_import_circle_anywhere_in_ssl_models():
    graph = {name: _ssl_models_edges(name) for name in MODULES if name != "ssl_models"}
    circles = [circle for name in graph if (circle := _circle_from(name, graph))]
    assert not circles, " | ".join(" -> ".join(c) for c in circles)


def test_the_circle_check_finds_the_bottom_of_file_import_it_replaced(tmp_path, monkeypatch):
    # backbones.py imported vit at its bottom to register it, and vit imported backbones' register_backbone
    monkeypatch.setitem(MODULES, "ssl_models.backbones", tmp_path / "backbones.py")
    monkeypatch.setitem(MODULES, "ssl_models.vit", tmp_path / "vit.py")
    (tmp_path / "backbones.py").write_text("from ssl_models.registry import Registry\nfrom ssl_models import vit\n")
    (tmp_path / "vit.py").write_text("from ssl_models.backbones import register_backbone\n")
    graph = {name: _ssl_models_edges(name) for name in ("ssl_models.backbones", "ssl_models.vit")}
    assert _circle_from("ssl_models.vit", graph) == ["ssl_models.vit", "ssl_models.backbones", "ssl_models.vit"]


@pytest.mark.parametrize("package", ["ssl_models.backbones", "ssl_models.losses", "ssl_models.methods", "ssl_models.views"])
def test_each_registering_package_imports_every_module_of_it_by_name(package):
    init = MODULES[package]
    named = {f"{module}.{n}" for module, names in _imports_at_import_time(init) for n in names} | {
        module for module, _ in _imports_at_import_time(init)
    }
    modules = {f"{package}.{m.name}" for m in pkgutil.iter_modules([str(init.parent)])}
    # the modules that register (a method, backbone, view policy) or export (a loss) something; helpers of
    # those (methods/base.py, losses/infonce.py) are imported by the modules that use them
    providing = {m for m in modules if "@register_" in MODULES[m].read_text() or _exports(MODULES[m])}
    assert providing and providing - named == set()


def _exports(path: Path) -> bool:
    """Whether a module lists names in its ``__all__``."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
                return bool(getattr(node.value, "elts", None))
    return False


def test_every_loss_module_exports_each_of_its_public_names_from_the_package():
    losses = importlib.import_module("ssl_models.losses")
    for m in pkgutil.iter_modules(losses.__path__):
        module = importlib.import_module(f"ssl_models.losses.{m.name}")
        for name in module.__all__:
            assert getattr(losses, name) is getattr(module, name) and name in losses.__all__, f"{m.name}.{name}"


def test_a_view_policy_is_registered_by_the_views_package_not_by_the_methods_using_it():
    assert set(ssl_models.list_views()) == {"multi_view", "multi_crop"}
    for name, path in MODULES.items():
        if name.startswith("ssl_models.methods."):
            imported = {module for module, _ in _imports_at_import_time(path)}
            assert not {m for m in imported if m.startswith("ssl_models.views.")}, name


def test_ssl_models_never_imports_ray_or_mlflow():
    for name, path in MODULES.items():
        roots = {module.split(".")[0] for module, _ in _imports_at_import_time(path)}
        assert not roots & {"ray", "mlflow"}, name
