"""Figures: each is written as PNG and PDF, has labelled axes and a title, and shows the data given."""
from __future__ import annotations

import math
from collections import OrderedDict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from nslib import forest, verdicts, viz  # noqa: E402
from nslib.intervention import intervention_curve  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def written(path):
    png, pdf = path.parent / (path.name + ".png"), path.parent / (path.name + ".pdf")
    assert png.exists() and pdf.exists()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and pdf.read_bytes()[:5] == b"%PDF-"
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]  # atomic writes left no temp


def labelled(ax):
    assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title()


def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 4, 3, padding=1), relu=nn.ReLU(), pool=nn.AvgPool2d(2),
                                     flat=nn.Flatten(), fc=nn.Linear(4 * 16, 3)))


def pairs(n, c=3, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, c, size, size, generator=g)
    return x, (x + 0.1 * (2 * torch.rand(x.shape, generator=g) - 1)).clamp(0, 1)


@pytest.mark.parametrize("kind", ["box", "violin"])
def test_layer_sensitivity_figure(tmp_path, kind):
    g = torch.Generator().manual_seed(0)
    sens = {"vanilla": {"l1": torch.rand(16, generator=g) * 10, "l2": torch.rand(8, generator=g)},
            "pgd-at": ({"l1": torch.rand(16, generator=g), "l2": torch.tensor([0.1, math.nan] * 4)},
                       {"l1": torch.zeros(16, dtype=torch.bool), "l2": torch.tensor([False, True] * 4)})}
    path = tmp_path / "figs" / "layers"
    fig = viz.plot_layer_sensitivity(sens, kind=kind, log=True, path=path)
    written(path)
    ax = fig.axes[0]
    labelled(ax)
    assert "log" in ax.get_ylabel() and ax.get_yscale() == "log"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["l1", "l2"]
    assert sorted(t.get_text() for t in ax.get_legend().get_texts()) == ["pgd-at", "vanilla"]


def test_layer_sensitivity_auto_linear_scale_with_zeros(tmp_path):
    fig = viz.plot_layer_sensitivity({"a": torch.tensor([0.0, 1.0, 2.0])}, path=tmp_path / "one")
    written(tmp_path / "one")
    assert fig.axes[0].get_yscale() == "linear"
    with pytest.raises(ValueError, match="kind"):
        viz.plot_layer_sensitivity({"a": torch.ones(2)}, kind="bar", path=tmp_path / "x")


def test_intervention_curve_figure(tmp_path):
    model = small_cnn()
    x, x_adv = pairs(12)
    y = torch.arange(12) % 3
    curves = [intervention_curve(model, x, x_adv, y, "conv", ks=[0, 1, 2, 4], seeds=[0, 1]),
              intervention_curve(model, x, x_adv, y, "fc", ks=[1, 3], seeds=[0, 1], mode="zero")]
    fig = viz.plot_intervention_curve(curves, band="std", path=tmp_path / "curve")
    written(tmp_path / "curve")
    assert len(fig.axes) == 2 and fig._suptitle.get_text()
    ax = fig.axes[0]
    labelled(ax)
    labels = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert {"top", "bottom", "clean"} <= set(labels) and any(t.startswith("random") for t in labels)
    top_line = next(l for l in ax.get_lines() if l.get_label() == "top")
    top_rows = [r for r in curves[0]["rows"] if r["selection"] == "top"]
    assert list(top_line.get_ydata()) == [r["accuracy"] for r in sorted(top_rows, key=lambda r: r["k"])]
    assert len(ax.collections) == 2  # bands for random and matched
    viz.plot_intervention_curve(curves[0], path=tmp_path / "single.png")
    written(tmp_path / "single")


def test_intervention_curve_wraps_many_panels_into_a_grid(tmp_path):
    # six layers once made one 4124x565 px row whose text was unreadable at page width
    model = small_cnn()
    x, x_adv = pairs(12)
    curve = intervention_curve(model, x, x_adv, torch.arange(12) % 3, "conv", ks=[0, 2], seeds=[0])
    curves = [dict(curve, layer=f"layer{i}") for i in range(6)]
    fig = viz.plot_intervention_curve(curves, path=tmp_path / "six")
    written(tmp_path / "six")
    assert len(fig.axes) == 6
    cols = {round(ax.get_position().x0, 3) for ax in fig.axes}
    rows = {round(ax.get_position().y0, 3) for ax in fig.axes}
    assert len(cols) == 3 and len(rows) == 2
    width, height = fig.get_size_inches()
    assert width / height < 2.5
    for ax in fig.axes:
        labelled(ax)
    four = viz.plot_intervention_curve(curves[:4], ncols=2, path=tmp_path / "four")
    assert len({round(ax.get_position().y0, 3) for ax in four.axes}) == 2
    five = viz.plot_intervention_curve(curves[:5], path=tmp_path / "five")
    assert len(five.axes) == 5 and five.axes[-1].get_legend() is not None  # the empty slot is removed
    with pytest.raises(ValueError, match="ncols"):
        viz.plot_intervention_curve(curves, ncols=0, path=tmp_path / "bad")


def test_sensitive_neuron_maps_figure(tmp_path):
    model = small_cnn().train()
    x, x_adv = pairs(5)
    fig = viz.plot_sensitive_neuron_maps(model, x, x_adv, "conv", k=2, n_images=3, path=tmp_path / "maps")
    written(tmp_path / "maps")
    assert model.training
    bars = [ax for ax in fig.axes if hasattr(ax, "_colorbar")]
    assert len(fig.axes) == 3 * (2 + 2 * 2) + len(bars) and fig._suptitle.get_text()
    # one colour bar per channel, under its benign and adversarial columns, saying what the colour means
    assert len(bars) == 2 and all("activation" in ax.get_xlabel() for ax in bars)
    maps = fig.axes[2].get_images()[1]
    assert bars[0]._colorbar.mappable.get_clim() == maps.get_clim() == fig.axes[3 + 2 * 6].get_images()[1].get_clim()
    first = fig.axes[0]
    assert first.get_title() == "benign" and first.get_ylabel().startswith("image 0")
    bottom_left = fig.axes[2 * 6]
    assert bottom_left.get_xlabel() and bottom_left.get_ylabel()
    assert len(fig.axes[2].get_images()) == 2  # image plus overlaid map
    gray = viz.plot_sensitive_neuron_maps(nn.Sequential(OrderedDict(conv=nn.Conv2d(1, 2, 3), flat=nn.Flatten(),
                                                                    fc=nn.Linear(2 * 36, 3))),
                                          *pairs(2, c=1), "conv", channels=[1], path=tmp_path / "gray")
    written(tmp_path / "gray")
    assert len(gray.axes) == 2 * 4 + 1
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        viz.plot_sensitive_neuron_maps(model, x, x_adv, "fc", channels=[0], path=tmp_path / "bad")


def _acc(a):
    return {"accuracy": a, "low": max(0.0, a - 0.05), "high": min(1.0, a + 0.05)}


def test_ablation_breaks_lines_at_collapsed_runs_and_explains_the_cross(tmp_path):
    # lam = 1 and lam = 100 collapsed: their accuracies are of a stopped run and must not join a line
    rows = [{"value": v, "clean": _acc(c), "pgd": dict(_acc(p), label="PGD-20"), "collapsed": bad}
            for v, c, p, bad in [(0, 0.8, 0.4, False), (0.1, 0.78, 0.42, False), (1, 0.1, 0.1, True),
                                 (10, 0.7, 0.45, False), (100, 0.1, 0.1, True)]]
    fig = viz.plot_ablation(rows, param="lam", path=tmp_path / "lam")
    written(tmp_path / "lam")
    ax = fig.axes[0]
    labelled(ax)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(t.startswith("collapsed") and "not a result" in t for t in labels)
    assert "PGD-20" in labels and "pgd" not in labels  # each metric's own label, not its key
    collapsed_x = (1.0, 100.0)  # the log axis keeps positive values where they are
    for container in ax.containers:
        xs, ys = container.lines[0].get_data()
        # consecutive points are joined only when both are finite
        segments = [(x0, x1) for x0, y0, x1, y1 in zip(xs, ys, xs[1:], ys[1:])
                    if not (math.isnan(y0) or math.isnan(y1))]
        assert segments  # the runs that finished are still joined
        assert not [(x0, x1) for x0, x1 in segments for c in collapsed_x if min(x0, x1) <= c <= max(x0, x1)]
    cross = next(l for l in ax.get_lines() if l.get_label().startswith("collapsed"))
    assert sorted(cross.get_xdata()) == [1.0, 100.0] and cross.get_linestyle() == "None"


def test_robustness_bars_name_the_seed_count_and_mark_attacks_not_run(tmp_path):
    attacks = ["clean", "PGD-20", "AutoAttack", "transfer"]
    table = {"Vanilla": {a: _acc(0.9) for a in attacks[:2]},  # evaluate_model(light=True): no AutoAttack
             "PGD-AT": {a: _acc(0.5) for a in attacks}}
    fig = viz.plot_robustness_bars(table, path=tmp_path / "bars")
    written(tmp_path / "bars")
    ax = fig.axes[0]
    labelled(ax)
    assert "one seed" in ax.get_title() and "mean over" not in ax.get_title()
    assert [t.get_text() for t in ax.texts] == ["not run", "not run"]  # Vanilla under AutoAttack and transfer
    assert any(t.get_text().startswith("not run") for t in ax.get_legend().get_texts())
    assert len(ax.get_xticklabels()) == 4
    three = {name: {a: dict(r, n_seeds=3) for a, r in rows.items()} for name, rows in table.items()}
    assert "mean over 3 seeds" in viz.plot_robustness_bars(three, path=tmp_path / "three").axes[0].get_title()
    full = viz.plot_robustness_bars({"PGD-AT": table["PGD-AT"]}, path=tmp_path / "full").axes[0]
    assert not full.texts and not any(t.get_text().startswith("not run") for t in full.get_legend().get_texts())


def test_eps_curves_name_the_attack_that_ran(tmp_path):
    fig = viz.plot_eps_curves({"PGD-AT": [(0.05, 0.6), (0.1, 0.4), (0.2, 0.0)]}, attack="PGD-7",
                              path=tmp_path / "eps")
    written(tmp_path / "eps")
    ax = fig.axes[0]
    assert ax.get_ylabel() == "accuracy under PGD-7" and "PGD-7" in ax.get_title() and "PGD-20" not in ax.get_title()


def test_mean_rows_records_the_seed_count():
    from nslib.repro.robustness import mean_rows

    evals = {("m", s): {"rows": {"clean": _acc(a)}} for s, a in ((0, 0.6), (1, 0.8))}
    row = mean_rows(evals, "m", [0, 1])["clean"]
    assert row["n_seeds"] == 2 and row["accuracy"] == pytest.approx(0.7)


def test_forest_plot_draws_each_effect_its_interval_zero_and_the_margin(tmp_path):
    holds = verdicts.compare([0.50, 0.52, 0.51], [0.40, 0.41, 0.39], what="SNS > base, PGD", margin=0.01,
                             unit="accuracy")
    nope = verdicts.compare([0.30, 0.31, 0.29], [0.30, 0.31, 0.29], what="SNS > base, transfer", margin=0.01,
                            unit="accuracy")
    rho = verdicts.compare([0.5, 0.6, 0.55], [0.0, 0.0, 0.0], what="-Spearman > 0", margin=0.2, unit="correlation")
    fig = forest.plot_forest({"C3 (points)": [holds, nope], "C1 (correlation)": [rho], "empty": []},
                             path=tmp_path / "forest")
    written(tmp_path / "forest")
    c3, c1 = fig.axes  # the empty group gets no panel
    assert [t.get_text() for t in c3.get_yticklabels()] == ["SNS > base, transfer", "SNS > base, PGD"]  # top down
    interval = [ln for ln in c3.get_lines() if ln.get_color() == forest.COLOURS["holds"] and len(ln.get_xdata()) == 2][0]
    assert interval.get_xdata() == pytest.approx([100 * v for v in holds["ci"]])  # accuracy drawn in points
    verticals = sorted(ln.get_xdata()[0] for ln in c3.get_lines() if list(ln.get_xdata()) == [ln.get_xdata()[0]] * 2
                       and ln.get_ydata()[0] != ln.get_ydata()[1])
    assert verticals == pytest.approx([0.0, 1.0])  # zero and the 1-point margin
    assert nope["verdict"] == "does not hold" and c1.get_title(loc="left") == "C1 (correlation)"
    with pytest.raises(ValueError, match="groups must hold at least one comparison"):
        forest.plot_forest({"C3": []})
