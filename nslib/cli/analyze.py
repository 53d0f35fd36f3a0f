"""Neuron sensitivity for anyone's model: ``python -m nslib analyze --model SPEC --data NAME``.

The paper's analysis (E1, E2 and E4) of one model in one command, the way AutoAttack is run on a model:
benign/adversarial pairs crafted against it, every analysed layer's neuron sensitivity (absolute and
relative), its most sensitive neurons, what restoring or zeroing them does to adversarial accuracy (top
vs random vs least sensitive vs sensitivity-matched, on at most four of the layers, evenly spaced), and the
activation maps of the most sensitive channels.

``SPEC`` names the model and ``--data`` the images, as :mod:`nslib.cli.specs` reads them (the SPECs ``nslib train`` and
``nslib evaluate`` take too). The test images are the reproduction's own (:func:`nslib.data.test_set`: a fixed
class-stratified subset) and the PGD pairs are crafted exactly as the reproduction crafts them
(:func:`nslib.attacks.pgd_pairs`), so for a checkpoint the kit trained the numbers equal notebook 02's.

Everything is checked before any work (a checkpoint that does not fit the architecture, a model that does
not return logits, data of the wrong shape, an unknown layer, images outside [0, 1]); the results are
written to a temporary folder beside ``--out`` and moved into place at the end, so an error or Ctrl-C
leaves nothing half-written. Written: ``sensitivity.csv`` (every neuron), ``layers.csv`` and
``sensitivity.json`` (per-layer summaries, top-k neurons, intervention curves, parameters, provenance),
``figures/*.png|pdf``, ``ANALYSIS.md`` and ``nslib-manifest.json`` (the list of those files: all that ``--force``
may remove when it replaces the folder; :func:`nslib.store.check_result_dir`).

Usage::

    python -m nslib analyze --model smallcnn:outputs/models/fmnist/pgd_at/<key>/best.pt --data fmnist --n 200
    summary = nslib.cli.analyze.analyze(model, x, y, eps=0.1, out_dir="outputs/analysis/mine")
"""
from __future__ import annotations

import math
import statistics
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from torch import nn

from nslib import attacks, checks, data as data_mod, distributed, evaluate, fast, intervention, viz
from nslib.cli import specs
from nslib.evaluate import accuracy_on
from nslib.progress import bar
from nslib.cli.specs import check_fit, dataset_of, load_data, load_model  # noqa: F401  (analyze.load_model stays public)
from nslib.sensitivity import layer_summary, pick_map_layer, sensitivity_variants, top_k
from nslib.store import atomic_write_bytes, check_result_dir, claim, outputs_dir, provenance, save_json, writing_result

__all__ = ["load_model", "load_data", "dataset_of", "check_fit", "pair_attacks", "analyze", "add_arguments", "main"]

OWN_FILES = ("sensitivity.csv", "layers.csv", "sensitivity.json", "ANALYSIS.md", *(  # what analyze writes
    f"figures/{f}.{ext}" for f in ("sensitivity_abs", "sensitivity_rel", "intervention_restore", "intervention_zero",
                                   "maps") for ext in ("png", "pdf")))
LEGACY = (OWN_FILES, "sensitivity.json")  # a folder of these, written before manifests existed, is ours to replace
MAX_CURVES = 4  # layers with intervention curves, evenly spaced over the analysed ones (each costs 2 x 24 passes)


def pair_attacks() -> list[str]:
    """The attacks ``--attack`` takes: every fixed-radius attack of :data:`nslib.evaluate.ATTACKS`."""
    return [name for name, a in evaluate.ATTACKS.items() if not a.min_norm]


# ----------------------------------------------------------------------------------------------------
# the analysis

def _pairs(model, x, y, *, attack, eps, steps, seed, amp, progress: bool = True) -> torch.Tensor:
    """PGD: the reproduction's pairs (so a kit checkpoint gives notebook 02's numbers); any other fixed-radius
    attack of :data:`nslib.evaluate.ATTACKS` at its defaults (AutoAttack: standard)."""
    if attack == "pgd" and distributed.active():  # pgd_pairs' batches dealt to the ranks, each seeded as there
        bs = fast.attack_batch(checks.model_device(model))
        return torch.cat(distributed.gather_batches({i: attacks.pgd_pairs(
            model, x[i:i + bs], y[i:i + bs], eps=eps, steps=steps, seed=seed + i, amp=amp)
            for i in distributed.my_batches(len(x), bs)}))
    if attack == "pgd":
        return attacks.pgd_pairs(model, x, y, eps=eps, steps=steps, seed=seed, amp=amp, progress=progress)
    return evaluate.craft(model, x, y, {"attack": attack, "eps": eps}, seed=seed)


def _layer_rows(sigma: dict, rel: dict, dead: dict, k) -> list[dict]:
    rows = {r["layer"]: r for r in layer_summary(sigma, k=k)}
    rel_rows = {r["layer"]: r for r in layer_summary(rel, k=k, dead=dead)}
    out = []
    for layer, s in sigma.items():
        top = top_k(s, rows[layer]["k"], layer=layer)
        out.append({"layer": layer, "neurons": s.numel(), "dead": int(dead[layer].sum()),
                    "mean_abs": rows[layer]["mean"], "mean_rel": rel_rows[layer]["mean"],
                    "top_k_mean_abs": rows[layer]["top_k_mean"], "top_k_mean_rel": rel_rows[layer]["top_k_mean"],
                    "k": rows[layer]["k"], "top_neurons": top.tolist()})
    return out


def analyze(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, out_dir, attack: str = "pgd",
            steps: int = 20, layers=None, k=0.1, ks=(0.05, 0.1, 0.25), seeds=(0, 1, 2), seed: int = 0,
            amp: bool = False, force: bool = False, meta: dict | None = None, progress: bool = True) -> dict:
    """Run the analysis of ``model`` on ``(x, y)`` and write it to ``out_dir``; returns the summary dict.

    Args: eps (Linf radius of the pairs, in (0, 1]); attack "pgd" (``steps`` steps, random start, step
    2.5 eps / steps; the reproduction's pairs) or "autoattack" (standard); layers (None: the default
    ones); k (top-k: int or fraction of a layer's width); ks and seeds (the intervention curves' sizes
    and random choices); seed (the attack's); amp (bf16 autocast for the attack on CUDA); force (replace
    an existing ``out_dir``); meta (recorded with the results: the SPEC, the data name); progress (bars).
    Raises: ValueError naming the bad argument, before any work; nothing is written then.
    Under torchrun the PGD pairs are crafted by all ranks (:mod:`nslib.distributed`, batch for batch as one
    process crafts them); rank 0 does the rest and writes, the other ranks return None.
    """
    eps = checks.check_eps(eps, "--eps", allow_zero=False)
    if eps > 1:
        raise ValueError(f"--eps must be a Linf radius in (0, 1] (images are in [0, 1]), got {eps:g}")
    checks.check_choice(attack, "--attack", pair_attacks())
    checks.check_k(k, "--k")
    steps = checks.check_positive_int(steps, "--steps")
    out = check_result_dir(out_dir, force, "--out", legacy=LEGACY)  # at once, before any work
    names = check_fit(model, x, y, layers, k)
    if not distributed.is_main():  # under torchrun: its share of the PGD pairs; rank 0 does the rest and writes
        if attack == "pgd":
            _pairs(model, x, y, attack=attack, eps=eps, steps=steps, seed=seed, amp=amp)
        return None
    # no other command writes --out meanwhile (a second one stops with one line); complete or nothing
    with claim(out, "--out"), writing_result(out, force, "--out") as tmp:
        summary = _run(model, x, y, names, tmp, eps=eps, attack=attack, steps=steps, k=k, ks=ks, seeds=seeds,
                       seed=seed, amp=amp, meta=meta or {}, progress=progress)
    return summary


def _run(model, x, y, names, tmp: Path, *, eps, attack, steps, k, ks, seeds, seed, amp, meta, progress) -> dict:
    """The analysis proper, written into ``tmp``."""
    x_adv = _pairs(model, x, y, attack=attack, eps=eps, steps=steps, seed=seed, amp=amp, progress=progress)
    both = sensitivity_variants(model, x, {"abs": (x_adv, False), "rel": (x_adv, True)}, layers=names,
                                progress=progress)
    sigma, rel = ({n: s.cpu() for n, s in both[key].items()} for key in ("abs", "rel"))  # one pass for the two
    dead = {n: s.isnan() for n, s in rel.items()}  # clean output zero on every pair: no relative sigma
    rows = _layer_rows(sigma, rel, dead, k)
    curves = {}
    for mode in bar(("restore", "zero"), desc="interventions", disable=not progress):
        curves[mode] = intervention.intervention_study(model, x, x_adv, y, layers=_spread(names, MAX_CURVES), ks=ks,
                                             modes=(mode,), seeds=seeds)[mode]
    figures = _figures(model, x, x_adv, names, sigma, rel, curves, tmp / "figures")
    params = {"eps": eps, "attack": attack, "steps": steps, "layers": names, "k": k, "ks": list(ks),
              "seeds": list(seeds), "seed": seed, "n": int(x.shape[0]), **meta}
    summary = {"params": params, "clean": accuracy_on(model, x, y), "adv": accuracy_on(model, x_adv, y, x=x),
               "layers": rows, "mean_abs": statistics.fmean(r["mean_abs"] for r in rows),
               "mean_rel": statistics.fmean(r["mean_rel"] for r in rows if not math.isnan(r["mean_rel"])),
               "curves": {mode: [{key: v for key, v in c.items() if key != "sensitivity"} for c in cs]
                          for mode, cs in curves.items()},
               "figures": figures, "provenance": provenance(checks.model_device(model), **params)}
    save_json(tmp / "sensitivity.json", summary)
    _write_csv(tmp / "sensitivity.csv", ["layer", "neuron", "sigma", "sigma_rel", "dead"],
               [(n, i, float(sigma[n][i]), float(rel[n][i]), bool(dead[n][i])) for n in names
                for i in range(sigma[n].numel())])
    _write_csv(tmp / "layers.csv", [c for c in rows[0] if c != "top_neurons"] + ["top_neurons"],
               [[*(r[c] for c in r if c != "top_neurons"), " ".join(map(str, r["top_neurons"]))] for r in rows])
    atomic_write_bytes(tmp / "ANALYSIS.md", markdown(summary).encode())
    return summary


def _spread(names: list[str], most: int) -> list[str]:
    """At most ``most`` of ``names``, evenly spaced, the last always in."""
    if len(names) <= most:
        return list(names)
    return [names[round(i * (len(names) - 1) / (most - 1))] for i in range(most)]


def _write_csv(path: Path, header, rows) -> None:
    lines = [",".join(header)] + [",".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in r) for r in rows]
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())


def _figures(model, x, x_adv, names, sigma, rel, curves, folder: Path) -> list[str]:
    """Every figure, as PNG and PDF; returns the PNG names relative to the output folder."""
    written = []
    for variant, s, label in (("abs", sigma, "neuron sensitivity σ"), ("rel", rel, "relative sensitivity σ / mean|F(x)|")):
        viz.plot_layer_sensitivity({"model": s}, ylabel=label, path=folder / f"sensitivity_{variant}",
                                   title=f"{label} per layer")
        written.append(f"figures/sensitivity_{variant}.png")
    for mode, cs in curves.items():
        viz.plot_intervention_curve(cs, path=folder / f"intervention_{mode}", ncols=2,
                                    title=f"{mode} k neurons on adversarial inputs: top vs random, bottom, matched")
        written.append(f"figures/intervention_{mode}.png")
    try:
        layer = pick_map_layer(model, x, layers=names)
    except ValueError:  # no layer with maps (a fully connected network): no map figure
        layer = None
    if layer is not None:
        viz.plot_sensitive_neuron_maps(model, x[:4], x_adv[:4], layer, sensitivity=sigma[layer], k=3, n_images=4,
                                       path=folder / "maps", title=f"most sensitive channels of {layer}")
        written.append("figures/maps.png")
    plt.close("all")
    return written


def markdown(summary: dict) -> str:
    """``ANALYSIS.md``: what was run, the per-layer table, the intervention at k, and the files."""
    p, clean, adv = summary["params"], summary["clean"], summary["adv"]
    lines = [f"# Neuron sensitivity of {p.get('model', 'a model')}", "",
             f"Data: {p.get('data', '?')}, {p['n']} test images; pairs: {p['attack']} "
             f"({p['steps']} steps) at Linf eps {p['eps']:g}, seed {p['seed']}.", "",
             f"Clean accuracy {100 * clean['accuracy']:.1f}% [{100 * clean['low']:.1f}, {100 * clean['high']:.1f}]; "
             f"on the adversarial pairs {100 * adv['accuracy']:.1f}% [{100 * adv['low']:.1f}, {100 * adv['high']:.1f}].",
             "", f"Mean sensitivity over layers: {summary['mean_abs']:.4g} (absolute), {summary['mean_rel']:.4g} "
             f"(relative: σ / mean |clean output|, dead neurons skipped).", "",
             "| layer | neurons | dead | mean σ | top-k mean σ | mean rel. σ | k | most sensitive neurons |",
             "|---|---|---|---|---|---|---|---|"]
    for r in summary["layers"]:
        lines.append(f"| {r['layer']} | {r['neurons']} | {r['dead']} | {r['mean_abs']:.4g} | {r['top_k_mean_abs']:.4g} "
                     f"| {r['mean_rel']:.4g} | {r['k']} | {', '.join(map(str, r['top_neurons'][:8]))} |")
    lines += ["", "## Restoring or zeroing neurons on adversarial inputs", "",
              "Accuracy on the measuring half of the pairs when the k neurons chosen on the other half are "
              "patched (random: mean over seeds). Sensitive neurons carry the adversarial effect where *top* "
              "beats *random* and *bottom* (restore), or hurts more (zero).", "",
              "| mode | layer | k | top | random | bottom | unpatched |", "|---|---|---|---|---|---|---|"]
    for mode, cs in summary["curves"].items():
        for c in cs:
            for kk in sorted({r["k"] for r in c["rows"]}):
                acc = {s: statistics.fmean(r["accuracy"] for r in c["rows"] if r["k"] == kk and r["selection"] == s)
                       for s in ("top", "random", "bottom") if any(r["k"] == kk and r["selection"] == s for r in c["rows"])}
                lines.append(f"| {mode} | {c['layer']} | {kk} | " + " | ".join(
                    f"{100 * acc[s]:.1f}" if s in acc else "-" for s in ("top", "random", "bottom"))
                    + f" | {100 * c['adv_accuracy']:.1f} |")
    lines += ["", "## Files", "", "- `sensitivity.csv`: σ and relative σ of every neuron",
              "- `layers.csv`, `sensitivity.json`: the per-layer table, the curves, parameters and provenance"]
    lines += [f"- `{f}`: ![]({f})" for f in summary["figures"]]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------
# the command line

def add_arguments(p) -> None:
    """The flags of ``nslib analyze`` on the argparse (sub)parser ``p``."""
    specs.add_shared_arguments(p, out="outputs/analysis/<model>-<data>", folders=False,
                               seed="seed of the attack and the random choices, and the test subset's")
    p.add_argument("--layers", default=None, help="comma-separated dotted layer names (default: the model's hidden "
                                                  "conv/linear layers)")
    p.add_argument("--eps", type=float, default=None, help="Linf radius of the pairs (default: the dataset's)")
    p.add_argument("--attack", default="pgd", help="how the pairs are crafted: pgd (the reproduction's pairs) or any "
                                                   "other fixed-radius attack of nslib.evaluate.ATTACKS (fgsm, mim, "
                                                   "autoattack: standard)")
    p.add_argument("--steps", type=int, default=20, help="PGD steps (random start, step 2.5 eps / steps)")
    p.add_argument("--k", type=specs.k_argument, default=0.1, help="top-k: a fraction of each layer's neurons, or a "
                                                                   "count >= 1")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out (only a folder of nslib's own "
                                                         "results: its manifest lists every file)")


def main(args) -> int:
    """Entry of ``python -m nslib analyze`` (arguments parsed in :mod:`nslib.cli.main`)."""
    distributed.terminate_raises()  # torchrun's SIGTERM unwinds: the temporary folder is removed
    try:
        out = args.out or outputs_dir("analysis", f"{args.model.replace(':', '_').replace('/', '_')}-{args.data}")
        check_result_dir(out, args.force, "--out", legacy=LEGACY)  # before loading anything: it costs nothing
        device = checks.check_device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"), "--device")
        layers = None if args.layers is None else [s.strip() for s in args.layers.split(",") if s.strip()]
        if layers == []:
            raise ValueError(f"--layers must name at least one layer (comma-separated dotted names), "
                             f"got {args.layers!r}")
        x, y, eps = load_data(args.data, args.n, args.seed)  # the data first: its name sizes a kit architecture
        model = load_model(args.model, dataset_of(args.data), num_classes=args.num_classes, mean=args.mean, std=args.std)
        eps = args.eps if args.eps is not None else eps
        if eps is None:
            raise ValueError(f"--eps must be given for --data {args.data} (it has no default radius)")
        device = distributed.setup(str(device))  # joins torchrun's process group when launched by it
        checks.check_choice(args.precision, "--precision", fast.PRECISIONS)
        amp = fast.amp_flag(args.precision, device)
        summary = analyze(model.to(device), x, y, eps=eps, out_dir=out, attack=args.attack, steps=args.steps,
                          layers=layers, k=args.k, seed=args.seed, amp=amp, force=args.force,
                          meta={"model": args.model, "data": args.data}, progress=not args.quiet)
    except (ValueError, TypeError) as e:
        if distributed.is_main():  # every rank checks the same inputs: one message
            print(f"nslib analyze: {e}", file=sys.stderr)
        return 2
    except data_mod.DataUnavailable as e:
        print(f"nslib analyze: --data {args.data}: {' '.join(str(e).split())}",
              file=sys.stderr)
        return 2
    except distributed.PeerFailure as e:
        print(f"nslib analyze: {e}; nothing was written", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nnslib analyze: interrupted; nothing was written", file=sys.stderr)
        return 130
    finally:
        distributed.shutdown()
    if summary is None:  # a rank other than 0: its share is with rank 0
        return 0
    print(f"nslib analyze: wrote {out}/ANALYSIS.md (mean sigma {summary['mean_abs']:.4g}, "
          f"clean {100 * summary['clean']['accuracy']:.1f}%, adversarial {100 * summary['adv']['accuracy']:.1f}%)")
    return 0
