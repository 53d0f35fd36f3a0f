"""nslib.verdicts: the verdict rule on constructed numbers."""
from __future__ import annotations

import pytest

from nslib import verdicts


# ----------------------------------------------------------------------------------------------------
# verdict rule

def test_compare_holds_when_difference_beyond_two_std_and_intervals_disjoint():
    c = verdicts.compare([0.50, 0.52, 0.51], [0.40, 0.41, 0.39], intervals_a=[(0.47, 0.55)] * 3,
                    intervals_b=[(0.36, 0.44)] * 3, what="A > B")
    assert c["verdict"] == "holds"
    assert c["diff"]["mean"] == pytest.approx(0.11)
    assert c["overlap"] is False


def test_compare_does_not_hold_when_it_goes_the_other_way():
    c = verdicts.compare([0.40, 0.41, 0.39], [0.50, 0.52, 0.51])
    assert c["verdict"] == "does not hold"


def test_compare_inconclusive_when_spread_too_large():
    # mean difference 0.02, std of differences 0.03: 0.02 < 2 * 0.03
    c = verdicts.compare([0.52, 0.47, 0.52], [0.50, 0.48, 0.47])
    assert c["verdict"] == "inconclusive"
    assert "2 x std" in c["reason"]


def test_compare_inconclusive_when_intervals_overlap_despite_consistent_difference():
    c = verdicts.compare([0.45, 0.45, 0.45], [0.44, 0.44, 0.44], intervals_a=[(0.40, 0.50)] * 3,
                    intervals_b=[(0.39, 0.49)] * 3)
    assert c["diff"]["std"] == pytest.approx(0.0)
    assert c["verdict"] == "inconclusive"
    assert "intervals overlap" in c["reason"]


def test_compare_one_seed_is_inconclusive_and_says_why():
    c = verdicts.compare([0.9], [0.1], intervals_a=[(0.85, 0.95)], intervals_b=[(0.05, 0.15)])
    assert c["verdict"] == "inconclusive"
    assert "one seed" in c["reason"]
    assert verdicts.verdict_line("C3", [c]) == "C3: inconclusive (one seed: the spread over seeds is unknown)"


def test_compare_rejects_unpaired_or_nan():
    with pytest.raises(ValueError, match="paired"):
        verdicts.compare([0.1, 0.2], [0.1])
    with pytest.raises(ValueError, match="NaN"):
        verdicts.compare([float("nan")], [0.1])


def test_combine():
    assert verdicts.combine(["holds", "holds"]) == "holds"
    assert verdicts.combine(["holds", "inconclusive"]) == "inconclusive"
    assert verdicts.combine(["holds", "does not hold", "inconclusive"]) == "does not hold"
    assert verdicts.combine(["not testable offline", "holds"]) == "holds"
    assert verdicts.combine(["not testable offline"]) == "not testable offline"
    with pytest.raises(ValueError):
        verdicts.combine(["maybe"])
