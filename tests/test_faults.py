"""Nothing lost, no garbage: --force removes only what the kit wrote, non-finite models and runs are
refused, a failed or interrupted notebook re-run keeps the finished one, sizes and lists are checked before any
work, unreadable checkpoints are named (and retrained by the cache), and every command-line fault ends in one
line naming the flag. Cheap by design: tiny models, in-process CLI calls, monkeypatched expensive steps."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from nslib import attacks, checkpoints, evaluate, models, store, training
from nslib.cli import analyze
from nslib.cli.main import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A SmallCNN for fmnist (random, seeded) as a state dict; one with a NaN weight; corrupt files."""
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    state = models.build("smallcnn", "fmnist").state_dict()
    torch.save(state, folder / "good.pt")
    nan = {k: v.clone() for k, v in state.items()}
    nan["feature_extractor.conv1.weight"].view(-1)[0] = float("nan")
    torch.save(nan, folder / "nan.pt")
    data = (folder / "good.pt").read_bytes()
    (folder / "truncated.pt").write_bytes(data[: len(data) // 2])  # a zip without its directory
    (folder / "garbage.pt").write_bytes(b"\x80\x02garbage that is no pickle")  # a legacy file: bad magic number
    (folder / "text.pt").write_bytes(b"hello")  # neither zip nor pickle
    (folder / "empty.pt").write_bytes(b"")  # EOF
    torch.save({"images": torch.rand(4, 1, 28, 28)}, folder / "nox.pt")
    torch.save([torch.rand(4, 1, 28, 28), torch.zeros(4, dtype=torch.long), None], folder / "list.pt")
    (folder / "afile").write_text("not a folder")
    return folder


def _no_work(monkeypatch):
    """Any pair crafting fails the test: the probe must be refused before the expensive work."""
    def forbidden(*a, **k):
        raise AssertionError("the pairs were computed before the error")
    monkeypatch.setattr(analyze.attacks, "pgd_pairs", forbidden)


# ----------------------------------------------------------------------------------------------------
# 1. --force removes only what the kit wrote

def test_force_on_the_working_directory_of_unrelated_files_leaves_every_one(weights, tmp_path, monkeypatch, capsys):
    _no_work(monkeypatch)
    (tmp_path / "thesis.tex").write_text("years of work")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "raw.csv").write_text("1,2,3")
    monkeypatch.chdir(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    rc = main(["analyze", "--model", f"smallcnn:{weights / 'good.pt'}", "--data", "fmnist", "--n", "8",
               "--out", ".", "--force"])
    assert rc == 2
    assert "it is the working directory" in capsys.readouterr().err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert (tmp_path / "thesis.tex").read_text() == "years of work"


def test_force_refuses_a_folder_with_foreign_files_and_the_kits_own_places(tmp_path, monkeypatch):
    out = tmp_path / "results"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"holds files nslib did not write there \(notes.txt\)"):
        store.check_result_dir(out, force=True)
    assert (out / "notes.txt").read_text() == "mine"
    monkeypatch.chdir(tmp_path / "results")
    for place, why in ((tmp_path, "it holds the working directory"), (store.repo_root(), "it is the repository"),
                       (store.outputs_dir(), "it is the outputs root")):
        with pytest.raises(ValueError, match=why):
            store.check_result_dir(place, force=True)


def test_force_replaces_only_its_own_result_and_only_once_the_new_one_is_complete(tmp_path, monkeypatch):
    model = models.build("smallcnn", "fmnist").eval()
    x, y = torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    runs = []

    def fake_run(model, x, y, names, tmp, **kw):  # the analysis proper, replaced by two files
        if runs and runs[-1] == "fail":
            (tmp / "ANALYSIS.md").write_text("half")
            raise RuntimeError("stopped midway")
        (tmp / "ANALYSIS.md").write_text(f"run {len(runs)}")
        (tmp / "figures").mkdir()
        (tmp / "figures" / f"f{len(runs)}.png").write_bytes(b"png")
        return {}

    monkeypatch.setattr(analyze, "_run", fake_run)
    out = tmp_path / "run"
    analyze.analyze(model, x, y, eps=0.1, out_dir=out)
    listed = json.loads((out / store.MANIFEST).read_text())["files"]
    assert listed == ["ANALYSIS.md", "figures/f0.png"]
    runs.append("fail")
    with pytest.raises(RuntimeError, match="midway"):
        analyze.analyze(model, x, y, eps=0.1, out_dir=out, force=True)
    assert (out / "ANALYSIS.md").read_text() == "run 0"  # the old result, untouched
    runs.append("ok")
    analyze.analyze(model, x, y, eps=0.1, out_dir=out, force=True)
    assert (out / "ANALYSIS.md").read_text() == "run 2" and not (out / "figures" / "f0.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no temp or old folder left behind


def test_force_adopts_an_analysis_folder_written_before_manifests_existed(tmp_path):
    old = tmp_path / "07_your_model"
    (old / "figures").mkdir(parents=True)
    (old / "sensitivity.json").write_text(json.dumps({"provenance": {"nslib_version": "0.1.0"}}))
    (old / "figures" / "maps.png").write_bytes(b"png")
    store.check_result_dir(old, force=True, legacy=analyze.LEGACY)
    assert json.loads((old / store.MANIFEST).read_text())["files"] == ["figures/maps.png", "sensitivity.json"]
    (old / store.MANIFEST).unlink()
    (old / "figures" / "mine.png").write_bytes(b"png")  # one file analyze never writes: not adopted
    with pytest.raises(ValueError, match="did not write there"):
        store.check_result_dir(old, force=True, legacy=analyze.LEGACY)
    assert not (old / store.MANIFEST).exists()


# ----------------------------------------------------------------------------------------------------
# 2. non-finite models and runs

class NaNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3))) * float("nan")


class NoGradNet(NaNNet):
    def forward(self, x):
        with torch.no_grad():
            return self.fc(self.conv(x).mean((2, 3)))


class DetachNet(NaNNet):
    def forward(self, x):
        return self.fc(self.conv(x.detach()).mean((2, 3)))


def nan_net():
    return NaNNet()


def no_grad_net():
    return NoGradNet()


def detach_net():
    return DetachNet()


def broken_factory():
    raise RuntimeError("CUDA out of memory in the user's code")


def value_error_factory():
    raise ValueError("num_classes must be 10")


def test_non_finite_models_are_refused_by_the_evaluation_entry_points():
    from functools import partial

    model, x, y = NaNNet().eval(), torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    with pytest.raises(ValueError, match=r"model returns non-finite logits \(NaN or inf\) on 4 of 4"):
        evaluate.robust_accuracy(model, x, y, partial(attacks.pgd, eps=0.1, steps=1))
    with pytest.raises(ValueError, match="non-finite logits"):
        evaluate.run_suite(model, x, y, [{"attack": "fgsm", "eps": 0.1}])
    good = DetachNet().eval()
    with torch.no_grad():
        good.conv.weight[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"model has non-finite weights: parameter 'conv.weight' holds 1"):
        evaluate.robust_accuracy(good, x, y, partial(attacks.pgd, eps=0.1, steps=1))


def test_a_diverging_training_run_is_marked_diverged_and_the_cache_never_serves_it(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 4))
    x, y = torch.rand(64, 1, 4, 4), torch.arange(64) % 4
    with pytest.warns(RuntimeWarning, match=r"diverged at epoch 1: train loss (nan|inf|\d)"):
        result = training.train(model, (x, y), method="standard", epochs=3, lr=1e12, batch_size=8,
                                out_dir=tmp_path / "run", progress=False, val_size=8)
    assert result["status"] == "diverged" and result["best"] is None and len(result["history"]) == 1
    assert not (tmp_path / "run" / "best.pt").exists()
    assert checkpoints.read_history(tmp_path / "run")["status"] == "diverged"
    again = training.train(nn.Sequential(nn.Flatten(), nn.Linear(16, 4)), (x, y), method="standard", epochs=3,
                           lr=1e12, batch_size=8, out_dir=tmp_path / "run", progress=False, val_size=8)
    assert again["status"] == "diverged"  # resumed: stays diverged, never continues to "done"

    from nslib.repro import cache

    monkeypatch.setenv("NSLIB_OUTPUTS", str(tmp_path / "outputs"))
    monkeypatch.setattr(cache.training, "train", lambda *a, **k: result)
    with pytest.raises(ValueError, match=r"the pgd_at run in .* diverged at epoch 1 .*lower lr"):
        cache.get_model("fmnist", "smallcnn", "pgd_at", epochs=3)


# ----------------------------------------------------------------------------------------------------
# 3. a failed or interrupted re-run keeps the finished notebook and its done-marker

def _one_notebook(tmp_path, monkeypatch):
    from nbformat.v4 import new_code_cell, new_notebook
    import nbformat

    monkeypatch.setenv("NSLIB_OUTPUTS", str(tmp_path / "outputs"))
    nbdir = tmp_path / "notebooks"
    nbdir.mkdir()
    nb = new_notebook()
    cell = new_code_cell('profile = "quick"\ndataset = "fmnist"\noverrides = {}\n')
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, new_code_cell("1 + 1")]
    nbformat.write(nb, str(nbdir / "02_only.ipynb"))
    return nbdir, tmp_path / "outputs" / "quick" / "fmnist" / "02_only.ipynb"


@pytest.mark.parametrize("fault", ["error", "ctrl-c"])
def test_a_failed_or_interrupted_rerun_keeps_the_finished_notebook_and_its_marker(fault, tmp_path, monkeypatch):
    from nslib.repro import run

    nbdir, out_nb = _one_notebook(tmp_path, monkeypatch)

    def finish(path, partial, params, bar, expected, log=None):  # papermill writing a complete notebook
        partial.write_text("complete: 10/10 cells")

    def fail(path, partial, params, bar, expected, log=None):  # ... or 3 of 10 cells, then the fault
        partial.write_text("partial: 3/10 cells")
        if fault == "ctrl-c":
            raise KeyboardInterrupt
        return RuntimeError("cell 4 failed")

    monkeypatch.setattr(run, "_run_one", finish)
    assert run.reproduce("quick", notebooks_dir=nbdir, progress=False, log=lambda m: None) == 0
    marker = out_nb.with_suffix(".done.json")
    done = marker.read_text()
    monkeypatch.setattr(run, "_run_one", fail)
    messages = []
    rc = run.reproduce("quick", notebooks_dir=nbdir, progress=False, log=messages.append)
    assert rc == (130 if fault == "ctrl-c" else 1)
    assert out_nb.read_text() == "complete: 10/10 cells" and marker.read_text() == done
    assert run.to_run("quick", run.plan("quick", notebooks_dir=nbdir), resume=True) == [False]
    left = sorted(p.name for p in out_nb.parent.iterdir())
    if fault == "error":
        assert left == ["02_only.done.json", "02_only.failed.ipynb", "02_only.ipynb"]
        assert "02_only.failed.ipynb" in messages[-1] and "previous result" in messages[-1]
    else:
        assert left == ["02_only.done.json", "02_only.ipynb"]


# ----------------------------------------------------------------------------------------------------
# 4, 5. sizes and lists checked before any work

@pytest.mark.parametrize("argv, message", [
    (["--only", ","], "--only must list notebook numbers"),
    (["--datasets", ""], "--datasets must list dataset names"),
    (["--set", "k=1000000"], "k must be at most the width of every analysed layer of smallcnn on fmnist"),
    (["--set", "map_layer=no.such.layer"], "map_layer must be a layer of smallcnn on fmnist, got 'no.such.layer'"),
    (["--set", "ks=[0.1, 5000]", "--set", "k_eval=0.1"], "ks must be at most the width"),
    (["--set", "n_eval=20000"], "n_eval must be at most the 10000 test images of fmnist, got 20000"),
])
def test_reproduce_refuses_bad_sizes_before_anything_runs(argv, message, monkeypatch, capsys, tmp_path):
    from nslib.repro import run

    monkeypatch.setenv("NSLIB_OUTPUTS", str(tmp_path))
    monkeypatch.setattr(run, "reproduce", lambda *a, **k: pytest.fail("reproduce started"))
    assert main(["reproduce", "--profile", "quick", *argv]) == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


# ----------------------------------------------------------------------------------------------------
# 6. unreadable checkpoints

def test_an_unreadable_cached_checkpoint_is_named_set_aside_and_retrained(tmp_path, monkeypatch, capsys):
    from nslib.repro import cache

    monkeypatch.setenv("NSLIB_OUTPUTS", str(tmp_path))
    args = dict(epochs=1, n_train=40, val_size=20, batch_size=20, precision="fp32", progress=False)
    _, info = cache.get_model("mnist5k", "smallcnn", "vanilla", **args)
    folder = Path(info["dir"])
    best = (folder / "best.pt").read_bytes()
    (folder / "best.pt").write_bytes(best[:1000])  # truncated
    orphan = folder / ".last.pt.abcd_123.tmp"  # what a kill -9 inside save_torch leaves
    orphan.write_bytes(b"half a checkpoint")
    with pytest.raises(checkpoints.UnreadableCheckpoint, match=f"checkpoint {folder / 'best.pt'} cannot be read"):
        checkpoints.load_checkpoint(folder / "best.pt")
    model, info2 = cache.get_model("mnist5k", "smallcnn", "vanilla", **args)
    err = capsys.readouterr().err
    assert f"checkpoint {folder / 'best.pt'} cannot be read" in err and "training vanilla seed 0 again" in err
    assert info2["status"] == "done" and (folder / "best.pt").read_bytes() != best[:1000]
    assert len(list(folder.glob("best.pt.unreadable-*"))) == 1  # kept aside, not deleted
    assert not orphan.exists()
    x, y = torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    pairs = cache.adversarial_pairs(model, info2, x, y, eps=0.3, precision="auto", steps=1)
    (stored,) = (folder / "pairs").glob("pgd-*.pt")
    stored.write_bytes(stored.read_bytes()[:100])
    assert torch.equal(cache.adversarial_pairs(model, info2, x, y, eps=0.3, precision="auto", steps=1), pairs)
    assert f"cached pairs {stored} cannot be read" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------
# 7. every command-line fault: one line naming the flag, exit 2, nothing computed

@pytest.mark.parametrize("argv, message", [
    (["--out", "."], "--out {cwd} cannot hold a result: it is the working directory"),
    (["--n", "0"], "--n must be an integer >= 2, got 0"),
    (["--n", "-5", "--data", "{w}/nox.pt"], "--n must be an integer >= 2, got -5"),
    (["--n", "1"], "--n must be an integer >= 2, got 1"),
    (["--k", "1.5"], "--k as a fraction must be in (0, 1], got 1.5"),
    (["--k", "100000"], "--k must be at most the width of every analysed layer"),
    (["--layers", ","], "--layers must name at least one layer"),
    (["--steps", "0"], "--steps must be an integer >= 1, got 0"),
    (["--model", "smallcnn:{w}/nan.pt"], "--model has non-finite weights: parameter 'feature_extractor.conv1.weight'"),
    (["--model", "tests.test_faults:nan_net"], "--model returns non-finite logits (NaN or inf) on 2 of 2"),
    (["--model", "smallcnn:{w}/truncated.pt"], "cannot be read as PyTorch weights (corrupt or truncated?"),
    (["--model", "smallcnn:{w}/garbage.pt"], "garbage.pt cannot be read as PyTorch weights"),
    (["--model", "smallcnn:{w}/text.pt"], "text.pt cannot be read as PyTorch weights"),
    (["--model", "smallcnn:{w}/empty.pt"], "empty.pt cannot be read as PyTorch weights"),
    (["--model", "tests.test_faults:broken_factory"], "--model: tests.test_faults:broken_factory() raised "
                                                       "RuntimeError: CUDA out of memory"),
    (["--model", "tests.test_faults:value_error_factory"], "--model: tests.test_faults:value_error_factory() raised "
                                                            "ValueError: num_classes must be 10"),
    (["--model", "tests.test_faults:no_grad_net"], "--model's logits carry no gradient to the input"),
    (["--model", "tests.test_faults:detach_net"], "--model's logits carry no gradient to the input"),
    (["--data", "{w}/nox.pt"], "must hold {'x': [N, C, H, W] in [0, 1], 'y': [N]} (or a tuple (x, y)), got a dict "
                               "with keys ['images']"),
    (["--data", "{w}/list.pt"], "got a list of 3 items"),
    (["--data", "{w}/truncated.pt"], "--data: {w}/truncated.pt cannot be read by torch.load"),
    (["--out", "{w}/afile"], "--out must be a folder, but {w}/afile is a file"),
    (["--out", "{w}/afile/sub"], "--out {w}/afile/sub: cannot write there ({w}/afile is a file)"),
    (["--device", "cuda:7" if torch.cuda.is_available() else "cuda"], "--device cuda"),
    (["--device", "gpu0"], "--device must be a device such as cpu, cuda or cuda:0, got 'gpu0'"),
    (["--data", "mnist5k", "--model", "smallcnn:{w}/good.pt"], "--data mnist5k: missing embedded data file"),
])
def test_every_cli_fault_is_one_line_naming_the_flag(weights, argv, message, tmp_path, monkeypatch, capsys):
    _no_work(monkeypatch)
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.chdir(tmp_path)
    if "mnist5k" in argv:
        monkeypatch.setenv("NSLIB_DATA", str(tmp_path / "nodata"))
        from nslib import data
        monkeypatch.setattr(data, "_verified", set())
    argv = [a.replace("{w}", str(weights)) for a in argv]
    defaults = {"--model": f"smallcnn:{weights / 'good.pt'}", "--data": "fmnist", "--n": "8", "--out": "res"}
    for flag, value in defaults.items():
        if flag not in argv:
            argv += [flag, value]
    rc = main(["analyze", *argv])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("nslib analyze: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert message.replace("{w}", str(weights)).replace("{cwd}", str(tmp_path)) in err, err
    assert not (tmp_path / "res").exists()


def test_bench_names_a_bad_device(capsys):
    assert main(["bench", "attacks", "--device", "gpu0", "--quick"]) == 2
    assert capsys.readouterr().err.startswith("nslib bench: --device must be a device such as cpu")


def test_the_attacks_name_a_float64_batch_and_a_plain_function():
    model = models.build("smallcnn", "fmnist").eval()
    x, y = torch.rand(2, 1, 28, 28), torch.tensor([1, 2])
    with pytest.raises(TypeError, match=r"x has dtype torch.float64 but the model's parameters are torch.float32"):
        attacks.pgd(model, x.double(), y, eps=0.1, steps=1)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module returning logits, got function"):
        attacks.pgd(lambda t: model(t), x, y, eps=0.1, steps=1)


# ----------------------------------------------------------------------------------------------------
# 6. the commands lose nothing (each test failed on 8620c6f)

def _cli(*argv, cwd=None, timeout=300):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "nslib", *map(str, argv)], capture_output=True, text=True,
                          cwd=cwd or ROOT, timeout=timeout)


def test_two_trainings_on_one_out_never_both_write_it(tmp_path):
    """The second command on a folder the first is writing stops with one line; the first run is whole."""
    import subprocess
    import sys
    import time
    out = tmp_path / "x"
    common = ["-m", "nslib", "train", "--model", "smallcnn", "--data", "mnist5k", "--n-train", "600", "--epochs", "2",
              "--attack-steps", "1", "--quiet", "--out", str(out)]
    first = subprocess.Popen([sys.executable, *common, "--seed", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, cwd=ROOT)
    lock = tmp_path / ".x.lock"
    for _ in range(600):  # the first holds the folder once its checks are done
        if lock.exists() and first.poll() is None:
            break
        time.sleep(0.05)
    time.sleep(0.5)
    second = _cli("train", *common[3:], "--seed", "1")
    assert first.wait(timeout=300) == 0, first.stderr.read()
    assert second.returncode == 2 and "being written by another nslib command" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1
    saved = torch.load(out / "last.pt", weights_only=False)
    assert saved["params"]["seed"] == 0 and saved["epoch"] == 2  # the first run, whole


def test_evaluate_force_keeps_a_users_file_of_the_same_name(weights, tmp_path, monkeypatch, capsys):
    out = tmp_path / "u"
    out.mkdir()
    (out / "results.csv").write_text("mine\n")
    rc = main(["evaluate", "--model", f"smallcnn:{weights / 'good.pt'}", "--data", "fmnist", "--n", "10",
               "--attacks", "fgsm", "--out", str(out), "--force", "--quiet"])
    assert rc == 2 and "nslib did not write" in capsys.readouterr().err
    assert (out / "results.csv").read_text() == "mine\n" and sorted(p.name for p in out.iterdir()) == ["results.csv"]
    ours = tmp_path / "ours"
    assert main(["evaluate", "--model", f"smallcnn:{weights / 'good.pt'}", "--data", "fmnist", "--n", "10",
                 "--attacks", "fgsm", "--out", str(ours), "--quiet"]) == 0
    assert main(["evaluate", "--model", f"smallcnn:{weights / 'good.pt'}", "--data", "fmnist", "--n", "10",
                 "--attacks", "fgsm", "--out", str(ours), "--force", "--quiet"]) == 0  # its own result: replaced
    assert (ours / store.MANIFEST).exists()


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_an_out_below_a_file_is_refused_before_any_work(weights, tmp_path, monkeypatch, capsys, command):
    def forbidden(*a, **k):
        raise AssertionError("work started before --out was checked")
    monkeypatch.setattr(training, "train", forbidden)
    monkeypatch.setattr("nslib.cli.evaluate.evaluate_source", forbidden)
    argv = {"train": ["train", "--model", "smallcnn", "--data", "mnist5k"],
            "evaluate": ["evaluate", "--model", f"smallcnn:{weights / 'good.pt'}", "--data", "fmnist", "--n", "10"]}
    rc = main([*argv[command], "--out", str(weights / "afile" / "sub"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "--out" in err and "cannot write there" in err and len(err.strip().splitlines()) == 1


def test_an_unreadable_image_in_a_folder_is_named_with_its_path(tmp_path):
    """A folder of 48 PNGs, one of them not an image: training stops with one line naming that file, exit 2, and
    leaves no checkpoint of an unfinished epoch; the loader itself names it too."""
    import numpy as np
    from PIL import Image
    root = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    for c in range(2):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(24):
            Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(root / f"c{c}" / f"{i:02d}.png")
    bad = root / "c1" / "17.png"
    bad.write_bytes(b"not a png at all")
    (tmp_path / "tinynet.py").write_text("from torch import nn\n\ndef net():\n"
                                         "    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 12 * 12, 2))\n")
    r = _cli("train", "--model", "tinynet:net", "--data", root, "--method", "standard", "--val-size", "4",
             "--epochs", "1", "--batch-size", "8", "--quiet", "--out", tmp_path / "run", cwd=tmp_path)
    assert r.returncode == 2 and "cannot read" in r.stderr and "17.png" in r.stderr, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1].startswith("nslib train: --data") and "Traceback" not in r.stderr
    assert not (tmp_path / "run" / "last.pt").exists()
    from nslib import streams
    ds = streams.image_folder(root)
    with pytest.raises(ValueError, match=r"--data: cannot read .*17\.png"):
        streams.load_indices(ds, [ds.samples.index((str(bad), 1))])


def test_train_names_a_garbage_data_file_in_one_line(weights, tmp_path, capsys):
    for name in ("garbage.pt", "truncated.pt"):
        rc = main(["train", "--model", "smallcnn", "--data", str(weights / name), "--out", str(tmp_path / name),
                   "--quiet"])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("nslib train: --data") and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / name).exists()


def test_result_folders_follow_the_umask(weights, tmp_path, monkeypatch):
    import os
    old = os.umask(0o022)
    try:
        out = tmp_path / "ev"
        assert main(["evaluate", "--model", f"smallcnn:{weights / 'good.pt'}", "--data", "fmnist", "--n", "10",
                     "--attacks", "fgsm", "--out", str(out), "--quiet"]) == 0
        assert out.stat().st_mode & 0o777 == 0o755
        assert all(p.stat().st_mode & 0o777 == 0o644 for p in out.iterdir())
    finally:
        os.umask(old)


@pytest.mark.parametrize("argv, message", [
    (["train", "--model", "smallcnn", "--data", "mnist5k", "--method", "pgd_at", "--lam", "-5"],
     "--lam: --method pgd_at does not read it; it is read by sns"),
    (["train", "--model", "smallcnn", "--data", "mnist5k", "--method", "standard", "--eps", "0.1"],
     "--eps: --method standard does not read it; it is read by pgd_at, trades, sns"),
    (["train", "--model", "smallcnn", "--data", "mnist5k", "--method", "sns", "--beta", "3"],
     "--beta: --method sns (base pgd_at) does not read it; it is read by trades, sns with --base trades"),
    (["train", "--model", "smallcnn", "--data", "mnist5k", "--n-train", "9000"], "--n-train must be at most 3500"),
    (["train", "--model", "smallcnn", "--data", "mnist5k", "--val-size", "4000"], "--val-size must be smaller than"),
    (["evaluate", "--model", "smallcnn", "--data", "fmnist", "--n", "20000"], "--n: fmnist's test split holds 10,000"),
    (["evaluate", "--model", "smallcnn", "--data", "fmnist", "--aa-attacks", "apgd-ce"],
     "--aa-attacks is read with --aa-version custom only"),
])
def test_flags_that_would_change_nothing_or_exceed_the_data_are_refused(argv, message, weights, tmp_path, capsys):
    argv = [a if a != "smallcnn" or argv[0] == "train" else f"smallcnn:{weights / 'good.pt'}" for a in argv]
    rc = main([*argv, "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


def test_resume_with_more_epochs_continues_a_finished_run(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--model", "smallcnn", "--data", "mnist5k", "--method", "standard", "--n-train", "300",
            "--batch-size", "100", "--quiet", "--out", str(out)]
    assert main([*argv, "--epochs", "1"]) == 0
    assert main([*argv, "--epochs", "2", "--resume"]) == 0
    saved = torch.load(out / "last.pt", weights_only=False)
    assert saved["epoch"] == 2 and saved["status"] == "done" and len(saved["history"]) == 2
    capsys.readouterr()
    assert main([*argv, "--epochs", "1", "--resume"]) == 2
    assert "epochs must be at least the 2 of the run in" in capsys.readouterr().err


def test_a_stand_in_takes_its_twins_defaults_in_train(tmp_path, capsys):
    rc = main(["train", "--model", "smallcnn", "--data", "synthetic:fmnist", "--method", "pgd_at", "--epochs", "1",
               "--n-train", "64", "--val-size", "32", "--attack-steps", "1", "--quiet", "--out", str(tmp_path / "s")])
    assert rc == 0, capsys.readouterr().err
    assert torch.load(tmp_path / "s" / "last.pt", weights_only=False)["params"]["eps"] == 0.1  # fmnist's


def test_a_killed_commands_empty_temp_folder_is_cleaned_by_the_next(weights, tmp_path):
    out = tmp_path / "ev"
    orphan = tmp_path / ".ev.abcd1234"
    orphan.mkdir()  # what mkdtemp left when the command was killed before writing
    assert main(["evaluate", "--model", f"smallcnn:{weights / 'good.pt'}", "--data", "fmnist", "--n", "10",
                 "--attacks", "fgsm", "--out", str(out), "--quiet"]) == 0
    assert not orphan.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["ev"]  # the lock file gone too


def test_under_torchrun_a_bad_flag_is_printed_once(tmp_path):
    import os
    import subprocess
    import sys
    port = 29700 + os.getpid() % 500 * 2
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr",
                        "127.0.0.1", "--master_port", str(port), "-m", "nslib", "train", "--model", "smallcnn",
                        "--data", "mnist5k", "--bogus", "1"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode != 0
    assert (r.stdout + r.stderr).count("unrecognized arguments: --bogus") == 1  # rank 0's line; rank 1 is silent
