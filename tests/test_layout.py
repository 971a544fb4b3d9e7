"""The package's shape: installed names, import layers, no cycles (DESIGN.md, "the shape to grow into").

Layers, lowest first; a module may import its own layer or lower ones, never a higher one:

0. ``eradio``: a standalone timm-style model family (imports no ``zoo``).
1. contracts and records: errors, sizes, atomic I/O, the run record, versions, devices, the backbone contract.
2. plug-in kinds: backbone families and the registry, teacher kinds, heads, losses, recipes, data sources.
3. engines: distillation, the teacher cache, benchmarking, run loading, evaluations, pictures.
4. analysis: the Pareto package and the search package.
5. the CLI.
"""

from __future__ import annotations

import ast
import configparser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Source folders and the package names they install as (setup.cfg package_dir).
SOURCE_PACKAGES = {"zoo": "zoo", "eradio": "eradio", "search": "zoo.search", "recipes": "zoo.recipes"}

LAYERS: list[tuple[int, tuple[str, ...]]] = [
    (0, ("eradio",)),
    (1, ("zoo", "zoo.errors", "zoo.sizes", "zoo.atomic", "zoo.runs", "zoo.versions", "zoo.devices", "zoo.ui",
         "zoo.progress", "zoo.backbone", "zoo.checkpoints")),
    (2, ("zoo.backbones", "zoo.registry", "zoo.describe", "zoo.teachers", "zoo.heads", "zoo.losses",
         "zoo.standardize", "zoo.recipe", "zoo.recipes", "zoo.data", "zoo.flops")),
    (3, ("zoo.distill", "zoo.targets", "zoo.cache", "zoo.bench", "zoo.loading", "zoo.evaluations", "zoo.viz",
         "zoo.export", "zoo.runtimes")),
    (4, ("zoo.pareto", "zoo.search")),
    (5, ("zoo.cli", "zoo.commands")),
]


def modules() -> dict[str, Path]:
    """Every project module by its installed dotted name."""
    found = {}
    for folder, package in SOURCE_PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def layer_of(module: str) -> int:
    """The layer of the longest matching prefix (``zoo`` itself is layer 1)."""
    best, best_len = None, -1
    for layer, prefixes in LAYERS:
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = layer, len(prefix)
    assert best is not None, f"{module} is in no layer: add it to LAYERS in tests/test_layout.py"
    return best


def imports(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Project modules ``module`` imports (function-level imports included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [target] + [f"{target}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module and not module.startswith(name + ".") and not name.startswith(module + "."):
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {module: imports(module, path, known) for module, path in known.items()}


def test_no_upward_imports():
    upward = [f"{m} (layer {layer_of(m)}) imports {t} (layer {layer_of(t)})"
              for m, targets in import_graph().items() for t in sorted(targets) if layer_of(t) > layer_of(m)]
    assert not upward, "\n".join(upward)


def test_eradio_imports_no_zoo():
    offenders = {m: sorted(t for t in targets if t.startswith("zoo"))
                 for m, targets in import_graph().items() if m.startswith("eradio")}
    assert not {m: t for m, t in offenders.items() if t}


def test_no_import_cycles():
    graph = import_graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, "\n".join(" <-> ".join(c) for c in cycles)


def test_layer_checker_catches_an_upward_import(tmp_path):
    """The checker itself: a contract module importing the CLI is reported."""
    fake = tmp_path / "runs.py"
    fake.write_text("from zoo.cli import main\n", encoding="utf-8")
    found = imports("zoo.runs", fake, modules())
    assert "zoo.cli" in found and layer_of("zoo.cli") > layer_of("zoo.runs")


def _setup_cfg() -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg", encoding="utf-8")
    return config


def test_setup_cfg_lists_every_package():
    """Every folder with an ``__init__.py`` is installed, under its ``zoo.`` name for search/ and recipes/."""
    listed = {line.strip() for line in _setup_cfg()["options"]["packages"].splitlines() if line.strip()}
    expected = {name for name, path in modules().items() if path.name == "__init__.py"}
    assert listed == expected


def test_no_top_level_search_or_recipes_installed():
    config = _setup_cfg()
    mapping = {}
    for line in config["options"]["package_dir"].splitlines():
        if "=" in line:
            name, folder = (part.strip() for part in line.split("=", 1))
            mapping[name] = folder
    assert mapping.get("zoo.search") == "search" and mapping.get("zoo.recipes") == "recipes"
    listed = config["options"]["packages"].split()
    assert "search" not in listed and "recipes" not in listed
    assert config["options.package_data"]["zoo.recipes"].strip() == "*.yaml"


def test_installed_names_import():
    import importlib

    search = importlib.import_module("zoo.search")
    recipes = importlib.import_module("zoo.recipes")
    assert Path(search.__file__).parent == ROOT / "search"
    assert Path(recipes.__file__).parent == ROOT / "recipes"
    from zoo.recipe import shipped_recipes

    assert {"smoke", "table7", "search-proxy"} <= set(shipped_recipes())


@pytest.mark.parametrize("module", ["zoo.runs", "zoo.sizes", "zoo.atomic", "zoo.versions", "zoo.commands.options"])
def test_light_modules_import_no_torch(module):
    """The record, size and option modules stay importable without torch (fast CLI paths, zoo pareto)."""
    import subprocess
    import sys

    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"
