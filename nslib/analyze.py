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
- ``package.module:function[:PATH]``: a factory called with no arguments that returns the model (with the
  weights of PATH when given, e.g. a checkpoint of ``nslib train``).

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
``figures/*.png|pdf`` and ``ANALYSIS.md``.

Usage::

    python -m nslib analyze --model smallcnn:outputs/models/fmnist/pgd_at/<key>/best.pt --data fmnist --n 200
    summary = nslib.analyze.analyze(model, x, y, eps=0.1, out_dir="outputs/analysis/mine")
"""
from __future__ import annotations

import importlib
import math
import shutil
import statistics
import tempfile
from pathlib import Path

import torch
from torch import nn

from nslib import attacks, checks, data as data_mod, distributed, fast, intervention, models as models_mod, training
from nslib import viz
from nslib.evaluate import accuracy_on
from nslib.progress import bar
from nslib.sensitivity import layer_summary, neuron_sensitivity, pick_map_layer, top_k
from nslib.store import atomic_write_bytes, outputs_dir, provenance, save_json

__all__ = ["load_model", "load_data", "dataset_of", "check_fit", "analyze", "main"]

ATTACKS = ("pgd", "autoattack")
MAX_CURVES = 4  # layers with intervention curves, evenly spaced over the analysed ones (each costs 2 x 24 passes)


# ----------------------------------------------------------------------------------------------------
# the model, the data, and the checks before any work

def _state_dict(path: str) -> dict:
    """The weights in ``path``: a checkpoint of :func:`nslib.training.train` (its "model") or a state dict."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"--model names a weights file that does not exist: {p}")
    obj = torch.load(p, map_location="cpu", weights_only=False)
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"--model: {p} holds no state dict (a dict of tensors, or a checkpoint with one under "
                         f"'model' or 'state_dict'), got {type(obj).__name__}")
    return obj


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
    elif "." in head or rest.partition(":")[0].isidentifier():
        rest, _, path = rest.partition(":")  # package.module:function[:PATH] (PATH: weights, e.g. nslib train's)
        try:
            factory = getattr(importlib.import_module(head), rest)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"--model: cannot import {rest!r} from {head!r} ({e})") from None
        model = factory()
        if not isinstance(model, nn.Module):
            raise ValueError(f"--model: {spec}() must return a torch.nn.Module, got {type(model).__name__}")
        if path:
            _load_weights(model, _state_dict(path), f"{head}:{rest}()")
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
    if name.endswith(".pt"):
        obj = torch.load(name, map_location="cpu", weights_only=False) if Path(name).is_file() else None
        if obj is None:
            raise ValueError(f"--data names a file that does not exist: {name}")
        x, y = (obj["x"], obj["y"]) if isinstance(obj, dict) else obj
        checks.check_images(x, "--data x")
        checks.check_labels(y, x.shape[0], None, "--data y")
        return x[:n], y[:n], None
    if name.startswith("synthetic:"):
        like = name.split(":", 1)[1]
        x, y = data_mod.load("synthetic", "test", like=like, n=n or 1000, seed=seed)
        return x, y, training.ATTACK_DEFAULTS.get(like, {}).get("eps")
    if name not in data_mod.DATASETS or name == "synthetic":
        raise ValueError(f"--data must be one of {', '.join(d for d in data_mod.DATASETS if d != 'synthetic')}, "
                         f"synthetic:LIKE or a .pt file, got {name!r}")
    x, y = data_mod.test_set(name, n, seed=seed)
    return x, y, training.ATTACK_DEFAULTS.get(name, {}).get("eps")


def dataset_of(data: str) -> str | None:
    """The registry dataset that sizes a kit architecture for ``--data`` (``synthetic:LIKE`` -> LIKE), or None
    for a ``.pt`` file."""
    if data.startswith("synthetic:"):
        return data.split(":", 1)[1]
    return data if data in data_mod.DATASETS and data != "synthetic" else None


@torch.no_grad()
def check_fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, layers=None) -> list[str]:
    """One forward pass of two images: the data fit the model, it returns logits [N, classes], the labels
    are classes of it, every layer exists. Returns the layer names (the default ones when None)."""
    checks.check_images(x, "--data x")
    names = models_mod.default_layers(model) if layers is None else list(layers)
    for name in names:
        models_mod.get_layer(model, name)  # unknown: the nearest valid names
    with models_mod.eval_mode(model):
        try:
            out = model(x[:2].to(checks.model_device(model)))
        except RuntimeError as e:
            raise ValueError(f"--data: images of shape {list(x.shape[1:])} do not fit the model ({e})") from None
    checks.check_logits(out, min(2, x.shape[0]), "--model")
    checks.check_labels(y, x.shape[0], out.shape[1], "--data y", why=f"the model returns {out.shape[1]} logits")
    return names


# ----------------------------------------------------------------------------------------------------
# the analysis

def _pairs(model, x, y, *, attack, eps, steps, seed, amp) -> torch.Tensor:
    if attack == "pgd" and distributed.active():  # pgd_pairs' batches dealt to the ranks, each seeded as there
        bs = fast.attack_batch(checks.model_device(model))
        return torch.cat(distributed.gather_batches({i: attacks.pgd_pairs(
            model, x[i:i + bs], y[i:i + bs], eps=eps, steps=steps, seed=seed + i, amp=amp)
            for i in distributed.my_batches(len(x), bs)}))
    if attack == "pgd":
        return attacks.pgd_pairs(model, x, y, eps=eps, steps=steps, seed=seed, amp=amp, progress=True)
    from nslib.evaluate import autoattack

    return autoattack(model, x.to(checks.model_device(model)), y.to(checks.model_device(model)), eps=eps,
                      seed=seed)[0].cpu()


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
    Under torchrun the PGD pairs are crafted by all ranks (:mod:`nslib.distributed`, batch for batch as one
    process crafts them); rank 0 does the rest and writes, the other ranks return None.
    """
    eps = checks.check_eps(eps, "--eps", allow_zero=False)
    if eps > 1:
        raise ValueError(f"--eps must be a Linf radius in (0, 1] (images are in [0, 1]), got {eps:g}")
    checks.check_choice(attack, "--attack", ATTACKS)
    checks.check_k(k, "--k")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not force:
        raise ValueError(f"--out {out} exists and is not empty; pass --force to replace it, or another --out")
    names = check_fit(model, x, y, layers)
    if not distributed.is_main():  # under torchrun: its share of the PGD pairs; rank 0 does the rest and writes
        if attack == "pgd":
            _pairs(model, x, y, attack=attack, eps=eps, steps=steps, seed=seed, amp=amp)
        return None
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=_parent(out)))
    try:
        summary = _run(model, x, y, names, tmp, eps=eps, attack=attack, steps=steps, k=k, ks=ks, seeds=seeds,
                       seed=seed, amp=amp, meta=meta or {})
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def _parent(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    return out.parent


def _run(model, x, y, names, tmp: Path, *, eps, attack, steps, k, ks, seeds, seed, amp, meta) -> dict:
    """The analysis proper, written into ``tmp``."""
    x_adv = _pairs(model, x, y, attack=attack, eps=eps, steps=steps, seed=seed, amp=amp)
    sigma = {n: s.cpu() for n, s in neuron_sensitivity(model, x, x_adv, layers=names, progress=True).items()}
    rel, dead = neuron_sensitivity(model, x, x_adv, layers=names, relative=True)
    rel, dead = {n: s.cpu() for n, s in rel.items()}, {n: d.cpu() for n, d in dead.items()}
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

    distributed.terminate_raises()  # torchrun's SIGTERM unwinds: the temporary folder is removed
    try:
        x, y, eps = load_data(args.data, args.n, args.seed)  # the data first: its name sizes a kit architecture
        model = load_model(args.model, dataset_of(args.data), num_classes=args.num_classes, mean=args.mean, std=args.std)
        eps = args.eps if args.eps is not None else eps
        if eps is None:
            raise ValueError(f"--eps must be given for --data {args.data} (it has no default radius)")
        device = distributed.setup(args.device)  # joins torchrun's process group when launched by it
        checks.check_choice(args.precision, "--precision", fast.PRECISIONS)
        amp = fast.autocast_dtype(args.precision, device) is not None  # the kit's rule: bf16 where hardware has it
        out = args.out or outputs_dir("analysis", f"{args.model.replace(':', '_').replace('/', '_')}-{args.data}")
        layers = [s.strip() for s in args.layers.split(",")] if args.layers else None
        summary = analyze(model.to(device), x, y, eps=eps, out_dir=out, attack=args.attack, steps=args.steps,
                          layers=layers, k=args.k, seed=args.seed, amp=amp, force=args.force,
                          meta={"model": args.model, "data": args.data})
    except (ValueError, TypeError) as e:
        if distributed.is_main():  # every rank checks the same inputs: one message
            print(f"nslib analyze: {e}", file=sys.stderr)
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
