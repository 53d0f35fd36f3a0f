"""nslib.analyze and ``python -m nslib analyze``: the analysis of a user's model, its numbers recomputed
independently, and every bad input failing before any work with nothing written."""
from __future__ import annotations

import csv
import json
import sys

import pytest
import torch
from torch import nn

from nslib import attacks, models
from nslib.cli import analyze
from nslib.cli.main import main
from nslib.sensitivity import neuron_sensitivity


@pytest.fixture(scope="module")
def smallcnn_file(tmp_path_factory):
    """A SmallCNN for fmnist with random (seeded) weights, saved as a plain state dict."""
    torch.manual_seed(0)
    model = models.build("smallcnn", "fmnist")
    path = tmp_path_factory.mktemp("ckpt") / "smallcnn.pt"
    torch.save(model.state_dict(), path)
    return model.eval(), path


def test_analyze_writes_every_output_and_its_numbers_match_an_independent_computation(smallcnn_file, tmp_path):
    model, _ = smallcnn_file
    x, y, eps = analyze.load_data("fmnist", 40)
    out = tmp_path / "run"
    summary = analyze.analyze(model, x, y, eps=eps, out_dir=out, steps=3, ks=(0.1,), seeds=(0,),
                              meta={"model": "test", "data": "fmnist"})
    names = models.default_layers(model)
    # the pairs and sigma, recomputed by hand with the reproduction's own pair maker
    x_adv = attacks.pgd_pairs(model, x, y, eps=eps, steps=3, seed=0)
    sigma = neuron_sensitivity(model, x, x_adv, layers=names)
    for row in summary["layers"]:
        assert row["mean_abs"] == pytest.approx(float(sigma[row["layer"]].mean()), rel=1e-6)
        assert row["top_neurons"] == sigma[row["layer"]].argsort(descending=True)[:row["k"]].tolist()
    with open(out / "sensitivity.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == sum(s.numel() for s in sigma.values())  # every neuron of every layer
    stored = json.loads((out / "sensitivity.json").read_text())
    assert stored["params"]["eps"] == eps and stored["provenance"]["nslib_version"]
    assert [c["layer"] for c in stored["curves"]["restore"]] == analyze._spread(names, analyze.MAX_CURVES)
    text = (out / "ANALYSIS.md").read_text()
    assert all(n in text for n in names) and "| restore |" in text
    for f in summary["figures"]:
        assert (out / f).stat().st_size > 0 and (out / f).with_suffix(".pdf").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run.")]  # the temp folder was moved


def test_an_error_midway_leaves_nothing_and_an_existing_folder_is_kept(smallcnn_file, tmp_path, monkeypatch):
    model, _ = smallcnn_file
    x, y, eps = analyze.load_data("fmnist", 8)

    def boom(*a, **k):
        raise RuntimeError("stopped midway")

    monkeypatch.setattr(analyze.intervention, "intervention_study", boom)
    with pytest.raises(RuntimeError, match="midway"):
        analyze.analyze(model, x, y, eps=eps, out_dir=tmp_path / "run", steps=1)
    assert list(tmp_path.iterdir()) == []
    kept = tmp_path / "old"
    kept.mkdir()
    (kept / "mine.txt").write_text("keep me")
    with pytest.raises(ValueError, match="--out .* exists and is not empty; pass --force"):
        analyze.analyze(model, x, y, eps=eps, out_dir=kept, steps=1)
    assert (kept / "mine.txt").read_text() == "keep me"


class TupleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4 * 26 * 26, 10)

    def forward(self, x):
        return self.fc(self.conv(x).flatten(1)), None


class RGBNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


def tuple_net():
    return TupleNet()


def rgb_net():
    return RGBNet()


@pytest.fixture
def bad_inputs(smallcnn_file, tmp_path):
    _, good = smallcnn_file
    torch.save(models.build("resnet18", "fmnist").state_dict(), tmp_path / "resnet.pt")
    torch.save({"x": torch.rand(8, 1, 28, 28) * 255, "y": torch.zeros(8, dtype=torch.long)}, tmp_path / "raw.pt")
    return good, tmp_path


@pytest.mark.parametrize("argv, message", [
    (["--model", "smallcnn:{tmp}/resnet.pt"], "the weights do not fit smallcnn built for fmnist; missing in the file: "
                                              "feature_extractor.conv1.weight"),
    (["--model", "smallcnn:{tmp}/none.pt"], "weights file that does not exist"),
    (["--model", "tests.test_analyze:tuple_net"], "--model must return a logits tensor [N, classes], got a tuple"),
    (["--model", "tests.test_analyze:rgb_net"], "--data: images of shape [1, 28, 28] do not fit the model"),
    (["--model", "smallcnn:{good}", "--layers", "feature_extractor.relu9"], "nearest valid names: feature_extractor"),
    (["--model", "smallcnn:{good}", "--data", "{tmp}/raw.pt"], "--data x must have values in [0, 1]"),
    (["--model", "tests.test_analyze:rgb_net", "--data", "{tmp}/missing.pt"], "--data names a file that does not exist"),
    (["--model", "smallcnn:{good}", "--data", "bogus"], "--data must be one of"),
    (["--model", "bogus"], "--model must be ARCH:PATH"),
    (["--model", "smallcnn:{good}", "--eps", "3"], "--eps must be"),
])
def test_bad_input_fails_before_any_work_and_writes_nothing(bad_inputs, argv, message, capsys, monkeypatch):
    good, tmp = bad_inputs
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parent.parent))
    argv = [a.format(tmp=tmp, good=good) for a in argv]
    if "--data" not in argv:
        argv += ["--data", "fmnist"]
    out = tmp / "out"
    rc = main(["analyze", *argv, "--n", "8", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert message in err, err
    assert not out.exists() and not [p for p in tmp.iterdir() if p.name.startswith(".out.")]


def test_torchvision_spec_with_normalisation_runs_on_cifar_shaped_data(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    net = torchvision.models.get_model("resnet18", weights=None, num_classes=10)
    torch.save(net.state_dict(), tmp_path / "rn.pt")
    model = analyze.load_model(f"torchvision:resnet18:{tmp_path / 'rn.pt'}", num_classes=10,
                               mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert isinstance(model, models.Wrapped)
    assert torch.equal(model.net.fc.weight, net.fc.weight)  # the file's weights, loaded
    x, y, eps = analyze.load_data("synthetic:cifar10", 6)
    assert x.shape == (6, 3, 32, 32) and eps == pytest.approx(8 / 255)
    names = analyze.check_fit(model, x, y)
    assert names[0] == "net.conv1" and "net.fc" not in names  # hidden layers only: the logits are left out
    with pytest.raises(ValueError, match="torchvision has no architecture 'resnet19'"):
        analyze.load_model("torchvision:resnet19", num_classes=10)
    with pytest.raises(ValueError, match="--mean and --std go together"):
        analyze.load_model("torchvision:resnet18", num_classes=10, mean=(0.5,))


def test_spread_keeps_the_ends_and_the_count():
    names = [f"l{i}" for i in range(20)]
    picked = analyze._spread(names, 4)
    assert picked[0] == "l0" and picked[-1] == "l19" and len(set(picked)) == 4
    assert analyze._spread(names[:3], 4) == names[:3]
    assert sys.modules["nslib.cli.analyze"] is analyze
