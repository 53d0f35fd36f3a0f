"""nslib.run: the verdict rule on constructed numbers, the model-cache key, notebook parameters, and
``reproduce`` on tiny throwaway notebooks (a failure names the executed notebook; --resume redoes only
what is left)."""
from __future__ import annotations

import argparse
import ast
import json

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from nslib import run


# ----------------------------------------------------------------------------------------------------
# verdict rule

def test_compare_holds_when_difference_beyond_two_std_and_intervals_disjoint():
    c = run.compare([0.50, 0.52, 0.51], [0.40, 0.41, 0.39], intervals_a=[(0.47, 0.55)] * 3,
                    intervals_b=[(0.36, 0.44)] * 3, what="A > B")
    assert c["verdict"] == "holds"
    assert c["diff"]["mean"] == pytest.approx(0.11)
    assert c["overlap"] is False


def test_compare_does_not_hold_when_it_goes_the_other_way():
    c = run.compare([0.40, 0.41, 0.39], [0.50, 0.52, 0.51])
    assert c["verdict"] == "does not hold"


def test_compare_inconclusive_when_spread_too_large():
    # mean difference 0.02, std of differences 0.03: 0.02 < 2 * 0.03
    c = run.compare([0.52, 0.47, 0.52], [0.50, 0.48, 0.47])
    assert c["verdict"] == "inconclusive"
    assert "2 x std" in c["reason"]


def test_compare_inconclusive_when_intervals_overlap_despite_consistent_difference():
    c = run.compare([0.45, 0.45, 0.45], [0.44, 0.44, 0.44], intervals_a=[(0.40, 0.50)] * 3,
                    intervals_b=[(0.39, 0.49)] * 3)
    assert c["diff"]["std"] == pytest.approx(0.0)
    assert c["verdict"] == "inconclusive"
    assert "intervals overlap" in c["reason"]


def test_compare_one_seed_is_inconclusive_and_says_why():
    c = run.compare([0.9], [0.1], intervals_a=[(0.85, 0.95)], intervals_b=[(0.05, 0.15)])
    assert c["verdict"] == "inconclusive"
    assert "one seed" in c["reason"]
    assert run.verdict_line("C3", [c]) == "C3: inconclusive (one seed: the spread over seeds is unknown)"


def test_compare_rejects_unpaired_or_nan():
    with pytest.raises(ValueError, match="paired"):
        run.compare([0.1, 0.2], [0.1])
    with pytest.raises(ValueError, match="NaN"):
        run.compare([float("nan")], [0.1])


def test_combine():
    assert run.combine(["holds", "holds"]) == "holds"
    assert run.combine(["holds", "inconclusive"]) == "inconclusive"
    assert run.combine(["holds", "does not hold", "inconclusive"]) == "does not hold"
    assert run.combine(["not testable offline", "holds"]) == "holds"
    assert run.combine(["not testable offline"]) == "not testable offline"
    with pytest.raises(ValueError):
        run.combine(["maybe"])


# ----------------------------------------------------------------------------------------------------
# model cache key

def test_model_key_drops_arguments_that_do_not_apply():
    base = dict(epochs=2, n_train=100)
    _, k1 = run.model_key("fmnist", "smallcnn", "pgd_at", 0, lam=0.01, k=0.1, **base)
    _, k2 = run.model_key("fmnist", "smallcnn", "pgd_at", 0, lam=0.1, k=0.3, **base)
    assert k1 == k2  # the lambda ablation never retrains PGD-AT
    _, s1 = run.model_key("fmnist", "smallcnn", "sns_pgd_at", 0, lam=0.01, **base)
    _, s2 = run.model_key("fmnist", "smallcnn", "sns_pgd_at", 0, lam=0.1, **base)
    assert s1 != s2
    _, v1 = run.model_key("fmnist", "smallcnn", "vanilla", 0, attack_steps=3, **base)
    _, v2 = run.model_key("fmnist", "smallcnn", "vanilla", 0, attack_steps=5, **base)
    assert v1 == v2
    _, e = run.model_key("fmnist", "smallcnn", "vanilla", 0, epochs=3, n_train=100)
    assert e != v1
    with pytest.raises(ValueError, match="name must be one of"):
        run.model_key("fmnist", "smallcnn", "madry", 0)


# ----------------------------------------------------------------------------------------------------
# the shipped notebooks

SHARED = ["profile", "dataset", "arch", "seeds", "epochs", "vanilla_epochs", "n_train", "batch_size", "lr",
          "attack_steps", "eps_warmup_epochs", "val_size", "val_n_adv", "val_attack_steps", "lam", "k"]


def _parameter_lines(path):
    nb = nbformat.read(str(path), as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    return [line for line in cell.source.splitlines() if line and not line.startswith("#")]


def test_notebook_parameters_parse_and_agree():
    """Every parameter line parses for papermill (an '=' inside a comment silently hides a parameter from
    injection) and the training parameters are the same literals in every notebook that trains models
    (otherwise notebooks would not share the cached models)."""
    paths = [p for p in run.notebooks() if p.name[:2] != "00"]
    assert [p.name[:2] for p in paths] == ["01", "02", "03", "04", "05", "06"]
    shared_values = {}
    for path in paths:
        lines = _parameter_lines(path)
        params = run.notebook_parameters(path)
        assert len(params) == len(lines), f"{path.name}: papermill parsed {sorted(params)} of {lines}"
        for name, text in params.items():
            ast.literal_eval(text)  # literals only
        if path.name[:2] != "06":
            for name in SHARED:
                shared_values.setdefault(name, set()).add(params[name])
    for name, values in shared_values.items():
        assert len(values) == 1, f"notebooks disagree on {name}: {values}"


def test_full_profile_names_only_parameters_that_exist():
    declared = set()
    for path in run.notebooks():
        declared |= set(run.notebook_parameters(path))
    for dataset in ("fmnist", "mnist5k", "mnist", "cifar10"):
        for number in ("01", "05"):
            unknown = set(run.full_parameters(dataset, number)) - declared
            assert not unknown, f"FULL names parameters no notebook has: {unknown}"


def test_committed_notebooks_keep_only_checked_outputs():
    for path in run.notebooks():
        nb = nbformat.read(str(path), as_version=4)
        assert nb.metadata["kernelspec"]["name"] == "python3"
        for cell in nb.cells:
            if cell.cell_type != "code":
                continue
            if "# NBVAL_CHECK_OUTPUT" in cell.source:
                continue
            assert not cell.get("outputs"), f"{path.name}: a cell that nbval does not check stores outputs"
        for cell in nb.cells:
            for out in cell.get("outputs", []):
                assert "image/png" not in out.get("data", {}), f"{path.name} stores an image"


# ----------------------------------------------------------------------------------------------------
# reproduce on throwaway notebooks

def _write_nb(path, body: str, params: str = 'profile = "quick"  # profile\ndataset = "fmnist"  # dataset\n'):
    nb = new_notebook()
    nb.metadata = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                   "language_info": {"name": "python"}}
    cell = new_code_cell(params)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, new_code_cell(body)]
    nbformat.write(nb, str(path))


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """Three throwaway notebooks; each appends its number to a log file, the second fails when steps < 0,
    the third is a report (rebuilt whenever a notebook before it ran)."""
    out = tmp_path / "outputs"
    monkeypatch.setenv("NSLIB_OUTPUTS", str(out))
    nbdir = tmp_path / "notebooks"
    nbdir.mkdir()
    log = tmp_path / "runs.log"
    _write_nb(nbdir / "01_first.ipynb", f"open({str(log)!r}, 'a').write('01\\n')")
    _write_nb(nbdir / "02_second.ipynb",
              f"if steps < 0:\n    raise ValueError(f'steps must be >= 0, got {{steps}}')\n"
              f"open({str(log)!r}, 'a').write('02\\n')",
              params='profile = "quick"  # profile\ndataset = "fmnist"  # dataset\nsteps = 1  # PGD steps\n')
    _write_nb(nbdir / "03_report.ipynb", f"open({str(log)!r}, 'a').write('03\\n')")
    return nbdir, out, log


@pytest.mark.slow
def test_reproduce_fails_naming_the_notebook_then_resume_redoes_only_what_is_left(tiny):
    nbdir, out, log = tiny
    messages = []
    rc = run.reproduce("quick", notebooks_dir=nbdir, overrides={"steps": -1}, progress=False, log=messages.append)
    assert rc == 1
    failed = out / "quick" / "fmnist" / "02_second.ipynb"
    assert str(failed) in messages[-1] and "ValueError" in messages[-1]
    assert "steps must be >= 0" in failed.read_text()  # the traceback is in the executed notebook
    assert (out / "quick" / "fmnist" / "01_first.done.json").exists()
    assert not (out / "quick" / "fmnist" / "02_second.done.json").exists()
    assert log.read_text().split() == ["01"]

    # fixed: --resume skips 01 (same parameters and code) and runs only what is left
    messages.clear()
    rc = run.reproduce("quick", notebooks_dir=nbdir, resume=True, progress=False, log=messages.append)
    assert rc == 0
    assert log.read_text().split() == ["01", "02", "03"]
    assert any("skip" in m and "01_first" in m for m in messages)
    marker = json.loads((out / "quick" / "fmnist" / "02_second.done.json").read_text())
    assert marker["params"] == {"profile": "quick", "dataset": "fmnist"}

    # everything done: a resumed run executes nothing; changing a parameter reruns that notebook and the
    # report after it
    run.reproduce("quick", notebooks_dir=nbdir, resume=True, progress=False, log=messages.append)
    assert log.read_text().split() == ["01", "02", "03"]
    run.reproduce("quick", notebooks_dir=nbdir, resume=True, overrides={"steps": 2}, progress=False,
                  log=messages.append)
    assert log.read_text().split() == ["01", "02", "03", "02", "03"]


def test_reproduce_rejects_unknown_names_before_running(tiny, capsys):
    nbdir, out, log = tiny
    with pytest.raises(ValueError, match="no selected notebook has: stepz"):
        run.reproduce("quick", notebooks_dir=nbdir, overrides={"stepz": 1}, progress=False)
    with pytest.raises(ValueError, match="do not exist: 07"):
        run.reproduce("quick", notebooks_dir=nbdir, only=["07"], progress=False)
    assert not log.exists()


def test_main_exit_code_on_bad_arguments(capsys):
    args = argparse.Namespace(profile="quick", datasets=None, only="99", resume=False, set=[])
    assert run.main(args) == 2
    assert "do not exist: 99" in capsys.readouterr().err


def test_parse_overrides():
    assert run._parse_overrides(["steps=3", "seeds=[0, 1]", "dataset=mnist5k", "aa_version='standard'"]) == \
        {"steps": 3, "seeds": [0, 1], "dataset": "mnist5k", "aa_version": "standard"}
    with pytest.raises(ValueError, match="NAME=VALUE"):
        run._parse_overrides(["steps"])


# ----------------------------------------------------------------------------------------------------
# report

def test_write_report_from_constructed_results(tmp_path, monkeypatch):
    monkeypatch.setenv("NSLIB_OUTPUTS", str(tmp_path))
    holds = run.compare([0.5, 0.52, 0.51], [0.4, 0.41, 0.39], what="SNS (PGD-AT) > PGD-AT, AutoAttack accuracy")
    weak = run.compare([0.5], [0.4], what="Vanilla > PGD-AT, mean absolute sensitivity")
    run.save_result("quick", "fmnist", "05_sns_robustness",
                    {"claims": {"C3": {"verdict": run.combine([holds]), "comparisons": [holds], "summary": "s",
                                       "figures": [str(tmp_path / "quick" / "fmnist" / "figures" / "x.png")]}},
                     "sections": {"sanity (05)": "- **PGD-AT**: passes every check.", "baselines (05)": "| t |"},
                     "runtime_s": 12.0}, {"profile": "quick", "dataset": "fmnist", "seeds": [0, 1, 2]})
    run.save_result("quick", "fmnist", "02_neuron_sensitivity",
                    {"claims": {"C4": {"verdict": run.combine([weak]), "comparisons": [weak]}}, "runtime_s": 3.0},
                    {"profile": "quick", "dataset": "fmnist", "seeds": [0]})
    path = run.write_report("quick")
    text = path.read_text()
    assert path == tmp_path / "quick" / "REPORT.md"
    for claim in run.CLAIMS:
        assert f"## {claim}:" in text
    assert "| C3 | holds | not testable offline |" in text
    assert "| C4 | inconclusive | not testable offline |" in text
    assert "| C1 | not run |" in text
    assert "C5" in text and "fmnist: **holds** (C3 on fmnist)" in text
    assert "](fmnist/figures/x.png)" in text  # figure links relative to the report
    assert "passes every check" in text and "not comparable" in text.lower()
    assert "python -m nslib reproduce --profile full --datasets mnist,cifar10" in text
    assert run.report_verdicts("quick")["C3"] == {"fmnist": "holds"}
