"""The computations behind the numbered notebooks E1-E4, one documented function per step.

The notebooks call these and draw the figures; each function returns plain dicts (JSON-ready where it
says so) and the claim verdicts come from :func:`nslib.verdicts.compare` (the kit's single verdict rule).

- E1 (02, C1 and C4): :func:`sensitivity_study`, :func:`c1_c4_comparisons`, :func:`c1_ties`
- E2 (03, C2): :func:`nslib.intervention.intervention_study`, :func:`c2_comparisons`
- E4 (04, C6): :func:`map_similarity`, :func:`nslib.sensitivity.pick_map_layer`
- E3 (05, C3): :func:`evaluate_model`, :func:`ablation`, :func:`sanity_checks`, :func:`c3_comparisons`

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
from nslib.repro.cache import LABELS, adversarial_pairs, get_model, label
from nslib.evaluate import accuracy_on
from nslib.sensitivity import capture, neuron_sensitivity, top_k
from nslib.verdicts import compare

__all__ = ["sensitivity_study", "spearman", "c1_c4_comparisons",
           "c1_ties", "c2_comparisons", "map_similarity", "evaluate_model", "transfer_accuracy",
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

    Returns: {name: {"clean", "adv" (accuracy dicts of :func:`accuracy_on` on the white-box pairs),
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
            sig[key] = {k: v.cpu() for k, v in (s[0] if relative else s).items()}
        layer_mean = {v: _layer_means(s) for v, s in sig.items()}
        out[name] = {"clean": accuracy_on(model, x, y), "adv": accuracy_on(model, pairs[name], y, x=x),
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


def c1_c4_comparisons(studies: dict, baselines=("pgd_at", "trades"), reference: str = "vanilla") -> dict:
    """The comparisons of C1 and C4 from per-seed :func:`sensitivity_study` results ``{seed: study}``.

    C4 ("adversarial training reduces neuron sensitivity"): for each baseline, the reference's mean
    sensitivity is higher than the baseline's, on white-box pairs, absolute *and* relative (ratio of means;
    the relative variant rules out mere rescaling); reported beside them, not judged: the transferred
    control, and the relative sensitivity as the authors' toolbox computes it (mean of per-pair ratios).
    C1 ("robustness is explained by sensitivity"): across all models, the Spearman correlation between
    white-box robust accuracy and mean sensitivity is negative: compare(-rho, 0) per variant.

    Returns {"C4": [...], "C4_control": [...], "C1": [...]} lists of :func:`nslib.verdicts.compare` dicts.
    """
    seeds = sorted(studies)
    out = {"C4": [], "C4_control": [], "C1": []}
    for base in baselines:
        for key, variant, suffix in (("C4", "abs", ""), ("C4_control", "abs", "_transfer"), ("C4", "rel", ""),
                                     ("C4_control", "rel", "_transfer"), ("C4_control", "rel_pairs", "")):
            a = [studies[s][reference]["mean"][variant + suffix] for s in seeds]
            b = [studies[s][base]["mean"][variant + suffix] for s in seeds]
            pairs = "white-box pairs" if not suffix else f"pairs transferred from {LABELS[reference]}"
            what = (f"{LABELS[reference]} > {LABELS.get(base, base)}, mean {_VARIANT_NAMES[variant]} "
                    f"sensitivity, {pairs}")
            out[key].append(compare(a, b, what=what, names=(LABELS[reference], LABELS.get(base, base))))
    for variant in ("abs", "rel"):
        rhos = []
        for s in seeds:
            names = list(studies[s])
            rhos.append(spearman([studies[s][n]["adv"]["accuracy"] for n in names],
                                 [studies[s][n]["mean"][variant] for n in names]))
        out["C1"].append(compare([-r for r in rhos], [0.0] * len(rhos),
                                     what=f"-Spearman(robust accuracy, mean {'relative' if variant == 'rel' else 'absolute'} "
                                          f"sensitivity) > 0 across {len(studies[seeds[0]])} models",
                                 names=("-Spearman", "zero")))
    return out


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
    text = (f"{', '.join(label(n) for n in names)} reach {100 * low:.1f}-{100 * high:.1f}% robust accuracy "
            f"(mean over seeds), a spread of {100 * (high - low):.1f} points, {'narrower' if tied else 'wider'} than "
            f"one 95% interval ({100 * 2 * half:.1f} points wide)" + (": their order among themselves is noise." if tied else "."))
    return {"models": names, "low": low, "high": high, "half_width": half, "tied": tied, "text": text}


# ----------------------------------------------------------------------------------------------------
# E2: intervention (C2)

def _at_k(curve: dict, k, selection: str) -> float:
    """Mean accuracy over seeds of ``selection`` at size ``k`` (a fraction resolved to the layer's width)."""
    from nslib.sensitivity import resolve_k

    kk = resolve_k(k, curve["width"], curve["layer"])
    acc = [r["accuracy"] for r in curve["rows"] if r["selection"] == selection and r["k"] == kk]
    return statistics.fmean(acc)


def c2_comparisons(studies: dict, k, label: str) -> list[dict]:
    """C2 from per-seed curves of one mode ``{seed: [curve per layer]}``; ``label`` names model and mode.

    For the restore mode: at size ``k``, restoring the top-k
    sensitive neurons recovers more accuracy than restoring k random ones, than the k least sensitive,
    and (control) than random neurons with the same total sensitivity ("matched"); each value is the mean
    over layers. The Wilson interval of the top-k accuracy is pooled over layers' measuring pairs."""
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
        out.append(compare(a, b, intervals_a=ia, intervals_b=ib,
                               what=f"{label}: top-{k} > {other}-{k} neurons patched, adversarial accuracy "
                                    f"(mean over layers)", names=(f"top-{k}", f"{other}-{k}")))
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


def evaluate_model(model, x: torch.Tensor, y: torch.Tensor, *, eps: float, x_adv_pgd20: torch.Tensor,
                   x_adv_transfer: torch.Tensor | None, n_long: int, long_steps: int, mim_steps: int,
                   l2_n: int, fmn_steps: int, pgd_l2_steps: int, pgd_l2_restarts: int = 1, aa_n: int,
                   aa_version: str, aa_attacks=None, aa_restarts: int | None = None, seed: int = 0,
                   light: bool = False) -> dict:
    """One model under the suite of E3: ``{"rows": {label: row}, "aa_warnings": [...]}``.

    PGD-20 comes from the cached pairs ``x_adv_pgd20`` (all of x); PGD-``long_steps`` runs on the first
    ``n_long`` images; on the first ``l2_n``, at the L2 radius 2 * eps * sqrt(pixels) / 10: FMN-L2 (minimal
    norm: robust where the smallest perturbation found exceeds the radius, plus its median) and PGD-L2 at that
    radius (``pgd_l2_steps`` x ``pgd_l2_restarts``), which a sound minimal-norm attack is never weaker than;
    AutoAttack on the first ``aa_n`` (``aa_restarts``: its APGD/FAB restarts, None: AutoAttack's own). Every row has accuracy, low, high (95% Wilson), n and wall_s. Rows:
    clean, PGD-20, FGSM, MIM-<steps>, PGD-<long>, FMN-L2, PGD-L2, AutoAttack, transfer (when
    ``x_adv_transfer`` is given). ``light=True`` stops after
    FGSM (for the vanilla model, which the attacks break anyway: only the transfer source and a reference).
    """
    rows = {"clean": accuracy_on(model, x, y), "PGD-20": accuracy_on(model, x_adv_pgd20, y, x=x)}

    def put(r, **extra):
        rows[r["attack"]] = {"accuracy": r["robust_accuracy"], "low": r["ci_low"], "high": r["ci_high"], "n": r["n"],
                             "wall_s": r["wall_s"], **extra}

    put(evaluate.run_suite(model, x, y, [{"attack": "fgsm", "eps": eps, "label": "FGSM"}], seed=seed)[0])
    if light:
        if x_adv_transfer is not None:
            rows["transfer"] = transfer_accuracy(model, x, y, x_adv_transfer)
        return {"rows": rows, "aa_warnings": []}
    put(evaluate.run_suite(model, x, y, [{"attack": "mim", "eps": eps, "steps": mim_steps, "label": f"MIM-{mim_steps}"}],
                           seed=seed)[0])
    put(evaluate.run_suite(model, x[:n_long], y[:n_long], [{"attack": "pgd", "eps": eps, "steps": long_steps,
                                                            "label": f"PGD-{long_steps}"}], seed=seed)[0])
    radius = round(2 * eps * math.sqrt(x[0].numel()) / 10, 3)
    r = evaluate.run_suite(model, x[:l2_n], y[:l2_n], [{"attack": "fmn", "steps": fmn_steps, "radius": radius,
                                                        "label": "FMN-L2"}], seed=seed)[0]
    put(r, radius=radius, median_l2=r["median_l2"])
    put(evaluate.run_suite(model, x[:l2_n], y[:l2_n], [{"attack": "pgd", "norm": "l2", "eps": radius, "steps": pgd_l2_steps,
                                                        "restarts": pgd_l2_restarts, "label": "PGD-L2"}], seed=seed)[0],
        radius=radius)
    aa = {"attack": "autoattack", "eps": eps, "version": aa_version, "label": "AutoAttack"}
    if aa_version == "custom":
        aa["attacks"] = list(aa_attacks)
    if aa_restarts is not None:
        aa["restarts"] = aa_restarts
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = evaluate.run_suite(model, x[:aa_n], y[:aa_n], [aa], seed=seed)[0]
    put(r, per_attack=r.get("per_attack", {}))
    if x_adv_transfer is not None:
        rows["transfer"] = transfer_accuracy(model, x, y, x_adv_transfer)
    aa_warnings = [str(w.message) for w in caught if "AutoAttack" in str(w.message)]
    return {"rows": rows, "aa_warnings": aa_warnings}


def ablation(dataset: str, arch: str, name: str, values, param: str, x, y, *, eps: float, seed: int = 0,
             zero_is: str | None = None, progress: bool = True, **train_args) -> list[dict]:
    """Train ``name`` for each value of ``param`` (e.g. lam) and measure clean and PGD-20 accuracy.

    ``zero_is`` names the model a value of 0 stands for (SNS with lam = 0 is its base method), which is
    then loaded instead of trained. Returns one row per value: value, model, status, clean, PGD-20
    (accuracy dicts), collapsed (bool).
    """
    rows = []
    for v in values:
        args = dict(train_args)
        if v == 0 and zero_is is not None:
            model, info = get_model(dataset, arch, zero_is, seed, progress=progress, **args)
        else:
            args[param] = v
            model, info = get_model(dataset, arch, name, seed, progress=progress, **args)
        x_adv = adversarial_pairs(model, info, x, y, eps=eps, steps=20, seed=seed)
        rows.append({"value": v, "model": info["label"], "status": info["status"], "collapsed": info["collapsed"],
                     "clean": accuracy_on(model, x, y), "PGD-20": accuracy_on(model, x_adv, y, x=x)})
    return rows


def sanity_checks(model, x: torch.Tensor, y: torch.Tensor, rows: dict, *, eps: float, scales=(0.5, 1, 2, 4, 8),
                  steps: int = 20, aa_warnings=(), seed: int = 0, tolerance: float = 0.02) -> dict:
    """The evaluation sanity checks for one robust model (a model that fails them is flagged).

    - accuracy falls towards 0 as eps grows: PGD-``steps`` at eps * each scale on ``x``; non-increasing
      (within ``tolerance``) and <= 0.05 at the largest radius (capped at 1);
    - no black-box attack beats the white-box ones: transfer accuracy >= PGD-20 accuracy - tolerance,
      and FGSM (one step) >= PGD-20 - tolerance;
    - the strong attacks are not weaker than the plain ones: AutoAttack accuracy <= the upper end of PGD-20's
      95% interval, and the minimal-norm FMN-L2 accuracy at its radius <= the upper end of PGD-L2's there;
    - AutoAttack's own warnings are listed; any warning flags the model.

    Returns {"eps_curve": [(eps, accuracy)], "checks": {name: bool}, "warnings": [...], "ok": bool}.
    """
    curve = []
    for s in scales:
        e = min(1.0, eps * s)
        x_adv = attacks.pgd(model, x.to(next(model.parameters()).device), y.to(next(model.parameters()).device),
                            eps=e, steps=steps, seed=seed).cpu()
        curve.append((e, accuracy_on(model, x_adv, y, x=x)["accuracy"]))
    accs = [a for _, a in curve]
    checks = {
        "accuracy non-increasing in eps": all(b <= a + tolerance for a, b in zip(accs, accs[1:])),
        f"accuracy <= 0.05 at eps {curve[-1][0]:.3g}": accs[-1] <= 0.05,
        "FGSM no stronger than PGD-20": rows["FGSM"]["accuracy"] >= rows["PGD-20"]["accuracy"] - tolerance,
    }
    for strong, plain in (("AutoAttack", "PGD-20"), ("FMN-L2", "PGD-L2")):
        if strong in rows and plain in rows:
            checks[f"{strong} accuracy not above {plain}'s"] = rows[strong]["accuracy"] <= rows[plain]["high"]
    if "transfer" in rows:
        checks["transfer no stronger than PGD-20"] = rows["transfer"]["accuracy"] >= rows["PGD-20"]["accuracy"] - tolerance
    checks["no AutoAttack warnings"] = not aa_warnings
    return {"eps_curve": curve, "checks": checks, "warnings": list(aa_warnings), "ok": all(checks.values())}


def c3_comparisons(evals: dict, seeds, pairs=(("sns_pgd_at", "pgd_at"), ("sns_trades", "trades")),
                   judged=("AutoAttack", "transfer"), reported=("PGD-20",)) -> dict:
    """C3 from ``evals[(name, seed)]["rows"]``: SNS above its base on AutoAttack and on transfer (judged)
    and on PGD-20 (reported only). Returns {"judged": [...], "reported": [...]} of compare dicts."""
    out = {"judged": [], "reported": []}
    for sns, base in pairs:
        for key, attack_names in (("judged", judged), ("reported", reported)):
            for attack in attack_names:
                ra = [evals[(sns, s)]["rows"][attack] for s in seeds]
                rb = [evals[(base, s)]["rows"][attack] for s in seeds]
                out[key].append(compare(
                    [r["accuracy"] for r in ra], [r["accuracy"] for r in rb],
                    intervals_a=[(r["low"], r["high"]) for r in ra], intervals_b=[(r["low"], r["high"]) for r in rb],
                    what=f"{LABELS[sns]} > {LABELS[base]}, {attack} accuracy", names=(LABELS[sns], LABELS[base])))
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
    """{attack: {"accuracy", "low", "high", "n_seeds"}} averaged over seeds, for one model (n_seeds: how many,
    so a figure can say what it averages)."""
    attacks_ = evals[(name, seeds[0])]["rows"]
    return {a: {**{key: statistics.fmean(evals[(name, s)]["rows"][a][key] for s in seeds)
                   for key in ("accuracy", "low", "high")}, "n_seeds": len(seeds)} for a in attacks_}


