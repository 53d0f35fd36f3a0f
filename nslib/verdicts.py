"""The verdict rule: the one place that turns paired measurements into "holds", "does not hold" or "inconclusive".

Pure functions over numbers (numpy, no torch, no files): :func:`compare` judges one comparison as an *effect* with
a 95% interval against a *margin* fixed in advance, :func:`combine` several, :func:`verdict_line` and
:func:`describe` say it in words. :data:`RULE` states the rule for the report.

Usage::

    c = compare([0.41, 0.43, 0.40], [0.37, 0.38, 0.36], margin=0.01, what="SNS > PGD-AT")
    c["verdict"], c["effect"], c["ci"]      # "holds", 0.0433, (0.0290, 0.0577)
"""
from __future__ import annotations

import math
import numbers
import statistics

import numpy as np

__all__ = ["VERDICTS", "ROLES", "RULE", "spread", "t_quantile", "compare", "spearman", "correlation", "judge", "judged",
           "combine", "decisive", "verdict_line", "effect_text", "describe"]

VERDICTS = ("holds", "does not hold", "inconclusive", "not testable offline")
# A comparison's role in its claim: "judged" decides the claim's verdict; "control" is reported beside it
# (a reference, a variant, a sanity context) and never enters the verdict.
ROLES = ("judged", "control")

RULE = ("Each comparison \"A is higher than B\" is an **effect**, the mean paired difference A - B (the same test "
        "images and attack seeds for A and B, training seed by training seed), with a **95% interval** that counts "
        "both sources of variation: the spread over training seeds and, where per-image outcomes exist, the finite "
        "set of test images (a Student t interval whose variance is the seed part plus the image part of a "
        "crossed design, degrees of freedom by Welch-Satterthwaite; docs/PAPER.md says why). Each claim has a "
        "**margin**, the smallest effect that would matter, fixed in the configuration before any run. A comparison "
        "**holds** when its interval lies above zero, **does not hold** when its interval lies below the margin "
        "(the effect, if any, is smaller than would matter: this wins over \"above zero\"), and is "
        "**inconclusive** otherwise. One training seed cannot show the spread over seeds: every comparison of "
        "such a run is inconclusive. A correlation (C1) is judged the same way, its effect the mean of the per-seed "
        "Spearman correlations and its interval from Fisher's z (so it stays inside [-1, 1]; a perfect ranking "
        "counts as one swap of two neighbours, so that a few models' perfect rankings do not shrink it to a "
        "point). A claim holds when all its judged comparisons hold and does not hold when any of them does not "
        "hold.")


def spread(values) -> dict:
    """Mean, sample standard deviation (None for one value), min, max and n of a list of numbers."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("values must hold at least one number")
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else None,
            "min": min(vals), "max": max(vals), "n": len(vals)}


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b) by its continued fraction (modified Lentz)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    if x > (a + 1) / (a + b + 2):  # the fraction converges fast below the mean: use the symmetry there
        return 1.0 - _betainc(b, a, 1.0 - x)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)) / a
    tiny, f, c, d = 1e-300, 1.0, 1.0, 0.0
    for i in range(400):
        m = i // 2
        if i == 0:
            num = 1.0
        elif i % 2 == 0:
            num = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        else:
            num = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1.0 + num * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + num / c
        c = c if abs(c) > tiny else tiny
        f *= c * d
        if abs(1.0 - c * d) < 1e-14:
            break
    return front * (f - 1.0)


def _t_cdf(t: float, df: float) -> float:
    tail = 0.5 * _betainc(df / 2, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` (> 0, any real; inf: the normal) degrees of freedom, to about
    1e-9 relative (scipy.stats.t.ppf is the test's reference)."""
    if not 0 < p < 1 or not df > 0:
        raise ValueError(f"p must be in (0, 1) and df > 0, got p={p!r}, df={df!r}")
    if df > 1e5:  # the normal quantile and its first Cornish-Fisher term: exact to O(1 / df^2), below 1e-10 here
        z = statistics.NormalDist().inv_cdf(p)
        return z if math.isinf(df) else z + (z ** 3 + z) / (4 * df)
    lo, hi = -1.0, 1.0
    while _t_cdf(lo, df) > p:
        lo *= 2
    while _t_cdf(hi, df) < p:
        hi *= 2
    for _ in range(100):  # bisection: the cdf is monotone; 100 halvings reach double precision
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


def _as_seeds(values, name: str) -> np.ndarray:
    """Per-seed values as a float array: [S] (one number per seed) or [S, N] (N per-example outcomes per seed)."""
    try:
        arr = np.asarray([np.asarray(v, dtype=float) for v in values], dtype=float)
    except ValueError as e:  # ragged: seeds with different numbers of examples
        raise ValueError(f"{name} must hold one number or one equal-length sequence of per-example outcomes per "
                         f"seed, got sequences of lengths {[np.size(v) for v in values]}") from e
    if arr.ndim not in (1, 2) or arr.shape[0] == 0 or arr.size == 0:
        raise ValueError(f"{name} must hold one number or one sequence of per-example outcomes per seed (at least "
                         f"one seed), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must hold finite numbers (no NaN or infinity)")
    return arr


def _interval(d: np.ndarray, confidence: float) -> tuple[float, float, float]:
    """(standard error, degrees of freedom, t multiplier) of the mean of paired differences ``d``.

    ``d`` [S]: a paired t over seeds (S - 1 degrees of freedom). ``d`` [S, N], seeds crossed with the same N
    images: the variance of the grand mean is estimated as var(seed means) / S + var(image means) / N, the seed
    part and the image part of a crossed design (each also holds a share of the seed-by-image noise, so the sum
    errs on the wide side, as the two-way "pigeonhole" bootstrap does), with Welch-Satterthwaite degrees of
    freedom between S - 1 and S + N - 2."""
    s = d.shape[0]
    parts = [(float(np.var(d if d.ndim == 1 else d.mean(1), ddof=1)) / s, s - 1)]
    if d.ndim == 2 and d.shape[1] > 1:
        parts.append((float(np.var(d.mean(0), ddof=1)) / d.shape[1], d.shape[1] - 1))
    var = sum(v for v, _ in parts)
    if var <= 0:
        return 0.0, math.inf, 0.0
    df = var ** 2 / sum(v ** 2 / k for v, k in parts if v > 0)
    return math.sqrt(var), df, t_quantile(0.5 + confidence / 2, df)


def compare(a, b, *, margin: float = 0.0, what: str = "A > B", names=("A", "B"), role: str = "judged",
            key: dict | None = None, unit: str = "", confidence: float = 0.95) -> dict:
    """Judge "a is higher than b" by the verdict rule (:data:`RULE`): effect, interval, verdict.

    Args:
        a, b: per-seed measurements paired by seed, either one number per seed (a robust accuracy, a mean
            sensitivity, a correlation) or one sequence of per-example outcomes per seed on the *same* examples
            for every seed and for a and b (1/0 robust or not, per-image similarities): then the interval also
            counts the finite set of examples. To test "B is lower", pass B as b.
        margin: the smallest effect a - b that would matter (>= 0, in the unit of a and b), fixed before the run;
            an interval wholly below it "does not hold".
        what: a short description, e.g. "SNS (PGD-AT) > PGD-AT, PGD-20 accuracy".
        names: what a and b are, for :func:`describe` (e.g. ("SNS (PGD-AT)", "PGD-AT")).
        role: "judged" (decides the claim) or "control" (reported beside it, never judged): :data:`ROLES`.
        key: what is compared, as data (``{"claim": "C3", "model": "sns_pgd_at", "base": "pgd_at", "row": "pgd"}``),
            returned as ``id``; ``what`` and ``names`` are its words for a person.
        unit: the effect's unit for a person ("accuracy", "log ratio"); "" when self-evident.
        confidence: of the interval (0.95).

    Returns:
        a dict: id, role, what, names, unit, verdict ("holds", "does not hold", "inconclusive"), reason,
        effect (mean of a - b over seeds and examples), ci ((low, high), None with one seed), margin, se, df,
        n_seeds, n_examples (None for per-seed numbers), a, b, diff (:func:`spread` of the per-seed means).

    Raises: ValueError naming a, b, margin or role when they are not as above.
    Usage: ``compare([0.41, 0.43, 0.40], [0.37, 0.38, 0.36], margin=0.01)["verdict"]  # "holds"``
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    if not (isinstance(margin, numbers.Real) and not isinstance(margin, bool) and 0 <= margin < math.inf):
        raise ValueError(f"margin must be a number >= 0 (the smallest effect that matters), got {margin!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    xa, xb = _as_seeds(a, "a"), _as_seeds(b, "b")
    if xa.shape != xb.shape:
        raise ValueError(f"a and b must be paired: the same seeds and examples (same shape), got {xa.shape} and "
                         f"{xb.shape}")
    d = xa - xb
    seed_mean = (lambda v: v) if d.ndim == 1 else (lambda v: v.mean(1))
    out = {"id": dict(key or {}), "role": role, "what": what, "names": list(names), "unit": unit,
           "n_seeds": d.shape[0], "n_examples": None if d.ndim == 1 else d.shape[1], "effect": float(d.mean()),
           "margin": float(margin), "a": spread(seed_mean(xa)), "b": spread(seed_mean(xb)), "diff": spread(seed_mean(d)),
           "ci": None, "se": None, "df": None}
    if d.shape[0] < 2:
        out.update(verdict="inconclusive", reason="one seed: the spread over seeds is unknown")
        return out
    se, df, t = _interval(d, confidence)
    low, high = out["effect"] - t * se, out["effect"] + t * se
    out.update(ci=(low, high), se=se, df=df)
    out["verdict"], out["reason"] = judge(low, high, margin, confidence)
    return out


def spearman(a, b) -> float:
    """Spearman rank correlation of two equal-length sequences (average ranks for ties; 0 when either is constant)."""
    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(v):
            j = i
            while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for t in range(i, j + 1):
                r[order[t]] = (i + j) / 2
            i = j + 1
        return r
    ra, rb = ranks(list(a)), ranks(list(b))
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    cov = sum((p - ma) * (q - mb) for p, q in zip(ra, rb))
    den = math.sqrt(sum((p - ma) ** 2 for p in ra) * sum((q - mb) ** 2 for q in rb))
    return cov / den if den > 0 else 0.0


def rho_cap(n: int) -> float:
    """The largest Spearman correlation of n items short of a perfect ranking (one adjacent swap):
    1 - 12 / (n (n^2 - 1)); 0.8 for 4 items, 0.94 for 6."""
    return 1 - 12 / (n * (n * n - 1))


def correlation(x, y, *, margin: float = 0.0, sign: float = 1.0, what: str = "Spearman(x, y) > 0",
                names=("Spearman", "zero"), role: str = "judged", key: dict | None = None,
                confidence: float = 0.95) -> dict:
    """Judge "``sign`` * Spearman(x, y) is above zero" by the verdict rule (:data:`RULE`), the interval from
    Fisher's z so that it stays inside [-1, 1].

    Args:
        x, y: [S, n]: per training seed (rows), the n items' (models') two quantities; n >= 4 for an interval
            (fewer: inconclusive, the interval [-1, 1]).
        sign: -1 to judge a negative correlation ("the more robust, the less sensitive").
        margin, what, names, role, key, confidence: as :func:`compare` (margin in correlation units).

    The effect is the mean over seeds of sign * rho_s (each seed's Spearman correlation over its n items). Its
    interval is tanh(atanh(r) -+ z_q * se) with se^2 = (1 + r^2 / 2) / (S (n - 3)): Fisher's z with the
    Bonett-Wright variance of a Spearman correlation (Bonett & Wright 2000, Psychometrika 65:23-28), averaged
    over S independent seeds. In r each seed's |rho_s| counts at most :func:`rho_cap` (n), the value of one
    adjacent swap: a perfect ranking of a few items has an infinite z, and uncapped the interval of three
    perfect rankings shrinks to the point [1, 1] whatever n (with 4 items, one swap in one seed then decides
    the verdict). The interval is then widened to hold the effect itself. So 4 items over 3 seeds never
    decide (their best, three perfect rankings, reads [-0.20, +1.00]); 6 items can. One seed: inconclusive, as
    every comparison of one seed.

    Returns a dict shaped as :func:`compare`'s (unit "correlation", n_examples None, ``a`` the spread of the
    per-seed sign * rho, ``b`` of zeros) with ``rhos``: the per-seed Spearman correlations (unsigned).
    Raises: ValueError naming x, y, margin or role.
    Usage: ``correlation(acc, sigma, sign=-1, margin=0.2)["ci"]  # inside [-1, 1]``
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    if not (isinstance(margin, numbers.Real) and not isinstance(margin, bool) and 0 <= margin < 1):
        raise ValueError(f"margin must be a number in [0, 1) (the smallest correlation that matters), got {margin!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if sign not in (1, -1):
        raise ValueError(f"sign must be 1 or -1, got {sign!r}")
    xa, ya = _as_seeds(x, "x"), _as_seeds(y, "y")
    if xa.ndim != 2 or xa.shape != ya.shape or xa.shape[1] < 2:
        raise ValueError(f"x and y must both be [seeds, items] with the same shape and at least 2 items, got "
                         f"{xa.shape} and {ya.shape}")
    s, n = xa.shape
    rhos = [spearman(xa[i], ya[i]) for i in range(s)]
    signed = [sign * r for r in rhos]
    effect = statistics.fmean(signed)
    out = {"id": dict(key or {}), "role": role, "what": what, "names": list(names), "unit": "correlation",
           "n_seeds": s, "n_examples": None, "effect": effect, "margin": float(margin), "a": spread(signed),
           "b": spread([0.0] * s), "diff": spread(signed), "ci": None, "se": None, "df": None, "rhos": rhos,
           "interval": "Fisher z (Bonett-Wright variance), seeds pooled, perfect rankings counted as one swap"}
    if s < 2:
        out.update(verdict="inconclusive", reason="one seed: the spread over seeds is unknown")
        return out
    if n < 4:
        out.update(ci=(-1.0, 1.0), verdict="inconclusive", reason=f"{n} items: too few for an interval (at least 4)")
        return out
    cap = rho_cap(n)
    r = statistics.fmean(max(-cap, min(cap, v)) for v in signed)
    se = math.sqrt((1 + r * r / 2) / (s * (n - 3)))
    q = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    low, high = math.tanh(math.atanh(r) - q * se), math.tanh(math.atanh(r) + q * se)
    low, high = min(low, effect), max(high, effect)  # a capped centre: the interval still holds the effect
    out.update(ci=(low, high), se=se, df=math.inf)
    out["verdict"], out["reason"] = judge(low, high, margin, confidence)
    return out


def judge(low: float, high: float, margin: float, confidence: float = 0.95) -> tuple[str, str]:
    """``(verdict, reason)`` of an effect's interval (low, high) against ``margin`` by :data:`RULE`: "does not hold"
    below the margin (this wins), "holds" above zero, "inconclusive" otherwise. For intervals made elsewhere (a
    paired-proportion score interval, say) judged by the same rule."""
    iv = f"the {100 * confidence:g}% interval"
    if high < margin:
        return "does not hold", (f"{iv} lies below zero" if high < 0 else
                                 f"{iv} lies below the margin: any effect is smaller than matters")
    if low > 0:
        return "holds", f"{iv} lies above zero"
    return "inconclusive", f"{iv} holds zero and reaches the margin"


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


def decisive(comparisons) -> dict | None:
    """The judged comparison that decides a claim's :func:`combine` verdict: the first that does not hold, else
    the first inconclusive one, else (all hold) the one whose interval comes nearest zero; None without any."""
    comps = judged(comparisons)
    for verdict in ("does not hold", "inconclusive"):
        for c in comps:
            if c["verdict"] == verdict:
                return c
    return min(comps, key=lambda c: c["ci"][0] if c["ci"] else math.inf, default=None)


def verdict_line(claim: str, comparisons) -> str:
    """``"C3: inconclusive (one seed: ...)"``: the claim's combined verdict over its judged comparisons and why,
    with no raw numbers (what the notebooks' checked cells print, stable across machines)."""
    comparisons = judged(comparisons)
    if not comparisons:
        return f"{claim}: inconclusive (no judged comparison)"
    verdict = combine(comparisons)
    n = min(c["n_seeds"] for c in comparisons)
    if n < 2:
        why = "one seed: the spread over seeds is unknown"
    else:
        counts = {v: sum(c["verdict"] == v for c in comparisons) for v in ("holds", "does not hold", "inconclusive")}
        why = f"{n} seeds; of {len(comparisons)} comparisons " + ", ".join(f"{k} {v}" for v, k in counts.items() if k)
    return f"{claim}: {verdict} ({why})"


def effect_text(c: dict) -> str:
    """``"+1.2 [-0.3, +2.7] points, margin 1"``: a comparison's effect, interval and margin in its unit."""
    scale, fmt = (100, "{:+.1f}") if c.get("unit") == "accuracy" else (1, "{:+.3g}")
    ci = "" if c["ci"] is None else " [" + ", ".join(fmt.format(scale * v) for v in c["ci"]) + "]"
    unit = " points" if c.get("unit") == "accuracy" else (f" ({c['unit']})" if c.get("unit") else "")
    return f"{fmt.format(scale * c['effect'])}{ci}{unit}, margin {scale * c['margin']:g}"


def describe(c: dict) -> str:
    """One line for a comparison from :func:`compare`: what, verdict, the two values by name, effect, interval,
    margin, seeds and examples, and why."""
    name_a, name_b = c.get("names") or ("A", "B")
    control = " (control, not judged)" if c.get("role") == "control" else ""
    n = f"{c['n_seeds']} seed(s)" + (f" x {c['n_examples']} examples" if c.get("n_examples") else "")
    # one seed: the report and the notebooks say it once, in one line, not in every comparison
    reason = "" if c["n_seeds"] < 2 else f" ({c['reason']})"
    return (f"{c['what']}{control}: {c['verdict']} -- {name_a} {c['a']['mean']:.4f} vs {name_b} {c['b']['mean']:.4f}, "
            f"effect {effect_text(c)}, {n}{reason}")
