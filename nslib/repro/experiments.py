"""The computations behind the numbered notebooks E1-E4, one documented function per step.

The notebooks call these and draw the figures; each function returns plain dicts (JSON-ready where it
says so) and the claim verdicts come from :func:`nslib.verdicts.compare` (the kit's single verdict rule).

- E1 (02, C1 and C4): :func:`sensitivity_study`, :func:`c1_c4_comparisons`, :func:`c1_ties`
- E2 (03, C2): :func:`nslib.intervention.intervention_study`, :func:`c2_comparisons`
- E4 (04, C6): :func:`map_similarity`, :func:`nslib.sensitivity.pick_map_layer`
- E3 (05, C3): :func:`e3_suite`, :func:`evaluate_model`, :func:`ablation`, :func:`sanity_checks`,
  :func:`c3_comparisons`

Models and pairs come from :mod:`nslib.repro.cache`; tables and the report are in :mod:`nslib.repro.report`.

Usage::

    trained = {n: nslib.repro.cache.get_model("fmnist", "smallcnn", n, seed=0, epochs=2) for n in nslib.repro.cache.MODELS}
    study = sensitivity_study({n: m for n, (m, _) in trained.items()}, {n: i for n, (_, i) in trained.items()},
                              x, y, eps=0.1)
"""
from __future__ import annotations

import math
import statistics
import warnings

import torch

from nslib import attacks, evaluate
from nslib.repro.cache import adversarial_pairs, get_model, label
from nslib.evaluate import accuracy_on
from nslib.sensitivity import capture, neuron_sensitivity, resolve_k, top_k
from nslib.verdicts import compare

__all__ = ["sensitivity_study", "spearman", "c1_c4_comparisons", "of_claim",
           "c1_ties", "c2_comparisons", "map_similarity", "l2_radius", "e3_suite", "row_label", "evaluate_model",
           "transfer_accuracy",
           "ablation", "sanity_checks", "c3_comparisons", "in_range", "sensitivity_numbers", "curve_numbers",
           "mean_rows"]


def _layer_means(sigma: dict) -> dict:
    return {layer: float(torch.nanmean(s.float())) for layer, s in sigma.items()}


# ----------------------------------------------------------------------------------------------------
# E1: neuron sensitivity per layer (C1, C4)

def sensitivity_study(models: dict, infos: dict, x: torch.Tensor, y: torch.Tensor, *, eps: float,
                      steps: int = 20, source: str = "vanilla", layers=None, seed: int = 0) -> dict:
    """Per-layer neuron sensitivity of several models on the same benign images.

    For each model: PGD-``steps`` pairs at ``eps`` crafted against it (white-box; cached by
    :func:`nslib.repro.cache.adversarial_pairs`), and the control pairs crafted against ``models[source]`` (held fixed,
    transferred). Five variants of sigma: "abs" and "rel" (relative, ratio of means: divided by the mean
    |clean output|) and "rel_pairs" (relative, mean of per-pair ratios, the authors' toolbox) on white-box
    pairs, "abs_transfer" and "rel_transfer" on the control pairs.

    Returns: {name: {"label" (the model's, from its info), "clean", "adv" (accuracy dicts of :func:`accuracy_on`
    on the white-box pairs),
    "sigma": {variant: {layer: Tensor}}, "layer_mean": {variant: {layer: float}}, "mean": {variant:
    float, the mean over layers of the per-layer mean, NaN (dead) neurons skipped}}}.
    """
    if source not in models:
        raise ValueError(f"source must be one of the models ({', '.join(models)}), got {source!r}")
    pairs = {n: adversarial_pairs(m, infos[n], x, y, eps=eps, steps=steps, seed=seed) for n, m in models.items()}
    out = {}
    for name, model in models.items():
        sig = {}
        own, control = pairs[name], pairs[source]
        for key, x_adv, relative in (("abs", own, False), ("rel", own, "ratio_of_means"),
                                     ("rel_pairs", own, "mean_of_ratios"), ("abs_transfer", control, False),
                                     ("rel_transfer", control, "ratio_of_means")):
            s = neuron_sensitivity(model, x, x_adv, layers=layers, relative=relative)
            sig[key] = {k: v.cpu() for k, v in s.items()}
        layer_mean = {v: _layer_means(s) for v, s in sig.items()}
        out[name] = {"label": infos[name].get("label", label(name)),
                     "clean": accuracy_on(model, x, y), "adv": accuracy_on(model, pairs[name], y, x=x),
                     "sigma": sig, "layer_mean": layer_mean,
                     "mean": {v: statistics.fmean(lm.values()) for v, lm in layer_mean.items()}}
    return out


def spearman(a, b) -> float:
    """Spearman rank correlation of two equal-length sequences (average ranks for ties)."""
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


_VARIANT_NAMES = {"abs": "absolute", "rel": "relative (ratio of means)",
                  "rel_pairs": "relative (mean of per-pair ratios, the authors' toolbox)"}


def c1_c4_comparisons(studies: dict, baselines=("pgd_at", "trades"), reference: str = "vanilla") -> list[dict]:
    """The comparisons of C1 and C4 from per-seed :func:`sensitivity_study` results ``{seed: study}``.

    C4 ("adversarial training reduces neuron sensitivity"): for each baseline, the reference's mean
    sensitivity is higher than the baseline's, on white-box pairs, absolute *and* relative (ratio of means;
    the relative variant rules out mere rescaling): judged; reported beside them as controls: the transferred
    pairs, and the relative sensitivity as the authors' toolbox computes it (mean of per-pair ratios).
    C1 ("robustness is explained by sensitivity"): across all models, the Spearman correlation between
    white-box robust accuracy and mean sensitivity is negative: compare(-rho, 0) per variant, judged.

    Returns a list of :func:`nslib.verdicts.compare` dicts, each with its ``id`` ({"claim", ...}) and ``role``.
    """
    seeds = sorted(studies)
    first = studies[seeds[0]]
    ref = first[reference]["label"]
    out = []
    for base in baselines:
        for variant, pairs, role in (("abs", "own", "judged"), ("abs", "transfer", "control"), ("rel", "own", "judged"),
                                     ("rel", "transfer", "control"), ("rel_pairs", "own", "control")):
            key = variant + ("_transfer" if pairs == "transfer" else "")
            a = [studies[s][reference]["mean"][key] for s in seeds]
            b = [studies[s][base]["mean"][key] for s in seeds]
            where = "white-box pairs" if pairs == "own" else f"pairs transferred from {ref}"
            what = f"{ref} > {first[base]['label']}, mean {_VARIANT_NAMES[variant]} sensitivity, {where}"
            out.append(compare(a, b, what=what, names=(ref, first[base]["label"]), role=role,
                               key={"claim": "C4", "model": reference, "base": base, "variant": variant, "pairs": pairs}))
    for variant in ("abs", "rel"):
        rhos = []
        for s in seeds:
            names = list(studies[s])
            rhos.append(spearman([studies[s][n]["adv"]["accuracy"] for n in names],
                                 [studies[s][n]["mean"][variant] for n in names]))
        out.append(compare([-r for r in rhos], [0.0] * len(rhos),
                           what=f"-Spearman(robust accuracy, mean {_VARIANT_NAMES[variant].split(' (')[0]} "
                                f"sensitivity) > 0 across {len(first)} models",
                           names=("-Spearman", "zero"), key={"claim": "C1", "variant": variant}))
    return out


def of_claim(comparisons, claim: str) -> list[dict]:
    """The comparisons whose id names ``claim``, in order."""
    return [c for c in comparisons if c["id"].get("claim") == claim]


def c1_ties(studies: dict, models=None, reference: str = "vanilla") -> dict:
    """How far apart in robust accuracy ``models`` (default: all but ``reference``) are, against their intervals.

    C1's Spearman ranks every model; where models' accuracies lie within each other's 95% intervals, their
    ranks among themselves are noise, and only the models that stand apart (Vanilla,
    :func:`nslib.repro.cache.c1_models`) give the correlation something to measure. Returns {"models", "low",
    "high" (the lowest and highest seed-mean robust accuracy of those models), "half_width" (their mean Wilson half-width), "tied" (the spread is
    smaller than one interval: high - low < 2 * half_width), "text" (one sentence for the report)}.
    """
    seeds = sorted(studies)
    if reference not in studies[seeds[0]]:
        raise ValueError(f"reference must be one of the models ({', '.join(studies[seeds[0]])}), got {reference!r}")
    names = [n for n in studies[seeds[0]] if n != reference] if models is None else list(models)
    unknown = [n for n in names if n not in studies[seeds[0]]]
    if unknown:
        raise ValueError(f"models must be drawn from the studies' models ({', '.join(studies[seeds[0]])}), got {unknown}")
    if len(names) < 2:
        raise ValueError(f"studies must hold at least two models besides {reference!r} to compare, got {names}")
    acc = {n: statistics.fmean(studies[s][n]["adv"]["accuracy"] for s in seeds) for n in names}
    half = statistics.fmean((studies[s][n]["adv"]["high"] - studies[s][n]["adv"]["low"]) / 2
                            for s in seeds for n in names)
    low, high = min(acc.values()), max(acc.values())
    tied = high - low < 2 * half
    text = (f"{', '.join(studies[seeds[0]][n]['label'] for n in names)} reach {100 * low:.1f}-{100 * high:.1f}% robust accuracy "
            f"(mean over seeds), a spread of {100 * (high - low):.1f} points, {'narrower' if tied else 'wider'} than "
            f"one 95% interval ({100 * 2 * half:.1f} points wide)" + (": their order among themselves is noise." if tied else "."))
    return {"models": names, "low": low, "high": high, "half_width": half, "tied": tied, "text": text}


# ----------------------------------------------------------------------------------------------------
# E2: intervention (C2)

def _at_k(curve: dict, k, selection: str) -> float:
    """Mean accuracy over seeds of ``selection`` at size ``k`` (a fraction resolved to the layer's width)."""
    kk = resolve_k(k, curve["width"], curve["layer"])
    acc = [r["accuracy"] for r in curve["rows"] if r["selection"] == selection and r["k"] == kk]
    return statistics.fmean(acc)


def c2_comparisons(studies: dict, k, *, model: str, mode: str, model_label: str) -> list[dict]:
    """C2 from per-seed curves of one model and mode ``{seed: [curve per layer]}``.

    At size ``k``, patching the top-k sensitive neurons (restoring them to their benign values, or zeroing them)
    moves adversarial accuracy more than patching k random ones, than the k least sensitive, and than random
    neurons with the same total sensitivity ("matched"); each value is the mean over layers. Judged: restoring,
    top vs random and bottom; the matched control and every zeroing comparison are controls. The Wilson
    interval of each accuracy is pooled over layers' measuring pairs."""
    seeds = sorted(studies)
    out = []
    for other in ("random", "bottom", "matched"):
        a, b, ia, ib = [], [], [], []
        for s in seeds:
            curves = studies[s]
            a.append(statistics.fmean(_at_k(c, k, "top") for c in curves))
            b.append(statistics.fmean(_at_k(c, k, other) for c in curves))
            n = sum(c["n_eval"] for c in curves)
            ia.append(evaluate.wilson_interval(round(a[-1] * n), n))
            ib.append(evaluate.wilson_interval(round(b[-1] * n), n))
        role = "judged" if mode == "restore" and other != "matched" else "control"
        out.append(compare(a, b, intervals_a=ia, intervals_b=ib,
                           what=f"{model_label}, {mode}: top-{k} > {other}-{k} neurons patched, adversarial "
                                f"accuracy (mean over layers)", names=(f"top-{k}", f"{other}-{k}"), role=role,
                           key={"claim": "C2", "model": model, "mode": mode, "k": k, "other": other}))
    return out


# ----------------------------------------------------------------------------------------------------
# E4: sensitive-neuron maps (C6)

@torch.no_grad()
def map_similarity(model, x: torch.Tensor, x_adv: torch.Tensor, layer: str, *, k=0.1, choose_n: int | None = None) -> dict:
    """How alike the activation maps of the most sensitive channels are on benign and adversarial inputs.

    Channels are chosen by sigma on the first ``choose_n`` pairs (default half) and the maps compared on
    the rest: cosine similarity of each image's benign and adversarial map of each chosen channel (a map
    that is zero on both counts as 1, unchanged), averaged. Also for k random channels, as a reference.
    Returns {"top": float, "random": float, "channels": [int], "n": int}.
    """
    n = len(x)
    choose_n = n // 2 if choose_n is None else choose_n
    sigma = neuron_sensitivity(model, x[:choose_n], x_adv[:choose_n], layers=[layer])[layer]
    dev = next(model.parameters()).device
    with attacks.eval_mode(model), capture(model, [layer], detach=True) as acts:
        model(torch.cat([x[choose_n:], x_adv[choose_n:]]).to(dev))
    a = acts[layer].float().flatten(2)  # [2M, C, P]
    m = a.shape[0] // 2
    clean, adv = a[:m], a[m:]
    dot = (clean * adv).sum(2)
    norms = clean.norm(dim=2) * adv.norm(dim=2)
    both_zero = (clean.norm(dim=2) == 0) & (adv.norm(dim=2) == 0)
    cos = torch.where(both_zero, torch.ones_like(dot), dot / norms.clamp_min(1e-12))  # [M, C]
    top = top_k(sigma, k, layer=layer).cpu()
    rand = top_k(sigma, k, which="random", seed=0, layer=layer).cpu()
    return {"top": float(cos[:, top].mean()), "random": float(cos[:, rand].mean()),
            "channels": top.tolist(), "n": m}


# ----------------------------------------------------------------------------------------------------
# E3: robustness (C3, C5) and the evaluation sanity checks

def transfer_accuracy(model, x: torch.Tensor, y: torch.Tensor, x_adv_source: torch.Tensor) -> dict:
    """Robust accuracy of ``model`` on adversarial examples crafted against another model (black-box)."""
    return accuracy_on(model, x_adv_source, y, x=x)


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
    return [
        {"id": "clean", "attack": None, "light": True},
        {"id": "pgd", "attack": pairs, "pairs": "own", "light": True},
        {"id": "fgsm", "attack": {"attack": "fgsm", "eps": eps}, "light": True},
        {"id": "mim", "attack": {"attack": "mim", "eps": eps, "steps": cfg.mim_steps}},
        {"id": "pgd_long", "attack": {"attack": "pgd", "eps": eps, "steps": cfg.pgd_long_steps}, "n": cfg.n_long},
        {"id": "fmn_l2", "attack": {"attack": "fmn", "steps": cfg.fmn_steps, "radius": radius}, "n": cfg.l2_n},
        {"id": "pgd_l2", "attack": {"attack": "pgd", "norm": "l2", "eps": radius, "steps": cfg.pgd_l2_steps,
                                    "restarts": cfg.pgd_l2_restarts}, "n": cfg.l2_n},
        {"id": "autoattack", "attack": aa, "n": cfg.aa_n},
        {"id": "transfer", "attack": pairs, "pairs": "vanilla", "light": True},
    ]


def row_label(row: dict) -> str:
    """What a person reads for an E3 row: "clean", "transfer", or the attack's label from its parameters."""
    if row["attack"] is None:
        return "clean"
    return "transfer" if row.get("pairs") == "vanilla" else evaluate.attack_label(row["attack"])


def _run_row(model, x, y, row: dict, pairs: dict, seed: int) -> dict:
    """One E3 row's numbers: accuracy, low, high, n (and correct, wall_s, radius, median_l2, per_attack)."""
    if row["attack"] is None:
        return accuracy_on(model, x, y)
    if "pairs" in row:
        return accuracy_on(model, pairs[row["pairs"]], y, x=x)
    n = row.get("n") or len(x)
    r = evaluate.run_suite(model, x[:n], y[:n], [row["attack"]], seed=seed)[0]
    extra = {k: r[k] for k in ("median_l2", "median_linf", "per_attack") if k in r}
    if evaluate.ATTACKS[row["attack"]["attack"]].min_norm or row["attack"].get("norm") == "l2":
        extra["radius"] = row["attack"].get("radius", row["attack"].get("eps"))
    return {"accuracy": r["robust_accuracy"], "low": r["ci_low"], "high": r["ci_high"], "n": r["n"],
            "wall_s": r["wall_s"], **extra}


def evaluate_model(model, x: torch.Tensor, y: torch.Tensor, suite: list[dict], *, pairs: dict, seed: int = 0,
                   light: bool = False) -> dict:
    """One model under E3's ``suite`` (:func:`e3_suite`): ``{"rows": {id: row}, "aa_warnings": [...]}``.

    ``pairs`` maps "own" to the cached PGD pairs against the model (all of x) and "vanilla" to those against
    Vanilla (None for Vanilla itself: no transfer row). Every row holds id, label (:func:`row_label`), attack
    (its spec), accuracy, low, high (95% Wilson), n, and what its attack adds (wall_s, radius, median_l2,
    per_attack). ``light=True`` runs only the rows marked light (Vanilla: a reference and the transfer source).
    """
    rows, aa_warnings = {}, []
    for row in suite:
        if (light and not row.get("light")) or (row.get("pairs") and pairs.get(row["pairs"]) is None):
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


def ablation(dataset: str, arch: str, name: str, values, param: str, x, y, *, eps: float, steps: int, seed: int = 0,
             zero_is: str | None = None, progress: bool = True, **train_args) -> list[dict]:
    """Train ``name`` for each value of ``param`` (e.g. lam) and measure clean accuracy and accuracy on PGD-``steps``
    pairs (the cached pairs of the other notebooks).

    ``zero_is`` names the model a value of 0 stands for (SNS with lam = 0 is its base method), which is
    then loaded instead of trained. Returns one row per value: value, model, status, clean, pgd (accuracy
    dicts; pgd's "label" names the attack), collapsed (bool).
    """
    rows = []
    attack = {"attack": "pgd", "eps": eps, "steps": steps}
    for v in values:
        args = dict(train_args)
        if v == 0 and zero_is is not None:
            model, info = get_model(dataset, arch, zero_is, seed, progress=progress, **args)
        else:
            args[param] = v
            model, info = get_model(dataset, arch, name, seed, progress=progress, **args)
        x_adv = adversarial_pairs(model, info, x, y, eps=eps, steps=steps, seed=seed)
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
    - the strong attacks are not weaker than the plain ones: AutoAttack accuracy <= the upper end of the PGD
      pairs' 95% interval, and the minimal-norm FMN-L2 accuracy at its radius <= the upper end of PGD-L2's there;
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
    for strong, plain in (("autoattack", "pgd"), ("fmn_l2", "pgd_l2")):
        if strong in rows and plain in rows:
            checks.append((f"{strong}_not_above_{plain}", f"{name[strong]} accuracy not above {name[plain]}'s",
                           acc[strong] <= rows[plain]["high"]))
    if "transfer" in rows:
        checks.append(("transfer_weaker", f"transfer no stronger than {name['pgd']}", acc["transfer"] >= acc["pgd"] - tolerance))
    checks.append(("no_aa_warnings", "no AutoAttack warnings", not aa_warnings))
    checks = [{"id": i, "text": t, "ok": bool(ok)} for i, t, ok in checks]
    return {"attack": attack, "label": evaluate.attack_label(attack), "eps_curve": curve, "checks": checks,
            "warnings": list(aa_warnings), "ok": all(c["ok"] for c in checks)}


def c3_comparisons(evals: dict, seeds, pairs=(("sns_pgd_at", "pgd_at"), ("sns_trades", "trades")),
                   judged=("autoattack", "transfer"), reported=("pgd",)) -> list[dict]:
    """C3 from ``evals[(name, seed)]["rows"]`` (keyed by row id): SNS above its base on the ``judged`` rows
    (AutoAttack and transfer) and, as controls, on the ``reported`` ones (the PGD pairs). Returns a list of
    :func:`nslib.verdicts.compare` dicts with ids {"claim": "C3", "model", "base", "row"} and roles."""
    out = []
    for sns, base in pairs:
        for role, row_ids in (("judged", judged), ("control", reported)):
            for row in row_ids:
                ra = [evals[(sns, s)]["rows"][row] for s in seeds]
                rb = [evals[(base, s)]["rows"][row] for s in seeds]
                out.append(compare(
                    [r["accuracy"] for r in ra], [r["accuracy"] for r in rb],
                    intervals_a=[(r["low"], r["high"]) for r in ra], intervals_b=[(r["low"], r["high"]) for r in rb],
                    what=f"{label(sns)} > {label(base)}, {ra[0]['label']} accuracy", names=(label(sns), label(base)),
                    role=role, key={"claim": "C3", "model": sns, "base": base, "row": row}))
    return out


def in_range(value: float | None, low: float, high: float) -> bool:
    """``low <= value <= high``: what the checked notebook cells print (never the raw float). A value that was
    never measured (None, e.g. the validation PGD accuracy of a collapsed run, which has no best epoch) or NaN
    is not in range."""
    return value is not None and low <= value <= high


def sensitivity_numbers(studies: dict) -> dict:
    """The JSON-ready part of per-seed sensitivity studies (layer means, means, accuracies)."""
    return {str(s): {n: {k: r[k] for k in ("clean", "adv", "layer_mean", "mean")} for n, r in st.items()}
            for s, st in studies.items()}


def curve_numbers(curves: dict) -> dict:
    """The JSON-ready part of intervention curves: rows and accuracies per model/seed, mode and layer."""
    return {f"{n}/{s}": {mode: [{k: c[k] for k in ("layer", "width", "n_eval", "clean_accuracy", "adv_accuracy", "rows")}
                                for c in cs] for mode, cs in by_mode.items()}
            for (n, s), by_mode in curves.items()}


def mean_rows(evals: dict, name: str, seeds) -> dict:
    """{row id: {"accuracy", "low", "high", "n_seeds", "label"}} averaged over seeds, for one model (n_seeds: how
    many, so a figure can say what it averages)."""
    rows = evals[(name, seeds[0])]["rows"]
    return {a: {**{key: statistics.fmean(evals[(name, s)]["rows"][a][key] for s in seeds)
                   for key in ("accuracy", "low", "high")}, "n_seeds": len(seeds), "label": rows[a].get("label", a)}
            for a in rows}


