"""The package's layers point one way: core <- models <- tools, and no module imports itself back in a cycle.

Core: arseg_ops' own modules (ops, validation, loader, op metadata, reference, video, testing). Models:
arseg_ops.models (the models/ folder). Tools: arseg_ops.bench, arseg_ops.cli, arseg_ops.train and
`python -m arseg_ops`. Every import statement counts, also those inside functions (a deferred import still
couples the layers).
"""
import ast
import os

import pytest

import arseg_ops
import arseg_ops.models

ROOTS = {"arseg_ops": os.path.dirname(arseg_ops.__file__), "arseg_ops.models": os.path.dirname(arseg_ops.models.__file__)}
TOOL_PACKAGES = ("arseg_ops.bench", "arseg_ops.cli", "arseg_ops.train")
LAYERS = {"core": 0, "models": 1, "tools": 2}


def _modules():
    """{module name: path} for every .py file of the package (models/ mapped to arseg_ops.models)."""
    found = {}
    for package, root in ROOTS.items():
        for folder, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if d != "__pycache__" and not (package == "arseg_ops" and d == "models")]
            rel = os.path.relpath(folder, root)
            prefix = package if rel == "." else package + "." + rel.replace(os.sep, ".")
            for f in files:
                if f.endswith(".py"):
                    name = prefix if f == "__init__.py" else prefix + "." + f[:-3]
                    found[name] = os.path.join(folder, f)
    return found


def layer(module):
    if module == "arseg_ops.__main__" or module.startswith(tuple(p + "." for p in TOOL_PACKAGES)) or \
            module in TOOL_PACKAGES:
        return "tools"
    if module == "arseg_ops.models" or module.startswith("arseg_ops.models."):
        return "models"
    return "core"


def _imports(module, path, known):
    """Modules of this package that `module` imports (resolved to the deepest known module)."""
    tree = ast.parse(open(path).read(), path)
    is_package = path.endswith("__init__.py")
    base_parts = module.split(".") if is_package else module.split(".")[:-1]
    targets = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names = [base + "." + a.name for a in node.names] + [base]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
    return targets


@pytest.fixture(scope="module")
def graph():
    known = _modules()
    return {m: _imports(m, p, known) for m, p in known.items()}


def test_the_walker_sees_the_layers(graph):
    assert layer("arseg_ops._ops") == "core" and layer("arseg_ops.models.arseg") == "models"
    assert layer("arseg_ops.cli.bench_command") == "tools" and layer("arseg_ops.bench.cases") == "tools"
    assert "arseg_ops.models" in graph["arseg_ops.cli.video_commands"]  # imports are found at all
    assert {"core", "models", "tools"} <= {layer(m) for m in graph}


def test_imports_only_point_down(graph):
    upward = sorted("%s (%s) imports %s (%s)" % (m, layer(m), t, layer(t))
                    for m, targets in graph.items() for t in targets if LAYERS[layer(t)] > LAYERS[layer(m)])
    assert not upward, "imports that point up a layer:\n" + "\n".join(upward)


def find_cycles(graph):
    """Strongly connected sets of more than one module (Tarjan). A package's __init__ importing its own
    submodules, which import the package back for a sibling, is how Python packages work and is not counted."""
    def edges(m):
        return [t for t in graph.get(m, ()) if not t.startswith(m + ".")]

    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges(v):
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

    for m in graph:
        if m not in index:
            visit(m)
    return cycles


def test_cycle_finder_finds_cycles():
    assert find_cycles({"p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": {"p.a"}, "p.d": {"p.a"}}) == [["p.a", "p.b", "p.c"]]
    assert find_cycles({"p": {"p.a"}, "p.a": {"p"}}) == []  # package <-> its own submodule


def test_no_import_cycles(graph):
    cycles = find_cycles(graph)
    assert not cycles, "import cycles: %s" % cycles
