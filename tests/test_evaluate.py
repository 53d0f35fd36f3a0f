"""Evaluation: Wilson intervals, robust accuracy over batches, minimal-norm accuracy, the suite runner."""
from __future__ import annotations

import functools
import math

import pytest
import torch
from torch import nn

from nslib import attacks, evaluate


class Linear(nn.Module):
    def __init__(self, d=16, classes=10, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.fc = nn.Linear(d, classes)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(classes, d, generator=g))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(x.flatten(1))


@pytest.fixture
def case():
    torch.manual_seed(0)
    model = Linear()
    x = torch.rand(40, 1, 4, 4)
    y = model(x).argmax(1)
    y[:10] = (y[:10] + 1) % 10  # a quarter misclassified
    return model, x, y


def test_wilson_interval_known_values():
    low, high = evaluate.wilson_interval(50, 100)
    assert math.isclose(low, 0.4038, abs_tol=1e-4) and math.isclose(high, 0.5962, abs_tol=1e-4)
    low, high = evaluate.wilson_interval(0, 10)
    assert low == 0.0 and math.isclose(high, 0.2775, abs_tol=1e-4)
    low, high = evaluate.wilson_interval(10, 10)
    assert high == 1.0 and math.isclose(low, 0.7225, abs_tol=1e-4)
    assert evaluate.wilson_interval(0, 0) == (0.0, 1.0)


def identity(model, x, y):
    return x.clone()


def test_identity_attack_gives_the_clean_accuracy(case):
    model, x, y = case
    res = evaluate.robust_accuracy(model, x, y, identity, batch_size=7)
    assert res.clean_accuracy == res.robust_accuracy == 0.75
    assert res.n == 40 and res.correct_robust == 30 and res.low < 0.75 < res.high
    assert torch.equal(res.robust, torch.arange(40) >= 10)


def test_robust_accuracy_does_not_depend_on_batch_size_and_restores_mode(case):
    model, x, y = case
    model.train()
    attack = functools.partial(attacks.pgd, eps=0.05, steps=5, random_start=False)
    a = evaluate.robust_accuracy(model, x, y, attack, batch_size=3)
    b = evaluate.robust_accuracy(model, x, y, attack, batch_size=40)
    assert a.robust_accuracy == b.robust_accuracy < a.clean_accuracy
    assert model.training


def test_robust_accuracy_rejects_bad_attacks_and_inputs(case):
    model, x, y = case
    with pytest.raises(ValueError, match="shaped like its input"):
        evaluate.robust_accuracy(model, x, y, lambda m, xb, yb: xb[:1])
    with pytest.raises(TypeError, match="callable"):
        evaluate.robust_accuracy(model, x, y, "pgd")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        evaluate.robust_accuracy(model, x * 2, y, identity)
    with pytest.raises(ValueError, match="shape"):
        evaluate.robust_accuracy(model, x, y[:3], identity)


def test_min_norm_accuracy_counts_perturbations_above_the_radius():
    model = nn.Sequential(nn.Flatten(), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[3.0, 0.0], [0.0, 3.0]]))  # class = larger coordinate
    x = torch.tensor([[0.6, 0.4], [0.7, 0.3], [0.9, 0.1], [0.2, 0.8]]).view(4, 1, 1, 2)
    y = torch.tensor([0, 0, 0, 0])  # the last one is misclassified clean
    x_adv = x.clone()
    x_adv[0, 0, 0] = torch.tensor([0.45, 0.55])  # L2 norm 0.15 * sqrt(2), success
    x_adv[1, 0, 0] = torch.tensor([0.4, 0.6])    # L2 norm 0.3 * sqrt(2), success
    # example 2: attack failed (x_adv = x)
    res = evaluate.min_norm_accuracy(model, x, y, x_adv, radius=0.3)
    assert torch.allclose(res["norms"][:2], torch.tensor([0.15, 0.3], dtype=torch.float64) * math.sqrt(2))
    assert math.isinf(res["norms"][2]) and res["norms"][3] == 0
    assert res["robust_accuracy"] == 0.5  # examples 1 (0.42 > 0.3) and 2 (failed)
    assert res["clean_accuracy"] == 0.75
    assert math.isclose(res["median_norm"], 0.3 * math.sqrt(2), rel_tol=1e-6)


def test_run_suite_table(one_thread):
    """Each row's robust accuracy is the analytic one of a two-class linear model, inputs well inside
    [0, 1]: an example is Linf-robust at eps iff its margin exceeds eps * ||w_other - w_y||_1 (FGSM, PGD and
    APGD reach that optimum), L2-robust at a radius iff margin / ||w_other - w_y||_2 exceeds it."""
    torch.manual_seed(0)
    model = Linear(classes=2)
    x = torch.rand(40, 1, 4, 4) * 0.4 + 0.3  # eps 0.1 and L2 radius 0.22 keep every optimum inside [0, 1]
    y = model(x).argmax(1)
    y[:10] = 1 - y[:10]  # a quarter misclassified
    with torch.no_grad():
        logits = model(x)
    d = model.fc.weight.detach()[1 - y] - model.fc.weight.detach()[y]  # [N, 16]
    m = logits.gather(1, y[:, None]).squeeze(1) - logits.gather(1, 1 - y[:, None]).squeeze(1)  # margin [N]
    eps, radius = 0.1, 0.22  # nearest optima: Linf 0.098 and 0.105, L2 0.187 and 0.224 (C&W overshoots)
    linf_robust = int(((m > 0) & (m > eps * d.abs().sum(1))).sum()) / 40
    l2_robust = int(((m > 0) & (m > radius * d.norm(dim=1))).sum()) / 40
    assert (linf_robust, l2_robust) == (21 / 40, 27 / 40)  # strictly between none and the clean 30 / 40
    suite = [{"attack": "fgsm", "eps": eps},
             {"attack": "pgd", "eps": eps, "steps": 5},
             {"attack": "cw_l2", "steps": 100, "binary_search_steps": 5, "radius": radius},  # within 9% of optima
             {"attack": "autoattack", "eps": eps, "version": "custom", "attacks": ["apgd-ce"]}]
    rows = evaluate.run_suite(model, x, y, suite, batch_size=15, seed=1)
    assert [r["attack"] for r in rows] == ["fgsm", "pgd", "cw_l2", "autoattack"]
    assert [r["label"] for r in rows] == ["FGSM", "PGD-5", "C&W-L2", "AutoAttack (custom)"]  # from the parameters
    expected = [linf_robust, linf_robust, l2_robust, linf_robust]
    for r, robust in zip(rows, expected):
        assert r["clean_accuracy"] == 0.75 and r["robust_accuracy"] == pytest.approx(robust), r["attack"]
        assert r["low"] < r["robust_accuracy"] < r["high"]
        assert r["n"] == 40 and r["seed"] == 1 and r["wall_s"] >= 0
    assert rows[1]["params"] == {"eps": eps, "steps": 5}
    assert rows[2]["median_l2"] > 0
    assert rows[3]["per_attack"] == pytest.approx({"clean": 0.75, "apgd-ce": linf_robust}, abs=1e-4)
    table = evaluate.format_table(rows)
    assert "PGD-5" in table and "median L2" in table
    with pytest.raises(ValueError, match="attack"):
        evaluate.run_suite(model, x, y, [{"attack": "deepfool"}])
