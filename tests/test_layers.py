"""The folder shows the layers. The library (``nslib/*.py``: the kernels and tools a user imports) never imports the
command line (``nslib/cli/``) nor the reproduction (``nslib/repro/``: settings, caches, E1-E4, the report, papermill
runs); the reproduction never imports the command line, which calls it only from ``cli.main`` (``reproduce``); inside
each, imports point down a fixed order; functions stay small enough to read; no private name crosses a module."""
from __future__ import annotations

import ast
from pathlib import Path

import nslib

NSLIB = Path(nslib.__file__).parent
LIBRARY = sorted(NSLIB.glob("*.py"))
REPRODUCTION = sorted((NSLIB / "repro").glob("*.py"))
COMMANDS = sorted((NSLIB / "cli").glob("*.py"))

LAYERS = {  # module -> layer; a module may import only from its own layer or below
    "store": 0, "checks": 0, "progress": 0, "__init__": 0, "data": 1, "models": 1, "distributed": 1, "streams": 1,
    "fast": 2, "attack_core": 2, "attacks": 2, "sensitivity": 2, "minnorm": 2, "checkpoints": 2, "hooks": 2,
    "autoattack": 2, "intervention": 3, "evaluate": 3, "training": 3, "methods": 3, "verdicts": 4, "viz": 6, "forest": 6,
    "repro.__init__": 10, "repro.cache": 10, "repro.zoo": 10.5, "repro.experiments": 11, "repro.robustness": 11,
    "repro.report": 12, "repro.profiles": 12.5, "repro.config": 13, "repro.notebook": 13.5, "repro.run": 14,
    "cli.__init__": 15, "cli.specs": 15, "cli.bench_attacks": 16, "cli.bench": 17, "cli.analyze": 17, "cli.train": 17,
    "cli.evaluate": 17, "cli.compare": 17, "cli.main": 20, "__main__": 21,
}


def _name(path: Path) -> str:
    return f"{path.parent.name}.{path.stem}" if path.parent.name in ("repro", "cli") else path.stem


KNOWN = {_name(p) for p in LIBRARY + REPRODUCTION + COMMANDS} | {"repro", "cli"}  # what `from nslib[.x] import name` can name


def _imports(path: Path) -> set[str]:
    """The kit's modules a file imports (``attacks``, ``repro.cache``, or ``repro`` for the package itself),
    wherever the import statement stands: at the module head or inside a function."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "nslib":
            mod = node.module.split(".", 1)[1] if "." in node.module else ""
            for a in node.names:
                full = f"{mod}.{a.name}" if mod else a.name
                if full in KNOWN:
                    out.add(full)
                elif mod:
                    out.add(mod)
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".", 1)[1] for a in node.names if a.name.startswith("nslib.")}
    return out


# the package's one convenience entry, nslib.compare(...), imports its module when called (nothing at import time)
ENTRY_POINTS = {("__init__", "cli.compare")}


def test_the_library_never_imports_the_reproduction_nor_the_commands():
    assert len(LIBRARY) > 15 and len(REPRODUCTION) >= 5 and len(COMMANDS) >= 7, "the kit's modules were not found"
    for path in LIBRARY:
        if path.name == "__main__.py":  # python -m nslib: the command line's entry
            continue
        bad = sorted(m for m in _imports(path)
                     if m.split(".")[0] in ("repro", "cli") and (_name(path), m) not in ENTRY_POINTS)
        assert not bad, f"nslib/{path.name} (the library) imports the reproduction or the commands: {bad}"
    for path in REPRODUCTION:
        bad = sorted(m for m in _imports(path) if m.split(".")[0] == "cli")
        assert not bad, f"nslib/repro/{path.name} imports the command line: {bad}"
    for path in COMMANDS:
        bad = sorted(m for m in _imports(path) if m.split(".")[0] == "repro")
        assert path.name == "main.py" or not bad, f"nslib/cli/{path.name} imports the reproduction: {bad}"


def test_the_check_sees_every_form_of_import(tmp_path):
    """The oracle of the tests here: imports of the reproduction at a module's head and inside a function."""
    bad = tmp_path / "bad.py"
    for src, want in [("def f():\n    from nslib.repro import cache\n", "repro.cache"),
                      ("from nslib import repro\n", "repro"), ("import nslib.repro.run\n", "repro.run"),
                      ("from nslib.repro.cache import get_model\n", "repro.cache"), ("from nslib import attacks\n", "attacks")]:
        bad.write_text(src)
        assert want in _imports(bad), src


def test_imports_point_down():
    for path in LIBRARY + REPRODUCTION + COMMANDS:
        name = _name(path)
        assert name in LAYERS, f"{path} has no layer in this test: add it"
        for dep in _imports(path):
            dep = {"repro": "repro.__init__", "cli": "cli.__init__"}.get(dep, dep)
            if (name, dep) in ENTRY_POINTS:
                continue
            assert LAYERS[dep] <= LAYERS[name], f"nslib.{name} (layer {LAYERS[name]}) imports nslib.{dep} " \
                                                f"(layer {LAYERS[dep]}): an arrow up"


MAX_FUNCTION_LINES = 80  # "a function on one screen": its code, not counting the docstring a user reads


def _code_lines(node) -> int:
    body = node.body
    doc = body[0] if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
        and isinstance(body[0].value.value, str) else None
    n = node.end_lineno - node.lineno + 1
    return n - (doc.end_lineno - doc.lineno + 1 if doc is not None else 0)


def test_functions_stay_small():
    for path in LIBRARY + REPRODUCTION + COMMANDS:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = _code_lines(node)
                name = f"{_name(path)}.{node.name}"
                assert n <= MAX_FUNCTION_LINES, f"{name} has {n} lines of code"


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _private_crossings(path: Path) -> list[str]:
    """The underscored names a file takes from the kit's other modules: ``from nslib.x import _y`` and ``x._y`` where
    ``x`` names a kit module the file imported (``from nslib import x [as z]``, ``import nslib.x as z``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    modules, out = {}, []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "nslib":
            mod = node.module.split(".", 1)[1] if "." in node.module else ""
            for a in node.names:
                full = f"{mod}.{a.name}" if mod else a.name
                if full in KNOWN:
                    modules[a.asname or a.name] = full
                elif _private(a.name):
                    out.append(f"{mod or 'nslib'}.{a.name}")
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("nslib.") and a.asname:
                    modules[a.asname] = a.name.split(".", 1)[1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr) and isinstance(node.value, ast.Name) \
                and node.value.id in modules:
            out.append(f"{modules[node.value.id]}.{node.attr}")
    return out


def test_no_private_name_crosses_a_module_boundary():
    """A helper two modules need is public in its own module (adv-lib's utils): no module of the kit imports another's
    underscored names, nor reaches them as attributes (tests may)."""
    for path in LIBRARY + REPRODUCTION + COMMANDS:
        assert not _private_crossings(path), f"nslib/{_name(path)} uses private names of other modules: " \
                                            f"{_private_crossings(path)}"


def test_the_private_check_sees_every_form(tmp_path):
    """The oracle of the test above: each way of reaching another module's private name is seen; public names, the
    module's own private names and dunders are not."""
    src = tmp_path / "mod.py"
    for code, want in [("from nslib.attack_core import _x\n", ["attack_core._x"]),
                       ("from nslib import attacks as a\na._y\n", ["attacks._y"]),
                       ("import nslib.hooks as h\nh._Hooks\n", ["hooks._Hooks"]),
                       ("def f():\n    from nslib.repro import cache\n    return cache._spec\n", ["repro.cache._spec"]),
                       ("from nslib import attacks\nattacks.pgd\nattacks.__name__\n_local = 1\n", [])]:
        src.write_text(code)
        assert _private_crossings(src) == want, code
