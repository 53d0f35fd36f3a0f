"""The project's own promises: environment.yml matches pyproject.toml; the two commands exist."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10, which nslib supports: the same parser, from the test extra
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
CONDA_NAMES = {"torch": "pytorch"}  # conda-forge spells some packages differently


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_lists_the_same_packages_as_pyproject():
    py = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(r) for r in py["dependencies"]}
    for extra in py["optional-dependencies"].values():
        wanted |= {_name(r) for r in extra}
    conda, pip, in_pip = set(), set(), False
    text = (ROOT / "environment.yml").read_text()
    for line in text.split("\ndependencies:", 1)[1].splitlines():
        item = re.match(r"^(\s*)-\s+(\S.*)$", line)
        if line.strip().startswith("- pip:"):
            in_pip = True
            continue
        if item:
            name = _name(item.group(2))
            if in_pip and len(item.group(1)) > 2:
                pip.add(name)
            elif name not in ("python", "pip"):
                in_pip = False
                conda.add(name)
    conda = {({v: k for k, v in CONDA_NAMES.items()}).get(n, n) for n in conda}
    assert conda | pip == wanted, (sorted((conda | pip) - wanted), sorted(wanted - (conda | pip)))
    assert not conda & pip


def test_no_exact_pins():
    py = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(py["dependencies"]) + [r for e in py["optional-dependencies"].values() for r in e]
    assert not [r for r in reqs if "==" in r]


def test_readme_quick_start_and_ci_use_the_make_targets():
    readme = (ROOT / "README.md").read_text()
    assert "make reproduce" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^reproduce: setup", makefile, re.M) and re.search(r"^test: setup", makefile, re.M)


def test_paths_resolve_from_the_repository_root(tmp_path, monkeypatch):
    from nslib import store

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NSLIB_OUTPUTS", raising=False)
    monkeypatch.delenv("NSLIB_DATA", raising=False)
    assert store.data_dir() == ROOT / "data"
    assert store.outputs_dir("x") == ROOT / "outputs" / "x"


def test_atomic_write_keeps_the_old_file_when_interrupted(tmp_path):
    from nslib import store

    path = tmp_path / "r.json"
    store.save_json(path, {"a": 1})

    class Boom:
        pass

    with pytest.raises(TypeError):
        store.save_json(path, {"a": Boom()})
    assert store.load_json(path) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temp file left behind


def test_results_are_written_with_the_mode_of_a_plain_open(tmp_path):
    import os
    import stat

    from nslib.store import save_json, save_torch

    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    expected = stat.S_IMODE(plain.stat().st_mode)  # what open() gives under this umask (0644 under 022)
    for path in (save_json(tmp_path / "a.json", {"a": 1}), save_torch(tmp_path / "b.pt", {"b": 2})):
        assert stat.S_IMODE(os.stat(path).st_mode) == expected, path
