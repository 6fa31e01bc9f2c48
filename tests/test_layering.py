"""The package's shape stays readable: rooms import only rooms below them, and no modules import each other in
a circle. Every import counts, including those inside functions and under ``TYPE_CHECKING`` (where circles
used to hide). Read from the source with ``ast``; nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "scnet"

# Each room may import the rooms on lower levels, never one on its own level or above. The CLIs' imports inside
# functions (for a fast --help) count like any other.
LEVELS = {
    "runtime": 0,  # this process and its files: rank, faults, atomic writes, precision, seeding
    "config": 0,  # the YAML schema
    "viz": 0,  # figures (matplotlib, optional)
    "layers": 1,  # the SC operator, usable in any network
    "models": 2,  # the SC networks, the timm registry, weights, published numbers
    "data": 2,  # images to batches on the device
    "scnet": 3,  # the package's public face (scnet/__init__.py)
    "inference": 4,  # a checkpoint file put to use
    "bench": 4,  # speed and memory of models and loaders
    "train": 5,  # a training run
    "tables": 6,  # the paper's tables, trained and reported
    "cli": 7,  # the commands
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(module: str, source: str | None = None) -> set[str]:
    """The scnet modules ``module`` imports (``from pkg import sub`` names the submodule)."""
    path = MODULES.get(module, Path(module.replace(".", "/") + ".py"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text() if source is None else source, str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            targets = [f"{origin}.{a.name}" if f"{origin}.{a.name}" in MODULES else origin for a in node.names]
        else:
            continue
        found.update(t for t in targets if t == "scnet" or t.startswith("scnet."))
    found.discard(module)
    return found


GRAPH = {module: _imports(module) for module in MODULES}


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "scnet"


def test_every_room_has_a_level():
    rooms = {_room(m) for m in MODULES}
    assert rooms == set(LEVELS), f"rooms without a level: {sorted(rooms - set(LEVELS))}"


def test_rooms_import_only_rooms_below_them():
    wrong = []
    for module, targets in GRAPH.items():
        for target in targets:
            here, there = _room(module), _room(target)
            if here != there and LEVELS[there] >= LEVELS[here]:
                wrong.append(f"{module} -> {target} ({here} is level {LEVELS[here]}, {there} {LEVELS[there]})")
    assert not wrong, "imports against the order of the rooms:\n" + "\n".join(sorted(wrong))


def _cycle_from(start: str) -> list[str] | None:
    """A circle of imports through ``start``, if there is one (depth-first, iterative)."""
    stack = [(start, [start])]
    seen = set()
    while stack:
        module, path = stack.pop()
        for target in GRAPH[module]:
            if target == start:
                return [*path, start]
            if target not in seen:
                seen.add(target)
                stack.append((target, [*path, target]))
    return None


@pytest.mark.parametrize("room", sorted(LEVELS))
def test_no_circle_of_imports(room):
    for module in (m for m in MODULES if _room(m) == room):
        cycle = _cycle_from(module)
        assert cycle is None, "circle: " + " -> ".join(cycle)


def test_the_check_sees_imports_inside_functions_and_under_type_checking():
    """The forms the old circles took: an import in a function body, one under TYPE_CHECKING, a sibling module
    named through its package."""
    code = (
        "from typing import TYPE_CHECKING\n"
        "from . import weights\n"
        "if TYPE_CHECKING:\n"
        "    from ..layers import ConversionReport\n"
        "def f():\n"
        "    from ..tables.spec import published_numbers\n"
        "    import scnet\n"
    )
    found = _imports("scnet.models.zoo", code)
    assert found == {"scnet.models.weights", "scnet.layers", "scnet.tables.spec", "scnet"}
