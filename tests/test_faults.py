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

from nslib import analyze, attacks, checkpoints, evaluate, models, store, training
from nslib.__main__ import main

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
    pairs = cache.adversarial_pairs(model, info2, x, y, eps=0.3, steps=1)
    (stored,) = (folder / "pairs").glob("pgd-*.pt")
    stored.write_bytes(stored.read_bytes()[:100])
    assert torch.equal(cache.adversarial_pairs(model, info2, x, y, eps=0.3, steps=1), pairs)
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
