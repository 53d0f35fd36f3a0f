"""The reproduction's settings: every knob declared once, each profile as its differences, one function that
returns a run's frozen settings.

A **knob** is anything a user may change with ``python -m nslib reproduce --set NAME=VALUE`` (or a notebook's
``overrides`` parameter). :data:`KNOBS` declares each one once: its default (the quick profile's value), its
check and what it means, with its unit; ``train=True`` marks a keyword of :func:`nslib.training.train`, which
then joins :attr:`Settings.train_args` (and so the model cache's key). :data:`PROFILES` holds what each profile
changes, in layers, later layers winning::

    defaults < quick[notebook] < profile["all"] < profile[notebook] < profile[dataset]
        < profile[(dataset, notebook)] < overrides

:func:`settings` merges the layers, checks every value (unknown name, wrong type, out of range: a ``ValueError``
naming the knob, what it expects and what it got, before any work), derives what follows from the knobs (``eps``
from the dataset when not set, the training attack's step ``alpha``) and returns a frozen :class:`Settings`
whose attributes are the knobs (``cfg.n_pairs``). Notebooks receive only ``profile``, ``dataset`` and
``overrides`` from papermill.

Usage::

    cfg = settings("quick", "fmnist", "02", {"eps": 0.2})
    cfg.eps, cfg.alpha, cfg.train_args      # 0.2, 0.1666..., {...}
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import numbers
from typing import Any, Callable


from nslib import attacks, data as data_mod, methods, models as models_mod, training
from nslib.repro.cache import MODELS
from nslib.repro.profiles import (DEFAULT_NOTEBOOK_S, EXPECTED_S, PROFILES, QUICK_RANGES, auto_profile,
                                  expected_seconds)
from nslib.training import ATTACK_DEFAULTS

__all__ = ["KNOBS", "Knob", "PROFILES", "NOTEBOOKS", "REPORT_NOTEBOOK", "EXPECTED_S", "DEFAULT_NOTEBOOK_S", "Settings", "settings_class", "settings",
           "parse_overrides", "check_datasets", "profile_datasets", "auto_profile", "expected_seconds"]

# The reproduction's numbered notebooks, in run order; the report notebook reads every other's results, so it
# runs last and again whenever a notebook before it ran. Notebooks numbered otherwise (07) are tools.
NOTEBOOKS = ("00", "01", "02", "03", "04", "05", "06")
REPORT_NOTEBOOK = "06"

# ----------------------------------------------------------------------------------------------------
# checks: one per knob, each raising ValueError that names the knob, the expectation and the value

def _fail(name, expected, value):
    hint = " (a string: is the literal complete and quoted right?)" if isinstance(value, str) else ""
    raise ValueError(f"{name} must be {expected}, got {value!r}{hint}")


def _int(minimum=0, optional=False, word=None):
    def check(name, v):
        if (optional and v is None) or (word is not None and v == word):
            return
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < minimum:
            _fail(name, f"an integer >= {minimum}" + (f", {word!r}" if word else "") + (" or None" if optional else ""), v)
    return check


def _real(low, high, *, low_open=False, high_open=False, optional=False):
    def check(name, v):
        if optional and v is None:
            return
        ok = (isinstance(v, numbers.Real) and not isinstance(v, bool) and (v < high if high_open else v <= high)
              and (v > low if low_open else v >= low))
        if not ok:
            _fail(name, f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
                  + (" or None" if optional else ""), v)
    return check


def _choice(options, optional=False):
    def check(name, v):
        if not (optional and v is None) and v not in options:
            _fail(name, "one of " + ", ".join(map(repr, options)) + (" or None" if optional else ""), v)
    return check


def _k(name, v):
    """A top-k size: an int count >= 1 or a fraction in (0, 1]."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or (
            v < 1 if isinstance(v, numbers.Integral) else not 0 < v <= 1):
        _fail(name, "an int >= 1 (a count) or a float in (0, 1] (a fraction)", v)


def _list(item_check, what, distinct=False, empty=False):
    def check(name, v):
        if not isinstance(v, (list, tuple)) or not (v or empty):
            _fail(name, f"a {'' if empty else 'non-empty '}list of {what}", v)
        for i, item in enumerate(v):
            item_check(f"{name}[{i}]", item)
        if distinct and len(set(v)) != len(v):
            _fail(name, f"a list of distinct {what}", v)
    return check


def _ranges(name, v):
    if not isinstance(v, dict) or not all(isinstance(r, (list, tuple)) and len(r) == 2 and r[0] <= r[1]
                                          for r in v.values()):
        _fail(name, "a dict of (low, high) ranges", v)


MARGIN_KEYS = ("accuracy", "sensitivity", "correlation", "similarity")


def _margins(name, v):
    if not isinstance(v, dict) or set(v) != set(MARGIN_KEYS) or not all(
            isinstance(m, numbers.Real) and not isinstance(m, bool) and 0 <= m < 1e6 for m in v.values()):
        _fail(name, "a dict of numbers >= 0 with exactly the keys " + ", ".join(MARGIN_KEYS), v)


@dataclasses.dataclass(frozen=True)
class Knob:
    """One knob: its default (the quick profile's value), its check ``check(name, value)`` (raises ValueError
    naming the knob), what it means with its unit, and whether it is a keyword of :func:`nslib.training.train`."""
    default: Any
    check: Callable[[str, Any], None]
    doc: str
    train: bool = False


def _model_name(name, v):
    """A model of the reproduction (:data:`nslib.repro.cache.MODELS`) or any registered training method."""
    if v not in MODELS and v not in methods.METHODS:
        _fail(name, "a model of nslib.repro.cache.MODELS (" + ", ".join(MODELS) + ") or a method of "
              "nslib.methods.METHODS (" + ", ".join(methods.METHODS) + ")", v)


_AA_ATTACKS = ("apgd-ce", "apgd-t", "apgd-dlr", "fab", "fab-t", "square")
KNOBS: dict[str, Knob] = {
    # the models (01-05)
    "arch": Knob("smallcnn", _choice(models_mod.ARCHS), '"smallcnn" (28x28), "vgg16" or "resnet18"'),
    "seeds": Knob([0], _list(_int(0), "seeds (integers >= 0)", distinct=True), "training seeds; verdicts need at least 2"),
    "eps": Knob(None, _real(0, 1, low_open=True, optional=True),
                "Linf radius of training and evaluation (None: the dataset's, docs/PAPER.md)"),
    "epochs": Knob(2, _int(1), "passes over the n_train images (adversarial and SNS models)", train=True),
    "vanilla_epochs": Knob(8, _int(1), "passes for the vanilla model: about the compute of 2 adversarial epochs"),
    "n_train": Knob(2000, _int(1, optional=True), "training images (None: all left after the validation hold-out)",
                    train=True),
    "vanilla_n_train": Knob(None, _int(1, optional=True, word="all"),
                            'the vanilla model\'s training images (None: n_train; "all": every image left)'),
    "batch_size": Knob(32, _int(1), "images per SGD step", train=True),
    "lr": Knob(0.05, _real(0, 10, low_open=True), "peak learning rate (SGD, momentum 0.9, cosine schedule per step)",
               train=True),
    "attack_steps": Knob(3, _int(1, optional=True), "PGD steps of the training attack (None: the dataset's default)",
                         train=True),
    "step_scale": Knob(attacks.PGD_STEP_SCALE, _real(0, 10, low_open=True),
                       "the training attack's step as a multiple of eps / attack_steps (2.5: PGD reaches the ball's "
                       "edge from anywhere; 1.25 with 1 step: FGSM with a random start, FGSM-RS, Wong et al. 2020)"),
    "start": Knob("scratch", _choice(("vanilla", "scratch")),
                  'where the robust models (PGD-AT, TRADES, SNS) start: "vanilla", the weights of the same seed\'s '
                  'vanilla model (fine-tuned: the same start for a base and its SNS), or "scratch"'),
    "eps_warmup_epochs": Knob(0, _int(0), "epochs over which the training eps ramps up linearly from 0", train=True),
    "val_size": Knob(500, _int(1), "validation images held out of the training data", train=True),
    "val_n_adv": Knob(200, _int(0), "validation images attacked after each epoch: picks the best checkpoint",
                      train=True),
    "val_attack_steps": Knob(5, _int(1), "PGD steps of that validation attack", train=True),
    "models": Knob(["vanilla", "pgd_at", "trades", "sns_pgd_at", "sns_trades"],
                   _list(_model_name, "model names", distinct=True),
                   "the models of 01, 02, 04 and 05: Vanilla first, each SNS model after its base"),
    "lam": Knob(None, _real(0, 1e6, optional=True),
                "SNS penalty weight lambda (dimensionless); None: chosen per base on the validation split from "
                "lam_grid (notebook 01), never on the test set", train=True),
    "lam_grid": Knob([0.01, 0.1], _list(_real(0, 1e6, low_open=True), "positive lambda values", distinct=True),
                     "SNS's lambda candidates: each trained on the first seed per base, the one with the best "
                     "validation robust accuracy (PGD, val_n_adv images) is used; include values that collapse"),
    "lam_drop": Knob(None, _real(0, 1, optional=True),
                     "a lambda whose SNS model validates (PGD on all val_size images) more than this below its base "
                     "on the same seed, on any seed of c3_seeds, is not chosen: the next best is (a fraction: 0.03 is "
                     "3 points; None: only a collapse rejects a lambda)"),
    "k": Knob(0.1, _k, 'SNS top-k: fraction of each layer\'s neurons penalised ("sensitive")', train=True),
    "precision": Knob("auto", _choice(("auto", "fp32", "bf16")),
                      'training and pair attacks: "auto" (bf16 on CUDA and bf16-capable CPUs), "fp32", "bf16"',
                      train=True),
    # 00: clean training goal
    "min_test_acc": Knob(0.85, _real(0, 1), "notebook 00's test-accuracy goal"),
    # E1 (02) and E4 (04)
    "n_pairs": Knob(200, _int(2), "test images, the same for every model (paper: 1,000)"),
    "pair_steps": Knob(20, _int(1), "PGD steps crafting each pair (random start, step 2.5 * eps / steps)"),
    "c1_eps_scales": Knob([], _list(_real(0, 1, low_open=True, high_open=True), "fractions of eps", distinct=True,
                                    empty=True), "C1 (02): PGD-AT also trained at these fractions of eps"),
    # E2 (03)
    "e2_models": Knob(["vanilla", "pgd_at"], _list(_model_name, "model names", distinct=True), "models analysed"),
    "ks": Knob([0.05, 0.1, 0.25], _list(_k, "top-k sizes"), "numbers of neurons patched, as fractions of each layer's"),
    "k_eval": Knob(0.1, _k, "the size at which C2 is judged (a value of ks)"),
    "selection_seeds": Knob([0, 1, 2], _list(_int(0), "seeds", distinct=True), "seeds of the random and matched choices"),
    "modes": Knob(["restore", "zero"], _list(_choice(("restore", "zero")), "modes", distinct=True),
                  "restore the neurons to their benign values, or set them to zero"),
    # E4 (04)
    "n_maps": Knob(4, _int(1), "images shown per figure"),
    "k_maps": Knob(3, _int(1), "most sensitive channels shown per figure"),
    "map_layer": Knob(None, lambda name, v: v is None or isinstance(v, str) or _fail(name, "a dotted layer name or None", v),
                      "layer drawn (None: the deepest default layer with maps of 8x8 or more)"),
    # E3 (05)
    "n_eval": Knob(200, _int(1), "test images for clean, FGSM, PGD-20, MIM and transfer"),
    "pgd_restarts": Knob(2, _int(1), "PGD runs on every test image, worst case per image (the first: the PGD pairs; "
                                     "each further run attacks only the images still robust): C3's judged attack"),
    "suite_seeds": Knob(1, _int(1), "how many of the seeds (the first) run 05's secondary attacks (MIM, the long PGD "
                                    "run, the L2 rows, AutoAttack: C3's controls); the others run the light rows"),
    "n_long": Knob(100, _int(1), "test images for the long PGD run"),
    "pgd_long_steps": Knob(50, _int(1), "steps of the long PGD run (paper: 100)"),
    "mim_steps": Knob(10, _int(1), "MIM iterations (step eps / steps, decay 1)"),
    "l2_n": Knob(50, _int(1), "test images for the L2 rows (FMN and PGD-L2, at radius 2 eps sqrt(pixels) / 10)"),
    "fmn_steps": Knob(50, _int(1), "FMN-L2 steps (minimal norm; one gradient each; Pintor et al. 2021)"),
    "pgd_l2_steps": Knob(20, _int(1), "PGD-L2 steps at that radius (the check that FMN is not weaker)"),
    "pgd_l2_restarts": Knob(1, _int(1), "PGD-L2 random restarts (per-example worst case kept)"),
    "aa_n": Knob(50, _int(1), "test images for AutoAttack"),
    "aa_version": Knob("custom", _choice(("standard", "custom")),
                       '"standard" (APGD-CE, APGD-T, FAB-T, Square) or "custom" with aa_attacks'),
    "aa_attacks": Knob(["apgd-ce", "apgd-dlr"], _list(_choice(_AA_ATTACKS), "AutoAttack attack names", distinct=True),
                       "AutoAttack's attacks when aa_version is \"custom\""),
    "aa_restarts": Knob(None, _int(1, optional=True),
                        'restarts of AutoAttack\'s APGD/FAB (None: its own: 5 in "custom", 1 in "standard")'),
    "c3_seeds": Knob(None, lambda name, v: v is None or _list(_int(0), "seeds (integers >= 0)", distinct=True)(name, v),
                     "C3's seeds (every base and its SNS model): a superset of seeds, whose extra seeds get only "
                     "05's light rows (clean, the PGD pairs, FGSM, transfer); None: seeds"),
    "k_grid": Knob([0.1, 0.3], _list(_k, "top-k sizes"), "SNS (PGD-AT) top-k ablation at the chosen lambda, first seed"),
    "n_sanity": Knob(50, _int(1), "test images for the eps sweep of the sanity checks"),
    "sanity_steps": Knob(10, _int(1), "PGD steps of the eps sweep"),
    "eps_scales": Knob([0.5, 1, 2, 4, 8], _list(_real(0, 1e3, low_open=True), "positive multiples of eps"),
                       "the sweep's radii as multiples of eps (capped at 1)"),
    # the verdicts (every notebook): fixed before any run, never tuned on results
    "margins": Knob({"accuracy": 0.01, "sensitivity": 0.1, "correlation": 0.2, "similarity": 0.05}, _margins,
                    "the smallest effect that would matter, per quantity: accuracy (a fraction: 0.01 is 1 point; "
                    "C2, C3), sensitivity (log ratio of mean sigma: 0.1 is about 10%; C4), correlation (-Spearman; "
                    "C1), similarity (cosine; C6)"),
    # the checked notebook cells
    "train_ranges": Knob(QUICK_RANGES["train_ranges"], _ranges, "01's expected (low, high) validation accuracies"),
    "eval_ranges": Knob(QUICK_RANGES["eval_ranges"], _ranges, "05's expected (low, high) test accuracies"),
}
CHECKS = {name: knob.check for name, knob in KNOBS.items()}  # name -> check(name, value)



class _Derived:
    """What follows from the knobs: the training attack's step, the keyword arguments of training, JSON."""

    @property
    def alpha(self) -> float | None:
        """Step of the training attack: None (the dataset's default step) with the dataset's eps and steps and the
        default step_scale; otherwise step_scale * eps / steps (2.5: a short attack, or a larger eps, still reaches
        the ball's edge; 1.25 with one step: FGSM-RS)."""
        default = ATTACK_DEFAULTS.get(self.dataset, {})
        _, steps, _ = training.attack_settings(self.dataset, self.eps, self.attack_steps)
        if self.eps == default.get("eps") and steps == default.get("steps") and self.step_scale == KNOBS["step_scale"].default:
            return None
        return self.step_scale * self.eps / steps

    @property
    def train_args(self) -> dict:
        """Keyword arguments of :func:`nslib.repro.cache.get_model` (and so, but ``start``, of
        :func:`nslib.training.train`): every knob declared ``train=True``, ``eps``, the derived ``alpha``, and
        ``start`` (:attr:`start_args`: the model the robust models start from, or None). The cache's key is that of
        the config training resolves from them (:func:`nslib.repro.cache.model_key`), so nothing is left out to keep
        a key."""
        args = {name: getattr(self, name) for name, knob in KNOBS.items() if knob.train}
        if args["lam"] is None:  # chosen on validation per base (nslib.repro.zoo), not one value for all
            del args["lam"]
        args["eps"], args["alpha"] = self.eps, self.alpha
        args["start"] = self.start_args
        return args

    @property
    def vanilla_args(self) -> dict:
        """What the vanilla model trains with instead of :attr:`train_args` (``vanilla`` of
        :func:`nslib.repro.cache.get_models`): its own epochs and, when ``vanilla_n_train`` is set, its own images;
        it starts from scratch."""
        out = {"epochs": self.vanilla_epochs, "start": None}
        if self.vanilla_n_train is not None:
            out["n_train"] = None if self.vanilla_n_train == "all" else self.vanilla_n_train
        return out

    @property
    def start_args(self) -> dict | None:
        """``start`` of :func:`nslib.repro.cache.get_model`: ``{"name": "vanilla", "args": its training arguments}``
        when the robust models start from the same seed's vanilla model, None from scratch."""
        if self.start == "scratch":
            return None
        args = {name: getattr(self, name) for name, knob in KNOBS.items() if knob.train and name != "lam"}
        args["eps"], args["alpha"] = self.eps, self.alpha
        return {"name": "vanilla", "args": {**args, **self.vanilla_args}}

    def as_dict(self) -> dict:
        """Every knob and the derived alpha, JSON-ready (recorded with each result)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out = {key: list(v) if isinstance(v, tuple) else v for key, v in out.items()}
        return {**out, "alpha": self.alpha}


def settings_class() -> type:
    """The class of :func:`settings`' results: a frozen dataclass with profile, dataset, notebook and one field per
    knob of :data:`KNOBS` (lists become tuples; eps resolved), made from KNOBS so a knob is declared in one place."""
    cls = dataclasses.make_dataclass("Settings", [("profile", str), ("dataset", str), ("notebook", "str | None")]
                                     + [(name, Any) for name in KNOBS], bases=(_Derived,), frozen=True)
    cls.__module__ = __name__  # make_dataclass's own module argument needs Python 3.12
    return cls


Settings = settings_class()


def profile_datasets(profile: str) -> tuple[str, ...]:
    """The datasets a profile runs by default."""
    _check_profile(profile)
    return tuple(PROFILES[profile]["datasets"])


def _check_profile(profile) -> None:
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {', '.join(PROFILES)}, got {profile!r}")


def check_datasets(datasets) -> list[str]:
    """The dataset names, each checked against :data:`nslib.data.DATASETS`."""
    datasets = list(datasets)
    if not datasets:
        raise ValueError("datasets must name at least one dataset")
    for d in datasets:
        if d not in data_mod.DATASETS:
            raise ValueError(f"datasets must be drawn from {', '.join(data_mod.DATASETS)}, got {d!r}")
    return datasets


def _unknown(name) -> ValueError:
    near = difflib.get_close_matches(name, KNOBS, n=3)
    hint = f"; did you mean {', '.join(near)}?" if near else f"; knobs: {', '.join(sorted(KNOBS))}"
    return ValueError(f"unknown parameter {name!r}{hint}")


def settings(profile: str, dataset: str, notebook: str | None = None, overrides: dict | None = None) -> Settings:
    """The frozen settings of ``notebook`` ("02") run on ``dataset`` under ``profile``, with ``overrides``.

    Raises: ValueError naming the profile, the dataset, an unknown knob (with the nearest names) or a value
    of the wrong type or range, before anything is computed.
    Usage: ``cfg = settings("quick", "fmnist", "02", {"seeds": [0, 1, 2]})``
    """
    _check_profile(profile)
    check_datasets([dataset])
    if notebook is not None and notebook not in NOTEBOOKS:
        raise ValueError(f"notebook must be one of {', '.join(NOTEBOOKS)} or None, got {notebook!r}")
    overrides = dict(overrides or {})
    for name in overrides:
        if name not in KNOBS:
            raise _unknown(name)
    quick, prof = PROFILES["quick"], PROFILES[profile]
    merged = {name: knob.default for name, knob in KNOBS.items()}
    for layer in (quick.get(notebook, {}), quick.get(dataset, {}), quick.get((dataset, notebook), {}))\
            if profile == "quick" else (quick.get(notebook, {}), prof.get("all", {}), prof.get(notebook, {}),
                                        prof.get(dataset, {}), prof.get((dataset, notebook), {})):
        merged.update(layer)
    merged.update(overrides)
    for name, value in merged.items():
        KNOBS[name].check(name, value)
    if merged["k_eval"] not in merged["ks"]:
        raise ValueError(f"k_eval must be one of ks {list(merged['ks'])}, got {merged['k_eval']!r}")
    left = data_mod.DATASETS[dataset].train_size - merged["val_size"]  # training images after the hold-out
    for name, value, limit in (("val_size", merged["val_size"], left + merged["val_size"] - 1),
                               ("n_train", merged["n_train"], left), ("vanilla_n_train", merged["vanilla_n_train"], left)):
        if isinstance(value, numbers.Integral) and value > limit:
            raise ValueError(f"{name} must be at most {limit} on {dataset} ({left + merged['val_size']} training images, "
                             f"{merged['val_size']} of them held out for validation), got {value}")
    if merged["c3_seeds"] is None:
        merged["c3_seeds"] = merged["seeds"]
    elif not set(merged["seeds"]) <= set(merged["c3_seeds"]):
        raise ValueError(f"c3_seeds must include every seed of seeds {list(merged['seeds'])}, got "
                         f"{list(merged['c3_seeds'])}")
    models = list(merged["models"])
    if models[:1] != ["vanilla"] or any(MODELS.get(n, {}).get("base") not in (None, *models[:i])
                                        for i, n in enumerate(models)):
        raise ValueError(f"models must start with 'vanilla' and name each SNS model after its base, got {models}")
    if merged["eps"] is None:
        if dataset not in ATTACK_DEFAULTS:
            raise ValueError(f"eps must be given for dataset {dataset!r} (it has no default radius)")
        merged["eps"] = ATTACK_DEFAULTS[dataset]["eps"]
    merged = {key: tuple(v) if isinstance(v, list) else v for key, v in merged.items()}
    return Settings(profile=profile, dataset=dataset, notebook=notebook, **merged)


def parse_overrides(items) -> dict:
    """``["seeds=[0, 1]", "eps=0.2"]`` -> ``{"seeds": [0, 1], "eps": 0.2}``: each value a Python literal (a bare
    word is a string); the names and values are checked by :func:`settings`."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--set takes NAME=VALUE, got {item!r}")
        name, text = (s.strip() for s in item.split("=", 1))
        if name not in KNOBS:
            raise _unknown(name)
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text  # a bare word: --set aa_version=standard
        out[name] = value
    return out
