"""nslib.repro.zoo: SNS's lambda chosen on validation, and every notebook's models at that lambda.

Training is replaced by a recording stub (``get_model``), whose validation numbers are set per lambda: the choice
is then known in advance."""
from __future__ import annotations

import pytest

from nslib.repro import config, zoo
from nslib.viz import plot_ablation


def _stub(monkeypatch, val_pgd: dict, collapsed=()):
    """Replace zoo.get_model: SNS at lambda v validates at val_pgd[v]; a base at val_pgd[0]. Records every call."""
    calls = []

    def get_model(dataset, arch, name, seed, progress=True, **args):
        lam = args.get("lam", 0.0) if name.startswith("sns") else 0.0
        calls.append((name, seed, args.get("lam")))
        status = "collapsed" if lam in collapsed else "done"
        best = None if status == "collapsed" else {"val_clean": 0.7, "val_pgd": val_pgd[lam]}
        return object(), {"status": status, "best": best, "label": name}
    monkeypatch.setattr(zoo, "get_model", get_model)
    return calls


def test_lam_curve_chooses_the_best_validation_robust_accuracy_never_a_collapsed_run(monkeypatch):
    cfg = config.settings("quick", "fmnist", "01", {"lam_grid": [0.01, 0.1, 1.0]})
    calls = _stub(monkeypatch, {0.0: 0.40, 0.01: 0.41, 0.1: 0.45, 1.0: 0.9}, collapsed=(1.0,))
    curve = zoo.lam_curve(cfg, "sns_pgd_at", progress=False)
    assert curve["lam"] == 0.1 and not curve["fixed"] and curve["base"] == "pgd_at" and curve["seed"] == cfg.seeds[0]
    assert [r["lam"] for r in curve["rows"]] == [0.0, 0.01, 0.1, 1.0]  # the base first, as lambda 0
    assert curve["rows"][-1]["collapsed"] and curve["rows"][-1]["val_pgd"] is None
    lo, hi = curve["rows"][2]["val_pgd_ci"]
    assert lo < 0.45 < hi  # a Wilson interval on val_n_adv images
    assert ("pgd_at", cfg.seeds[0], None) in calls  # the base is trained without lambda
    # the base itself (lambda 0) is never chosen, even when it validates best: SNS is tested at a positive lambda
    _stub(monkeypatch, {0.0: 0.99, 0.01: 0.41, 0.1: 0.41, 1.0: 0.3})
    assert zoo.lam_curve(cfg, "sns_pgd_at", progress=False)["lam"] == 0.01  # a tie: the smaller lambda


def test_lam_curve_all_collapsed_names_lam_grid_and_a_fixed_lam_trains_nothing(monkeypatch):
    cfg = config.settings("quick", "fmnist", "01", {"lam_grid": [0.5, 1.0]})
    _stub(monkeypatch, {0.0: 0.4}, collapsed=(0.5, 1.0))
    with pytest.raises(ValueError, match=r"lam_grid must hold a lambda .* \[0.5, 1.0\]"):
        zoo.lam_curve(cfg, "sns_trades", progress=False)
    calls = _stub(monkeypatch, {})
    fixed = config.settings("quick", "fmnist", "01", {"lam": 0.02})
    curve = zoo.lam_curve(fixed, "sns_pgd_at", progress=False)
    assert curve["lam"] == 0.02 and curve["fixed"] and curve["rows"] == [] and calls == []


def test_main_models_trains_each_sns_model_at_its_own_lambda(monkeypatch, tmp_path):
    cfg = config.settings("quick", "fmnist", "01", {"lam_grid": [0.01, 0.1], "seeds": [0, 1]})
    calls = _stub(monkeypatch, {0.0: 0.4, 0.01: 0.5, 0.1: 0.3})
    trained, curves = zoo.main_models(cfg, progress=False)
    assert set(trained) == {(n, s) for n in cfg.models for s in (0, 1)}
    assert {n: c["lam"] for n, c in curves.items()} == {"sns_pgd_at": 0.01, "sns_trades": 0.01}
    main = [c for c in calls if c[1] == 1]  # seed 1: the main models only (the grid runs on seed 0)
    assert sorted(main) == sorted([("vanilla", 1, None), ("pgd_at", 1, None), ("trades", 1, None),
                                   ("sns_pgd_at", 1, 0.01), ("sns_trades", 1, 0.01)])
    rows = zoo.curve_rows(curves["sns_pgd_at"], steps=5)
    assert [r["value"] for r in rows] == [0.0, 0.01, 0.1] and rows[1]["pgd"]["label"] == "validation PGD-5 (200 images)"
    ax = plot_ablation(rows, param="lambda", mark=curves["sns_pgd_at"]["lam"], path=tmp_path / "lam").axes[0]
    assert "chosen: 0.01" in [t.get_text() for t in ax.get_legend().get_texts()] and (tmp_path / "lam.png").exists()


def test_settings_check_c3_seeds_models_and_margins():
    cfg = config.settings("cpu", "fmnist", "05")
    assert cfg.c3_seeds == (0, 1, 2, 3, 4) and set(cfg.seeds) <= set(cfg.c3_seeds) and "lam" not in cfg.train_args
    assert config.settings("quick", "fmnist", "05").c3_seeds == (0,)  # None: the seeds themselves
    assert config.settings("cpu", "mnist5k", "05").models == ("vanilla", "pgd_at", "sns_pgd_at")
    with pytest.raises(ValueError, match=r"c3_seeds must include every seed of seeds \[0, 1, 2\]"):
        config.settings("cpu", "fmnist", "05", {"c3_seeds": [0, 1, 5]})
    with pytest.raises(ValueError, match=r"models must start with 'vanilla' and name each SNS model after its base"):
        config.settings("quick", "fmnist", "05", {"models": ["vanilla", "sns_pgd_at", "pgd_at"]})
    with pytest.raises(ValueError, match=r"margins must be a dict of numbers >= 0 with exactly the keys accuracy"):
        config.settings("quick", "fmnist", "05", {"margins": {"accuracy": 0.01}})
    with pytest.raises(ValueError, match=r"lam_grid\[0\] must be a number in \(0, 1e\+06\]"):
        config.settings("quick", "fmnist", "05", {"lam_grid": [0.0, 0.1]})


def test_main_models_counts_the_models_that_train_on_one_overall_bar(monkeypatch):
    """Notebook 01's time left follows the training: one overall bar over the lambda grid, the main models and C3's
    extra seeds (of every model but Vanilla); a model found trained is taken off its total, one that trains counts.
    The share written for the runner, read at each call, is the models trained so far over those that train."""
    from nslib import progress as bars

    cfg = config.settings("quick", "fmnist", "01", {"lam_grid": [0.01, 0.1], "seeds": [0]})
    shares, cached = [], {("vanilla", 0), ("pgd_at", 0)}  # these two are found trained

    def get_model(dataset, arch, name, seed, progress=True, **args):
        shares.append(bars.fraction())
        lam = args.get("lam", 0.0) if name.startswith("sns") else 0.0
        return object(), {"status": "done", "best": {"val_clean": 0.7, "val_pgd": 0.5 - lam}, "label": name,
                          "train_s": 0.0 if (name, seed) in cached else 12.0}
    monkeypatch.setattr(zoo, "get_model", get_model)
    trained, _ = zoo.main_models(cfg, extra_seeds=[0, 1])
    # grid: (base + 2 lambdas) x 2 SNS models = 6 runs; main: 5 models x seed 0; extra: 4 robust models x seed 1
    assert len(shares) == 6 + 5 + 4 and set(trained) == {(n, 0) for n in cfg.models} | {
        (n, 1) for n in cfg.models if n != "vanilla"}
    assert shares[0] == 0.0 and all(a <= b for a, b in zip(shares, shares[1:]))
    # the first call (PGD-AT seed 0, the grid's base) is cached: 14 left, and the 5 SNS grid runs train; the 7th
    # call (Vanilla seed 0) reads 5 / 14; it is cached too: the 8th reads 5 / 13
    assert shares[6] == pytest.approx(5 / 14) and shares[7] == pytest.approx(5 / 13)
    assert bars.fraction() is None  # closed
