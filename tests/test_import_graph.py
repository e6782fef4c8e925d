"""The package's import graph: no cycle, function-level imports included, and only the CLI
imports the facade (aimetcli.api) or the CLI's own modules.

Every module is parsed (never imported) and every ``import aimetcli...`` / ``from aimetcli...
import ...`` statement anywhere in it counts, inside functions and ``if TYPE_CHECKING:`` blocks
too: a cycle hidden in a function is still a cycle, only deferred. Importing ``a.b.c`` also runs
the packages ``a`` and ``a.b``, so those are edges as well. The CLI's lazy command loading
(``importlib.import_module`` of a name from a table) is no import statement and is not counted.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import aimetcli

PACKAGE = Path(aimetcli.__file__).parent
CLI_MODULES = ("aimetcli.cli", "aimetcli.__main__", "aimetcli.commands")


def module_names() -> dict[str, Path]:
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        names[name] = path
    return names


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The module a dotted name is, or the one that defines it (``aimetcli.api.clone`` -> aimetcli.api)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every aimetcli module that ``name`` imports, by any import statement in the file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{alias.name}" for alias in node.names]  # a submodule or a name in base
        for target in targets:
            if not target.startswith("aimetcli"):
                continue
            resolved = _resolve(target, modules)
            if resolved is not None:
                found.update(m for m in _with_parents(resolved) if m in modules)
    found.discard(name)
    return found


@functools.lru_cache(maxsize=1)
def import_graph() -> dict[str, set[str]]:
    modules = module_names()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as the modules along it (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_function_level_cycles(tmp_path):
    """The checker itself: a cycle through an import inside a function is found."""
    a = tmp_path / "a.py"
    a.write_text("def f():\n    from aimetcli import b\n")
    b = tmp_path / "b.py"
    b.write_text("from aimetcli.a import f\n")
    modules = {"aimetcli": tmp_path / "__init__.py", "aimetcli.a": a, "aimetcli.b": b}
    (tmp_path / "__init__.py").write_text("")
    graph = {name: imports_of(name, path, modules) for name, path in modules.items()}
    assert graph["aimetcli.a"] == {"aimetcli", "aimetcli.b"}
    assert find_cycle(graph) == ["aimetcli.a", "aimetcli.b", "aimetcli.a"]


def test_only_the_cli_imports_the_facade_and_the_cli():
    """aimetcli.api is the library's facade: nothing below it imports it back; and nothing
    outside the CLI imports the CLI (its output and option helpers included)."""
    graph = import_graph()
    cli_side = [m for m in graph if m.startswith(CLI_MODULES)]
    for name, deps in graph.items():
        if name in cli_side:
            continue
        assert "aimetcli.api" not in deps or name == "aimetcli.api", f"{name} imports aimetcli.api"
        assert not [d for d in deps if d in cli_side], f"{name} imports the CLI: {sorted(deps & set(cli_side))}"


def test_the_steps_are_imported_from_above_only():
    """The facade's steps (aimetcli/steps/, ptq_flow, its judge, mixed-precision stage and report) are
    imported by the facade, by ptq (built on the others) and by the CLI only: nothing in the core or
    the techniques reaches up to them."""
    graph = import_graph()
    ptq = {"aimetcli.ptq_flow", "aimetcli.ptq_judge", "aimetcli.ptq_amp", "aimetcli.ptq_report"}
    steps = {m for m in graph if m.startswith("aimetcli.steps.") or m in ptq}
    above = {"aimetcli.api", *ptq, *(m for m in graph if m.startswith(CLI_MODULES))}
    for name, deps in graph.items():
        if name not in above and name not in steps:
            assert not deps & steps, f"{name} imports the steps {sorted(deps & steps)}"


PROTOBUF_SIDE = {"aimetcli.model_io", "aimetcli.big_tensors", "aimetcli.proto_wire", "aimetcli.model_ops",
                 "aimetcli.constant_part",
                 "aimetcli.runtime"}


def _imports_onnx(path: Path) -> list[str]:
    """The onnx modules (``onnx``, ``onnx.helper``, ...; not onnx_ir or onnxruntime) a file imports."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
        found += [n for n in names if n == "onnx" or n.startswith("onnx.")]
    return found


def test_onnx_is_imported_by_model_io_and_the_runtime_boundary_only():
    """Graphs are built on onnx-ir everywhere; the protobuf (onnx, onnx.helper, numpy_helper) is
    met only where models are read and written and where runtime.Session serializes a graph (the
    same rule as ruff's banned-api in pyproject.toml, checked here without ruff)."""
    offenders = {name: found for name, path in module_names().items()
                 if name not in PROTOBUF_SIDE and (found := _imports_onnx(path))}
    assert not offenders
    assert _imports_onnx(module_names()["aimetcli.model_io"])  # the check sees an import where there is one
