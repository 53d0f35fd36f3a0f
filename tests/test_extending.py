"""The README's extension guide, followed to the letter: each toy is added the way the guide says (a function and
one row in the files it names, registered here for one test) and then works everywhere the guide promises, with
no other edit. The knob recipe is tested in test_config.py, the claim recipe in test_report.py."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nslib import evaluate, methods
from nslib.cli import analyze
from nslib.repro import cache, config, experiments as ex, robustness as rb, run


class Linear2(nn.Module):
    """Two classes, z = W x + b on flattened 1x4x4 images: every attack here has a closed-form optimum."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.fc = nn.Linear(16, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(2, 16, generator=g))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(x.flatten(1))


@pytest.fixture
def linear():
    model = Linear2().eval()
    x = torch.rand(40, 1, 4, 4, generator=torch.Generator().manual_seed(1)) * 0.4 + 0.3  # well inside [0, 1]
    y = model(x).argmax(1)  # every example correct clean
    w = model.fc.weight.detach()
    d = w[1 - y] - w[y]  # [N, 16]: the direction that raises the other class
    margin = (model(x).gather(1, y[:, None]) - model(x).gather(1, 1 - y[:, None])).squeeze(1).detach()  # [N] > 0
    return model, x, y, d, margin


# ----------------------------------------------------------------------------------------------------
# an attack: a function in nslib/attacks.py or nslib/minnorm.py, one row of nslib.evaluate.ATTACKS

def toy_sign(model, x, y, *, eps, seed=0):
    """A fixed-radius toy: one signed-gradient step of size eps (on a linear model, the Linf optimum)."""
    x_ = x.detach().clone().requires_grad_(True)
    grad, = torch.autograd.grad(F.cross_entropy(model(x_), y), x_)
    return (x + eps * grad.sign()).clamp(0, 1).detach()


def toy_project(model, x, y, *, overshoot=1e-3):
    """A minimal-norm toy: the exact L2 projection across a two-class linear model's boundary."""
    w = model.fc.weight.detach()
    d = (w[1 - y] - w[y]).view_as(x)
    gap = (model(x).gather(1, y[:, None]) - model(x).gather(1, 1 - y[:, None])).detach().view(-1, 1, 1, 1)
    return (x + (1 + overshoot) * gap * d / d.flatten(1).pow(2).sum(1).view(-1, 1, 1, 1)).detach()


def test_a_new_fixed_radius_attack_is_one_function_and_one_row(linear, monkeypatch):
    model, x, y, d, margin = linear
    monkeypatch.setitem(evaluate.ATTACKS, "toy", evaluate.Attack(toy_sign, label=lambda p: "TOY"))
    eps = 0.1
    robust = float((margin > eps * d.abs().sum(1)).float().mean())  # the Linf optimum's outcome
    assert 0 < robust < 1
    row, = evaluate.run_suite(model, x, y, [{"attack": "toy", "eps": eps}], batch_size=16)
    assert row["label"] == "TOY" and row["robust_accuracy"] == pytest.approx(robust)
    # analyze crafts its pairs with it
    assert "toy" in analyze.pair_attacks()
    assert torch.equal(evaluate.craft(model, x, y, {"attack": "toy", "eps": eps}), toy_sign(model, x, y, eps=eps))
    # and E3 runs it from one more row of its suite (the reproduction's third file)
    cfg = config.settings("quick", "fmnist", "05")
    suite = [r for r in rb.e3_suite(cfg, pixels=16) if r["id"] == "clean"] + \
        [{"id": "toy", "attack": {"attack": "toy", "eps": eps}}]
    rows = rb.evaluate_model(model, x, y, suite, pairs={})["rows"]
    assert rows["toy"]["label"] == "TOY" and rows["toy"]["accuracy"] == pytest.approx(robust)


def test_a_new_minimal_norm_attack_is_one_function_and_one_row(linear, monkeypatch):
    model, x, y, d, margin = linear
    monkeypatch.setitem(evaluate.ATTACKS, "toy_l2", evaluate.Attack(toy_project, label=lambda p: "TOY-L2",
                                                                    min_norm=True, norm="l2"))
    opt = margin / d.norm(dim=1)  # the exact minimal L2 norm per example
    radius = float(opt.median())
    row, = evaluate.run_suite(model, x, y, [{"attack": "toy_l2", "radius": radius}], batch_size=16)
    assert row["label"] == "TOY-L2"
    assert row["robust_accuracy"] == pytest.approx(float((opt * 1.001 > radius).float().mean()))
    assert row["median_l2"] == pytest.approx(float(opt.median()) * 1.001, rel=1e-3)
    assert "toy_l2" not in analyze.pair_attacks()  # it has no radius: not a way to craft pairs
    with pytest.raises(ValueError, match="fixed-radius attack"):
        evaluate.craft(model, x, y, {"attack": "toy_l2"})


def test_new_attacks_appear_in_nslib_evaluate_without_another_edit(linear, monkeypatch, tmp_path, capsys):
    """The two rows above, and nothing else: ``nslib evaluate --attacks`` spells them (``toy``, ``toy-l2``), lists them
    in ``--help``, runs them at the radius of their norm and writes their outcomes."""
    from nslib.cli.main import main
    model, x, y, d, margin = linear
    monkeypatch.setitem(evaluate.ATTACKS, "toy", evaluate.Attack(toy_sign, label=lambda p: "TOY"))
    monkeypatch.setitem(evaluate.ATTACKS, "toy_l2", evaluate.Attack(toy_project, label=lambda p: "TOY-L2",
                                                                    min_norm=True, norm="l2"))
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    assert "toy, toy-l2" in " ".join(capsys.readouterr().out.split())
    torch.save({"x": x, "y": y}, tmp_path / "d.pt")
    opt = margin / d.norm(dim=1)
    eps, radius = 0.1, float(opt.median())
    assert main(["evaluate", "--model", "test_extending:Linear2", "--data", str(tmp_path / "d.pt"), "--n", "0",
                 "--attacks", "toy,toy-l2", "--eps", str(eps), "--l2-eps", repr(radius), "--precision", "fp32",
                 "--batch-size", "16", "--quiet", "--out", str(tmp_path / "ev")]) == 0
    rows = {r["attack"]: r for r in json.loads((tmp_path / "ev" / "results.json").read_text())["rows"]}
    assert list(rows) == ["clean", "TOY", "TOY-L2"] and rows["clean"]["accuracy"] == 1.0
    assert rows["TOY"]["accuracy"] == pytest.approx(float((margin > eps * d.abs().sum(1)).float().mean()))
    assert rows["TOY-L2"]["accuracy"] == pytest.approx(float((opt * 1.001 > radius).float().mean()))
    header = (tmp_path / "ev" / "outcomes.csv").read_text().splitlines()[0]
    assert header == "index,label,clean,TOY,TOY-L2,TOY-L2 L2"


# ----------------------------------------------------------------------------------------------------
# a training method: one loss function and one row of nslib.methods.METHODS

def toy_loss(net, x, y, x_adv, cfg, acts):
    logits = net(x)
    return F.cross_entropy(logits.float(), y), logits, None


def test_a_new_training_method_goes_into_a_profile_and_notebook_03(monkeypatch):
    monkeypatch.setitem(methods.METHODS, "toy", methods.Method(toy_loss, params=()))
    cfg = config.settings("cpu", "fmnist", "03", {"e2_models": ["vanilla", "toy"]})
    assert cfg.e2_models == ("vanilla", "toy")
    params, key = cache.model_key("fmnist", "smallcnn", "toy", 0, **cfg.train_args)
    assert params["name"] == "toy" and key != cache.model_key("fmnist", "smallcnn", "vanilla", 0, **cfg.train_args)[1]
    assert cache.label("toy") == "toy"  # notebook 03 names it by cache.label, as any model
    curves = {s: [{"layer": "fc", "width": 10, "n_eval": 50,
                   "rows": [{"selection": sel, "k": 1, "accuracy": acc + 0.01 * s}
                            for sel, acc in (("top", 0.6), ("random", 0.3), ("bottom", 0.2), ("matched", 0.5))]}]
              for s in range(3)}
    comps = ex.c2_comparisons(curves, 0.1, model="toy", mode="restore", model_label=cache.label("toy"), margin=0.01)
    assert [c["id"]["other"] for c in comps] == ["random", "bottom", "matched"]
    assert [c["role"] for c in comps] == ["judged", "judged", "control"] and comps[0]["what"].startswith("toy, restore")
    with pytest.raises(ValueError, match=r"e2_models\[1\] must be a model of"):
        config.settings("cpu", "fmnist", "03", {"e2_models": ["vanilla", "not_registered"]})


def test_a_new_training_field_is_checked_and_one_without_a_check_is_refused(monkeypatch):
    """A method's new hyperparameter is a TrainConfig field plus one entry in methods' field checks: a bad value is then
    an error naming it; a field a method reads without a check is refused, never silently unchecked."""
    import dataclasses
    from nslib import checks
    # the field as the guide adds it to TrainConfig (a subclass here, so that the test leaves TrainConfig as it is)
    ToyConfig = dataclasses.make_dataclass("ToyConfig", [("noise", float, dataclasses.field(default=0.1))],
                                           bases=(methods.TrainConfig,), frozen=True)
    monkeypatch.setitem(methods.METHODS, "toy", methods.Method(toy_loss, params=("noise",)))
    with pytest.raises(TypeError, match="'noise' has no check"):
        ToyConfig(method="toy")
    monkeypatch.setitem(methods._FIELD_CHECKS, "noise", checks.check_number)
    assert methods.identity(ToyConfig(method="toy", noise=0.3))["noise"] == 0.3  # it joins the method's identity
    with pytest.raises((TypeError, ValueError), match="noise"):
        ToyConfig(method="toy", noise="loud")
    monkeypatch.delitem(methods._FIELD_CHECKS, "beta")  # and a field of the kit's own methods likewise
    with pytest.raises(TypeError, match="'beta' has no check"):
        methods.TrainConfig(method="trades")


# ----------------------------------------------------------------------------------------------------
# a notebook: the notebook and its number in nslib/repro/config.py NOTEBOOKS

def test_a_new_notebook_is_run_before_the_report(tmp_path, monkeypatch):
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    monkeypatch.setattr(config, "NOTEBOOKS", config.NOTEBOOKS + ("08",))
    for name in ("00_data.ipynb", "06_report.ipynb", "08_toy.ipynb"):
        nb = new_notebook()
        cell = new_code_cell('profile = "quick"\ndataset = "fmnist"\noverrides = {}')
        cell.metadata["tags"] = ["parameters"]
        nb.cells = [cell]
        nbformat.write(nb, str(tmp_path / name))
    runs = run.plan("quick", ["fmnist"], notebooks_dir=tmp_path)
    assert [p.name for _, p, _ in runs] == ["00_data.ipynb", "08_toy.ipynb", "06_report.ipynb"]
    assert config.settings("quick", "fmnist", "08").notebook == "08"


def test_every_notebook_names_itself_once_by_its_file_name(tmp_path, monkeypatch):
    """A notebook says who it is once, in its parameters cell (``notebook_name``, its file's name); its settings come
    from the layer of its number and its results are saved under that name, with their runtime."""
    import json
    from pathlib import Path

    from nslib.repro import notebook
    for path in sorted(Path(__file__).parent.parent.glob("notebooks/0[0-5]_*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        params = next(c for c in cells if "parameters" in c["metadata"].get("tags", []))
        assert f'notebook_name = "{path.stem}"' in "".join(params["source"]), path.name
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code" and c is not params)
        assert path.stem not in code and f'"{path.stem[:2]}"' not in code, f"{path.name} names itself again"
    monkeypatch.setenv("NSLIB_OUTPUTS", str(tmp_path))
    run = notebook.start("quick", "fmnist", "02_neuron_sensitivity", {"seeds": [0, 1]})
    assert run.cfg.notebook == "02" and run.seeds == [0, 1] and run.fig_dir.is_dir()
    saved = json.loads(run.save({"numbers": {"x": 1}}).read_text())
    assert saved["notebook"] == "02_neuron_sensitivity" and saved["runtime_s"] >= 0 and saved["params"]["seeds"] == [0, 1]
    with pytest.raises(ValueError, match=r"notebook must be the notebook's file name .* got 'sensitivity'"):
        notebook.number("sensitivity")
