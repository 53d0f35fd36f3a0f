"""The verdict rule: the one place that turns per-seed numbers into "holds", "does not hold" or "inconclusive".

Pure functions over numbers (no torch, no files): :func:`compare` judges one comparison, :func:`combine`
several, :func:`verdict_line` and :func:`describe` say it in words. :data:`RULE` states the rule for the report.

Usage::

    c = compare([0.41, 0.43, 0.40], [0.37, 0.38, 0.36], what="SNS > PGD-AT")   # c["verdict"] == "holds"
"""
from __future__ import annotations

import math
import statistics

__all__ = ["VERDICTS", "ROLES", "RULE", "spread", "compare", "judged", "combine", "verdict_line", "describe"]

VERDICTS = ("holds", "does not hold", "inconclusive", "not testable offline")
# A comparison's role in its claim: "judged" decides the claim's verdict; "control" is reported beside it
# (a reference, a variant, a sanity context) and never enters the verdict.
ROLES = ("judged", "control")

RULE = ("A comparison \"A is higher than B\" **holds** when the mean over seeds of the paired difference "
        "A - B exceeds twice its standard deviation over seeds *and* the 95% intervals of the two "
        "accuracies (Wilson intervals, averaged over seeds) do not overlap (where intervals exist); it "
        "**does not hold** when the same criterion is met in the other direction; otherwise it is "
        "**inconclusive**. With a single seed the spread over seeds is unknown, so every comparison is "
        "inconclusive: the direction and the intervals are reported, but not read as a verdict (the quick "
        "profile trains one seed; the cpu and full profiles three). A claim made of several comparisons holds when "
        "all of them hold and does not hold when any of them does not hold.")


def spread(values) -> dict:
    """Mean, sample standard deviation (None for one value), min, max and n of a list of numbers."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("values must hold at least one number")
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else None,
            "min": min(vals), "max": max(vals), "n": len(vals)}


def _mean_interval(intervals):
    if intervals is None:
        return None
    intervals = [tuple(map(float, iv)) for iv in intervals]
    return (statistics.fmean(lo for lo, _ in intervals), statistics.fmean(hi for _, hi in intervals))


def compare(a, b, *, intervals_a=None, intervals_b=None, what: str = "A > B", names=("A", "B"),
            role: str = "judged", key: dict | None = None) -> dict:
    """Judge "a is higher than b" by the verdict rule (:data:`RULE`).

    Args:
        a, b: per-seed values, paired by seed (same length >= 1), e.g. robust accuracies of SNS and its
            base, or sensitivities of vanilla and PGD-AT (to test "PGD-AT is lower", pass vanilla as a).
        intervals_a, intervals_b: per-seed (low, high) 95% intervals of a and b, or None where the
            quantity has none (sensitivities).
        what: a short description, e.g. "SNS (PGD-AT) > PGD-AT, AutoAttack accuracy".
        names: what a and b are, for the words of :func:`describe` (e.g. ("SNS (PGD-AT)", "PGD-AT")).
        role: "judged" (decides the claim) or "control" (reported beside it, never judged): :data:`ROLES`.
        key: what is compared, as data (e.g. ``{"claim": "C3", "model": "sns_pgd_at", "base": "pgd_at",
            "row": "autoattack"}``), returned as ``id``; ``what`` and ``names`` are its words for a person.

    Returns:
        a dict: id, role, what, verdict (one of "holds", "does not hold", "inconclusive"), reason, n_seeds,
        a (spread of a), b (spread of b), diff (spread of a - b), interval_a, interval_b (seed-averaged
        intervals or None), overlap (bool or None), names, and detectable: the smallest |mean difference|
        this comparison could have called with its spread and intervals (None with one seed).

    Usage: ``compare([0.41, 0.43, 0.40], [0.37, 0.38, 0.36], what="SNS > PGD-AT")["verdict"]``
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    a, b = [float(v) for v in a], [float(v) for v in b]
    if not a or len(a) != len(b):
        raise ValueError(f"a and b must hold one value per seed, paired (same length >= 1); got {len(a)} and "
                         f"{len(b)}")
    if any(math.isnan(v) for v in a + b):
        raise ValueError(f"a and b must not hold NaN (got a={a}, b={b})")
    diffs = [x - y for x, y in zip(a, b)]
    d = spread(diffs)
    ia, ib = _mean_interval(intervals_a), _mean_interval(intervals_b)
    overlap = None if ia is None or ib is None else not (ia[0] > ib[1] or ib[0] > ia[1])
    iv_text = "" if overlap is None else ("; intervals overlap" if overlap else "; intervals disjoint")
    out = {"id": dict(key or {}), "role": role, "what": what, "names": list(names), "n_seeds": len(a), "a": spread(a), "b": spread(b), "diff": d,
           "interval_a": ia, "interval_b": ib, "overlap": overlap, "detectable": None}
    if len(a) < 2:
        out.update(verdict="inconclusive", reason=f"one seed: the spread over seeds is unknown{iv_text}")
        return out
    # The smallest difference the rule could call here: beyond 2 std, and (with intervals) beyond the two
    # half-widths, which is when intervals centred that far apart stop overlapping.
    half = 0.0 if ia is None or ib is None else (ia[1] - ia[0]) / 2 + (ib[1] - ib[0]) / 2
    out["detectable"] = max(2 * d["std"], half)
    separated = abs(d["mean"]) > 2 * d["std"]
    if separated and not overlap:
        out["verdict"] = "holds" if d["mean"] > 0 else "does not hold"
        out["reason"] = f"mean difference {d['mean']:+.4f} beyond 2 x std {d['std']:.4f}{iv_text}"
    else:
        out["verdict"] = "inconclusive"
        why = [] if separated else [f"|mean difference| {abs(d['mean']):.4f} <= 2 x std {d['std']:.4f}"]
        if overlap:
            why.append("intervals overlap")
        out["reason"] = "; ".join(why) + f"; this run could detect differences above {out['detectable']:.4f}"
    return out


def judged(comparisons) -> list[dict]:
    """The comparisons that decide a claim (role "judged"), in order."""
    return [c for c in comparisons if c.get("role", "judged") == "judged"]


def combine(verdicts) -> str:
    """One verdict from several: "holds" if all hold, "does not hold" if any does not, else inconclusive.

    ``verdicts`` holds verdict words or :func:`compare` dicts; dicts of role "control" are left out (they are
    reported, never judged). "not testable offline" entries are ignored unless every entry is one.
    """
    vs = [v["verdict"] if isinstance(v, dict) else v for v in verdicts
          if not isinstance(v, dict) or v.get("role", "judged") == "judged"]
    for v in vs:
        if v not in VERDICTS:
            raise ValueError(f"verdicts must be drawn from {VERDICTS}, got {v!r}")
    tested = [v for v in vs if v != "not testable offline"]
    if not tested:
        return "not testable offline" if vs else "inconclusive"
    if "does not hold" in tested:
        return "does not hold"
    if all(v == "holds" for v in tested):
        return "holds"
    return "inconclusive"


def verdict_line(claim: str, comparisons) -> str:
    """``"C3: inconclusive (one seed: ...)"``: the claim's combined verdict over its judged comparisons and why,
    with no raw numbers (what the notebooks' checked cells print, stable across machines)."""
    comparisons = judged(comparisons)
    verdict = combine(comparisons)
    n = min(c["n_seeds"] for c in comparisons)
    if n < 2:
        why = "one seed: the spread over seeds is unknown"
    else:
        n_hold = sum(c["verdict"] == "holds" for c in comparisons)
        why = f"{n} seeds; {n_hold} of {len(comparisons)} comparisons hold"
    return f"{claim}: {verdict} ({why})"


def describe(c: dict) -> str:
    """One line for a comparison from :func:`compare`: what, verdict, the two values by name, the difference."""
    d = c["diff"]
    name_a, name_b = c.get("names") or ("A", "B")
    spread_text = f" +- {d['std']:.4f}" if d["std"] is not None else ""
    # one seed: the report and the notebooks say it once, in one line, not in every comparison
    reason = c["reason"] if c["n_seeds"] > 1 else c["reason"].replace("one seed: the spread over seeds is unknown", "")
    reason = reason.lstrip("; ")
    ivs = ""
    if c["interval_a"] is not None:
        ivs = (f"; 95% intervals [{c['interval_a'][0]:.3f}, {c['interval_a'][1]:.3f}] vs "
               f"[{c['interval_b'][0]:.3f}, {c['interval_b'][1]:.3f}]")
    control = " (control, not judged)" if c.get("role") == "control" else ""
    return (f"{c['what']}{control}: {c['verdict']} -- {name_a} {c['a']['mean']:.4f} vs {name_b} {c['b']['mean']:.4f}, "
            f"difference {d['mean']:+.4f}{spread_text} over {c['n_seeds']} seed(s){ivs}" + (f" ({reason})" if reason else ""))
