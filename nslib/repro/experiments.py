"""The computations behind the numbered notebooks E1-E4, one documented function per step.

The notebooks call these and draw the figures; each function returns plain dicts (JSON-ready where it
says so) and the claim verdicts come from :func:`nslib.verdicts.compare` (the kit's single verdict rule).

- E1 (02, C1 and C4): :func:`sensitivity_study`, :func:`c1_c4_comparisons`, :func:`c1_ties`
- E2 (03, C2): :func:`nslib.intervention.intervention_study`, :func:`c2_comparisons`
- E4 (04, C6): :func:`map_similarity`, :func:`nslib.sensitivity.pick_map_layer`
- E3 (05, C3): :mod:`nslib.repro.robustness`

Models and pairs come from :mod:`nslib.repro.cache`; tables and the report are in :mod:`nslib.repro.report`.

Usage::

    trained = {n: nslib.repro.cache.get_model("fmnist", "smallcnn", n, seed=0, epochs=2) for n in nslib.repro.cache.MODELS}
    study = sensitivity_study({n: m for n, (m, _) in trained.items()}, {n: i for n, (_, i) in trained.items()},
                              x, y, eps=0.1)
"""
from __future__ import annotations

import math
import statistics

import torch

from nslib import attacks
from nslib.repro.cache import adversarial_pairs, label
from nslib.evaluate import accuracy_on
from nslib.sensitivity import capture, neuron_sensitivity, resolve_k, sensitivity_variants, top_k
from nslib.verdicts import compare, correlation

__all__ = ["sensitivity_study", "c1_c4_comparisons", "of_claim", "c1_ties", "c2_comparisons",
           "map_similarity", "in_range", "sensitivity_numbers", "curve_numbers"]


def _layer_means(sigma: dict) -> dict:
    return {layer: float(torch.nanmean(s.float())) for layer, s in sigma.items()}


def _layer_ratios(sigma: dict, activity: dict) -> dict:
    """Each layer's relative sensitivity as its own ratio of means: mean sigma over mean |clean output|, over all
    its neurons. The mean of per-neuron ratios is not used for the layer: a neuron nearly silent on clean images
    (mean |output| 1e-5 to 1e-8 in fine-tuned SmallCNNs) that moves under attack has a ratio in the tens or
    thousands and sets the layer's mean alone (a333fb3's C4 interval on PGD-AT, -0.60 [-3.84, +2.65], came from
    one seed's such neuron)."""
    return {layer: float(s.double().sum() / activity[layer].double().sum()) for layer, s in sigma.items()}


# ----------------------------------------------------------------------------------------------------
# E1: neuron sensitivity per layer (C1, C4)

def sensitivity_study(models: dict, infos: dict, x: torch.Tensor, y: torch.Tensor, *, eps: float, precision: str,
                      steps: int = 20, source: str = "vanilla", layers=None, seed: int = 0) -> dict:
    """Per-layer neuron sensitivity of several models on the same benign images.

    For each model: PGD-``steps`` pairs at ``eps`` and ``precision`` crafted against it (white-box; cached by
    :func:`nslib.repro.cache.adversarial_pairs`), and the control pairs crafted against ``models[source]`` (held fixed,
    transferred). Five variants of sigma: "abs" and "rel" (relative, ratio of means: divided by the mean
    |clean output|) and "rel_pairs" (relative, mean of per-pair ratios, the authors' toolbox) on white-box
    pairs, "abs_transfer" and "rel_transfer" on the control pairs. A layer's value of "rel" and "rel_transfer"
    (``layer_mean``) is the layer's own ratio of means, its mean absolute sigma over its mean |clean output|
    (:func:`_layer_ratios`); of the others, the mean over its neurons.

    Returns: {name: {"label" (the model's, from its info), "clean", "adv" (accuracy dicts of :func:`accuracy_on`
    on the white-box pairs),
    "sigma": {variant: {layer: Tensor}}, "layer_mean": {variant: {layer: float}}, "mean": {variant:
    float, the mean over layers of the per-layer mean, NaN (dead) neurons skipped}}}.
    """
    if source not in models:
        raise ValueError(f"source must be one of the models ({', '.join(models)}), got {source!r}")
    pairs = {n: adversarial_pairs(m, infos[n], x, y, eps=eps, precision=precision, steps=steps, seed=seed)
             for n, m in models.items()}
    out = {}
    for name, model in models.items():
        own, control = pairs[name], pairs[source]
        # one pass per batch over the benign images, the own pairs and the control pairs for all five variants
        sig = sensitivity_variants(model, x, {"abs": (own, False), "rel": (own, "ratio_of_means"),
                                              "rel_pairs": (own, "mean_of_ratios"), "abs_transfer": (control, False),
                                              "rel_transfer": (control, "ratio_of_means")}, layers=layers,
                                   activity=True)
        sig = {key: {k: v.cpu() for k, v in s.items()} for key, s in sig.items()}
        activity = sig.pop("activity")
        absolute = {"rel": "abs", "rel_transfer": "abs_transfer"}  # a relative variant's layer value: its ratio
        layer_mean = {v: _layer_ratios(sig[absolute[v]], activity) if v in absolute else _layer_means(s)
                      for v, s in sig.items()}
        out[name] = {"label": infos[name].get("label", label(name)),
                     "clean": accuracy_on(model, x, y), "adv": accuracy_on(model, pairs[name], y, x=x),
                     "sigma": sig, "layer_mean": layer_mean,
                     "mean": {v: statistics.fmean(lm.values()) for v, lm in layer_mean.items()}}
    return out


_VARIANT_NAMES = {"abs": "absolute", "rel": "relative (ratio of means)",
                  "rel_pairs": "relative (mean of per-pair ratios, the authors' toolbox)"}


def c1_c4_comparisons(studies: dict, baselines=("pgd_at", "trades"), reference: str = "vanilla", *,
                      margins: dict) -> list[dict]:
    """The comparisons of C1 and C4 from per-seed :func:`sensitivity_study` results ``{seed: study}``.

    C4 ("adversarial training reduces neuron sensitivity"): for each baseline, the reference's mean
    sensitivity is higher than the baseline's, compared as the log of the ratio (seed by seed; margin
    ``margins["sensitivity"]``), on white-box pairs, absolute *and* relative (ratio of means; the relative
    variant rules out mere rescaling): judged; reported beside them as controls: the transferred pairs, and the
    relative sensitivity as the authors' toolbox computes it (mean of per-pair ratios).
    C1 ("robustness is explained by sensitivity"): across all models, the Spearman correlation between
    white-box robust accuracy and mean sensitivity is negative: -rho per seed against 0 (margin
    ``margins["correlation"]``), per variant, judged.

    Returns a list of :func:`nslib.verdicts.compare` dicts, each with its ``id`` ({"claim", ...}) and ``role``.
    """
    seeds = sorted(studies)
    first = studies[seeds[0]]
    ref = first[reference]["label"]
    out = []
    for base in [b for b in baselines if b in first]:
        for variant, pairs, role in (("abs", "own", "judged"), ("abs", "transfer", "control"), ("rel", "own", "judged"),
                                     ("rel", "transfer", "control"), ("rel_pairs", "own", "control")):
            key = variant + ("_transfer" if pairs == "transfer" else "")
            a = [math.log(studies[s][reference]["mean"][key]) for s in seeds]
            b = [math.log(studies[s][base]["mean"][key]) for s in seeds]
            where = "white-box pairs" if pairs == "own" else f"pairs transferred from {ref}"
            what = f"{ref} > {first[base]['label']}, mean {_VARIANT_NAMES[variant]} sensitivity, {where}"
            out.append(compare(a, b, margin=margins["sensitivity"], what=what, unit="log ratio",
                               names=(f"log {ref}", f"log {first[base]['label']}"), role=role,
                               key={"claim": "C4", "model": reference, "base": base, "variant": variant, "pairs": pairs}))
    names = list(first)
    for variant in ("abs", "rel"):
        acc = [[studies[s][n]["adv"]["accuracy"] for n in names] for s in seeds]
        sig = [[studies[s][n]["mean"][variant] for n in names] for s in seeds]
        out.append(correlation(acc, sig, sign=-1, margin=margins["correlation"],
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


def c2_comparisons(studies: dict, k, *, model: str, mode: str, model_label: str, margin: float) -> list[dict]:
    """C2 from per-seed curves of one model and mode ``{seed: [curve per layer]}``.

    At size ``k``, patching the top-k sensitive neurons (restoring them to their benign values, or zeroing them)
    moves adversarial accuracy more than patching k random ones, than the k least sensitive, and than random
    neurons with the same total sensitivity ("matched"); each value is the mean over layers and selection seeds,
    one per training seed (the interval is over training seeds; ``margin`` in accuracy). Judged: restoring, top
    vs random and bottom; the matched control and every zeroing comparison are controls."""
    seeds = sorted(studies)
    out = []
    for other in ("random", "bottom", "matched"):
        a = [statistics.fmean(_at_k(c, k, "top") for c in studies[s]) for s in seeds]
        b = [statistics.fmean(_at_k(c, k, other) for c in studies[s]) for s in seeds]
        role = "judged" if mode == "restore" and other != "matched" else "control"
        out.append(compare(a, b, margin=margin, unit="accuracy",
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
    Returns {"top": float, "random": float, "top_per_image", "random_per_image" (each image's mean over the
    channels, for paired comparisons), "channels": [int], "n": int}.
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
            "top_per_image": cos[:, top].mean(1).tolist(), "random_per_image": cos[:, rand].mean(1).tolist(),
            "channels": top.tolist(), "n": m}


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
