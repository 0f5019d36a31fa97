"""The house rules, checked on the source: every module imports; no import circle; data flows one way
(no module imports from a higher floor); no function longer than a reader takes in at once."""
import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "qdq"
# Floors, lowest first: a module may import its own floor and those below, never above.
FLOORS = [
    ("qdq.version", "qdq.errors", "qdq.progress", "qdq.modelio"),
    ("qdq.calib",),
    ("qdq.graph", "qdq.targets"),
    ("qdq.trt",),
    ("qdq.measure",),
    ("qdq.report",),
    ("qdq.pipeline", "qdq.stages", "qdq.options", "qdq.trt_cache", "qdq.bundle"),
    ("qdq.cli", "qdq.demo"),
    ("qdq",),
]
MAX_LINES = 80
# a function may be longer only with a comment on the line above its def saying why
LONG_OK = "# long:"


def _modules() -> dict:
    """module name -> path, for every .py under qdq/."""
    out = {}
    for p in sorted(ROOT.rglob("*.py")):
        parts = p.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


def _imports(name: str, path: Path, known: set) -> set:
    """qdq modules that ``name`` imports anywhere in its source (module level or inside functions)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # `from pkg import sub` imports the submodule; `from mod import name` the module
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:   # the deepest qdq module the name points into
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def _floor(name: str) -> int:
    """The floor of a module: the longest FLOORS prefix it falls under."""
    best = None
    for level, prefixes in enumerate(FLOORS):
        for p in prefixes:
            if (name == p or name.startswith(p + ".")) and (best is None or len(p) > best[1]):
                best = (level, len(p))
    assert best is not None, f"{name} is on no floor: add it to FLOORS"
    return best[0]


def _graph() -> dict:
    mods = _modules()
    return {m: _imports(m, p, set(mods)) for m, p in mods.items()}


@pytest.mark.parametrize("name", sorted(m for m in _modules() if not m.endswith("__main__")))
def test_every_module_imports(name):
    importlib.import_module(name)


def _cycles(graph: dict) -> list:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    return cycles


def test_no_import_circle():
    assert not _cycles(_graph()), f"import circles: {_cycles(_graph())}"


def test_data_flows_one_way():
    upward = [(m, t) for m, targets in _graph().items() for t in targets
              if _floor(t) > _floor(m) and not (m == "qdq" or m.startswith("qdq.") and t == "qdq")]
    assert not upward, "imports from a higher floor: " + ", ".join(f"{m} → {t}" for m, t in upward)


def test_the_backend_runs_what_it_is_given():
    """qdq.trt builds and runs models it is handed: calibration, the FP16 plan and the comparison are
    composed around it (qdq.cli.trt, qdq.measure.engines), never reached from inside it."""
    inside = [(m, t) for m, targets in _graph().items() if m.startswith("qdq.trt.") for t in targets
              if t.startswith(("qdq.calib", "qdq.measure"))]
    assert not inside, inside


def test_the_rules_catch_the_circles_qdq_once_had():
    """The import graph of the flat package before the move, as it was: both circles are found, and
    comparison → pipeline would now go up a floor."""
    old = {"qdq.pipeline": {"qdq.mixed_precision", "qdq.comparison"}, "qdq.mixed_precision": {"qdq.comparison"},
           "qdq.comparison": {"qdq.pipeline", "qdq.metrics"}, "qdq.tensorrt_backend": {"qdq.engine_layers"},
           "qdq.engine_layers": {"qdq.tensorrt_backend"}, "qdq.metrics": set()}
    assert _cycles(old) == [["qdq.comparison", "qdq.mixed_precision", "qdq.pipeline"],
                            ["qdq.engine_layers", "qdq.tensorrt_backend"]]
    assert _floor("qdq.measure.comparison") < _floor("qdq.pipeline")


def test_functions_fit_on_a_screen():
    long = []
    for p in sorted(ROOT.rglob("*.py")):
        lines = p.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                above = lines[node.lineno - 2].strip() if node.lineno > 1 else ""
                if n > MAX_LINES and not above.startswith(LONG_OK):
                    long.append(f"{p.relative_to(ROOT.parent)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, "functions over 80 lines without a '# long:' reason: " + "; ".join(long)


def test_core_imports_no_optional_dependency():
    """Pillow and scikit-image belong to the demo and image data, never to a module-level import of the
    graph-rewriting core."""
    heavy = {"PIL", "skimage", "tensorrt", "tensorrt_rtx", "cuda", "pycuda", "netron", "cv2"}
    bad = []
    for name, path in _modules().items():
        for node in ast.parse(path.read_text()).body:   # module level only
            if isinstance(node, ast.Import):
                roots = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                roots = [(node.module or "").split(".")[0]]
            else:
                continue
            bad += [f"{name}: {r}" for r in roots if r in heavy]
    assert not bad, bad


# classes whose fields are a public schema, not pass state: the --json summary and compare's per-layer
# rows (grouping their fields would change the JSON users read)
WIDE_RECORDS = {"qdq.report.summary.Summary", "qdq.measure.comparison.LayerReport"}


def _attributes(cls: ast.ClassDef) -> set:
    """Fields declared in the class body and attributes assigned on self anywhere in it."""
    names = {n.target.id for n in cls.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}
    for n in ast.walk(cls):
        targets = n.targets if isinstance(n, ast.Assign) else [n.target] if isinstance(n, ast.AnnAssign) else []
        for t in targets:
            for e in (t.elts if isinstance(t, ast.Tuple) else [t]):
                if isinstance(e, ast.Attribute) and isinstance(e.value, ast.Name) and e.value.id == "self":
                    names.add(e.attr)
    return names


def test_no_class_holds_more_than_twelve_things():
    wide = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and len(_attributes(node)) > 12 and f"{name}.{node.name}" not in WIDE_RECORDS:
                wide.append(f"{name}.{node.name} ({len(_attributes(node))})")
    assert not wide, wide


def test_the_orchestrator_only_composes():
    assert len((ROOT / "pipeline.py").read_text().splitlines()) <= 300
