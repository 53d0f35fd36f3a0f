"""nslib.report: result files and REPORT.md from constructed results."""
from __future__ import annotations

from nslib import report, verdicts


# ----------------------------------------------------------------------------------------------------
# report

def test_write_report_from_constructed_results(tmp_path, monkeypatch):
    monkeypatch.setenv("NSLIB_OUTPUTS", str(tmp_path))
    holds = verdicts.compare([0.5, 0.52, 0.51], [0.4, 0.41, 0.39], what="SNS (PGD-AT) > PGD-AT, AutoAttack accuracy")
    weak = verdicts.compare([0.5], [0.4], what="Vanilla > PGD-AT, mean absolute sensitivity")
    report.save_result("quick", "fmnist", "05_sns_robustness",
                    {"claims": {"C3": {"verdict": verdicts.combine([holds]), "comparisons": [holds], "summary": "s",
                                       "figures": [str(tmp_path / "quick" / "fmnist" / "figures" / "x.png")]}},
                     "sections": {"sanity (05)": "- **PGD-AT**: passes every check.", "baselines (05)": "| t |"},
                     "runtime_s": 12.0}, {"profile": "quick", "dataset": "fmnist", "seeds": [0, 1, 2]})
    report.save_result("quick", "fmnist", "02_neuron_sensitivity",
                    {"claims": {"C4": {"verdict": verdicts.combine([weak]), "comparisons": [weak]}}, "runtime_s": 3.0},
                    {"profile": "quick", "dataset": "fmnist", "seeds": [0]})
    path = report.write_report("quick")
    text = path.read_text()
    assert path == tmp_path / "quick" / "REPORT.md"
    for claim in report.CLAIMS:
        assert f"## {claim}:" in text
    assert "| C3 | holds | not testable offline |" in text
    assert "| C4 | inconclusive | not testable offline |" in text
    assert "| C1 | not run |" in text
    assert "C5" in text and "fmnist: **holds** (C3 on fmnist)" in text
    assert "](fmnist/figures/x.png)" in text  # figure links relative to the report
    assert "passes every check" in text and "not comparable" in text.lower()
    assert "python -m nslib reproduce --profile full --datasets mnist,cifar10" in text
    assert report.report_verdicts("quick")["C3"] == {"fmnist": "holds"}
