"""nslib.repro.report: result files and REPORT.md from constructed results."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from nslib import models, training, verdicts
from nslib.repro import report, robustness as rb, zoo


# ----------------------------------------------------------------------------------------------------
# report

def test_write_report_from_constructed_results(tmp_path, monkeypatch):
    monkeypatch.setenv("NSLIB_OUTPUTS", str(tmp_path))
    holds = verdicts.compare([0.5, 0.52, 0.51], [0.4, 0.41, 0.39], what="SNS (PGD-AT) > PGD-AT, AutoAttack accuracy",
                             names=("SNS (PGD-AT)", "PGD-AT"), margin=0.01, unit="accuracy")
    weak = verdicts.compare([0.5], [0.4], what="Vanilla > PGD-AT, mean absolute sensitivity", names=("Vanilla", "PGD-AT"))
    report.save_result("quick", "fmnist", "05_sns_robustness",
                    {"claims": {"C3": {"verdict": verdicts.combine([holds]), "comparisons": [holds], "summary": "s",
                                       "figures": [str(tmp_path / "quick" / "fmnist" / "figures" / "x.png")]}},
                     "sections": [report.section("sanity", "sanity", "- **PGD-AT**: passes every check."),
                                  report.section("baselines", "baselines", "| t |")],
                     "runtime_s": 12.0}, {"profile": "quick", "dataset": "fmnist", "seeds": [0, 1, 2],
                                          "margins": {"accuracy": 0.01}})
    report.save_result("quick", "fmnist", "02_neuron_sensitivity",
                    {"claims": {"C4": {"verdict": verdicts.combine([weak]), "comparisons": [weak]}}, "runtime_s": 3.0},
                    {"profile": "quick", "dataset": "fmnist", "seeds": [0]})
    path = report.write_report("quick")
    text = path.read_text()
    assert path == tmp_path / "quick" / "REPORT.md"
    for claim in report.CLAIMS:
        assert f"## {claim}:" in text
    # one line per claim and dataset: the verdict and the comparison that decides it, effect, interval, margin
    assert "| C3 | fmnist | **holds** | SNS (PGD-AT) > PGD-AT, AutoAttack accuracy: +11.0 [+8.5, +13.5] points, " \
           "margin 1; 3 seed(s) |" in text
    assert "| C4 | fmnist | **inconclusive** | Vanilla > PGD-AT, mean absolute sensitivity: +0.1, margin 0; 1 seed(s) |" in text
    assert "| C1 | fmnist | not run | - |" in text
    assert "| C5 | fmnist | **needs two datasets** |" in text  # C5 is every claim over every dataset, not a copy
    assert "- fmnist: C3 **holds**, C4 **inconclusive**" in text
    assert "Margins (the smallest effect that matters" in text and "'accuracy': 0.01" in text
    assert "](forest.png)" in text and (tmp_path / "quick" / "forest.png").exists()  # every judged comparison
    assert "docs/PAPER.md" in text and "PAPER.md)" not in text.replace("docs/PAPER.md", "")
    assert "A 0." not in text and "(COLLAPSED)" not in text
    assert "](fmnist/figures/x.png)" in text  # figure links relative to the report
    assert "passes every check" in text and "not comparable" in text.lower()
    assert "python -m nslib reproduce --profile full --datasets mnist,cifar10" in text
    assert report.report_verdicts("quick")["C3"] == {"fmnist": "holds"}
    assert report.report_verdicts("quick")["C5"] == {"all": "needs two datasets"}


def test_report_says_one_seed_once_and_reads_runtimes_from_the_markers(tmp_path, monkeypatch):
    monkeypatch.setenv("NSLIB_OUTPUTS", str(tmp_path))
    one = verdicts.compare([0.5], [0.4], what="SNS > PGD-AT", names=("SNS", "PGD-AT"))
    for d in ("fmnist", "mnist5k"):
        report.save_result("quick", d, "05_sns_robustness", {"claims": {"C3": {"verdict": "inconclusive",
                           "comparisons": [one]}}}, {"seeds": [0]})
    report.save_result("quick", "fmnist", "00_data_and_models", {"sections": [report.section("check", "check", "goal 0.85: met")]}, {})
    from nslib.store import save_json
    save_json(tmp_path / "quick" / "fmnist" / "06_report.done.json",
              {"notebook": "06_report.ipynb", "runtime_s": 4.2, "provenance": {"device_name": "cpu"}})
    text = report.write_report("quick").read_text()
    assert text.count("**One seed**") == 1
    assert "| C5 | fmnist, mnist5k | **inconclusive** |" in text
    assert "### fmnist\n\ngoal 0.85: met" in text
    assert "| fmnist | 06_report | 4 | cpu |" in text


def test_describe_gives_the_effect_its_interval_the_margin_and_the_seeds():
    a, b = [[1, 1, 0, 1], [1, 0, 0, 1], [1, 1, 1, 1]], [[1, 0, 0, 1], [1, 0, 0, 1], [1, 1, 0, 1]]
    c = verdicts.compare(a, b, names=("SNS", "PGD-AT"), what="SNS > PGD-AT", margin=0.01, unit="accuracy")
    line = verdicts.describe(c)
    assert line.startswith("SNS > PGD-AT: inconclusive -- SNS 0.7500 vs PGD-AT 0.5833, effect +16.7 [-16.1, +49.4]")
    assert "points, margin 1, 3 seed(s) x 4 examples (the 95% interval holds zero and reaches the margin)" in line


def test_sections_go_where_their_kind_says_and_a_new_claim_is_reported(tmp_path, monkeypatch):
    """Sections are routed by their kind (data), not by their titles; a claim CLAIMS does not list yet (a new
    notebook's) is still in the report, under its own statement; a control comparison never decides."""
    monkeypatch.setenv("NSLIB_OUTPUTS", str(tmp_path))
    holds = verdicts.compare([0.5, 0.52, 0.51], [0.4, 0.41, 0.39], what="toy > base", names=("toy", "base"))
    worse = verdicts.compare([0.3, 0.31, 0.29], [0.4, 0.41, 0.39], what="toy > base (control)", role="control")
    assert verdicts.combine([holds, worse]) == "holds" and worse["verdict"] == "does not hold"
    report.save_result("quick", "fmnist", "08_toy", {
        "claims": {"C7": {"verdict": verdicts.combine([holds, worse]), "comparisons": [worse, holds],
                          "statement": "Toys are robust."}},
        "sections": [report.section("sanity", "baselines of the sanity kind", "SANITY-BODY"),
                     report.section("ablation", "sanity-titled ablation", "ABLATION-BODY")]},
        {"profile": "quick", "dataset": "fmnist", "seeds": [0, 1, 2]})
    text = report.write_report("quick").read_text()
    assert "## C7: Toys are robust." in text
    assert "| C7 | fmnist | **holds** | toy > base: +0.11" in text  # the headline is the judged comparison
    sanity = text.index("## Evaluation sanity")
    other = text.index("## Other sections")
    assert sanity < text.index("SANITY-BODY") < other < text.index("ABLATION-BODY")
    assert report.report_verdicts("quick")["C7"] == {"fmnist": "holds"}
    with pytest.raises(ValueError, match="kind must be one of"):
        report.section("sanity (05)", "t", "md")


# ----------------------------------------------------------------------------------------------------
# what ran: the recipe in words, failed seeds, the masking table

def test_recipe_names_the_attack_that_ran_not_the_method_alone():
    from nslib.repro import config
    one = config.settings("quick", "fmnist", "01", {"attack_steps": 1, "step_scale": 1.25, "start": "vanilla"})
    assert zoo.training_attack(one) == "FGSM-RS (one step of 1.25 eps from a uniform random start)"
    text = zoo.recipe_markdown(one)
    assert "**FGSM-RS (one step of 1.25 eps" in text and "PGD-10" not in text and "same seed's Vanilla" in text
    assert zoo.training_attack(config.settings("quick", "fmnist", "01")) == \
        "PGD-3 (step 0.833 eps, uniform random start)"  # 2.5 eps / 3
    assert zoo.training_attack(config.settings("quick", "fmnist", "01", {"attack_steps": None})) == \
        "PGD-10 (step 0.2 eps, uniform random start)"  # the dataset's own: alpha 0.02 at eps 0.1
    assert "scratch" in zoo.recipe_markdown(config.settings("quick", "fmnist", "01"))


def test_seed_spread_rows_mark_a_failed_seed():
    rows = [{"name": "vanilla", "model": "Vanilla", "seed": 0, "best val PGD": None}] + [
        {"name": "pgd_at", "model": "PGD-AT", "seed": s, "best val PGD": v} for s, v in enumerate((0.70, 0.71, 0.66))]
    out = zoo.seed_spread_rows(rows)
    assert [(r["seed"], r["method median"], r["within"]) for r in out] == [(0, 0.70, "yes"), (1, 0.70, "yes"),
                                                                            (2, 0.70, "NO")]  # 4 points below
    assert out[2]["gap"] == pytest.approx(-0.04)
    # the rule reads the key it is given (the reproduction: the full-validation accuracy), here passing seed 2
    for r, v in zip(rows[1:], (0.70, 0.69, 0.68)):
        r["full val PGD"] = v
    out = zoo.seed_spread_rows(rows, key="full val PGD")
    assert [(r["full val PGD"], r["method median"], r["within"]) for r in out] == [
        (0.70, 0.69, "yes"), (0.69, 0.69, "yes"), (0.68, 0.69, "yes")]


def test_full_validation_pgd_reads_again_what_training_recorded():
    """On all val_size images (val_n_adv = val_size here) the full-validation accuracy of each robust model is the one
    training recorded for its last (here only, so best) epoch; Vanilla and a model that did not train are left out."""
    torch.manual_seed(0)
    model = models.build("smallcnn", "mnist5k")
    res = training.train(model, "mnist5k", method="pgd_at", seed=3, epochs=1, n_train=200, batch_size=50,
                         val_size=60, val_n_adv=60, eps=0.15, attack_steps=1, val_attack_steps=2, progress=False,
                         device="cpu")
    cfg = SimpleNamespace(dataset="mnist5k", val_size=60, eps=0.15, val_attack_steps=2)
    trained = {("vanilla", 3): (model, {}), ("pgd_at", 3): (model, {}), ("sns_pgd_at", 3): (None, {})}
    assert zoo.full_validation_pgd(cfg, trained, progress=False) == {("pgd_at", 3): res["history"][-1]["val_pgd"]}


def test_full_validation_is_cached_in_the_run_folder_per_checkpoint(tmp_path, monkeypatch):
    """Computed once per model, attack, images and checkpoint, then read back (every notebook the same number)."""
    torch.manual_seed(0)
    model = models.build("smallcnn", "mnist5k")
    cfg = SimpleNamespace(dataset="mnist5k", val_size=40, eps=0.15, val_attack_steps=2)
    first = zoo.full_validation(cfg, 3, model, {"dir": str(tmp_path), "checkpoint": "best"})
    assert len(list(tmp_path.glob("full-val-*.json"))) == 1
    monkeypatch.setattr(training, "validation_pgd", lambda *a, **k: pytest.fail("computed again, not read back"))
    assert zoo.full_validation(cfg, 3, model, {"dir": str(tmp_path), "checkpoint": "best"}) == first
    monkeypatch.setattr(training, "validation_pgd", lambda *a, **k: 0.25)  # another checkpoint: its own number
    assert zoo.full_validation(cfg, 3, model, {"dir": str(tmp_path), "checkpoint": "last"}) == 0.25
    assert len(list(tmp_path.glob("full-val-*.json"))) == 2


def test_masking_markdown_flags_in_bold():
    ok = {"checks": [{"id": "aa_gap", "ok": True, "text": "AA 60.0% vs PGD 61.0%"}], "ok": True}
    bad = {"checks": [{"id": "aa_gap", "ok": False, "text": "AA 50.0% vs PGD 61.0%"}], "ok": False}
    text = rb.masking_markdown({("pgd_at", 0): ok, ("sns_pgd_at", 1): bad})
    assert "| PGD-AT | 0 | AA 60.0% vs PGD 61.0% | passes |" in text
    assert "| SNS (PGD-AT) | 1 | **NO**: AA 50.0% vs PGD 61.0% | **FLAGGED** |" in text
