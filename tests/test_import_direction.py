"""Imports run one way (DESIGN.md): the CLI on top, then the study harness, then training, sampling and the
pipelines, then the judges, encoders, data and backbones, then conditioning, then the foundation (layers and
the small utilities everything uses). A module imports only from its own tier or below, and no modules import
each other, directly or round a longer loop. Every import statement counts: inside functions and under
``TYPE_CHECKING`` too."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "film_diffusion"
PIPELINES = ROOT / "pipelines"  # installed as film_diffusion.pipelines

TIERS: list[tuple[str, ...]] = [  # lowest first; a name covers the module or package and all below it
    ("film_diffusion.layers", "film_diffusion.errors", "film_diffusion.config", "film_diffusion.cache",
     "film_diffusion.grid", "film_diffusion.integrity", "film_diffusion.cpu_memory", "film_diffusion.atomic"),
    ("film_diffusion.conditioning",),
    ("film_diffusion.backbones", "film_diffusion.convert", "film_diffusion.data", "film_diffusion.encoders",
     "film_diffusion.evaluation"),
    ("film_diffusion.training", "film_diffusion.pipelines", "film_diffusion.sample", "film_diffusion.smoke",
     "film_diffusion.benchmark"),
    ("film_diffusion.studies",),
    ("film_diffusion.cli", "film_diffusion"),  # the root package only re-exports, lazily, by name
]


def module_files() -> dict[str, Path]:
    found = {}
    for base, name in ((PACKAGE, "film_diffusion"), (PIPELINES, "film_diffusion.pipelines")):
        for path in base.rglob("*.py"):
            parts = [name, *path.relative_to(base).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = module_files()


def tier(module: str) -> int:
    """The tier of the longest name in TIERS that covers ``module``."""
    best = max(((len(name), level) for level, names in enumerate(TIERS) for name in names
                if module == name or module.startswith(name + ".")), default=None)
    assert best is not None, f"{module} belongs to no tier; add it to TIERS"
    return best[1]


def imported(module: str, path: Path) -> set[str]:
    """The film_diffusion modules ``module`` imports (``from P import name`` counts as P.name when that is a
    module, else P)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: up from this module's package
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return {t for t in targets if t in MODULES and t != module}


GRAPH = {module: imported(module, path) for module, path in MODULES.items()}


def test_every_module_belongs_to_a_tier():
    for module in MODULES:
        tier(module)


def test_imports_run_downward():
    upward = [f"{m} (tier {tier(m)}) imports {t} (tier {tier(t)})" for m, targets in GRAPH.items()
              for t in sorted(targets) if tier(t) > tier(m)]
    assert not upward, "imports against the direction:\n" + "\n".join(upward)


def test_no_modules_import_each_other():
    """Tarjan's strongly connected components: any component of two or more modules is a loop."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    loops: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in GRAPH[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                loops.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    assert not loops, "modules that import each other: " + "; ".join(", ".join(loop) for loop in loops)


def test_the_checker_sees_an_upward_and_a_mutual_import(tmp_path):
    """The walk itself: a function-level import and a TYPE_CHECKING import are both found."""
    source = tmp_path / "probe.py"
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from film_diffusion.cli import main\n"
                      "def f():\n    from film_diffusion.training import trainer\n")
    assert imported("film_diffusion.layers", source) == {"film_diffusion.cli", "film_diffusion.training.trainer"}
