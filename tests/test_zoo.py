"""nslib.repro.zoo: SNS's lambda chosen on validation, and every notebook's models at that lambda.

Training is replaced by a recording stub (``get_model``), whose validation numbers are set per lambda: the choice
is then known in advance."""
from __future__ import annotations

import pytest

from nslib.repro import cache, config, report, zoo
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
    cfg = config.settings("quick", "fmnist", "01", {"lam_grid": [0.01, 0.1], "seeds": [0, 1], "start": "vanilla"})
    calls = _stub(monkeypatch, {0.0: 0.4, 0.01: 0.5, 0.1: 0.3})
    trained, curves = zoo.main_models(cfg, progress=False)
    assert set(trained) == {(n, s) for n in cfg.models for s in (0, 1)}
    assert {n: c["lam"] for n, c in curves.items()} == {"sns_pgd_at": 0.01, "sns_trades": 0.01}
    assert calls[:2] == [("vanilla", 0, None), ("vanilla", 1, None)]  # first the models the robust ones start from
    main = [c for c in calls[2:] if c[1] == 1]  # seed 1: the main models only (the grid runs on seed 0)
    assert sorted(main) == sorted([("vanilla", 1, None), ("pgd_at", 1, None), ("trades", 1, None),
                                   ("sns_pgd_at", 1, 0.01), ("sns_trades", 1, 0.01)])
    rows = zoo.curve_rows(curves["sns_pgd_at"], steps=5)
    assert [r["value"] for r in rows] == [0.0, 0.01, 0.1] and rows[1]["pgd"]["label"] == "validation PGD-5 (200 images)"
    ax = plot_ablation(rows, param="lambda", mark=curves["sns_pgd_at"]["lam"], path=tmp_path / "lam").axes[0]
    assert "chosen: 0.01" in [t.get_text() for t in ax.get_legend().get_texts()] and (tmp_path / "lam.png").exists()


def test_main_models_rejects_a_lambda_that_collapses_on_any_seed(monkeypatch):
    """SNS (PGD-AT) validates best at 0.1 on seed 0 but collapses there on seed 2: 0.01, the next best, is taken
    and every seed of SNS (PGD-AT) trains at it; SNS (TRADES), which never collapses, keeps 0.1."""
    cfg = config.settings("quick", "fmnist", "01", {"lam_grid": [0.01, 0.1], "seeds": [0, 1, 2], "start": "scratch"})
    calls = []

    def get_model(dataset, arch, name, seed, progress=True, **args):
        lam = args.get("lam", 0.0) if name.startswith("sns") else 0.0
        calls.append((name, seed, args.get("lam")))
        status = "collapsed" if (name, lam, seed) == ("sns_pgd_at", 0.1, 2) else "done"
        best = None if status == "collapsed" else {"val_clean": 0.7, "val_pgd": {0.0: 0.4, 0.01: 0.45, 0.1: 0.5}[lam]}
        return object(), {"status": status, "best": best, "label": name, "collapsed": status == "collapsed"}
    monkeypatch.setattr(zoo, "get_model", get_model)
    trained, curves = zoo.main_models(cfg, progress=False)
    assert curves["sns_pgd_at"]["lam"] == 0.01 and curves["sns_pgd_at"]["rejected"] == [
        {"lam": 0.1, "seeds": [2], "collapsed": [2], "below_base": []}]
    assert curves["sns_trades"]["lam"] == 0.1 and curves["sns_trades"]["rejected"] == []
    assert [c for c in calls if c[0] == "sns_pgd_at" and c[2] == 0.01 and c[1] > 0] == [("sns_pgd_at", 1, 0.01),
                                                                                    ("sns_pgd_at", 2, 0.01)]
    assert not any(info["collapsed"] for _, info in trained.values())
    assert "rejected: collapsed on seed(s) 2" in report.lam_markdown(curves)
    # a collapse on a seed only C3 uses (c3_seeds) counts too, also for a notebook that does not analyse that seed
    c3 = config.settings("quick", "fmnist", "02", {"lam_grid": [0.01, 0.1], "seeds": [0, 1], "c3_seeds": [0, 1, 2]})
    trained, curves = zoo.main_models(c3, progress=False)
    assert curves["sns_pgd_at"]["lam"] == 0.01 and curves["sns_pgd_at"]["rejected"] == [
        {"lam": 0.1, "seeds": [2], "collapsed": [2], "below_base": []}]
    assert {s for _, s in trained} == {0, 1}  # seed 2 was checked, not returned
    # a run that diverges is a failure of its lambda too (get_model raises Diverged for it)
    def diverging(dataset, arch, name, seed, progress=True, **args):
        if name == "sns_trades" and args.get("lam") == 0.1:
            raise cache.Diverged(f"the sns_trades run in somewhere diverged at epoch 1 (seed {seed})")
        return get_model(dataset, arch, name, seed, progress, **args)
    monkeypatch.setattr(zoo, "get_model", diverging)
    trained, curves = zoo.main_models(cfg, progress=False)
    assert curves["sns_trades"]["lam"] == 0.01 and curves["sns_trades"]["rows"][2]["status"] == "diverged"
    assert all(info["status"] == "done" for _, info in trained.values())
    fixed = config.settings("quick", "fmnist", "01", {"lam": 0.1, "seeds": [0], "start": "scratch"})
    with pytest.raises(cache.Diverged, match="sns_trades run in somewhere diverged"):
        zoo.main_models(fixed, progress=False)  # a lambda fixed by the settings: nothing to fall back on
    # collapsing at every lambda on some seed: nothing can be chosen, and the error says which were rejected
    monkeypatch.setattr(zoo, "get_model", lambda dataset, arch, name, seed, progress=True, **args: (
        object(), {"status": "collapsed" if name == "sns_pgd_at" and seed == 1 else "done", "label": name,
                   "collapsed": name == "sns_pgd_at" and seed == 1,
                   "best": {"val_clean": 0.7, "val_pgd": 0.4 + args.get("lam", 0.0)}}))
    with pytest.raises(ValueError, match=r"on every seed; none of \[0.01, 0.1\] does \(failed on other seeds"):
        zoo.main_models(cfg, progress=False)


def test_main_models_rejects_a_lambda_that_validates_too_far_below_its_base_on_any_seed(monkeypatch):
    """lam_drop: SNS (TRADES) validates best at 0.25 on seed 0, but on seed 2 (a seed only C3 uses) its full-validation
    PGD accuracy lies 5 points below its own seed's TRADES: 0.25 is rejected and 0.01 (2 points below at most, and
    exactly 3 on seed 1: the rule's edge, kept) is taken. Without lam_drop nothing is rejected."""
    full = {("trades", 0.0): {0: 0.70, 1: 0.71, 2: 0.70}, ("sns_trades", 0.25): {0: 0.72, 1: 0.70, 2: 0.65},
            ("sns_trades", 0.01): {0: 0.69, 1: 0.68, 2: 0.68}}
    checked = []

    def get_model(dataset, arch, name, seed, progress=True, **args):
        lam = args.get("lam", 0.0) if name.startswith("sns") else 0.0
        val = {0.0: 0.40, 0.01: 0.41, 0.25: 0.45}[lam]
        return object(), {"status": "done", "best": {"val_clean": 0.7, "val_pgd": val}, "label": name,
                          "collapsed": False, "lam": lam, "name": name}

    def full_validation(cfg, seed, model, info, images=None):
        checked.append((info["name"], info["lam"], seed))
        return full.get((info["name"], info["lam"]), {}).get(seed, 0.70)
    monkeypatch.setattr(zoo, "get_model", get_model)
    monkeypatch.setattr(zoo, "full_validation", full_validation)
    over = {"lam_grid": [0.01, 0.25], "seeds": [0, 1], "c3_seeds": [0, 1, 2], "start": "scratch",
            "models": ["vanilla", "trades", "sns_trades"]}
    cfg = config.settings("quick", "fmnist", "01", {**over, "lam_drop": 0.03})
    trained, curves = zoo.main_models(cfg, progress=False)
    assert curves["sns_trades"]["lam"] == 0.01
    (rejected,) = curves["sns_trades"]["rejected"]
    assert rejected["lam"] == 0.25 and rejected["seeds"] == [2] and rejected["collapsed"] == []
    assert [s for s, _ in rejected["below_base"]] == [2] and rejected["below_base"][0][1] == pytest.approx(-0.05)
    assert ("trades", 0.0, 2) in checked  # the base of a seed no notebook analyses here, loaded to compare
    assert "rejected: validated below TRADES on seed 2 (-5.0 points)" in report.lam_markdown(curves)
    assert {(n, s) for n, s in trained} == {(n, s) for n in over["models"] for s in (0, 1)}
    checked.clear()
    _, curves = zoo.main_models(config.settings("quick", "fmnist", "01", over), progress=False)
    assert curves["sns_trades"]["lam"] == 0.25 and curves["sns_trades"]["rejected"] == [] and checked == []
    # every lambda too far below on some seed: a result about SNS, not a failure; the one whose worst seed fell least
    # (0.25: 5 points, against 0.01's 11) is chosen and the report says so
    full[("sns_trades", 0.01)][1] = 0.60
    _, curves = zoo.main_models(cfg, progress=False)
    assert curves["sns_trades"]["lam"] == 0.25 and curves["sns_trades"]["all_below_base"]
    assert [r["lam"] for r in curves["sns_trades"]["rejected"]] == [0.25, 0.01]
    assert "chosen (every lambda fell more than lam_drop below TRADES on some seed: this one least)" in \
        report.lam_markdown(curves)


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

    cfg = config.settings("quick", "fmnist", "01", {"lam_grid": [0.01, 0.1], "seeds": [0], "start": "vanilla"})
    shares, cached = [], {("vanilla", 0), ("pgd_at", 0)}  # these two are found trained

    def get_model(dataset, arch, name, seed, progress=True, **args):
        shares.append(bars.fraction())
        lam = args.get("lam", 0.0) if name.startswith("sns") else 0.0
        return object(), {"status": "done", "best": {"val_clean": 0.7, "val_pgd": 0.5 - lam}, "label": name,
                          "train_s": 0.0 if (name, seed) in cached else 12.0}
    monkeypatch.setattr(zoo, "get_model", get_model)
    trained, _ = zoo.main_models(cfg, extra_seeds=[0, 1])
    # the starts: Vanilla seeds 0 and 1 (the robust models start from them); grid: (base + 2 lambdas) x 2 SNS models
    # = 6 runs; main: 5 models x seed 0; extra: 4 robust models x seed 1
    assert len(shares) == 2 + 6 + 5 + 4 and set(trained) == {(n, 0) for n in cfg.models} | {
        (n, 1) for n in cfg.models if n != "vanilla"}
    assert shares[0] == 0.0 and all(a <= b for a, b in zip(shares, shares[1:]))
    # the first call (Vanilla seed 0) is cached: 16 left; Vanilla seed 1 trains (1 / 16 at the 3rd call, PGD-AT seed
    # 0, the grid's base, cached: 15 left) and the 5 SNS grid runs train; the 9th call (Vanilla seed 0 as a main
    # model) reads 6 / 15; it is cached too: the 10th reads 6 / 14
    assert shares[2] == pytest.approx(1 / 16) and shares[8] == pytest.approx(6 / 15) and shares[9] == pytest.approx(6 / 14)
    assert bars.fraction() is None  # closed
