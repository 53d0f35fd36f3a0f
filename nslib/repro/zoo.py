"""The reproduction's models as every notebook asks for them: SNS's lambda chosen on validation, then the models.

SNS's penalty weight lambda is the method's own hyperparameter. A fair test of SNS (C3) chooses it the way a user
would, before the test set is looked at: :func:`lam_curve` trains SNS on each value of ``lam_grid`` (the first
seed, per base method) and picks the one with the best robust accuracy on the *validation* split held out of the
training images (the PGD accuracy training records after each epoch, best epoch). :func:`main_models` then trains
or loads ``cfg.models`` for each seed with that lambda, so notebooks 01-05 all analyse the same SNS models.

Usage::

    trained, curves = main_models(cfg)            # {(name, seed): (model, info)}, {"sns_pgd_at": curve, ...}
    curves["sns_pgd_at"]["lam"]                   # the chosen lambda
"""
from __future__ import annotations

import functools
import statistics
from pathlib import Path

from nslib import data, training
from nslib.evaluate import wilson_interval
from nslib.progress import bar
from nslib.repro.cache import MODELS, Diverged, get_model, label
from nslib.store import load_json, params_key, save_json

__all__ = ["sns_models", "lam_curve", "curve_rows", "main_models", "training_attack", "recipe_markdown",
           "full_validation", "full_validation_pgd", "seed_spread_rows", "SEED_SPREAD"]

# A robust model whose validation robust accuracy (on all of its validation images: full_validation_pgd) lies
# further than this from its method's median over seeds is a failed seed (notebook 01 says so, and the report):
# the profile's recipe must not produce one.
SEED_SPREAD = 0.03


def sns_models(names) -> list[str]:
    """The SNS models among ``names`` (those of :data:`nslib.repro.cache.MODELS` with a base)."""
    return [n for n in names if MODELS.get(n, {}).get("base")]


def _args(cfg, name: str, lam: float | None = None) -> dict:
    """Training arguments of model ``name``: the settings' (vanilla's own epochs and images), lambda for SNS."""
    args = {key: v for key, v in cfg.train_args.items() if key != "lam"}
    if name == "vanilla":
        args.update(cfg.vanilla_args)
    if lam is not None:
        args["lam"] = lam
    return args


def _validation_row(lam: float, info: dict, n_val: int, n_adv: int) -> dict:
    best = info["best"] or {}
    row = {"lam": lam, "status": info["status"], "collapsed": info["status"] != "done", "n_val": n_val,
           "n_adv": n_adv, "val_clean": best.get("val_clean"), "val_pgd": best.get("val_pgd")}
    for key, n in (("val_clean", n_val), ("val_pgd", n_adv)):
        row[key + "_ci"] = None if row[key] is None else wilson_interval(round(row[key] * n), n)
    return row


def _get(cfg, name: str, seed: int, args: dict, progress: bool, models=None):
    """:func:`get_model`, counted on the ``models`` bar: one done when it trained, one skipped when it was cached.
    An SNS run that diverged comes back as ``(None, {"status": "diverged", ...})``: a failure of its lambda, as a
    collapse (any other model that diverges stops the run with get_model's message)."""
    try:
        model, info = get_model(cfg.dataset, cfg.arch, name, seed, progress=progress, **args)
    except Diverged as err:
        if name not in sns_models([name]):
            raise
        model, info = None, {"name": name, "label": label(name), "status": "diverged", "collapsed": True,
                             "best": None, "history": [], "why": str(err), "train_s": 1.0}
    if models is not None:
        models.update(1) if info.get("train_s") else models.skip(1)
    return model, info


def lam_curve(cfg, name: str, *, progress: bool = True, models=None) -> dict:
    """Choose SNS model ``name``'s lambda on validation: its base (lambda 0) and SNS at each of ``cfg.lam_grid``,
    trained (or loaded) on the first seed, each read at its best epoch.

    Returns ``{"name", "base", "seed", "lam" (the chosen value), "fixed" (True when cfg.lam was given: no
    choice made), "rows": [{"lam", "status", "collapsed", "n_val", "n_adv", "val_clean", "val_pgd", and their 95%
    Wilson intervals "val_clean_ci", "val_pgd_ci"}], "rejected": []}`` (rows empty when fixed). The chosen lambda
    has the highest validation robust accuracy among the runs that did not collapse (ties: the smaller lambda);
    :func:`main_models` rejects it (``rejected``: ``{"lam", "seeds", "collapsed", "below_base"}``) and takes the next
    when it collapses on any other seed or (``lam_drop``) validates too far below its base on one.

    Raises: ValueError naming lam_grid when SNS collapsed at every value.
    """
    base, seed = MODELS[name]["base"], cfg.seeds[0]
    out = {"name": name, "base": base, "seed": seed, "fixed": cfg.lam is not None, "rows": [], "lam": cfg.lam,
           "all_below_base": False}
    if cfg.lam is not None:
        return out
    n_val, n_adv = cfg.val_size, min(cfg.val_n_adv, cfg.val_size)
    _, info = _get(cfg, base, seed, _args(cfg, base), progress, models)
    out["rows"].append(_validation_row(0.0, info, n_val, n_adv))
    for lam in cfg.lam_grid:
        _, info = _get(cfg, name, seed, _args(cfg, name, lam), progress, models)
        out["rows"].append(_validation_row(lam, info, n_val, n_adv))
    out["rejected"] = []
    out["lam"] = _best(out, cfg)
    return out


def _best(curve: dict, cfg) -> float:
    """The lambda of ``curve`` with the highest validation robust accuracy (ties: the smaller) among the runs that
    did not collapse and were not rejected (failed on another seed: ``curve["rejected"]``). When every lambda left
    was rejected only for validating below its base (never a collapse), the one whose worst seed fell least, and
    ``curve["all_below_base"]`` becomes True."""
    rejected = {r["lam"] for r in curve.get("rejected", [])}
    usable = [r for r in curve["rows"][1:] if r["status"] == "done" and r["val_pgd"] is not None
              and r["lam"] not in rejected]
    below = [r for r in curve.get("rejected", []) if not r["collapsed"]]
    if not usable and below:
        curve["all_below_base"] = True
        return max(below, key=lambda r: (min(gap for _, gap in r["below_base"]), -r["lam"]))["lam"]
    if not usable:
        raise ValueError(f"lam_grid must hold a lambda at which {label(curve['name'])} trains without collapse on "
                         f"{cfg.dataset} on every seed; none of {list(cfg.lam_grid)} does"
                         + (f" (failed on other seeds: {sorted(rejected)})" if rejected else ""))
    return max(usable, key=lambda r: (r["val_pgd"], -r["lam"]))["lam"]


def curve_rows(curve: dict, steps: int) -> list[dict]:
    """A :func:`lam_curve`'s rows as :func:`nslib.viz.plot_ablation` draws them: value (lambda; 0 is the base),
    "clean" and "pgd" validation accuracies with their intervals (``steps``: the validation attack's), collapsed
    (also a run that diverged: neither is a result)."""
    def acc(r, key, what):
        low, high = r[key + "_ci"] or (0.0, 0.0)
        return {"accuracy": r[key] if r[key] is not None else float("nan"), "low": low, "high": high,
                "label": f"validation {what} ({r['n_val' if key == 'val_clean' else 'n_adv']} images)"}
    return [{"value": r["lam"], "collapsed": r["status"] != "done", "clean": acc(r, "val_clean", "clean"),
             "pgd": acc(r, "val_pgd", f"PGD-{steps}")} for r in curve["rows"]]


def main_models(cfg, names=None, seeds=None, *, extra_seeds=(), progress: bool = True) -> tuple[dict, dict]:
    """``(trained, curves)``: ``{(name, seed): (model, info)}`` for ``names`` (default ``cfg.models``) and
    ``seeds`` (default ``cfg.seeds``), and for ``extra_seeds`` of every name but Vanilla (C3's further seeds),
    trained or loaded from the cache, every SNS model at its lambda from :func:`lam_curve` (``curves``:
    ``{sns name: curve}``). One ``overall`` bar counts the models that train (those found trained are taken
    off its total), so the run's time left follows the training (:mod:`nslib.progress`)."""
    names = list(cfg.models if names is None else names)
    seeds = list(cfg.seeds if seeds is None else seeds)
    extra = [s for s in extra_seeds if s not in seeds]
    runs = [(n, s) for s in seeds for n in names] + [(n, s) for s in extra for n in names if n != "vanilla"]
    # the vanilla models the robust ones start from (cfg.start), every seed's, first (also the extra seeds')
    starts = [s for s in seeds + extra if cfg.start_args is not None and any(n != "vanilla" for n in names)]
    sns = sns_models(names)
    curve_runs = 0 if cfg.lam is not None else len(sns) * (1 + len(cfg.lam_grid))
    with bar(total=len(starts) + curve_runs + len(runs), desc="models", disable=not progress, overall=True) as models:
        for s in starts:
            _get(cfg, "vanilla", s, _args(cfg, "vanilla"), progress, models)
        curves = {n: lam_curve(cfg, n, progress=progress, models=models) for n in sns}
        trained = {(n, s): _get(cfg, n, s, _args(cfg, n, curves[n]["lam"] if n in curves else None), progress, models)
                   for n, s in runs}
        # A lambda at which SNS collapses (or diverges) on any seed of c3_seeds, or (lam_drop) validates further below
        # its base than lam_drop on one, is not chosen: the next best is (when every lambda falls that far: the one whose
        # worst seed falls least, a result about SNS, not a failure). Every notebook checks the same seeds (loading
        # C3's from the cache when it does not analyse them), so all choose the same lambda.
        for n in sns if cfg.lam is None else ():
            check = [s for s in dict.fromkeys([*seeds, *extra, *cfg.c3_seeds]) if (n, s) not in trained]
            more = {(n, s): _get(cfg, n, s, _args(cfg, n, curves[n]["lam"]), progress) for s in check}
            while not curves[n]["all_below_base"] and (
                    failure := _lam_failure(cfg, n, {**trained, **more}, trained, progress)):
                curves[n]["rejected"].append({"lam": curves[n]["lam"], **failure})
                curves[n]["lam"] = _best(curves[n], cfg)
                again = [s for m, s in runs if m == n]
                models.total = (models.total or 0) + len(again)
                trained.update({(n, s): _get(cfg, n, s, _args(cfg, n, curves[n]["lam"]), progress, models) for s in again})
                more = {(n, s): _get(cfg, n, s, _args(cfg, n, curves[n]["lam"]), progress) for s in check}
    failed = [info for _, info in trained.values() if info["status"] == "diverged"]  # lambda fixed by the settings
    if failed:
        raise Diverged(failed[0]["why"])
    return trained, curves


def _lam_failure(cfg, name: str, runs: dict, trained: dict, progress: bool) -> dict | None:
    """Why SNS model ``name``'s lambda fails on the seeds of ``runs`` (``{(name, seed): (model, info)}`` at that
    lambda), or None: ``{"seeds": every failing seed, "collapsed": those where it collapsed or diverged,
    "below_base": [[seed, gap], ...] where its full-validation PGD accuracy lies more than ``cfg.lam_drop`` below its
    base's on the same seed (gap negative, a fraction)}``. The base comes from ``trained`` or the cache."""
    mine = {s: (model, info) for (m, s), (model, info) in runs.items() if m == name}
    collapsed = sorted(s for s, (_, info) in mine.items() if info["status"] != "done")
    below = []
    if cfg.lam_drop is not None:
        base, images = MODELS[name]["base"], _train_images(cfg)
        for s in sorted(set(mine) - set(collapsed)):
            base_model, base_info = trained.get((base, s)) or _get(cfg, base, s, _args(cfg, base), progress)
            gap = full_validation(cfg, s, *mine[s], images) - full_validation(cfg, s, base_model, base_info, images)
            if gap < -cfg.lam_drop - 1e-12:
                below.append([s, gap])
    if not (collapsed or below):
        return None
    return {"seeds": sorted({*collapsed, *(s for s, _ in below)}), "collapsed": collapsed, "below_base": below}


# ----------------------------------------------------------------------------------------------------
# what ran, in words

def training_attack(cfg) -> str:
    """The attack the robust models of settings ``cfg`` trained against, in words: "FGSM-RS (one step of 1.25 eps
    from a uniform random start)" for one step of at most 1.25 eps, else "PGD-k (step s eps, random start)"."""
    _, steps, alpha = training.attack_settings(cfg.dataset, cfg.eps, cfg.attack_steps, cfg.alpha)
    scale = alpha / cfg.eps
    if steps == 1 and scale <= 1.25 + 1e-9:
        return f"FGSM-RS (one step of {scale:.3g} eps from a uniform random start)"
    return f"PGD-{steps} (step {scale:.3g} eps, uniform random start)"


def recipe_markdown(cfg, n_train: int | None = None) -> str:
    """What the models of settings ``cfg`` ran, for a reader: the training attack under each method's name (a
    1-step run is not called PGD-10), data, epochs, schedule, the start, and which checkpoint is used."""
    attack = training_attack(cfg)
    images = f"{n_train:,} images" if n_train else ("every training image left after the validation hold-out"
                                                     if cfg.n_train is None else f"{cfg.n_train:,} images")
    van_images = {None: images, "all": "every training image left after the validation hold-out"}.get(
        cfg.vanilla_n_train, f"{cfg.vanilla_n_train} images")
    start = ("the same seed's Vanilla model (its best checkpoint): a base method and its SNS model start from the "
             "same weights" if cfg.start == "vanilla" else "scratch (seeded initial weights)")
    warm = f", eps ramped up from 0 over the first {cfg.eps_warmup_epochs} epoch(s)" if cfg.eps_warmup_epochs else ""
    return "\n".join([
        f"- **Vanilla**: clean cross-entropy, {cfg.vanilla_epochs} epoch(s) over {van_images}.",
        f"- **PGD-AT**, **TRADES** (beta 6), **SNS** (on either): trained against **{attack}** at eps {cfg.eps:g}{warm} "
        f"(TRADES and SNS (TRADES): the same steps on the KL, from x + 0.001 N(0, 1), as the reference); "
        f"{cfg.epochs} epoch(s) over {images}; started from {start}. "
        f"\"PGD-AT\" names the method (cross-entropy on adversarial examples, Madry et al.), here with that attack.",
        f"- All: SGD (momentum 0.9, weight decay 5e-4), batch {cfg.batch_size}, peak learning rate {cfg.lr:g} with a "
        f"cosine schedule per step; precision {cfg.precision!r}; the checkpoint with the best validation accuracy "
        f"(PGD-{cfg.val_attack_steps} on {cfg.val_n_adv} of {cfg.val_size} held-out images for the robust models, "
        f"clean for Vanilla) is the one analysed."])


def full_validation(cfg, seed: int, model, info: dict, images=None) -> float:
    """One robust model's accuracy at its analysed checkpoint under the validation attack training uses
    (:func:`nslib.training.validation_pgd`, PGD-``val_attack_steps`` at eps) on *all* ``val_size`` validation images
    of its ``seed``, not only the ``val_n_adv`` the best epoch was chosen on (one model's accuracy near 68% has a
    standard error of 2.1 points on 500 images, 1.0 on 2,000). Cached in the model's run folder (``info["dir"]``)
    per attack, images and checkpoint, so every notebook reads the same number. ``images``: a callable giving the
    training split ``(x, y)`` (a caller validating several models loads it once); None loads it here."""
    params = {"eps": cfg.eps, "steps": cfg.val_attack_steps, "val_size": cfg.val_size, "seed": seed,
              "checkpoint": info.get("checkpoint")}
    path = Path(info["dir"]) / f"full-val-{params_key(params)}.json" if info.get("dir") else None
    if path is not None and path.exists():
        return load_json(path)["accuracy"]
    x, y = images() if images is not None else data.load(cfg.dataset, "train")
    hold = training.validation_split(y, cfg.val_size, seed)[1]
    accuracy = training.validation_pgd(model, x[hold], y[hold], cfg.eps, cfg.val_attack_steps)
    if path is not None:
        save_json(path, {"accuracy": accuracy, **params})
    return accuracy


def _train_images(cfg):
    """The training split of ``cfg.dataset``, loaded on the first call only (none when every result is cached)."""
    return functools.cache(lambda: data.load(cfg.dataset, "train"))


def full_validation_pgd(cfg, trained: dict, *, progress: bool = True) -> dict:
    """``{(name, seed): accuracy}``: :func:`full_validation` of each robust model of ``trained`` (:func:`main_models`;
    a model that did not train is left out): the seed-spread rule reads it."""
    runs = [(key, model, info) for key, (model, info) in trained.items() if key[0] != "vanilla" and model is not None]
    images = _train_images(cfg)
    return {(name, seed): full_validation(cfg, seed, model, info, images)
            for (name, seed), model, info in bar(runs, desc="full validation", disable=not progress)}


def seed_spread_rows(rows: list[dict], key: str = "best val PGD", within: float = SEED_SPREAD) -> list[dict]:
    """Per robust model of :func:`checkpoint_rows`: its validation robust accuracy ``rows[i][key]`` (the reproduction
    reads the full-validation one, :func:`full_validation_pgd`), its method's median over seeds, and whether the
    model lies within ``within`` of it (a model that does not is a failed seed)."""
    by = {}
    for r in rows:
        if r["name"] != "vanilla" and r.get(key) is not None:
            by.setdefault(r["name"], []).append(r[key])
    out = []
    for r in rows:
        if r["name"] in by and r.get(key) is not None:
            med = statistics.median(by[r["name"]])
            out.append({"model": r["model"], "seed": r["seed"], key: r[key], "method median": med,
                        "gap": r[key] - med, "within": "yes" if abs(r[key] - med) <= within + 1e-12 else "NO"})
    return out
