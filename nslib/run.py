"""The reproduction: profiles, a model cache, the verdict rule, papermill batch runs and the report.

What lives here and who uses it:

- **Paths and results** (:func:`profile_dir`, :func:`figures_dir`, :func:`save_result`, :func:`load_results`):
  notebooks exchange numbers through JSON files ``outputs/<profile>/<dataset>/results/<notebook>.json``,
  written atomically with their provenance (parameters, seed, nslib version, device).
- **Model cache** (:func:`get_model`): every trained model lives in ``outputs/models/<dataset>/<name>/<key>/``
  where ``key`` hashes every parameter that shaped it, so a notebook trains what is missing, resumes what
  was interrupted, and never reuses a model trained with other parameters.
- **Adversarial pairs** (:func:`adversarial_pairs`): PGD pairs cached per model and attack parameters, so
  02, 03 and 04 analyse the very same pairs.
- **Verdict rule** (:func:`compare`, :func:`combine`): the same everywhere, stated in the report.
- **Batch runs** (:func:`reproduce`, :func:`main`): ``python -m nslib reproduce --profile quick|full``.
- **Report** (:func:`write_report`): ``outputs/<profile>/REPORT.md``.

Profiles: ``quick`` uses the values stored in each notebook's ``parameters`` cell (CPU, minutes); ``full``
injects :data:`FULL` (a GPU). A long run goes in chunks: every finished notebook and every trained epoch is
kept, so ``timeout 590 python -m nslib reproduce --profile full --resume`` repeated until it exits 0 (or
``--only 01``, then ``--only 02,03,04``, then ``--only 05,06``, each with ``--resume``) completes it.
Usage::

    model, info = get_model("fmnist", "smallcnn", "pgd_at", seed=0, epochs=2, n_train=2000)
    v = compare([0.41, 0.43, 0.40], [0.37, 0.38, 0.36])   # v["verdict"] == "holds"
"""
from __future__ import annotations

import ast
import datetime
import hashlib
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from nslib import data as data_mod, models as models_mod, training
from nslib.store import load_json, outputs_dir, params_key, provenance, repo_root, save_json, save_torch, \
    atomic_write_bytes

__all__ = ["MODELS", "LABELS", "FULL", "PROFILE_DATASETS", "OFFLINE_DATASETS", "VERDICTS", "device",
           "profile_dir", "figures_dir", "save_result", "load_result", "load_results", "model_key", "get_model",
           "test_set", "adversarial_pairs", "compare", "combine", "verdict_line", "describe", "spread", "notebooks",
           "notebook_parameters", "full_parameters", "reproduce", "report_verdicts", "write_report", "main"]

# ----------------------------------------------------------------------------------------------------
# what is trained

# name -> the arguments of nslib.training.train that define the method
MODELS = {
    "vanilla": {"method": "standard"},
    "pgd_at": {"method": "pgd_at"},
    "trades": {"method": "trades"},
    "sns_pgd_at": {"method": "sns", "base": "pgd_at"},
    "sns_trades": {"method": "sns", "base": "trades"},
}
LABELS = {"vanilla": "Vanilla", "pgd_at": "PGD-AT", "trades": "TRADES", "sns_pgd_at": "SNS (PGD-AT)",
          "sns_trades": "SNS (TRADES)"}
# train() arguments that only matter for some methods: left out of the cache key elsewhere, so that e.g.
# the lambda ablation never retrains PGD-AT.
_ATTACK_ARGS = ("eps", "alpha", "attack_steps", "eps_warmup_epochs", "val_n_adv", "val_attack_steps")
_SNS_ARGS = ("lam", "k", "relative", "layers")
_TRADES_ARGS = ("beta",)

VERDICTS = ("holds", "does not hold", "inconclusive", "not testable offline")
PROFILE_DATASETS = {"quick": ("fmnist",), "full": ("fmnist", "mnist5k")}
OFFLINE_DATASETS = ("fmnist", "mnist5k")
CLAIMS = {
    "C1": "Adversarial robustness can be explained through neuron sensitivity.",
    "C2": "Sensitive neurons make the most non-trivial contributions to predictions in the adversarial setting.",
    "C3": "SNS (constraining sensitive neurons' behaviour between benign and adversarial inputs) improves robustness.",
    "C4": "Adversarial training improves robustness by reducing neuron sensitivities.",
    "C5": "The findings hold across datasets (MNIST, CIFAR-10, ImageNet in the paper).",
    "C6": "Visualising sensitive neurons interprets robustness (benign vs adversarial activation maps).",
}

# ----------------------------------------------------------------------------------------------------
# the full profile (GPU). Injected by papermill over each notebook's parameters cell; keys a notebook does
# not define are skipped for it. Layers: "all" (every notebook, every dataset) < dataset < (dataset, notebook).
# Timing target: fmnist + mnist5k in <= 25 min on one H100, run in chunks (module docstring). These values
# are NOT measured (the session that wrote them had no GPU). Likely costliest: training 21 models per dataset
# (5 x 3 seeds + ablations) and AutoAttack "standard" (Square: 5,000 queries per robust image) on 1,000
# images x 12 robust models per dataset. If a run is slow, lower epochs first, then aa_version="custom" with
# aa_attacks=["apgd-ce", "apgd-t"] for seeds beyond the first.
FULL = {
    "all": {"profile": "full", "seeds": [0, 1, 2], "batch_size": 128, "lr": 0.05, "val_n_adv": 1000,
            "val_attack_steps": 10, "n_pairs": 1000, "ks": [0.02, 0.05, 0.1, 0.2, 0.5], "n_maps": 8,
            "n_eval": 2000, "n_long": 1000, "pgd_long_steps": 100, "mim_steps": 20, "cw_steps": 100,
            "cw_search_steps": 9, "cw_n": 500, "aa_n": 1000, "aa_version": "standard",
            "lam_grid": [0.0, 0.001, 0.01, 0.1, 1.0], "k_grid": [0.05, 0.1, 0.2], "n_sanity": 500, "sanity_steps": 20},
    "fmnist": {"dataset": "fmnist", "arch": "smallcnn", "epochs": 10, "vanilla_epochs": 10, "n_train": None, "val_size": 5000,
               "attack_steps": 10, "eps_warmup_epochs": 0},
    "mnist5k": {"dataset": "mnist5k", "arch": "smallcnn", "epochs": 30, "vanilla_epochs": 30, "n_train": None, "val_size": 500,
                "attack_steps": 40, "eps_warmup_epochs": 5},
    # online only (torchvision downloads): python -m nslib reproduce --profile full --datasets mnist,cifar10
    "mnist": {"dataset": "mnist", "arch": "smallcnn", "epochs": 10, "vanilla_epochs": 10, "n_train": None, "val_size": 5000,
              "attack_steps": 40, "eps_warmup_epochs": 2},
    "cifar10": {"dataset": "cifar10", "arch": "resnet18", "epochs": 30, "vanilla_epochs": 30, "n_train": None, "val_size": 5000,
                "attack_steps": 10, "eps_warmup_epochs": 0, "lr": 0.1, "n_eval": 1000},
    ("mnist5k", "05"): {"n_eval": 1000},  # the subset's whole test split
    # 00's clean SmallCNN run: 15 epochs on all 55,000 images reached 92.3% test accuracy (goal 91.5%)
    ("fmnist", "00"): {"epochs": 15, "min_test_acc": 0.915},
    ("mnist5k", "00"): {"min_test_acc": 0.95},
}


def device() -> torch.device:
    """CUDA when available, else the CPU: where models are trained and evaluated."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ----------------------------------------------------------------------------------------------------
# paths and result files

def profile_dir(profile: str, dataset: str | None = None) -> Path:
    """``outputs/<profile>[/<dataset>]`` (not created)."""
    return outputs_dir(profile, dataset) if dataset else outputs_dir(profile)


def figures_dir(profile: str, dataset: str) -> Path:
    """``outputs/<profile>/<dataset>/figures``, created."""
    path = profile_dir(profile, dataset) / "figures"
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_result(profile: str, dataset: str, notebook: str, record: dict, params: dict) -> Path:
    """Write a notebook's results to ``outputs/<profile>/<dataset>/results/<notebook>.json`` atomically.

    ``record`` holds what the report reads: ``claims`` ({"C3": {"verdict", "summary", "comparisons",
    "figures"}}), ``sections`` ({title: markdown}), ``numbers`` (anything else). ``params`` are the
    notebook's parameters; provenance (versions, device, time) is added.
    """
    body = {"notebook": notebook, "profile": profile, "dataset": dataset, "params": params, **record,
            "provenance": provenance(device(), **params)}
    return save_json(profile_dir(profile, dataset) / "results" / f"{notebook}.json", body)


def load_result(profile: str, dataset: str, notebook: str) -> dict:
    """The results of one notebook; FileNotFoundError names the notebook to run first."""
    path = profile_dir(profile, dataset) / "results" / f"{notebook}.json"
    if not path.exists():
        raise FileNotFoundError(f"no results at {path}: run notebooks/{notebook}.ipynb (profile {profile!r}, "
                                f"dataset {dataset!r}) first")
    return load_json(path)


def load_results(profile: str) -> dict[str, dict[str, dict]]:
    """All result files of a profile: {dataset: {notebook: record}}."""
    out: dict[str, dict[str, dict]] = {}
    for path in sorted(profile_dir(profile).glob("*/results/*.json")):
        out.setdefault(path.parent.parent.name, {})[path.stem] = load_json(path)
    return out


# ----------------------------------------------------------------------------------------------------
# the model cache

def model_key(dataset: str, arch: str, name: str, seed: int, **train_args) -> tuple[dict, str]:
    """(params, key): the parameters that define a trained model and their hash.

    Arguments that do not apply to the method (attack settings for vanilla, lam/k for non-SNS, beta for
    non-TRADES runs) are dropped, so they never split the cache.
    """
    if name not in MODELS:
        raise ValueError(f"name must be one of {', '.join(MODELS)}, got {name!r}")
    spec = MODELS[name]
    args = dict(train_args)
    if spec["method"] == "standard":
        args = {k: v for k, v in args.items() if k not in _ATTACK_ARGS}
    if spec["method"] != "sns":
        args = {k: v for k, v in args.items() if k not in _SNS_ARGS}
    if not (spec["method"] == "trades" or spec.get("base") == "trades"):
        args = {k: v for k, v in args.items() if k not in _TRADES_ARGS}
    params = {"dataset": dataset, "arch": arch, "name": name, "seed": int(seed), **spec, **args}
    return params, params_key(params)


def get_model(dataset: str, arch: str, name: str, seed: int = 0, *, checkpoint: str = "best",
              progress: bool = True, **train_args):
    """A trained model from the cache, training (or resuming) it first when needed: ``(model, info)``.

    Args:
        dataset, arch: as in :func:`nslib.models.build`.
        name: one of :data:`MODELS` ("vanilla", "pgd_at", "trades", "sns_pgd_at", "sns_trades").
        seed: training seed (initial weights, data order, attacks).
        checkpoint: "best" (the epoch with the best validation robust accuracy, clean accuracy for
            vanilla: early stopping against robust overfitting; what the analyses use) or "last".
        progress: tqdm bars while training.
        train_args: any other argument of :func:`nslib.training.train` (epochs, n_train, lam, k, ...).

    Returns:
        the model on :func:`device` in eval mode, and ``info``: name, label, key, dir, checkpoint (the
        one loaded: "last" when no "best" exists), status ("done" or "collapsed"), collapsed (bool),
        history (per-epoch records), best (the best epoch's record), params, train_s (seconds spent
        training in this call; 0 when cached).

    Usage: ``model, info = get_model("fmnist", "smallcnn", "sns_pgd_at", seed=0, lam=0.01, epochs=2)``
    """
    if checkpoint not in ("best", "last"):
        raise ValueError(f"checkpoint must be 'best' or 'last', got {checkpoint!r}")
    params, key = model_key(dataset, arch, name, seed, **train_args)
    out = outputs_dir("models", dataset, name, key)
    spec = MODELS[name]
    torch.manual_seed(seed)
    model = models_mod.build(arch, dataset)
    t0 = time.perf_counter()
    result = training.train(model, dataset, seed=seed, out_dir=out, progress=progress, **spec, **train_args)
    train_s = time.perf_counter() - t0
    save_json(out / "params.json", params)
    which = checkpoint if (out / f"{checkpoint}.pt").exists() else "last"
    model, _ = training.load_checkpoint(out / f"{which}.pt", device=device())
    info = {"name": name, "label": LABELS[name], "key": key, "dir": str(out), "checkpoint": which,
            "status": result["status"], "collapsed": result["status"] == "collapsed",
            "history": result["history"], "best": result["best"], "params": params,
            "train_s": train_s if train_s > 1.0 else 0.0}
    return model, info


def test_set(dataset: str, n: int | None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed, class-stratified subset of ``n`` test images (all when None or n >= the split's size).

    The same call gives the same images everywhere, so every model is analysed on the same inputs.
    """
    x, y = data_mod.load(dataset, "test")
    if n is None or n >= len(x):
        return x, y
    _, idx = data_mod.stratified_split(y, n, seed=seed)
    return x[idx], y[idx]


def adversarial_pairs(model, info: dict, x: torch.Tensor, y: torch.Tensor, *, eps: float, steps: int = 20,
                      seed: int = 0, batch_size: int = 500) -> torch.Tensor:
    """PGD adversarial examples against ``model`` (Linf, random start), cached per model and parameters.

    Cached in the model's folder under a key of (eps, steps, seed, a hash of x and y), so notebooks that
    analyse the same model on the same images share the very same pairs. Returns x_adv like ``x`` on the
    CPU.
    """
    from nslib import attacks

    digest = hashlib.sha256(x.detach().cpu().numpy().tobytes() + y.cpu().numpy().tobytes()).hexdigest()[:12]
    key = params_key({"eps": eps, "steps": steps, "seed": seed, "data": digest, "checkpoint": info["checkpoint"]})
    path = Path(info["dir"]) / "pairs" / f"pgd-{key}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    dev = next(model.parameters()).device
    parts = []
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size].to(dev), y[i:i + batch_size].to(dev)
        parts.append(attacks.pgd(model, xb, yb, eps=eps, steps=steps, seed=seed + i).cpu())
    x_adv = torch.cat(parts)
    save_torch(path, x_adv)
    return x_adv


# ----------------------------------------------------------------------------------------------------
# the verdict rule

RULE = ("A comparison \"A is higher than B\" **holds** when the mean over seeds of the paired difference "
        "A - B exceeds twice its standard deviation over seeds *and* the 95% intervals of the two "
        "accuracies (Wilson intervals, averaged over seeds) do not overlap (where intervals exist); it "
        "**does not hold** when the same criterion is met in the other direction; otherwise it is "
        "**inconclusive**. With a single seed the spread over seeds is unknown, so every comparison is "
        "inconclusive: the direction and the intervals are reported, but not read as a verdict (the quick "
        "profile trains one seed; the full profile three). A claim made of several comparisons holds when "
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


def compare(a, b, *, intervals_a=None, intervals_b=None, what: str = "A > B") -> dict:
    """Judge "a is higher than b" by the verdict rule (:data:`RULE`).

    Args:
        a, b: per-seed values, paired by seed (same length >= 1), e.g. robust accuracies of SNS and its
            base, or sensitivities of vanilla and PGD-AT (to test "PGD-AT is lower", pass vanilla as a).
        intervals_a, intervals_b: per-seed (low, high) 95% intervals of a and b, or None where the
            quantity has none (sensitivities).
        what: a short description, e.g. "SNS (PGD-AT) > PGD-AT, AutoAttack accuracy".

    Returns:
        a dict: what, verdict (one of "holds", "does not hold", "inconclusive"), reason, n_seeds,
        a (spread of a), b (spread of b), diff (spread of a - b), interval_a, interval_b (seed-averaged
        intervals or None), overlap (bool or None).

    Usage: ``compare([0.41, 0.43, 0.40], [0.37, 0.38, 0.36], what="SNS > PGD-AT")["verdict"]``
    """
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
    out = {"what": what, "n_seeds": len(a), "a": spread(a), "b": spread(b), "diff": d, "interval_a": ia,
           "interval_b": ib, "overlap": overlap}
    if len(a) < 2:
        direction = "higher" if d["mean"] > 0 else ("lower" if d["mean"] < 0 else "equal")
        out.update(verdict="inconclusive",
                   reason=f"one seed, spread over seeds unknown (A {direction} by {d['mean']:+.4f}{iv_text})")
        return out
    separated = abs(d["mean"]) > 2 * d["std"]
    if separated and not overlap:
        out["verdict"] = "holds" if d["mean"] > 0 else "does not hold"
        out["reason"] = f"mean difference {d['mean']:+.4f} beyond 2 x std {d['std']:.4f}{iv_text}"
    else:
        out["verdict"] = "inconclusive"
        why = [] if separated else [f"|mean difference| {abs(d['mean']):.4f} <= 2 x std {d['std']:.4f}"]
        if overlap:
            why.append("intervals overlap")
        out["reason"] = "; ".join(why)
    return out


def combine(verdicts) -> str:
    """One verdict from several: "holds" if all hold, "does not hold" if any does not, else inconclusive.

    "not testable offline" entries are ignored unless every entry is one.
    """
    vs = [v["verdict"] if isinstance(v, dict) else v for v in verdicts]
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
    """``"C3: inconclusive (one seed: ...)"``: the claim's combined verdict and why, with no raw numbers
    (what the notebooks' checked cells print, stable across machines)."""
    comparisons = list(comparisons)
    verdict = combine(comparisons)
    n = min(c["n_seeds"] for c in comparisons)
    if n < 2:
        why = "one seed: the spread over seeds is unknown"
    else:
        n_hold = sum(c["verdict"] == "holds" for c in comparisons)
        why = f"{n} seeds; {n_hold} of {len(comparisons)} comparisons hold"
    return f"{claim}: {verdict} ({why})"


def describe(c: dict) -> str:
    """One line for a comparison from :func:`compare`: what, verdict, numbers."""
    d = c["diff"]
    spread_text = f" +- {d['std']:.4f}" if d["std"] is not None else ""
    ivs = ""
    if c["interval_a"] is not None:
        ivs = (f"; 95% intervals [{c['interval_a'][0]:.3f}, {c['interval_a'][1]:.3f}] vs "
               f"[{c['interval_b'][0]:.3f}, {c['interval_b'][1]:.3f}]")
    return (f"{c['what']}: {c['verdict']} -- A {c['a']['mean']:.4f}, B {c['b']['mean']:.4f}, difference "
            f"{d['mean']:+.4f}{spread_text} over {c['n_seeds']} seed(s){ivs} ({c['reason']})")


# ----------------------------------------------------------------------------------------------------
# notebooks and batch runs

def notebooks(notebooks_dir: str | Path | None = None) -> list[Path]:
    """The numbered notebooks ``NN_name.ipynb`` in reading order."""
    folder = Path(notebooks_dir) if notebooks_dir is not None else repo_root() / "notebooks"
    return sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb") if p.is_file())


def notebook_parameters(path: str | Path) -> dict:
    """The names and default values (as source text) of a notebook's ``parameters`` cell."""
    import papermill

    return {name: spec["default"] for name, spec in papermill.inspect_notebook(str(path)).items()}


def full_parameters(dataset: str, number: str) -> dict:
    """The full profile's values for notebook ``number`` ("02") on ``dataset`` (all layers merged)."""
    if dataset not in FULL:
        raise ValueError(f"the full profile has no parameters for dataset {dataset!r}; known: "
                         f"{', '.join(k for k in FULL if isinstance(k, str) and k != 'all')}")
    return {**FULL["all"], **FULL[dataset], **FULL.get((dataset, number), {})}


def _source_hash(path: Path) -> str:
    nb = json.loads(path.read_text())
    code = [("".join(c["source"]) if isinstance(c["source"], list) else c["source"])
            for c in nb["cells"] if c["cell_type"] == "code"]
    return hashlib.sha256("\n\x00".join(code).encode()).hexdigest()[:12]


def _parse_overrides(items) -> dict:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--set takes NAME=VALUE, got {item!r}")
        name, text = item.split("=", 1)
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text  # a bare word is a string: --set dataset=mnist5k
        out[name.strip()] = value
    return out


def _plan(profile, datasets, only, overrides, notebooks_dir):
    paths = notebooks(notebooks_dir)
    if not paths:
        raise ValueError(f"no numbered notebooks found in {notebooks_dir or repo_root() / 'notebooks'}")
    if only:
        wanted = {o.strip().zfill(2) for o in only}
        unknown = wanted - {p.name[:2] for p in paths}
        if unknown:
            raise ValueError(f"--only names notebooks that do not exist: {', '.join(sorted(unknown))}; "
                             f"available: {', '.join(p.name[:2] for p in paths)}")
        paths = [p for p in paths if p.name[:2] in wanted]
    datasets = list(datasets) if datasets else list(PROFILE_DATASETS[profile])
    declared = {p: notebook_parameters(p) for p in paths}
    all_names = set().union(*declared.values())
    unknown = sorted(set(overrides) - all_names)
    if unknown:
        raise ValueError(f"--set names parameters no selected notebook has: {', '.join(unknown)}; "
                         f"parameters: {', '.join(sorted(all_names))}")
    plan = []
    for dataset in datasets:
        for path in paths:
            names = declared[path]
            params = {"profile": profile, "dataset": dataset}
            if profile == "full":
                params.update(full_parameters(dataset, path.name[:2]))
            params.update(overrides)
            params = {k: v for k, v in params.items() if k in names}
            plan.append((dataset, path, params))
    return plan


def reproduce(profile: str = "quick", datasets=None, only=None, resume: bool = False, overrides: dict | None = None,
              notebooks_dir: str | Path | None = None, progress: bool = True, log=print) -> int:
    """Run the numbered notebooks with papermill into ``outputs/<profile>/<dataset>/``; 0 on success.

    Each executed notebook is written next to a done-marker ``NN_name.done.json`` holding the hash of its
    parameters and code; with ``resume=True`` a notebook whose marker matches is skipped (except the
    report notebook, rebuilt whenever a notebook before it ran). Trained models
    are reused through :func:`get_model`'s cache in any case (keyed by their parameters), and an
    interrupted training run resumes from its last epoch. Stops at the first notebook that raises and
    returns 1, naming the executed notebook that holds the traceback.

    Args:
        profile: "quick" (each notebook's own parameters) or "full" (:data:`FULL` injected).
        datasets: dataset names (default :data:`PROFILE_DATASETS` of the profile).
        only: notebook numbers to run ("02"), default all.
        resume: skip notebooks already done with the same parameters and code.
        overrides: parameter values injected last (``--set``); a name no selected notebook has is an error.
        notebooks_dir: folder of the notebooks (default ``<repo>/notebooks``).
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError
    from tqdm.auto import tqdm

    if profile not in PROFILE_DATASETS:
        raise ValueError(f"profile must be one of {', '.join(PROFILE_DATASETS)}, got {profile!r}")
    plan = _plan(profile, datasets, only, overrides or {}, notebooks_dir)
    bar = tqdm(plan, desc=f"reproduce ({profile})", unit="notebook", disable=not progress)
    ran = set()  # datasets where a notebook was executed in this call: their report is rebuilt
    for dataset, path, params in bar:
        out_dir = profile_dir(profile, dataset)
        out_nb = out_dir / path.name
        marker = out_nb.with_suffix(".done.json")
        key = params_key({"params": params, "source": _source_hash(path)})
        bar.set_postfix_str(f"{dataset}/{path.stem}")
        stale_report = path.stem.endswith("_report") and dataset in ran
        if resume and not stale_report and marker.exists() and load_json(marker).get("key") == key and out_nb.exists():
            log(f"skip {out_nb} (done with the same parameters)")
            continue
        if marker.exists():
            marker.unlink()
        out_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        try:
            papermill.execute_notebook(str(path), str(out_nb), parameters=params, kernel_name="python3",
                                       cwd=str(path.parent), progress_bar=False, log_output=False)
        except PapermillExecutionError as e:
            bar.close()
            log(f"FAILED: {path.name} on {dataset} raised {e.ename}: {e.evalue}\n"
                f"the executed notebook with the traceback: {out_nb}")
            return 1
        except Exception as e:  # kernel died, bad notebook file, ...
            bar.close()
            log(f"FAILED: {path.name} on {dataset}: {type(e).__name__}: {e}\n"
                f"the executed notebook (if written): {out_nb}")
            return 1
        wall = time.perf_counter() - t0
        ran.add(dataset)
        save_json(marker, {"notebook": path.name, "key": key, "params": params, "runtime_s": wall,
                           "provenance": provenance(device(), **params)})
        log(f"done {out_nb} in {wall:.0f} s")
    report = profile_dir(profile) / "REPORT.md"
    if report.exists():
        log(f"report: {report}")
    return 0


def main(args) -> int:
    """Entry of ``python -m nslib reproduce`` (arguments parsed in :mod:`nslib.__main__`)."""
    try:
        overrides = _parse_overrides(args.set)
        datasets = [d.strip() for d in args.datasets.split(",") if d.strip()] if args.datasets else None
        only = [o.strip() for o in args.only.split(",") if o.strip()] if args.only else None
        return reproduce(args.profile, datasets=datasets, only=only, resume=args.resume, overrides=overrides)
    except ValueError as e:
        print(f"nslib reproduce: {e}", file=sys.stderr)
        return 2


# ----------------------------------------------------------------------------------------------------
# the report

_PUBLISHED = """\
| data, model | method | clean | PGD | AutoAttack | source |
|---|---|---|---|---|---|
| MNIST, eps 0.3, SmallCNN class | PGD-AT | 98.5-99.4 | 89-96 | 88.5-92.8 | literature (PAPER.md) |
| MNIST, eps 0.3, SmallCNN | TRADES (beta 6) | 99.2-99.48 | | 92.8-94.0 | literature (PAPER.md) |
| CIFAR-10, eps 8/255, ResNet-18 | PGD-AT (early stop) | 83.9 | 53.3 (PGD-10) | 48.4 | literature (PAPER.md) |
| CIFAR-10, eps 8/255, ResNet-18 | TRADES | 81-82 | | 47-48.7 | literature (PAPER.md) |
"""

_ONLINE = ("not testable offline: full MNIST and CIFAR-10 need a download (torchvision), ImageNet is not "
           "supported by nslib. With internet access and a GPU: "
           "`python -m nslib reproduce --profile full --datasets mnist,cifar10 --resume`")


def _md_claim_rows(claim: str, results: dict) -> list[tuple[str, dict]]:
    rows = []
    for dataset, nbs in results.items():
        for nb_name, rec in sorted(nbs.items()):
            entry = rec.get("claims", {}).get(claim)
            if entry:
                rows.append((dataset, {**entry, "notebook": nb_name, "params": rec.get("params", {}),
                                       "runtime_s": rec.get("runtime_s")}))
    return rows


def _claim_verdicts(results: dict) -> dict[str, dict[str, str]]:
    """{claim: {dataset: verdict}}; C5 is derived from C3 per dataset."""
    table: dict[str, dict[str, str]] = {}
    for claim in CLAIMS:
        if claim == "C5":
            continue
        for dataset, entry in _md_claim_rows(claim, results):
            table.setdefault(claim, {})
            prev = table[claim].get(dataset)
            table[claim][dataset] = combine([prev, entry["verdict"]]) if prev else entry["verdict"]
    table["C5"] = dict(table.get("C3", {}))
    return table


def report_verdicts(profile: str) -> dict[str, dict[str, str]]:
    """{claim: {dataset: verdict}} from the result files of a profile (C5 is C3 per dataset)."""
    table = _claim_verdicts(load_results(profile))
    return {claim: table.get(claim, {}) for claim in CLAIMS}


def write_report(profile: str) -> Path:
    """Assemble ``outputs/<profile>/REPORT.md`` from the notebooks' result files (atomic write); its path.

    One section per claim C1-C6 with the verdict per dataset, the comparisons behind it (means, spread over
    seeds, intervals), its figures and the parameters that produced it; then the baselines beside the
    published numbers, the evaluation sanity checks, and the notebooks' runtimes.
    """
    results = load_results(profile)
    root = profile_dir(profile)
    verdicts = _claim_verdicts(results)
    datasets = sorted(results)
    prov = provenance(device())
    lines = [f"# Reproduction report: {profile} profile", "",
             f"Written {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')} by nslib "
             f"{prov['nslib_version']} (torch {prov['torch_version']}, {prov['device_name']}). Paper: Zhang, Liu "
             f"et al., *Interpreting and Improving Adversarial Robustness of DNNs with Neuron Sensitivity*, "
             f"IEEE TIP 2021. The paper's own tables are not available offline: these verdicts test its claims "
             f"on the datasets available here, not its numbers.", "",
             "## Verdict rule", "", RULE, "",
             "## Summary", "",
             "| claim | " + " | ".join(datasets) + " | MNIST, CIFAR-10, ImageNet |",
             "|---|" + "---|" * len(datasets) + "---|"]
    for claim in CLAIMS:
        cells = [verdicts.get(claim, {}).get(d, "not run") for d in datasets]
        lines.append(f"| {claim} | " + " | ".join(cells) + " | not testable offline |")
    lines += [""]
    for claim, text in CLAIMS.items():
        lines += [f"## {claim}: {text}", ""]
        if claim == "C5":
            lines += ["Judged as C3 on each dataset tested here (same rule); the paper's datasets are "
                      "elsewhere:", ""]
            for d in datasets:
                lines.append(f"- {d}: **{verdicts.get('C5', {}).get(d, 'not run')}** (C3 on {d})")
            lines += [f"- MNIST (full), CIFAR-10, ImageNet: **{_ONLINE}**", ""]
            continue
        rows = _md_claim_rows(claim, results)
        if not rows:
            lines += ["Not run in this profile (no result file carries this claim).", ""]
        for dataset, entry in rows:
            lines += [f"### {dataset} ({entry['notebook']}): **{entry['verdict']}**", ""]
            if entry.get("summary"):
                lines += [entry["summary"], ""]
            for c in entry.get("comparisons", []):
                lines.append(f"- {describe(c)}")
            if entry.get("comparisons"):
                lines.append("")
            for fig in entry.get("figures", []):
                rel = os.path.relpath(fig, root) if os.path.isabs(fig) else fig
                lines.append(f"![{Path(fig).stem}]({rel})")
            if entry.get("figures"):
                lines.append("")
            params = ", ".join(f"{k}={v!r}" for k, v in sorted(entry["params"].items()))
            lines += [f"<sub>parameters: {params}</sub>", ""]
        lines += [f"MNIST (full), CIFAR-10, ImageNet: {_ONLINE}", ""]
    lines += ["## Baselines beside the published numbers", "",
              "Not comparable: the published numbers come from MNIST and CIFAR-10 with full training budgets; "
              "ours from Fashion-MNIST and a 5,000-image MNIST subset, and in the quick profile from a few "
              "epochs on a few thousand images. They are context for whether our baselines behave like "
              "adversarially trained models, not targets.", "", "Published (not from this paper):", "",
              _PUBLISHED]
    for d in datasets:
        for nb_name, rec in sorted(results[d].items()):
            for title, md in rec.get("sections", {}).items():
                if title.startswith("baselines"):
                    lines += [f"Ours, {d} ({nb_name}):", "", md, ""]
    lines += ["## Evaluation sanity", ""]
    found = False
    for d in datasets:
        for nb_name, rec in sorted(results[d].items()):
            for title, md in rec.get("sections", {}).items():
                if title.startswith("sanity"):
                    lines += [f"### {d} ({nb_name})", "", md, ""]
                    found = True
    if not found:
        lines += ["Not run (05_sns_robustness writes it).", ""]
    lines += ["## Other sections", ""]
    for d in datasets:
        for nb_name, rec in sorted(results[d].items()):
            for title, md in rec.get("sections", {}).items():
                if not title.startswith(("baselines", "sanity")):
                    lines += [f"### {title} ({d}, {nb_name})", "", md, ""]
    lines += ["## Runtimes", "", "| dataset | notebook | seconds | device |", "|---|---|---|---|"]
    for d in datasets:
        for nb_name, rec in sorted(results[d].items()):
            rt = rec.get("runtime_s")
            lines.append(f"| {d} | {nb_name} | {rt:.0f} | {rec['provenance'].get('device_name')} |"
                         if rt is not None else f"| {d} | {nb_name} | - | |")
    text = "\n".join(lines) + "\n"
    path = root / "REPORT.md"
    atomic_write_bytes(path, text.encode())
    return path
