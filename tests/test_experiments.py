"""nslib.repro.experiments: the computations behind E1-E4, against independent references and hand-made cases."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from nslib import attacks, verdicts, viz
from nslib.repro import cache, config, experiments as ex, report, robustness as rb

MARGINS = config.KNOBS["margins"].default  # the margins every profile uses unless a run overrides them


def _study(means_by_model):
    """A minimal sensitivity_study result: per model, its mean per variant and its PGD accuracy."""
    return {n: {"label": n.upper(), "mean": {v: m for v in ("abs", "rel", "rel_pairs", "abs_transfer", "rel_transfer")},
                "adv": {"accuracy": acc}} for n, (m, acc) in means_by_model.items()}


def test_c1_c4_comparisons_judge_and_report_what_they_say():
    studies = {s: _study({"vanilla": (0.9 + 0.01 * s, 0.1), "pgd_at": (0.3, 0.5), "trades": (0.2 + 0.01 * s, 0.6),
                          "sns_pgd_at": (0.15, 0.65), "sns_trades": (0.1, 0.7)}) for s in range(3)}
    comps = ex.c1_c4_comparisons(studies, margins=MARGINS)
    c4 = verdicts.judged(ex.of_claim(comps, "C4"))
    assert len(c4) == 4 and all(c["verdict"] == "holds" for c in c4)  # 2 baselines x abs, rel
    assert [(c["id"]["base"], c["id"]["variant"], c["id"]["pairs"]) for c in c4] == \
        [("pgd_at", "abs", "own"), ("pgd_at", "rel", "own"), ("trades", "abs", "own"), ("trades", "rel", "own")]
    controls = [c for c in ex.of_claim(comps, "C4") if c["role"] == "control"]
    assert sorted({(c["id"]["variant"], c["id"]["pairs"]) for c in controls}) == \
        [("abs", "transfer"), ("rel", "transfer"), ("rel_pairs", "own")]  # the toolbox's variant is reported only
    assert "ratio of means" in " ".join(c["what"] for c in c4) and "VANILLA > PGD_AT" in c4[0]["what"]  # labels
    c1 = ex.of_claim(comps, "C1")
    assert len(c1) == 2 and all(c["verdict"] == "holds" for c in c1)  # lower sensitivity, higher robust accuracy
    assert all(-1 <= c["ci"][0] <= c["ci"][1] <= 1 for c in c1)  # Fisher z: inside a correlation's range
    flipped = {s: _study({"vanilla": (0.1, 0.1), "pgd_at": (0.3, 0.5), "trades": (0.5 + 0.01 * s, 0.6)})
               for s in range(3)}
    assert all(c["verdict"] == "does not hold" for c in verdicts.judged(ex.of_claim(ex.c1_c4_comparisons(flipped, margins=MARGINS), "C4")))


def test_c1_ties_says_when_the_robust_models_cannot_be_ranked():
    def study(accs):  # white-box PGD accuracy per model, with the Wilson interval of 1,000 pairs
        from nslib.evaluate import wilson_interval
        return {n: {"label": cache.label(n),
                    "adv": dict(zip(("accuracy", "low", "high"), (a, *wilson_interval(round(a * 1000), 1000))))}
                for n, a in accs.items()}
    tied = {s: study({"vanilla": 0.02, "pgd_at": 0.59 + 0.01 * s, "trades": 0.60, "sns_pgd_at": 0.58}) for s in range(3)}
    t = ex.c1_ties(tied)
    assert t["tied"] and t["models"] == ["pgd_at", "trades", "sns_pgd_at"]
    assert t["low"] == pytest.approx(0.58) and t["high"] == pytest.approx(0.60)
    assert 0.02 < t["half_width"] < 0.04  # +-3 points at n = 1,000
    assert "PGD-AT, TRADES, SNS (PGD-AT) reach 58.0-60.0%" in t["text"] and "noise" in t["text"]
    two = ex.c1_ties(tied, models=["pgd_at", "trades"])
    assert two["models"] == ["pgd_at", "trades"] and two["low"] == pytest.approx(0.60)
    with pytest.raises(ValueError, match="models must be drawn from"):
        ex.c1_ties(tied, models=["pgd_at", "madry"])
    apart = {s: study({"vanilla": 0.02, "pgd_at": 0.40, "trades": 0.60}) for s in range(3)}
    assert not ex.c1_ties(apart)["tied"] and "noise" not in ex.c1_ties(apart)["text"]
    with pytest.raises(ValueError, match="reference must be one of the models"):
        ex.c1_ties(apart, reference="madry")
    with pytest.raises(ValueError, match="at least two models besides 'vanilla'"):
        ex.c1_ties({s: study({"vanilla": 0.02, "pgd_at": 0.5}) for s in range(3)})


def _row(acc, low=None, high=None, label="row"):
    return {"accuracy": acc, "low": acc - 0.05 if low is None else low, "high": acc + 0.05 if high is None else high,
            "label": label}


class Affine(nn.Module):
    """A linear classifier on 1x4x4 images: its PGD accuracy falls to 0 at large eps, as a sound model's does."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_sanity_checks_flag_strong_attacks_that_are_weaker_than_plain_ones():
    model = Affine().eval()
    x = torch.rand(20, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    y = model(x).argmax(1)
    good = {"clean": _row(1.0), "pgd": _row(0.5, label="PGD-20"), "fgsm": _row(0.6, label="FGSM"),
            "autoattack": _row(0.45, label="AutoAttack"), "fmn_l2": _row(0.30, label="FMN-L2"),
            "pgd_l2": _row(0.32, 0.2, 0.45, label="PGD-L2-20"), "transfer": _row(0.7), "pgd_long": _row(0.48, label="PGD-50")}
    r = rb.sanity_checks(model, x, y, good, eps=0.1, scales=(1, 20), steps=10)
    checks = {c["id"]: c for c in r["checks"]}
    assert r["ok"], r["checks"]
    assert checks["autoattack_not_above_pgd"]["ok"] and checks["fmn_l2_not_above_pgd_l2"]["ok"]
    assert checks["autoattack_not_above_pgd"]["text"] == "AutoAttack accuracy not above PGD-20's"  # from the rows
    bad = {**good, "autoattack": _row(0.7, label="AutoAttack"), "fmn_l2": _row(0.6, label="FMN-L2"),
           "pgd_long": _row(0.8, label="PGD-50")}  # a longer PGD that breaks less: masked gradients
    r = rb.sanity_checks(model, x, y, bad, eps=0.1, scales=(1, 20), steps=10)
    checks = {c["id"]: c for c in r["checks"]}
    assert not r["ok"]
    assert not checks["autoattack_not_above_pgd"]["ok"] and not checks["fmn_l2_not_above_pgd_l2"]["ok"]
    assert not checks["pgd_long_not_above_pgd"]["ok"] and checks["pgd_long_not_above_pgd"]["text"] == \
        "PGD-50 accuracy not above PGD-20's"


def test_the_eps_sweep_is_named_by_the_attack_that_ran(tmp_path):
    """sanity_steps sets the sweep's steps; the label in the results, the figure and the report follows it."""
    model = Affine().eval()
    x = torch.rand(12, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    y = model(x).argmax(1)
    rows = {"pgd": _row(0.5, label="PGD-20"), "fgsm": _row(0.6, label="FGSM")}
    for steps in (10, 7):
        cfg = config.settings("quick", "fmnist", "05", {"sanity_steps": steps})
        r = rb.sanity_checks(model, x, y, rows, eps=0.1, scales=(1, 20), steps=cfg.sanity_steps)
        assert r["label"] == f"PGD-{steps}" and r["attack"] == {"attack": "pgd", "steps": steps}
        ax = viz.plot_eps_curves({"M": r["eps_curve"]}, attack=r["label"], path=tmp_path / "eps").axes[0]
        assert f"PGD-{steps}" in ax.get_ylabel() and "PGD-20" not in ax.get_title()
        assert f"PGD-{steps} accuracy by eps" in report.sanity_markdown({"m": r})


def test_evaluate_model_rows_on_a_linear_model():
    model = Affine().eval()
    x = torch.rand(24, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    y = model(x).argmax(1)  # every example correct clean
    x_wb = attacks.pgd_pairs(model, x, y, eps=0.1, steps=5)
    cfg = config.settings("quick", "fmnist", "05", {"eps": 0.1, "pair_steps": 5, "n_long": 12, "pgd_long_steps": 10,
                                                    "mim_steps": 5, "l2_n": 16, "fmn_steps": 60, "aa_n": 8,
                                                    "aa_attacks": ["apgd-ce"]})
    suite = rb.e3_suite(cfg, pixels=16)
    ev = rb.evaluate_model(model, x, y, suite, pairs={"own": x_wb, "vanilla": x})
    rows = ev["rows"]
    assert list(rows) == ["clean", "pgd", "pgd_restarts", "fgsm", "mim", "pgd_long", "fmn_l2", "pgd_l2", "autoattack",
                          "transfer", "worst"]
    assert [r["label"] for r in rows.values()][:-1] == ["clean", "PGD-5", "PGD-5 x2", "FGSM", "MIM-5", "PGD-10", "FMN-L2-60",
                                                        "PGD-L2-20", "AutoAttack (custom)", "transfer"]  # from the parameters
    assert rows["worst"]["label"] == "worst case"
    assert rows["worst"]["of_labels"] == ["PGD-5", "PGD-5 x2", "FGSM", "AutoAttack (custom)", "transfer"]
    # the worst case: robust only where every one of those rows left the example robust (AutoAttack: its first 8)
    for i, o in enumerate(rows["worst"]["outcomes"]):
        assert o == min(rows[r]["outcomes"][i] for r in rows["worst"]["of"] if i < rows[r]["n"])
    # a second PGD run only ever breaks more: every example robust after both was robust after the first
    assert all(b <= a for a, b in zip(rows["pgd"]["outcomes"], rows["pgd_restarts"]["outcomes"]))
    assert rows["clean"]["accuracy"] == 1.0 and rows["transfer"]["accuracy"] == 1.0  # x itself "transferred"
    assert rows["fmn_l2"]["radius"] == rows["pgd_l2"]["radius"] == rb.l2_radius(0.1, 16) == round(2 * 0.1 * 4 / 10, 3)
    # on a linear model FMN finds the exact minimal perturbation: it is never weaker than PGD-L2 at the radius
    assert rows["fmn_l2"]["accuracy"] <= rows["pgd_l2"]["accuracy"] + 1e-9
    assert rows["fmn_l2"]["n"] == rows["pgd_l2"]["n"] == 16 and rows["autoattack"]["n"] == 8
    for r in rows.values():  # per-example outcomes (for paired comparisons) agree with the accuracy they make up
        assert len(r["outcomes"]) == r["n"] and set(r["outcomes"]) <= {0, 1}
        assert sum(r["outcomes"]) / r["n"] == pytest.approx(r["accuracy"])
    light = rb.evaluate_model(model, x, y, suite, pairs={"own": x_wb, "vanilla": x}, light=True)["rows"]
    assert list(light) == ["clean", "pgd", "pgd_restarts", "fgsm", "autoattack", "transfer", "worst"]  # AA every seed
    van = rb.evaluate_model(model, x, y, suite, pairs={"own": x_wb, "vanilla": None}, light=True, every_seed=False)
    assert list(van["rows"]) == ["clean", "pgd", "pgd_restarts", "fgsm", "worst"]  # Vanilla: no transfer from itself


def test_masking_checks_flag_a_large_autoattack_gap_and_a_longer_pgd_that_breaks_less():
    def row(outcomes, label):
        return {"outcomes": outcomes, "n": len(outcomes), "label": label}
    pgd = [1, 1, 1, 0, 0] * 20                                 # 60% on 100 images, and on the first 50
    ok = {"pgd": row(pgd, "PGD-20"), "pgd_restarts": row(pgd, "PGD-20 x2"),
          "autoattack": row([1] * 29 + [0] * 21, "AA"),        # first 50 images: 58% against PGD's 60%: gap 2 points
          "pgd_long": row([1] * 30 + [0] * 20, "PGD-50")}      # 60% on the first 50, as PGD there
    r = rb.masking_checks(ok)
    assert r["ok"] and [c["id"] for c in r["checks"]] == ["aa_gap", "longer_pgd"]
    assert r["checks"][0]["values"] == {"pgd": 0.6, "aa": 0.58, "n": 50}
    masked = {**ok, "autoattack": row([1] * 27 + [0] * 23, "AA"),  # 54%: 6 points below PGD's 60%
              "pgd_long": row([1] * 31 + [0] * 19, "PGD-50")}      # 62%: 2 points above the shorter run
    r = rb.masking_checks(masked)
    assert not r["ok"] and [c["ok"] for c in r["checks"]] == [False, False]
    assert rb.masking_checks({"pgd": ok["pgd"]}) == {"checks": [], "ok": True}  # nothing to compare: nothing flagged
    flags, results = rb.masking_flags({("m", 0): {"rows": masked}, ("m", 1): {"rows": ok}}, ["m"], [0, 1])
    assert flags == {("m", 0): ["aa_gap", "longer_pgd"], ("m", 1): []} and not results[("m", 0)]["ok"]


def test_mean_rows_and_in_range():
    evals = {("m", s): {"rows": {"pgd": _row(0.2 + 0.1 * s, label="PGD-20")}} for s in range(3)}
    mean = rb.mean_rows(evals, "m", [0, 1, 2])["pgd"]
    assert mean["accuracy"] == pytest.approx(0.3) and mean["n_seeds"] == 3 and mean["label"] == "PGD-20"
    assert ex.in_range(0.5, 0.5, 0.6) and not ex.in_range(0.61, 0.5, 0.6)
    assert not ex.in_range(None, 0.0, 1.0) and not ex.in_range(float("nan"), 0.0, 1.0)  # a collapsed run has no val PGD


def test_c3_comparisons_pair_outcomes_by_image_and_seed_and_judge_only_the_judged_rows():
    """SNS breaks on 20 of the 200 images its base survives, the same images on every seed (so the effect and its
    interval are known), on the judged rows; AutoAttack ran on the first seeds only, as 05 runs it."""
    base = [1] * 120 + [0] * 80

    def ev(outcomes, seed, aa=True):
        rows = {r: {"outcomes": outcomes, "label": r} for r in ("worst", "pgd_restarts", "transfer", "pgd")}
        if aa:
            rows["autoattack"] = {"outcomes": outcomes[:100], "label": "AutoAttack"}
        return {"rows": rows}
    worse = [0] * 20 + base[20:]
    evals = {}
    for s in range(5):
        evals[("sns_pgd_at", s)] = ev(worse, s, aa=s < 3)
        evals[("pgd_at", s)] = ev(base, s, aa=s < 3)
    comps = rb.c3_comparisons(evals, list(range(5)), [("sns_pgd_at", "pgd_at")], margin=0.01)
    judged = verdicts.judged(comps)
    assert [c["id"]["row"] for c in judged] == ["worst", "transfer"]
    assert all(c["effect"] == pytest.approx(-0.1) and c["n_seeds"] == 5 and c["n_examples"] == 200 for c in judged)
    assert all(c["verdict"] == "does not hold" for c in judged)  # the whole interval lies below the margin
    controls = [c for c in comps if c["role"] == "control"]
    assert [c["id"]["row"] for c in controls] == ["pgd_restarts", "pgd", "autoattack"]  # pgd_long, mim, fmn_l2 absent
    assert controls[2]["n_seeds"] == 3 and controls[2]["n_examples"] == 100
    assert verdicts.combine(comps) == "does not hold"
    # a model flagged for masked gradients on one seed makes every comparison on it inconclusive, saying why
    flagged = rb.c3_comparisons(evals, list(range(5)), [("sns_pgd_at", "pgd_at")], margin=0.01,
                                flags={("pgd_at", 2): ["aa_gap"], ("pgd_at", 1): []})
    assert all(c["verdict"] == "inconclusive" and "PGD-AT seed 2 (aa_gap)" in c["reason"] for c in flagged)
    assert "by the interval alone: does not hold" in flagged[0]["reason"]
    del evals[("pgd_at", 4)]["rows"]["transfer"]  # a judged row every seed must have
    with pytest.raises(ValueError, match=r"evals must hold row 'transfer' of sns_pgd_at and pgd_at for every seed"):
        rb.c3_comparisons(evals, list(range(5)), [("sns_pgd_at", "pgd_at")], margin=0.01)


def test_a_layers_relative_sensitivity_is_its_own_ratio_of_means_unmoved_by_a_nearly_silent_neuron():
    # Simulation with known truth: 20 neurons each changing by 0.3 of their clean activity (the layer's relative
    # sensitivity is 0.3), plus one nearly silent on clean images (activity 1e-8) that moves by 1e-3 under attack.
    g = torch.Generator().manual_seed(0)
    activity = torch.rand(21, generator=g) + 0.5
    activity[20] = 1e-8
    sigma = 0.3 * activity
    sigma[20] = 1e-3
    per_neuron = float((sigma / activity).mean())  # the mean of per-neuron ratios: the silent neuron's 1e5 rules it
    assert per_neuron > 1000
    got = ex._layer_ratios({"l": sigma}, {"l": activity})["l"]
    assert got == pytest.approx(float(sigma.sum() / activity.sum())) and got == pytest.approx(0.3, abs=0.01)
    # scale-invariant: a layer whose outputs are all c times larger has the same relative sensitivity
    assert ex._layer_ratios({"l": 7.0 * sigma}, {"l": 7.0 * activity})["l"] == pytest.approx(got)


def test_ablation_trains_with_the_profiles_own_eps(monkeypatch):
    # the cpu profile's MNIST-5k runs at eps 0.15, not the dataset's 0.3: its k ablation must train there too (its
    # eps in train_args as well as the pairs' radius crashed notebook 05 with "got multiple values for keyword
    # argument 'eps'"); train_args always holds eps (the cache keys the resolved config)
    cfg = config.settings("cpu", "mnist5k", "05")
    assert cfg.train_args["eps"] == cfg.eps == 0.15
    assert config.settings("cpu", "fmnist", "05").train_args["eps"] == 0.1
    trained, attacked = [], []
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))

    def fake_get_model(dataset, arch, name, seed, progress=True, **args):
        trained.append(args)
        return model, {"label": name, "status": "done", "collapsed": False}

    def fake_pairs(m, info, x, y, **kw):
        attacked.append(kw["eps"])
        return x

    monkeypatch.setattr(rb, "get_model", fake_get_model)
    monkeypatch.setattr(rb, "adversarial_pairs", fake_pairs)
    x, y = torch.rand(4, 1, 28, 28), torch.arange(4)
    base = {a: v for a, v in cfg.train_args.items() if a != "k"}  # what notebook 05 passes
    rows = rb.ablation("mnist5k", cfg.arch, "sns_pgd_at", [0.1, 0.2], "k", x, y, eps=cfg.eps, steps=5,
                       train_args={**base, "lam": 0.05})
    assert [r["value"] for r in rows] == [0.1, 0.2] and [a["k"] for a in trained] == [0.1, 0.2]
    assert all(a["eps"] == 0.15 and a["lam"] == 0.05 for a in trained) and attacked == [0.15, 0.15]
