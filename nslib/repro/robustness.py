"""E3, the robustness experiment of the reproduction (C3, C5): the attack suite as data, each model's rows with
per-example outcomes, PGD with restarts that attacks only what is still robust, the evaluation sanity checks, the k
ablation, and C3's paired comparisons of SNS against its base.

Usage::

    suite = e3_suite(cfg, pixels=784)
    ev = evaluate_model(model, x, y, suite, pairs={"own": x_adv, "vanilla": x_transfer}, seed=0)
    comps = c3_comparisons({("sns_pgd_at", 0): ev_sns, ("pgd_at", 0): ev}, [0], [("sns_pgd_at", "pgd_at")], margin=0.01)
"""
from __future__ import annotations

import math
import statistics
import time
import warnings

import torch

from nslib import attacks, evaluate
from nslib.evaluate import accuracy_on
from nslib.repro.cache import adversarial_pairs, get_model, label
from nslib.verdicts import compare

__all__ = ["l2_radius", "e3_suite", "row_label", "more_restarts", "evaluate_model", "worst_case", "ablation",
           "sanity_checks", "masking_checks", "masking_flags", "masking_markdown", "MASKING", "c3_comparisons", "mean_rows"]

# The masking check on every (model, seed) of C3 (:func:`masking_checks`), fixed before any run: AutoAttack may leave
# at most AA_GAP less accuracy than the PGD runs on the same images (a bigger gap: PGD's gradients are masked), and
# the long PGD run may leave at most LONGER_PGD more than the short one on the same images (its random starts differ:
# 1 point of coin flips; a masked model leaves tens of points more).
MASKING = {"aa_gap": 0.04, "longer_pgd": 0.01}


def l2_radius(eps: float, pixels: int) -> float:
    """E3's L2 radius for a Linf radius ``eps``: 2 * eps * sqrt(pixels) / 10, to 3 decimals (0.56 for eps 0.1
    on 28x28)."""
    return round(2 * eps * math.sqrt(pixels) / 10, 3)


def e3_suite(cfg, pixels: int) -> list[dict]:
    """E3's rows as data, built once from the settings ``cfg`` (:func:`nslib.repro.config.settings`).

    Each row: ``id`` (what the comparisons, checks and tables key on), ``attack`` (a
    :func:`nslib.evaluate.run_suite` entry; None for clean accuracy), ``n`` (on the first n test images; None:
    all), ``pairs`` ("own": the cached PGD pairs against the model itself; "vanilla": those against Vanilla,
    transferred; absent: the attack runs here) and ``light`` (also run for Vanilla, which every attack breaks).
    """
    eps, radius = cfg.eps, l2_radius(cfg.eps, pixels)
    pairs = {"attack": "pgd", "eps": eps, "steps": cfg.pair_steps}
    aa = {"attack": "autoattack", "eps": eps, "version": cfg.aa_version,
          **({"attacks": list(cfg.aa_attacks)} if cfg.aa_version == "custom" else {}),
          **({"restarts": cfg.aa_restarts} if cfg.aa_restarts is not None else {})}
    # light: run on every seed and for Vanilla; every_seed: run on every seed of the robust models (AutoAttack, the
    # masking check's reference); "worst": per example, the worst case over the rows every seed runs (C3's judged row)
    return [
        {"id": "clean", "attack": None, "light": True},
        {"id": "pgd", "attack": pairs, "pairs": "own", "light": True},
        {"id": "pgd_restarts", "attack": {**pairs, "restarts": cfg.pgd_restarts}, "pairs": "own", "light": True},
        {"id": "fgsm", "attack": {"attack": "fgsm", "eps": eps}, "light": True},
        {"id": "mim", "attack": {"attack": "mim", "eps": eps, "steps": cfg.mim_steps}},
        {"id": "pgd_long", "attack": {"attack": "pgd", "eps": eps, "steps": cfg.pgd_long_steps}, "n": cfg.n_long},
        {"id": "fmn_l2", "attack": {"attack": "fmn", "steps": cfg.fmn_steps, "radius": radius}, "n": cfg.l2_n},
        {"id": "pgd_l2", "attack": {"attack": "pgd", "norm": "l2", "eps": radius, "steps": cfg.pgd_l2_steps,
                                    "restarts": cfg.pgd_l2_restarts}, "n": cfg.l2_n},
        {"id": "autoattack", "attack": aa, "n": cfg.aa_n, "every_seed": True},
        {"id": "transfer", "attack": pairs, "pairs": "vanilla", "light": True},
        {"id": "worst", "attack": None, "of": ["pgd", "pgd_restarts", "fgsm", "autoattack", "transfer"], "light": True},
    ]


def row_label(row: dict) -> str:
    """What a person reads for an E3 row: "clean", "transfer", or the attack's label from its parameters."""
    if row.get("of"):
        return "worst case"
    if row["attack"] is None:
        return "clean"
    return "transfer" if row.get("pairs") == "vanilla" else evaluate.attack_label(row["attack"])


def _run_row(model, x, y, row: dict, pairs: dict, seed: int) -> dict:
    """One E3 row's numbers: accuracy, low, high, n, outcomes (1/0 per example: correct clean and attacked, for
    paired comparisons) and what its attack adds (correct, wall_s, radius, median_l2, per_attack)."""
    if row["attack"] is None:
        return accuracy_on(model, x, y, outcomes=True)
    if "pairs" in row and row["attack"].get("restarts", 1) > 1:
        return more_restarts(model, x, y, pairs[row["pairs"]], row["attack"], seed=seed)
    if "pairs" in row:
        return accuracy_on(model, pairs[row["pairs"]], y, x=x, outcomes=True)
    n = row.get("n") or len(x)
    s = evaluate.run_suite(model, x[:n], y[:n], [row["attack"]], seed=seed)[0]
    r = {"accuracy": s["robust_accuracy"], "low": s["low"], "high": s["high"], "n": s["n"],
         **{k: s[k] for k in ("outcomes", "wall_s", "median_l2", "median_linf", "per_attack") if k in s}}
    if evaluate.ATTACKS[row["attack"]["attack"]].min_norm or row["attack"].get("norm") == "l2":
        r["radius"] = row["attack"].get("radius", row["attack"].get("eps"))
    return r


def more_restarts(model, x: torch.Tensor, y: torch.Tensor, x_first: torch.Tensor, attack: dict, *, seed: int) -> dict:
    """Robust accuracy under the worst case of ``attack["restarts"]`` PGD runs (``attack``: eps, steps), the first
    being ``x_first`` (the cached pairs): each further run (its own seeds) attacks only the examples still robust,
    since one that an earlier run broke stays broken, and stops on each example once it is broken. Returns accuracy, low, high, n, correct, outcomes, wall_s."""
    t0 = time.perf_counter()
    robust = torch.tensor(accuracy_on(model, x_first, y, x=x, outcomes=True)["outcomes"], dtype=torch.bool)
    for r in range(1, attack["restarts"]):
        idx = robust.nonzero().flatten()
        if len(idx):
            x_adv = attacks.pgd_pairs(model, x[idx], y[idx], eps=attack["eps"], steps=attack["steps"],
                                      seed=seed + 1_000_003 * r,  # batch seeds apart from the first run's
                                      early_stop=True)  # only whether each example breaks is read
            robust[idx] &= torch.tensor(accuracy_on(model, x_adv, y[idx], outcomes=True)["outcomes"], dtype=torch.bool)
    return {**evaluate.accuracy_of(robust), "outcomes": robust.int().tolist(), "wall_s": time.perf_counter() - t0}


def evaluate_model(model, x: torch.Tensor, y: torch.Tensor, suite: list[dict], *, pairs: dict, seed: int = 0,
                   light: bool = False, every_seed: bool = True) -> dict:
    """One model under E3's ``suite`` (:func:`e3_suite`): ``{"rows": {id: row}, "aa_warnings": [...]}``.

    ``pairs`` maps "own" to the cached PGD pairs against the model (all of x) and "vanilla" to those against
    Vanilla (None for Vanilla itself: no transfer row). Every row holds id, label (:func:`row_label`), attack
    (its spec), accuracy, low, high (95% Wilson), n, and what its attack adds (wall_s, radius, median_l2,
    per_attack). ``light=True`` runs only the rows marked light, and those marked every_seed unless
    ``every_seed=False`` (Vanilla: a reference and the transfer source). The worst-case row (``of``) is
    :func:`worst_case` over those of its rows that ran.
    """
    rows, aa_warnings = {}, []
    for row in suite:
        if light and not (row.get("light") or (row.get("every_seed") and every_seed)):
            continue
        if row.get("pairs") and pairs.get(row["pairs"]) is None:
            continue
        if row.get("of"):
            rows[row["id"]] = {"id": row["id"], "attack": None, **worst_case([rows[i] for i in row["of"] if i in rows])}
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rows[row["id"]] = {"id": row["id"], "label": row_label(row), "attack": row["attack"],
                               **_run_row(model, x, y, row, pairs, seed)}
        for w in caught:  # AutoAttack's own checks are recorded (they flag the model); others pass on as raised
            if "AutoAttack" in str(w.message):
                aa_warnings.append(str(w.message))
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return {"rows": rows, "aa_warnings": aa_warnings}


def worst_case(rows: list[dict]) -> dict:
    """Per example, the worst case over ``rows`` (each with per-example ``outcomes`` on the first ``n`` of the same
    images; the first row covers them all): an example counts as robust only if every row that ran on it left it
    robust. Returns accuracy, low, high, n, correct, outcomes, label ("worst case"), of (the row ids) and of_labels
    (their labels: what the worst case was taken over for this model)."""
    n = len(rows[0]["outcomes"])
    worst = torch.ones(n, dtype=torch.bool)
    for r in rows:
        o = torch.tensor(r["outcomes"], dtype=torch.bool)
        worst[:len(o)] &= o
    return {**evaluate.accuracy_of(worst), "outcomes": worst.int().tolist(), "label": "worst case",
            "of": [r["id"] for r in rows], "of_labels": [r["label"] for r in rows]}


def _share(row: dict, n: int) -> float:
    """Accuracy of ``row`` on the first ``n`` images (its outcomes)."""
    return sum(row["outcomes"][:n]) / n


def masking_checks(rows: dict, *, aa_gap: float = MASKING["aa_gap"], longer_pgd: float = MASKING["longer_pgd"]) -> dict:
    """Signs of masked gradients in one (model, seed)'s E3 ``rows`` (:func:`evaluate_model`), each on the same images:

    - AutoAttack leaves at most ``aa_gap`` less accuracy than PGD with restarts (``pgd_restarts``) on its images;
    - the long PGD run (where it ran) leaves at most ``longer_pgd`` more than the PGD pairs on its images.

    Returns ``{"checks": [{"id", "text", "ok", "values"}], "ok"}``; rows that did not run are not checked."""
    checks = []
    if "autoattack" in rows and "pgd_restarts" in rows:
        n = rows["autoattack"]["n"]
        p, a, ok = _at_most_above(rows["pgd_restarts"], rows["autoattack"], n, aa_gap)
        checks.append({"id": "aa_gap", "ok": ok, "values": {"pgd": p, "aa": a, "n": n},
                       "text": f"{rows['autoattack']['label']} {100 * a:.1f}% vs {rows['pgd_restarts']['label']} "
                               f"{100 * p:.1f}% on {n} images: gap {100 * (p - a):.1f} <= {100 * aa_gap:g} points"})
    if "pgd_long" in rows and "pgd" in rows:
        n = rows["pgd_long"]["n"]
        q, p, ok = _at_most_above(rows["pgd_long"], rows["pgd"], n, longer_pgd)
        checks.append({"id": "longer_pgd", "ok": ok, "values": {"pgd": p, "long": q, "n": n},
                       "text": f"{rows['pgd_long']['label']} {100 * q:.1f}% vs {rows['pgd']['label']} {100 * p:.1f}% "
                               f"on {n} images: not more than {100 * longer_pgd:g} point(s) above"})
    return {"checks": checks, "ok": all(c["ok"] for c in checks)}


def _at_most_above(high: dict, low: dict, n: int, bound: float):
    """``(accuracy of high, accuracy of low, high - low <= bound)`` on the first ``n`` images of both rows."""
    h, lo = _share(high, n), _share(low, n)
    return h, lo, h - lo <= bound + 1e-12


def ablation(dataset: str, arch: str, name: str, values, param: str, x, y, *, eps: float, steps: int, seed: int = 0,
             train_args: dict, progress: bool = True) -> list[dict]:
    """Train ``name`` for each value of ``param`` (e.g. k) and measure clean accuracy and accuracy on PGD-``steps``
    pairs at ``eps`` (the cached pairs of the other notebooks). ``train_args``: the :func:`get_model` arguments of
    every run but ``param`` (:attr:`nslib.repro.config.Settings.train_args`, with its training eps where that is
    not the dataset's own), a dict of their own beside ``eps``, the pairs' radius. Returns one row per value: value,
    model, status, clean, pgd (accuracy dicts; pgd's "label" names the attack), collapsed (bool).
    """
    rows = []
    attack = {"attack": "pgd", "eps": eps, "steps": steps}
    for v in values:
        model, info = get_model(dataset, arch, name, seed, progress=progress, **{**train_args, param: v})
        x_adv = adversarial_pairs(model, info, x, y, eps=eps, precision=train_args["precision"], steps=steps, seed=seed)
        rows.append({"value": v, "model": info["label"], "status": info["status"], "collapsed": info["collapsed"],
                     "clean": accuracy_on(model, x, y),
                     "pgd": {**accuracy_on(model, x_adv, y, x=x), "label": evaluate.attack_label(attack)}})
    return rows


def sanity_checks(model, x: torch.Tensor, y: torch.Tensor, rows: dict, *, eps: float, scales=(0.5, 1, 2, 4, 8),
                  steps: int = 20, aa_warnings=(), seed: int = 0, tolerance: float = 0.02) -> dict:
    """The evaluation sanity checks for one robust model (a model that fails them is flagged).

    - accuracy falls towards 0 as eps grows: PGD-``steps`` at eps * each scale on ``x``; non-increasing
      (within ``tolerance``) and <= 0.05 at the largest radius (capped at 1);
    - no black-box attack beats the white-box ones: transfer accuracy >= the PGD pairs' accuracy - tolerance,
      and FGSM (one step) >= the PGD pairs' - tolerance;
    - the strong attacks are not weaker than the plain ones: AutoAttack's and the long PGD run's accuracy <= the
      upper end of the PGD pairs' 95% interval (a longer PGD that breaks less is a sign of masked gradients), and
      the minimal-norm FMN-L2 accuracy at its radius <= the upper end of PGD-L2's there;
    - AutoAttack's own warnings are listed; any warning flags the model.

    ``rows`` are :func:`evaluate_model`'s, keyed by id. Returns {"attack" (the sweep's spec), "label" (its name:
    "PGD-10"), "eps_curve": [(eps, accuracy)], "checks": [{"id", "text", "ok"}], "warnings", "ok"}.
    """
    attack = {"attack": "pgd", "steps": steps}
    curve = []
    dev = next(model.parameters()).device
    for s in scales:
        e = min(1.0, eps * s)
        x_adv = attacks.pgd(model, x.to(dev), y.to(dev), eps=e, steps=steps, seed=seed).cpu()
        curve.append((e, accuracy_on(model, x_adv, y, x=x)["accuracy"]))
    accs = [a for _, a in curve]
    acc = {i: r["accuracy"] for i, r in rows.items()}
    name = {i: r["label"] for i, r in rows.items()}
    checks = [("monotone", "accuracy non-increasing in eps", all(b <= a + tolerance for a, b in zip(accs, accs[1:]))),
              ("vanishes", f"accuracy <= 0.05 at eps {curve[-1][0]:.3g}", accs[-1] <= 0.05),
              ("fgsm_weaker", f"{name['fgsm']} no stronger than {name['pgd']}", acc["fgsm"] >= acc["pgd"] - tolerance)]
    for strong, plain in (("autoattack", "pgd"), ("pgd_long", "pgd"), ("fmn_l2", "pgd_l2")):
        if strong in rows and plain in rows:
            checks.append((f"{strong}_not_above_{plain}", f"{name[strong]} accuracy not above {name[plain]}'s",
                           acc[strong] <= rows[plain]["high"]))
    if "transfer" in rows:
        checks.append(("transfer_weaker", f"transfer no stronger than {name['pgd']}", acc["transfer"] >= acc["pgd"] - tolerance))
    checks.append(("no_aa_warnings", "no AutoAttack warnings", not aa_warnings))
    checks = [{"id": i, "text": t, "ok": bool(ok)} for i, t, ok in checks]
    return {"attack": attack, "label": evaluate.attack_label(attack), "eps_curve": curve, "checks": checks,
            "warnings": list(aa_warnings), "ok": all(c["ok"] for c in checks)}


def c3_comparisons(evals: dict, seeds, pairs=(("sns_pgd_at", "pgd_at"), ("sns_trades", "trades")), *,
                   margin: float, judged=("worst", "transfer"),
                   reported=("pgd_restarts", "pgd", "autoattack", "pgd_long", "mim", "fmn_l2"), flags=None) -> list[dict]:
    """C3 from ``evals[(name, seed)]["rows"]`` (keyed by row id): SNS above its base, paired on the same test
    images and attack seeds (each row's per-example ``outcomes``), with ``margin`` in accuracy.

    Judged over ``seeds`` on the ``judged`` rows (the per-example worst case over the attacks every seed runs, and
    transfer from Vanilla, on every test image); reported beside them as controls, each over the seeds that ran
    it, the ``reported`` rows (PGD with restarts, one PGD run, AutoAttack, the long PGD run, ... on their subsets;
    a row no seed ran is left out). ``flags``: ``{(name, seed): [what failed]}`` from :func:`masking_checks`; a
    comparison on a flagged model is inconclusive, and its reason says which model, seed and check. Returns a
    list of :func:`nslib.verdicts.compare` dicts with ids {"claim": "C3", "model", "base", "row"} and roles."""
    flags = flags or {}
    out = []
    for sns, base in pairs:
        for role, row_ids in (("judged", judged), ("control", reported)):
            for row in row_ids:
                ran = [s for s in seeds if all(row in evals[(m, s)]["rows"] for m in (sns, base))]
                if not ran or (role == "judged" and ran != list(seeds)):
                    if role == "judged":
                        raise ValueError(f"evals must hold row {row!r} of {sns} and {base} for every seed of {list(seeds)}")
                    continue
                ra = [evals[(sns, s)]["rows"][row] for s in ran]
                rb = [evals[(base, s)]["rows"][row] for s in ran]
                c = compare(
                    [r["outcomes"] for r in ra], [r["outcomes"] for r in rb], margin=margin, unit="accuracy",
                    what=f"{label(sns)} > {label(base)}, {ra[0]['label']} accuracy", names=(label(sns), label(base)),
                    role=role, key={"claim": "C3", "model": sns, "base": base, "row": row})
                flagged = [f"{label(m)} seed {s} ({'; '.join(flags[(m, s)])})" for s in ran for m in (sns, base)
                           if flags.get((m, s))]
                if flagged and c["n_seeds"] > 1:
                    c.update(verdict="inconclusive", flagged=flagged,
                             reason="a model compared shows masked gradients: " + ", ".join(flagged)
                                    + f" (the verdict by the interval alone: {c['verdict']})")
                out.append(c)
    return out


def masking_flags(evals: dict, names, seeds) -> dict:
    """``{(name, seed): [ids of the failed checks]}`` of :func:`masking_checks` for every (name, seed) of ``evals``
    among ``names`` and ``seeds`` (empty lists where every check passed), and the checks themselves:
    ``(flags, {(name, seed): masking_checks result})``."""
    results = {(n, s): masking_checks(evals[(n, s)]["rows"]) for n in names for s in seeds if (n, s) in evals}
    return {k: [c["id"] for c in r["checks"] if not c["ok"]] for k, r in results.items()}, results


def mean_rows(evals: dict, name: str, seeds) -> dict:
    """{row id: {"accuracy", "low", "high", "n_seeds", "label"}} averaged over the seeds that ran each row (05 runs
    the secondary attacks on the first ``suite_seeds`` only), for one model (n_seeds: how many, so a figure can
    say what it averages)."""
    out = {}
    for s in seeds:
        for a, r in evals[(name, s)]["rows"].items():
            out.setdefault(a, {"label": r.get("label", a), "rows": []})["rows"].append(r)
    return {a: {**{key: statistics.fmean(r[key] for r in v["rows"]) for key in ("accuracy", "low", "high")},
                "n_seeds": len(v["rows"]), "label": v["label"]} for a, v in out.items()}


def masking_markdown(results: dict) -> str:
    """Markdown of the masking checks of every (model, seed) (:func:`nslib.repro.robustness.masking_checks`):
    ``{(name, seed): result}``; one line each, flagged ones in bold."""
    lines = ["| model | seed | masking check | result |", "|---|---|---|---|"]
    for (name, seed), r in results.items():
        text = "; ".join(("" if c["ok"] else "**NO**: ") + c["text"] for c in r["checks"]) or "nothing to compare"
        lines.append(f"| {label(name)} | {seed} | {text} | {'passes' if r['ok'] else '**FLAGGED**'} |")
    return "\n".join(lines)
