"""nslib.repro.run: the orchestrator. Checks before any work, papermill runs of throwaway notebooks (a failure names
the executed notebook; --resume redoes only what is left) and the CLI's exit codes."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from nslib.repro import config, run

# ----------------------------------------------------------------------------------------------------
# the shipped notebooks

def test_notebooks_take_only_what_papermill_injects():
    import papermill

    for path in run.notebooks():
        if path.name[:2] not in run.REPRODUCTION:
            continue
        params = papermill.inspect_notebook(str(path))
        assert set(params) == {"profile", "dataset", "overrides", "notebook_name"}, f"{path.name}: {sorted(params)}"
        assert params["notebook_name"]["default"] == f'"{path.stem}"'  # what run.plan injects: the file's name
    assert {p["notebook_name"] for _, _, p in run.plan("quick", ["fmnist"])} == {
        path.stem for path in run.notebooks() if path.name[:2] in run.REPRODUCTION}


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


def test_plan_covers_the_profile_and_checks_everything_first():
    runs = run.plan("full")
    assert [(d, p.name[:2]) for d, p, _ in runs][:2] == [("fmnist", "00"), ("fmnist", "01")]
    assert {d for d, _, _ in runs} == {"fmnist", "mnist5k"}
    assert all(params["overrides"] == {} for _, _, params in runs)
    with pytest.raises(ValueError, match="got 'bogus'"):
        run.plan("quick", ["fmnist", "bogus"])
    with pytest.raises(ValueError, match="do not exist: 99"):
        run.plan("quick", only=["99"])
    with pytest.raises(ValueError, match="epochs must be an integer >= 1, got -1"):
        run.plan("quick", overrides={"epochs": -1})


# ----------------------------------------------------------------------------------------------------
# reproduce on throwaway notebooks

PARAMS = 'profile = "quick"  # profile\ndataset = "fmnist"  # dataset\noverrides = {}  # knobs\n'


def _write_nb(path, body: str):
    nb = new_notebook()
    nb.metadata = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                   "language_info": {"name": "python"}}
    cell = new_code_cell(PARAMS)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, new_code_cell(body)]
    nbformat.write(nb, str(path))


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """Three throwaway notebooks; each appends its number to a log file, the second fails while the file
    ``fail`` exists beside the log, the third is a report (rebuilt whenever a notebook before it ran)."""
    out = tmp_path / "outputs"
    monkeypatch.setenv("NSLIB_OUTPUTS", str(out))
    nbdir = tmp_path / "notebooks"
    nbdir.mkdir()
    log = tmp_path / "runs.log"
    _write_nb(nbdir / "01_first.ipynb", f"open({str(log)!r}, 'a').write('01\\n')")
    _write_nb(nbdir / "02_second.ipynb",
              "from nslib import progress\nfor _ in progress.bar(range(3), desc='inner'):\n    pass\n"
              f"if __import__('os').path.exists({str(tmp_path / 'fail')!r}):\n"
              "    raise ValueError('n_eval of 1 is too small here')\n"
              f"open({str(log)!r}, 'a').write('02\\n')")
    _write_nb(nbdir / "06_report.ipynb", f"open({str(log)!r}, 'a').write('06\\n')")
    return nbdir, out, log


@pytest.mark.slow
def test_reproduce_fails_naming_the_notebook_then_resume_redoes_only_what_is_left(tiny, capsys):
    nbdir, out, log = tiny
    messages = []
    (log.parent / "fail").touch()
    rc = run.reproduce("quick", notebooks_dir=nbdir, progress=False, log=messages.append)
    assert rc == 1
    failed = out / "quick" / "fmnist" / "02_second.failed.ipynb"  # beside, never over, a finished notebook
    assert str(failed) in messages[-1] and "ValueError" in messages[-1]
    assert not (out / "quick" / "fmnist" / "02_second.ipynb").exists()
    assert "n_eval of 1 is too small" in failed.read_text()  # the traceback is in the executed notebook
    assert (out / "quick" / "fmnist" / "01_first.done.json").exists()
    assert not (out / "quick" / "fmnist" / "02_second.done.json").exists()
    assert log.read_text().split() == ["01"]
    assert "without encryption" not in capsys.readouterr().err  # the kernel runs on IPC sockets

    messages.clear()
    (log.parent / "fail").unlink()
    runs = run.plan("quick", notebooks_dir=nbdir)
    assert run.to_run("quick", runs, resume=True) == [False, True, True]  # 01 done; the report follows 02
    assert run.to_run("quick", runs, resume=False) == [True, True, True]
    rc = run.reproduce("quick", notebooks_dir=nbdir, resume=True, progress=False, log=messages.append)
    assert rc == 0
    assert log.read_text().split() == ["01", "02", "06"]
    assert any("skip" in m and "01_first" in m for m in messages)
    marker = json.loads((out / "quick" / "fmnist" / "02_second.done.json").read_text())
    assert marker["settings"]["n_eval"] == 200 and marker["settings"]["notebook"] == "02"
    assert not failed.exists()  # the record of the failure goes once the notebook succeeds

    # everything done: a resumed run executes nothing; changing a knob reruns every notebook it may affect
    assert run.to_run("quick", runs, resume=True) == [False, False, False]
    assert "expected about 0 min" in run.announce("quick", runs, todo=run.to_run("quick", runs, resume=True))
    run.reproduce("quick", notebooks_dir=nbdir, resume=True, progress=False, log=messages.append)
    assert log.read_text().split() == ["01", "02", "06"]
    run.reproduce("quick", notebooks_dir=nbdir, resume=True, overrides={"n_eval": 2}, progress=False,
                  log=messages.append)
    assert log.read_text().split() == ["01", "02", "06", "01", "02", "06"]

    # a re-run of the finished 02 that fails keeps the finished notebook and its done-marker
    finished, marker = out / "quick" / "fmnist" / "02_second.ipynb", out / "quick" / "fmnist" / "02_second.done.json"
    before = (finished.read_text(), marker.read_text())
    (log.parent / "fail").touch()
    assert run.reproduce("quick", only=["02"], overrides={"n_eval": 2}, notebooks_dir=nbdir, progress=False,
                         log=messages.append) == 1
    assert (finished.read_text(), marker.read_text()) == before and "too small" in failed.read_text()


def test_reproduce_rejects_bad_input_before_running(tiny):
    nbdir, out, log = tiny
    with pytest.raises(ValueError, match="unknown parameter 'stepz'"):
        run.reproduce("quick", notebooks_dir=nbdir, overrides={"stepz": 1}, progress=False)
    with pytest.raises(ValueError, match="do not exist: 07"):
        run.reproduce("quick", notebooks_dir=nbdir, only=["07"], progress=False)
    assert not log.exists()


@pytest.mark.parametrize("argv, message", [
    (["--set", "seeds=[0,1"], "seeds must be a non-empty list"),
    (["--set", "epochs=-1"], "epochs must be an integer >= 1, got -1"),
    (["--set", "nonexistent=3"], "unknown parameter 'nonexistent'"),
    (["--datasets", "fmnist,bogus"], "got 'bogus'"),
    (["--profile", "fast"], "profile must be one of"),
    (["--only", "99"], "do not exist: 99"),
])
def test_cli_fails_at_once_naming_the_parameter(argv, message, tmp_path):
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "nslib", "reproduce", *argv], capture_output=True, text=True,
                          env={**__import__("os").environ, "NSLIB_OUTPUTS": str(tmp_path)}, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert not any(tmp_path.iterdir())  # nothing started, nothing written
    assert time.perf_counter() - t0 < 30  # interpreter start and imports; the checks themselves take ms


def test_ctrl_c_stops_with_one_line_naming_the_command_that_resumes(tiny, monkeypatch):
    nbdir, out, log = tiny

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "_run_one", interrupted)
    messages = []
    rc = run.reproduce("quick", only=["02"], overrides={"n_eval": 7}, notebooks_dir=nbdir, progress=False,
                       log=messages.append)
    assert rc == 130
    assert len(messages) == 1 and messages[0].strip().startswith("interrupted")
    assert "python -m nslib reproduce --profile quick --only 02 --set 'n_eval=7' --resume" in messages[0]


def test_the_announcement_names_the_profile_why_and_the_expected_time():
    runs = run.plan("cpu")
    line = run.announce("cpu", runs, "no CUDA device")
    total = sum(config.expected_seconds("cpu", d, nb)[0] for nb in config.NOTEBOOKS for d in ("fmnist", "mnist5k"))
    assert line.startswith("nslib reproduce: profile 'cpu' (no CUDA device) on fmnist, mnist5k (14 notebook runs)")
    assert f"expected about {total / 60:.0f} min" in line
    assert "expected time unknown" in run.announce("full", run.plan("full", datasets=["mnist5k"]))


def test_the_cli_runs_the_profile_for_the_machine_by_default(monkeypatch, capsys):
    from nslib.cli.main import main as cli_main

    called = []
    monkeypatch.setattr(run, "reproduce", lambda profile, **kw: called.append((profile, kw["only"])) or 0)
    monkeypatch.setattr(config, "auto_profile", lambda: ("cpu", "no CUDA device"))
    assert cli_main(["reproduce", "--only", "06"]) == 0
    assert called == [("cpu", ["06"])]
    assert "profile 'cpu' (no CUDA device)" in capsys.readouterr().out
    monkeypatch.setattr(config, "auto_profile", lambda: ("full", "a CUDA device is present"))
    assert cli_main(["reproduce", "--only", "06"]) == 0 and called[-1] == ("full", ["06"])


def test_the_run_bar_follows_the_share_of_work_the_kernel_reports(monkeypatch, tmp_path):
    """A notebook expected to take 1,000 s whose kernel reports half of its models trained after a second: its part
    of the whole-run bar stands at half of its share (95% of 1,000 s x 0.5), not at the one second the clock says;
    when the share is gone (the models bar closed) the clock runs on from there; the bar never goes back."""
    def kernel(path, out_nb, params, status_file, outcome, log=None):
        time.sleep(0.6)
        status_file.write_text("models 1/2\n0.500000")
        time.sleep(1.2)
        status_file.write_text("plots")
        time.sleep(1.2)

    class Bar:  # the part of tqdm that _run_one touches, recording each redraw
        n, seen = 0.0, []

        def set_postfix_str(self, text, refresh=True):
            self.seen.append((self.n, text))

        def refresh(self):
            pass

    monkeypatch.setattr(run, "_execute", kernel)
    bar = Bar()
    assert run._run_one(Path("01_train.ipynb"), tmp_path / "01.ipynb", {"dataset": "fmnist"}, bar, 1000.0) is None
    ns = [n for n, _ in bar.seen]
    assert ns == sorted(ns)
    assert any(n == pytest.approx(475.0) for n, text in bar.seen if "models 1/2" in text)
    assert 475.0 < ns[-1] < 480.0  # the clock's second or so after the share
    assert bar.n == 1000.0  # done: the notebook's whole share
