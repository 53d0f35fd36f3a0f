"""nslib.repro.experiments: the computations behind E1-E4, against independent references and hand-made cases."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from nslib import attacks
from nslib.repro import experiments as ex


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5)), min_size=3, max_size=12))
def test_spearman_matches_scipy(pairs):
    stats = pytest.importorskip("scipy.stats")
    a, b = [p[0] for p in pairs], [p[1] for p in pairs]
    ref = stats.spearmanr(a, b).statistic
    if ref != ref:  # a constant sequence: scipy says NaN, the kit says 0 (no evidence either way)
        assert ex.spearman(a, b) == 0.0
    else:
        assert ex.spearman(a, b) == pytest.approx(ref, abs=1e-12)


def _study(means_by_model):
    """A minimal sensitivity_study result: per model, its mean per variant and its PGD accuracy."""
    return {n: {"mean": {v: m for v in ("abs", "rel", "rel_pairs", "abs_transfer", "rel_transfer")},
                "adv": {"accuracy": acc}} for n, (m, acc) in means_by_model.items()}


def test_c1_c4_comparisons_judge_and_report_what_they_say():
    studies = {s: _study({"vanilla": (0.9 + 0.01 * s, 0.1), "pgd_at": (0.3, 0.5), "trades": (0.2 + 0.01 * s, 0.6)})
               for s in range(3)}
    comps = ex.c1_c4_comparisons(studies)
    assert len(comps["C4"]) == 4 and all(c["verdict"] == "holds" for c in comps["C4"])  # 2 baselines x abs, rel
    judged = " ".join(c["what"] for c in comps["C4"])
    assert "ratio of means" in judged and "per-pair" not in judged  # the toolbox's variant is reported only
    assert sum("per-pair ratios" in c["what"] for c in comps["C4_control"]) == 2
    assert all(c["verdict"] == "holds" for c in comps["C1"])  # lower sensitivity, higher robust accuracy
    flipped = {s: _study({"vanilla": (0.1, 0.1), "pgd_at": (0.3, 0.5), "trades": (0.5 + 0.01 * s, 0.6)})
               for s in range(3)}
    assert all(c["verdict"] == "does not hold" for c in ex.c1_c4_comparisons(flipped)["C4"])


def test_c1_ties_says_when_the_robust_models_cannot_be_ranked():
    def study(accs):  # white-box PGD accuracy per model, with the Wilson interval of 1,000 pairs
        from nslib.evaluate import wilson_interval
        return {n: {"adv": dict(zip(("accuracy", "low", "high"), (a, *wilson_interval(round(a * 1000), 1000))))}
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


def _row(acc, low=None, high=None):
    return {"accuracy": acc, "low": acc - 0.05 if low is None else low, "high": acc + 0.05 if high is None else high}


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
    good = {"clean": _row(1.0), "PGD-20": _row(0.5), "FGSM": _row(0.6), "AutoAttack": _row(0.45),
            "FMN-L2": _row(0.30), "PGD-L2": _row(0.32, 0.2, 0.45), "transfer": _row(0.7)}
    r = ex.sanity_checks(model, x, y, good, eps=0.1, scales=(1, 20), steps=10)
    assert r["ok"], r["checks"]
    assert r["checks"]["AutoAttack accuracy not above PGD-20's"] and r["checks"]["FMN-L2 accuracy not above PGD-L2's"]
    bad = {**good, "AutoAttack": _row(0.7), "FMN-L2": _row(0.6)}
    r = ex.sanity_checks(model, x, y, bad, eps=0.1, scales=(1, 20), steps=10)
    assert not r["ok"]
    assert not r["checks"]["AutoAttack accuracy not above PGD-20's"]
    assert not r["checks"]["FMN-L2 accuracy not above PGD-L2's"]


def test_evaluate_model_rows_on_a_linear_model():
    model = Affine().eval()
    x = torch.rand(24, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    y = model(x).argmax(1)  # every example correct clean
    x_wb = attacks.pgd_pairs(model, x, y, eps=0.1, steps=5)
    ev = ex.evaluate_model(model, x, y, eps=0.1, x_adv_pgd20=x_wb, x_adv_transfer=x, n_long=12, long_steps=10,
                           mim_steps=5, l2_n=16, fmn_steps=60, pgd_l2_steps=20, aa_n=8, aa_version="custom",
                           aa_attacks=["apgd-ce"])
    rows = ev["rows"]
    assert list(rows) == ["clean", "PGD-20", "FGSM", "MIM-5", "PGD-10", "FMN-L2", "PGD-L2", "AutoAttack", "transfer"]
    assert rows["clean"]["accuracy"] == 1.0 and rows["transfer"]["accuracy"] == 1.0  # x itself "transferred"
    assert rows["FMN-L2"]["radius"] == rows["PGD-L2"]["radius"] == round(2 * 0.1 * 4 / 10, 3)
    # on a linear model FMN finds the exact minimal perturbation: it is never weaker than PGD-L2 at the radius
    assert rows["FMN-L2"]["accuracy"] <= rows["PGD-L2"]["accuracy"] + 1e-9
    assert rows["FMN-L2"]["n"] == rows["PGD-L2"]["n"] == 16 and rows["AutoAttack"]["n"] == 8


def test_mean_rows_and_in_range():
    evals = {("m", s): {"rows": {"PGD-20": _row(0.2 + 0.1 * s)}} for s in range(3)}
    mean = ex.mean_rows(evals, "m", [0, 1, 2])["PGD-20"]
    assert mean["accuracy"] == pytest.approx(0.3) and mean["n_seeds"] == 3
    assert ex.in_range(0.5, 0.5, 0.6) and not ex.in_range(0.61, 0.5, 0.6)
    assert not ex.in_range(None, 0.0, 1.0) and not ex.in_range(float("nan"), 0.0, 1.0)  # a collapsed run has no val PGD
