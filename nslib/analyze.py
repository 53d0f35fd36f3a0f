"""Neuron sensitivity for anyone's model: ``python -m nslib analyze --model SPEC --data NAME``.

The paper's analysis (E1, E2 and E4) of one model in one command, the way AutoAttack is run on a model:
benign/adversarial pairs crafted against it, every analysed layer's neuron sensitivity (absolute and
relative), its most sensitive neurons, what restoring or zeroing them does to adversarial accuracy (top
vs random vs least sensitive vs sensitivity-matched, on at most four of the layers, evenly spaced), and the
activation maps of the most sensitive channels.

``SPEC`` names the model:

- ``smallcnn:PATH`` (or ``vgg16:``, ``resnet18:``): a kit architecture, sized for ``--data``, with the
  weights of PATH (a checkpoint of :func:`nslib.training.train` or a plain state dict);
- ``torchvision:NAME[:PATH]``: a torchvision architecture with ``--num-classes`` outputs and the weights
  of PATH (random weights without it); ``--mean`` and ``--std`` when the network expects normalised
  inputs (it is then wrapped to take [0, 1] images);
- ``package.module:function``: a factory called with no arguments that returns the model.

``--data`` is a dataset name of :mod:`nslib.data` ("fmnist", "mnist5k", "mnist", "cifar10"), or
``synthetic:LIKE`` (random images shaped like LIKE), or a ``.pt`` file holding ``{"x": [N, C, H, W] in [0,
1], "y": [N]}``. The test images are the reproduction's own (:func:`nslib.data.test_set`: a fixed
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
    summary = nslib.analyze.analyze(model, x, y, eps=0.1, out_dir="outputs/analysis/mine")
"""
from __future__ import annotations

import importlib
import math
import shutil
import statistics
from pathlib import Path

import torch
from torch import nn

from nslib import attacks, checks, data as data_mod, fast, intervention, models as models_mod, training, viz
from nslib import evaluate
from nslib.evaluate import accuracy_on
from nslib.progress import bar
from nslib.sensitivity import layer_summary, neuron_sensitivity, pick_map_layer, top_k
from nslib.store import (atomic_write_bytes, check_result_dir, new_result_dir, outputs_dir, provenance, replace_dir,
                         save_json, write_manifest)

__all__ = ["load_model", "load_data", "dataset_of", "check_fit", "pair_attacks", "analyze", "main"]

OWN_FILES = ("sensitivity.csv", "layers.csv", "sensitivity.json", "ANALYSIS.md", *(  # what analyze writes
    f"figures/{f}.{ext}" for f in ("sensitivity_abs", "sensitivity_rel", "intervention_restore", "intervention_zero",
                                   "maps") for ext in ("png", "pdf")))
LEGACY = (OWN_FILES, "sensitivity.json")  # a folder of these, written before manifests existed, is ours to replace
MAX_CURVES = 4  # layers with intervention curves, evenly spaced over the analysed ones (each costs 2 x 24 passes)


def pair_attacks() -> list[str]:
    """The attacks ``--attack`` takes: every fixed-radius attack of :data:`nslib.evaluate.ATTACKS`."""
    return [name for name, a in evaluate.ATTACKS.items() if not a.min_norm]


# ----------------------------------------------------------------------------------------------------
# the model, the data, and the checks before any work

def _state_dict(path: str) -> dict:
    """The weights in ``path``: a checkpoint of :func:`nslib.training.train` (its "model") or a state dict."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"--model names a weights file that does not exist: {p}")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 -- zip, pickle, magic number, EOF: torch raises any of them
        raise ValueError(f"--model: {p} cannot be read as PyTorch weights (corrupt or truncated? "
                         f"{type(e).__name__}: {_first_sentence(e)})") from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"--model: {p} holds no state dict (a dict of tensors, or a checkpoint with one under "
                         f"'model' or 'state_dict'), got {type(obj).__name__}")
    return obj


def _first_sentence(e: BaseException) -> str:
    """The first sentence of an error's message (torch's load errors run to several)."""
    return str(e).splitlines()[0].split(". ")[0] if str(e) else ""


def _load_weights(model: nn.Module, state: dict, what: str) -> None:
    """Load ``state`` into ``model``; a mismatch is a ValueError naming the first keys that differ."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} (file {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = [f"{label}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}" for label, keys in
                 (("missing in the file", missing), ("not in the model", unexpected), ("other shapes", shapes))
                 if keys]
        raise ValueError(f"--model: the weights do not fit {what}; " + "; ".join(parts))
    model.load_state_dict(state)


def load_model(spec: str, dataset: str | None = None, *, num_classes: int | None = None, mean=None,
               std=None) -> nn.Module:
    """The model a ``--model`` SPEC names (see the module docstring), on the CPU, in eval mode.

    Raises: ValueError naming --model (a malformed SPEC, a missing file, weights that do not fit the
    architecture: the first mismatching keys), or --num-classes, --mean, --std.
    """
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(f"--model must be ARCH:PATH, torchvision:NAME[:PATH] or package.module:function, "
                         f"got {spec!r}")
    head, rest = spec.split(":", 1)
    if head in models_mod.ARCHS:
        if dataset is None:
            raise ValueError(f"--model {head}:... is sized by a dataset: --data must then name one "
                             f"({', '.join(d for d in data_mod.DATASETS if d != 'synthetic')} or synthetic:LIKE)")
        model = models_mod.build(head, dataset)
        _load_weights(model, _state_dict(rest), f"{head} built for {dataset}")
    elif head == "torchvision":
        import torchvision

        name, _, path = rest.partition(":")
        if name not in torchvision.models.list_models():
            raise ValueError(f"--model: torchvision has no architecture {name!r}")
        kw = {} if num_classes is None else {"num_classes": checks.check_positive_int(num_classes, "--num-classes")}
        model = torchvision.models.get_model(name, weights=None, **kw)
        if path:
            _load_weights(model, _state_dict(path), f"torchvision {name}")
    elif "." in head or rest.isidentifier():
        try:
            factory = getattr(importlib.import_module(head), rest)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"--model: cannot import {rest!r} from {head!r} ({e})") from None
        try:
            model = factory()
        except Exception as e:  # noqa: BLE001 -- the user's code: any error, named as theirs
            raise ValueError(f"--model: {spec}() raised {type(e).__name__}: {e}") from None
        if not isinstance(model, nn.Module):
            raise ValueError(f"--model: {spec}() must return a torch.nn.Module, got {type(model).__name__}")
    else:
        raise ValueError(f"--model must start with one of {', '.join(models_mod.ARCHS)}, 'torchvision' or a "
                         f"module path, got {spec!r}")
    if (mean is None) != (std is None):
        raise ValueError("--mean and --std go together (the per-channel normalisation the network expects)")
    if mean is not None:
        model = models_mod.wrap(model, mean, std)
    return model.eval()


def load_data(name: str, n: int | None = 1000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, float | None]:
    """``(x, y, the dataset's eps or None)``: ``n`` test images of ``name`` (see the module docstring)."""
    if n is not None:
        n = checks.check_positive_int(n, "--n", minimum=2)  # the interventions split the pairs in two halves
    if name.endswith(".pt"):
        x, y = _pt_data(name)
        return x[:n], y[:n], None
    if name.startswith("synthetic:"):
        like = name.split(":", 1)[1]
        x, y = data_mod.load("synthetic", "test", like=like, n=1000 if n is None else n, seed=seed)
        return x, y, training.ATTACK_DEFAULTS.get(like, {}).get("eps")
    if name not in data_mod.DATASETS or name == "synthetic":
        raise ValueError(f"--data must be one of {', '.join(d for d in data_mod.DATASETS if d != 'synthetic')}, "
                         f"synthetic:LIKE or a .pt file, got {name!r}")
    x, y = data_mod.test_set(name, n, seed=seed)
    return x, y, training.ATTACK_DEFAULTS.get(name, {}).get("eps")


def _pt_data(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` of a ``--data`` file: a dict with "x" and "y", or a tuple (x, y), each checked."""
    if not Path(name).is_file():
        raise ValueError(f"--data names a file that does not exist: {name}")
    try:
        obj = torch.load(name, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 -- zip, pickle, magic number, EOF: torch raises any of them
        raise ValueError(f"--data: {name} cannot be read by torch.load (corrupt or truncated? {type(e).__name__})") \
            from None
    if isinstance(obj, dict) and "x" in obj and "y" in obj:
        x, y = obj["x"], obj["y"]
    elif isinstance(obj, (tuple, list)) and len(obj) == 2:
        x, y = obj
    else:
        got = f"a dict with keys {sorted(map(str, obj))}" if isinstance(obj, dict) else \
            f"a {type(obj).__name__} of {len(obj)} items" if isinstance(obj, (tuple, list)) else type(obj).__name__
        raise ValueError(f"--data: {name} must hold {{'x': [N, C, H, W] in [0, 1], 'y': [N]}} (or a tuple (x, y)), "
                         f"got {got}")
    checks.check_images(x, "--data x")
    checks.check_labels(y, x.shape[0], None, "--data y")
    return x, y


def dataset_of(data: str) -> str | None:
    """The registry dataset that sizes a kit architecture for ``--data`` (``synthetic:LIKE`` -> LIKE), or None
    for a ``.pt`` file."""
    if data.startswith("synthetic:"):
        return data.split(":", 1)[1]
    return data if data in data_mod.DATASETS and data != "synthetic" else None


def check_fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, layers=None, k=None) -> list[str]:
    """Forward passes of two images: the data fit the model, it returns finite logits [N, classes] with a
    gradient to the input, its weights are finite, the labels are classes of it, every layer exists, is
    hooked once and is at least ``k`` neurons wide, and there are at least 2 images (the interventions choose
    on one half of the pairs and measure on the other). Returns the layer names (the default ones when None).
    """
    from nslib.sensitivity import capture

    checks.check_images(x, "--data x")
    if x.shape[0] < 2:
        raise ValueError(f"--n must be at least 2 (the interventions choose neurons on one half of the pairs and "
                         f"measure on the other), got {x.shape[0]} image(s)")
    names = models_mod.default_layers(model) if layers is None else list(layers)
    if not names:
        raise ValueError("--layers must name at least one layer (comma-separated dotted names)")
    for name in names:
        models_mod.get_layer(model, name)  # unknown: the nearest valid names
    checks.check_finite_model(model, "--model")
    xb = x[:2].to(checks.model_device(model))
    checks.check_input_dtype(model, xb, "--data x")
    with models_mod.eval_mode(model), capture(model, names, detach=True) as acts, torch.no_grad():
        try:
            out = model(xb)
        except RuntimeError as e:
            raise ValueError(f"--data: images of shape {list(x.shape[1:])} do not fit the model ({e})") from None
        checks.check_logits(out, min(2, x.shape[0]), "--model")
        checks.check_finite_logits(out, "--model")
        widths = {name: acts[name].shape[1] for name in names}
    checks.check_labels(y, x.shape[0], out.shape[1], "--data y", why=f"the model returns {out.shape[1]} logits")
    if k is not None:
        for name, width in widths.items():
            if isinstance(k, int) and k > width:
                raise ValueError(f"--k must be at most the width of every analysed layer: {name!r} has {width} "
                                 f"neurons, got {k}")
    with models_mod.eval_mode(model):
        checks.check_differentiable(model, xb, "--model")
    return names


# ----------------------------------------------------------------------------------------------------
# the analysis

def _pairs(model, x, y, *, attack, eps, steps, seed, amp) -> torch.Tensor:
    """PGD: the reproduction's pairs (so a kit checkpoint gives notebook 02's numbers); any other fixed-radius
    attack of :data:`nslib.evaluate.ATTACKS` at its defaults (AutoAttack: standard)."""
    if attack == "pgd":
        return attacks.pgd_pairs(model, x, y, eps=eps, steps=steps, seed=seed, amp=amp, progress=True)
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
            amp: bool = False, force: bool = False, meta: dict | None = None) -> dict:
    """Run the analysis of ``model`` on ``(x, y)`` and write it to ``out_dir``; returns the summary dict.

    Args: eps (Linf radius of the pairs, in (0, 1]); attack "pgd" (``steps`` steps, random start, step
    2.5 eps / steps; the reproduction's pairs) or "autoattack" (standard); layers (None: the default
    ones); k (top-k: int or fraction of a layer's width); ks and seeds (the intervention curves' sizes
    and random choices); seed (the attack's); amp (bf16 autocast for the attack on CUDA); force (replace
    an existing ``out_dir``); meta (recorded with the results: the SPEC, the data name).
    Raises: ValueError naming the bad argument, before any work; nothing is written then.
    """
    eps = checks.check_eps(eps, "--eps", allow_zero=False)
    if eps > 1:
        raise ValueError(f"--eps must be a Linf radius in (0, 1] (images are in [0, 1]), got {eps:g}")
    checks.check_choice(attack, "--attack", pair_attacks())
    checks.check_k(k, "--k")
    steps = checks.check_positive_int(steps, "--steps")
    out = check_result_dir(out_dir, force, "--out", legacy=LEGACY)  # at once, before any work
    names = check_fit(model, x, y, layers, k)
    tmp = new_result_dir(out, "--out")
    try:
        summary = _run(model, x, y, names, tmp, eps=eps, attack=attack, steps=steps, k=k, ks=ks, seeds=seeds,
                       seed=seed, amp=amp, meta=meta or {})
        write_manifest(tmp)
        check_result_dir(out, force, "--out")  # again: a file may have appeared there meanwhile
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def _run(model, x, y, names, tmp: Path, *, eps, attack, steps, k, ks, seeds, seed, amp, meta) -> dict:
    """The analysis proper, written into ``tmp``."""
    x_adv = _pairs(model, x, y, attack=attack, eps=eps, steps=steps, seed=seed, amp=amp)
    sigma = {n: s.cpu() for n, s in neuron_sensitivity(model, x, x_adv, layers=names, progress=True).items()}
    rel = {n: s.cpu() for n, s in neuron_sensitivity(model, x, x_adv, layers=names, relative=True).items()}
    dead = {n: s.isnan() for n, s in rel.items()}  # clean output zero on every pair: no relative sigma
    rows = _layer_rows(sigma, rel, dead, k)
    curves = {}
    for mode in bar(("restore", "zero"), desc="interventions"):
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
    import matplotlib.pyplot as plt

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

def main(args) -> int:
    """Entry of ``python -m nslib analyze`` (arguments parsed in :mod:`nslib.__main__`)."""
    import sys

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
        checks.check_choice(args.precision, "--precision", fast.PRECISIONS)
        amp = fast.autocast_dtype(args.precision, device) is not None  # the kit's rule: bf16 where hardware has it
        summary = analyze(model.to(device), x, y, eps=eps, out_dir=out, attack=args.attack, steps=args.steps,
                          layers=layers, k=args.k, seed=args.seed, amp=amp, force=args.force,
                          meta={"model": args.model, "data": args.data})
    except (ValueError, TypeError) as e:
        print(f"nslib analyze: {e}", file=sys.stderr)
        return 2
    except data_mod.DataUnavailable as e:
        print(f"nslib analyze: --data {args.data}: {' '.join(str(e).split())}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nnslib analyze: interrupted; nothing was written", file=sys.stderr)
        return 130
    print(f"nslib analyze: wrote {out}/ANALYSIS.md (mean sigma {summary['mean_abs']:.4g}, "
          f"clean {100 * summary['clean']['accuracy']:.1f}%, adversarial {100 * summary['adv']['accuracy']:.1f}%)")
    return 0
