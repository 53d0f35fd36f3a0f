"""The reproduction's settings: every profile in one table, one function that returns a run's frozen settings.

A **knob** is anything a user may change with ``python -m nslib reproduce --set NAME=VALUE`` (or a notebook's
``overrides`` parameter). :data:`PROFILES` holds each profile's values in layers, later layers winning::

    quick["all"] < quick[notebook] < profile["all"] < profile[notebook] < profile[dataset]
        < profile[(dataset, notebook)] < overrides

``quick`` is complete (every knob has its value there); the other profiles list what they change.
:func:`settings` merges the layers, checks every value (unknown name, wrong type, out of range: a
``ValueError`` naming the knob, what it expects and what it got, before any work), derives what follows
from the knobs (``eps`` from the dataset when not set, the training attack's step ``alpha``) and returns a
frozen :class:`Settings`. Notebooks receive only ``profile``, ``dataset`` and ``overrides`` from papermill.

Usage::

    cfg = settings("quick", "fmnist", "02", {"eps": 0.2})
    cfg.eps, cfg.alpha, cfg.train_args      # 0.2, 0.1666..., {...}
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import numbers
from typing import Any

from nslib import data as data_mod, models as models_mod
from nslib.repro.cache import MODELS
from nslib.training import ATTACK_DEFAULTS

__all__ = ["PROFILES", "NOTEBOOKS", "EXPECTED_S", "Settings", "settings", "parse_overrides", "check_datasets",
           "profile_datasets", "auto_profile", "expected_seconds"]

NOTEBOOKS = ("00", "01", "02", "03", "04", "05", "06")

# Expected ranges of the checked notebook cells: loose enough to hold on any CPU and seed, tight enough to catch
# a broken run (a model at chance, an attack that does nothing). Quick values come from runs of 2,000 images x
# 2 epochs (PGD-AT ~0.5 clean / ~0.3 PGD; TRADES ~0.6 / ~0.45; the vanilla model, 8 epochs, ~0.8 clean /
# ~0.13 under PGD-20 at eps 0.1: not fully trained, not 0).
_QUICK_RANGES = {"train_ranges": {"vanilla_clean": (0.45, 0.95), "robust_clean": (0.25, 0.90), "robust_pgd": (0.10, 0.75)},
                 "eval_ranges": {"clean": (0.25, 0.90), "aa": (0.03, 0.70), "vanilla_pgd": (0.0, 0.3)}}
_CPU_RANGES = {"train_ranges": {"vanilla_clean": (0.80, 1.0), "robust_clean": (0.60, 0.95), "robust_pgd": (0.40, 0.90)},
               "eval_ranges": {"clean": (0.60, 0.95), "aa": (0.30, 0.90), "vanilla_pgd": (0.0, 0.2)}}
_FULL_RANGES = {"train_ranges": {"vanilla_clean": (0.85, 1.0), "robust_clean": (0.70, 1.0), "robust_pgd": (0.40, 0.98)},
                "eval_ranges": {"clean": (0.70, 1.0), "aa": (0.30, 0.98), "vanilla_pgd": (0.0, 0.05)}}

PROFILES: dict[str, dict] = {
    # CPU, minutes: checks the machinery (what CI and nbval run); one seed, so it decides nothing.
    "quick": {
        "datasets": ("fmnist",),
        "all": {
            # the models (01-05)
            "arch": "smallcnn",          # "smallcnn" (28x28), "vgg16" or "resnet18"
            "seeds": [0],                # training seeds; verdicts need at least 2
            "eps": None,                 # Linf radius of training and evaluation (None: the dataset's, docs/PAPER.md)
            "epochs": 2,                 # passes over the n_train images (adversarial and SNS models)
            "vanilla_epochs": 8,         # passes for the vanilla model: about the compute of 2 adversarial epochs
            "n_train": 2000,             # training images (None: all left after the validation hold-out)
            "vanilla_n_train": None,     # the vanilla model's training images (None: n_train; "all": every image left)
            "batch_size": 32,            # images per SGD step
            "lr": 0.05,                  # peak learning rate (SGD, momentum 0.9, cosine schedule per step)
            "attack_steps": 3,           # PGD steps of the training attack (None: the dataset's default)
            "eps_warmup_epochs": 0,      # epochs over which the training eps ramps up linearly from 0
            "val_size": 500,             # validation images held out of the training data
            "val_n_adv": 200,            # validation images attacked after each epoch: picks the best checkpoint
            "val_attack_steps": 5,       # PGD steps of that validation attack
            "lam": 0.01,                 # SNS penalty weight lambda (dimensionless)
            "k": 0.1,                    # SNS top-k: fraction of each layer's neurons penalised ("sensitive")
            # 00: clean training goal
            "min_test_acc": 0.85,        # notebook 00's test-accuracy goal
            # E1 (02) and E4 (04)
            "n_pairs": 200,              # test images, the same for every model (paper: 1,000)
            "pair_steps": 20,            # PGD steps crafting each pair (random start, step 2.5 * eps / steps)
            "c1_eps_scales": [],         # C1 (02): PGD-AT also trained at these fractions of eps (graded robustness)
            # E2 (03)
            "e2_models": ["vanilla", "pgd_at"],  # models analysed
            "ks": [0.05, 0.1, 0.25],     # numbers of neurons patched, as fractions of each layer's neurons
            "k_eval": 0.1,               # the size at which C2 is judged (a value of ks)
            "selection_seeds": [0, 1, 2],  # seeds of the random and matched choices
            "modes": ["restore", "zero"],  # restore the neurons to their benign values, or set them to zero
            # E4 (04)
            "n_maps": 4,                 # images shown per figure
            "k_maps": 3,                 # most sensitive channels shown per figure
            "map_layer": None,           # layer drawn (None: the deepest default layer with maps of 8x8 or more)
            # E3 (05)
            "n_eval": 200,               # test images for clean, FGSM, PGD-20, MIM and transfer
            "n_long": 100,               # test images for the long PGD run
            "pgd_long_steps": 50,        # steps of the long PGD run (paper: 100)
            "mim_steps": 10,             # MIM iterations (step eps / steps, decay 1)
            "l2_n": 50,                  # test images for the L2 rows (FMN and PGD-L2, at radius 2 eps sqrt(pixels) / 10)
            "fmn_steps": 50,             # FMN-L2 steps (minimal norm; one gradient each; Pintor et al. 2021)
            "pgd_l2_steps": 20,          # PGD-L2 steps at that radius (the check that FMN is not weaker)
            "pgd_l2_restarts": 1,        # PGD-L2 random restarts (per-example worst case kept)
            "aa_n": 50,                  # test images for AutoAttack
            "aa_version": "custom",      # "standard" (APGD-CE, APGD-T, FAB-T, Square) or "custom" with aa_attacks
            "aa_attacks": ["apgd-ce", "apgd-dlr"],  # AutoAttack's attacks when aa_version is "custom"
            "aa_restarts": None,         # restarts of AutoAttack's APGD/FAB (None: its own: 5 in "custom", 1 in "standard")
            "lam_grid": [0.0, 0.01, 0.1],  # SNS (PGD-AT) lambda ablation, first seed (0 is PGD-AT itself)
            "k_grid": [0.1, 0.3],        # SNS (PGD-AT) top-k ablation, first seed
            "n_sanity": 50,              # test images for the eps sweep of the sanity checks
            "sanity_steps": 10,          # PGD steps of the eps sweep
            "eps_scales": [0.5, 1, 2, 4, 8],  # the sweep's radii as multiples of eps (capped at 1)
            "precision": "auto",         # training and pair attacks: "auto" (bf16 on CUDA and bf16-capable CPUs), "fp32", "bf16"
            **_QUICK_RANGES,
        },
        # 00's clean SmallCNN run: larger subset, larger batches, a few epochs
        "00": {"n_train": 20000, "epochs": 4, "batch_size": 64},
        ("mnist5k", "00"): {"n_train": None},  # the subset has 3,500 training images after the hold-out
    },
    # CPU, the main job without a GPU (`make reproduce` there): three seeds of every model on real
    # Fashion-MNIST, verdict numbers on 1,000 test images; minutes on two cores: EXPECTED_S.
    "cpu": {
        "datasets": ("fmnist",),
        # 12,000 images x 2 epochs, PGD-2 (alpha 1.25 eps); vanilla on all 58,000 x 3 epochs (10 epochs on 12,000:
        # 87.3%, 2 on 58,000: 87.6%); E1, E2, E4 on the paper's 1,000 pairs, E3's images (05 reuses 02's PGD-20
        # pairs; 400 pairs left C2's PGD-AT intervals overlapping)
        "all": {"seeds": [0, 1, 2], "batch_size": 128, "lr": 0.05, "epochs": 2, "vanilla_epochs": 3,
                "vanilla_n_train": "all",
                "n_train": 12000, "attack_steps": 2, "val_size": 2000, "val_n_adv": 500, "val_attack_steps": 5,
                "n_pairs": 1000, "n_eval": 1000, "n_long": 200, "pgd_long_steps": 50, "mim_steps": 10,
                "l2_n": 100, "fmn_steps": 50, "pgd_l2_steps": 20, "aa_n": 200, "aa_restarts": 1,
                "lam_grid": [0.0, 0.01, 0.1], "k_grid": [0.1], "n_sanity": 100, "n_maps": 8, **_CPU_RANGES,
                "c1_eps_scales": [0.5]},  # the robust four tie (58.6-59.7% PGD): C1 needs a level between
        "00": {"n_train": 20000, "epochs": 4, "batch_size": 64},
        # not measured: the subset's 3,500 training images, eps 0.3 (a stronger training attack, eps warm-up)
        "mnist5k": {"n_train": None, "val_size": 500, "epochs": 10, "vanilla_epochs": 20, "attack_steps": 10,
                    "eps_warmup_epochs": 3},
        ("mnist5k", "00"): {"n_train": None},
    },
    # GPU, paper scale: three seeds, AutoAttack on 1,000 images. Not yet measured on a GPU (estimate).
    "full": {
        "datasets": ("fmnist", "mnist5k"),
        "all": {"seeds": [0, 1, 2], "batch_size": 128, "lr": 0.05, "val_n_adv": 1000, "val_attack_steps": 10,
                "n_pairs": 1000, "ks": [0.02, 0.05, 0.1, 0.2, 0.5], "n_maps": 8, "n_eval": 2000, "n_long": 1000,
                "pgd_long_steps": 100, "mim_steps": 20, "l2_n": 500, "fmn_steps": 200, "pgd_l2_steps": 50,
                "pgd_l2_restarts": 3,
                "aa_n": 1000, "aa_version": "standard", "lam_grid": [0.0, 0.001, 0.01, 0.1, 1.0],
                "k_grid": [0.05, 0.1, 0.2], "n_sanity": 500, "sanity_steps": 20, "c1_eps_scales": [0.25, 0.5],
                **_FULL_RANGES},
        "00": {"n_train": None, "batch_size": 128},
        "fmnist": {"epochs": 10, "vanilla_epochs": 10, "n_train": None, "val_size": 5000, "attack_steps": 10,
                   "eps_warmup_epochs": 0},
        "mnist5k": {"epochs": 30, "vanilla_epochs": 30, "n_train": None, "val_size": 500, "attack_steps": 40,
                    "eps_warmup_epochs": 5},
        # online only (torchvision downloads): python -m nslib reproduce --profile full --datasets mnist,cifar10
        "mnist": {"epochs": 10, "vanilla_epochs": 10, "n_train": None, "val_size": 5000, "attack_steps": 40,
                  "eps_warmup_epochs": 2},
        "cifar10": {"arch": "resnet18", "epochs": 30, "vanilla_epochs": 30, "n_train": None, "val_size": 5000,
                    "attack_steps": 10, "eps_warmup_epochs": 0, "lr": 0.1, "n_eval": 1000},
        ("mnist5k", "05"): {"n_eval": 1000},  # the subset's whole test split
        # 00's clean SmallCNN run: 15 epochs on all 55,000 images reached 92.3% test accuracy (goal 91.5%)
        ("fmnist", "00"): {"epochs": 15, "min_test_acc": 0.915},
        ("mnist5k", "00"): {"min_test_acc": 0.95},
    },
}

# Wall seconds of each notebook on fmnist on a quiet 2-core CPU (AMD EPYC, AVX2, fp32): what `reproduce`
# announces before it starts and the weights of its whole-run progress bar. cpu: `make reproduce` from a clean
# clone at 662e98f, 2026-11-29 (2,581 s in all). quick: its measured total (7-8 min, the same day) split by estimate. A
# notebook or profile missing here counts DEFAULT_NOTEBOOK_S and the announcement says "unknown".
EXPECTED_S = {
    "quick": {"00": 70, "01": 150, "02": 40, "03": 60, "04": 15, "05": 90, "06": 10},
    "cpu": {"00": 98, "01": 1263, "02": 430, "03": 227, "04": 58, "05": 493, "06": 6},
}
DEFAULT_NOTEBOOK_S = 60


def auto_profile(cuda: bool | None = None) -> tuple[str, str]:
    """The profile for this machine and why: ``("full", ...)`` with a CUDA device, ``("cpu", ...)`` without.

    Usage: ``profile, why = auto_profile()  # ("cpu", "no CUDA device")``
    """
    if cuda is None:
        import torch
        cuda = torch.cuda.is_available()
    return ("full", "a CUDA device is present") if cuda else ("cpu", "no CUDA device")


def expected_seconds(profile: str, dataset: str, notebook: str | None) -> tuple[float, bool]:
    """``(seconds, measured)``: the expected wall time of one notebook run; ``measured`` is False when the
    value is the :data:`DEFAULT_NOTEBOOK_S` guess (a profile, dataset or notebook not in :data:`EXPECTED_S`)."""
    table = EXPECTED_S.get(profile, {})
    if dataset == "fmnist" and notebook in table:
        return float(table[notebook]), True
    return float(DEFAULT_NOTEBOOK_S), False


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


CHECKS = {
    "arch": _choice(models_mod.ARCHS), "seeds": _list(_int(0), "seeds (integers >= 0)", distinct=True),
    "eps": _real(0, 1, low_open=True, optional=True), "epochs": _int(1), "vanilla_epochs": _int(1),
    "n_train": _int(1, optional=True), "vanilla_n_train": _int(1, optional=True, word="all"),
    "batch_size": _int(1), "lr": _real(0, 10, low_open=True),
    "attack_steps": _int(1, optional=True), "eps_warmup_epochs": _int(0), "val_size": _int(1), "val_n_adv": _int(0),
    "val_attack_steps": _int(1), "lam": _real(0, 1e6), "k": _k, "min_test_acc": _real(0, 1),
    "n_pairs": _int(2), "pair_steps": _int(1),
    "c1_eps_scales": _list(_real(0, 1, low_open=True, high_open=True), "fractions of eps", distinct=True, empty=True),
    "e2_models": _list(_choice(tuple(MODELS)), "model names", distinct=True),
    "ks": _list(_k, "top-k sizes"), "k_eval": _k, "selection_seeds": _list(_int(0), "seeds", distinct=True),
    "modes": _list(_choice(("restore", "zero")), "modes", distinct=True), "n_maps": _int(1), "k_maps": _int(1),
    "map_layer": lambda name, v: v is None or isinstance(v, str) or _fail(name, "a dotted layer name or None", v),
    "n_eval": _int(1), "n_long": _int(1), "pgd_long_steps": _int(1), "mim_steps": _int(1),
    "l2_n": _int(1), "fmn_steps": _int(1), "pgd_l2_steps": _int(1), "pgd_l2_restarts": _int(1), "aa_n": _int(1),
    "aa_version": _choice(("standard", "custom")), "aa_attacks": _list(_choice(
        ("apgd-ce", "apgd-t", "apgd-dlr", "fab", "fab-t", "square")), "AutoAttack attack names", distinct=True),
    "lam_grid": _list(_real(0, 1e6), "lambda values"), "k_grid": _list(_k, "top-k sizes"), "n_sanity": _int(1),
    "sanity_steps": _int(1), "eps_scales": _list(_real(0, 1e3, low_open=True), "positive multiples of eps"),
    "train_ranges": _ranges, "eval_ranges": _ranges, "precision": _choice(("auto", "fp32", "bf16")),
    "aa_restarts": _int(1, optional=True),
}


@dataclasses.dataclass(frozen=True)
class Settings:
    """The frozen settings of one notebook run: every knob of :data:`PROFILES` (lists become tuples), plus
    ``profile``, ``dataset`` and ``notebook``. ``eps`` is resolved (the dataset's radius when not set)."""
    profile: str
    dataset: str
    notebook: str | None
    arch: str
    seeds: tuple
    eps: float
    epochs: int
    vanilla_epochs: int
    n_train: int | None
    vanilla_n_train: int | str | None
    batch_size: int
    lr: float
    attack_steps: int | None
    eps_warmup_epochs: int
    val_size: int
    val_n_adv: int
    val_attack_steps: int
    lam: float
    k: Any
    min_test_acc: float
    n_pairs: int
    pair_steps: int
    c1_eps_scales: tuple
    e2_models: tuple
    ks: tuple
    k_eval: Any
    selection_seeds: tuple
    modes: tuple
    n_maps: int
    k_maps: int
    map_layer: str | None
    n_eval: int
    n_long: int
    pgd_long_steps: int
    mim_steps: int
    l2_n: int
    fmn_steps: int
    pgd_l2_steps: int
    pgd_l2_restarts: int
    aa_n: int
    aa_version: str
    aa_attacks: tuple
    aa_restarts: int | None
    lam_grid: tuple
    k_grid: tuple
    n_sanity: int
    sanity_steps: int
    eps_scales: tuple
    train_ranges: dict
    eval_ranges: dict
    precision: str

    @property
    def alpha(self) -> float | None:
        """Step of the training attack: None (the dataset's default step) with the dataset's eps and steps;
        otherwise 2.5 * eps / steps, so that a short attack (or a larger eps) still reaches the ball's edge."""
        default = ATTACK_DEFAULTS.get(self.dataset, {})
        steps = self.attack_steps if self.attack_steps is not None else default.get("steps", 10)
        if self.eps == default.get("eps") and steps == default.get("steps"):
            return None
        return 2.5 * self.eps / steps

    @property
    def train_args(self) -> dict:
        """Keyword arguments of :func:`nslib.repro.cache.get_model` (and so of :func:`nslib.training.train`)."""
        args = dict(epochs=self.epochs, n_train=self.n_train, batch_size=self.batch_size, lr=self.lr,
                    attack_steps=self.attack_steps, alpha=self.alpha, eps_warmup_epochs=self.eps_warmup_epochs,
                    val_size=self.val_size, val_n_adv=self.val_n_adv, val_attack_steps=self.val_attack_steps,
                    lam=self.lam, k=self.k, precision=self.precision)
        if self.eps != ATTACK_DEFAULTS.get(self.dataset, {}).get("eps"):
            args["eps"] = self.eps  # the dataset's radius is train()'s own default: keep the cache key as it was
        return args

    @property
    def vanilla_args(self) -> dict:
        """What the vanilla model trains with instead of :attr:`train_args` (``vanilla`` of
        :func:`nslib.repro.cache.get_models`): its own epochs and, when ``vanilla_n_train`` is set, its own images."""
        out = {"epochs": self.vanilla_epochs}
        if self.vanilla_n_train is not None:
            out["n_train"] = None if self.vanilla_n_train == "all" else self.vanilla_n_train
        return out

    def as_dict(self) -> dict:
        """Every knob and the derived alpha, JSON-ready (recorded with each result)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out = {key: list(v) if isinstance(v, tuple) else v for key, v in out.items()}
        return {**out, "alpha": self.alpha}


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
    near = difflib.get_close_matches(name, CHECKS, n=3)
    hint = f"; did you mean {', '.join(near)}?" if near else f"; knobs: {', '.join(sorted(CHECKS))}"
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
        if name not in CHECKS:
            raise _unknown(name)
    quick, prof = PROFILES["quick"], PROFILES[profile]
    merged: dict = {}
    for layer in (quick["all"], quick.get(notebook, {}), quick.get(dataset, {}), quick.get((dataset, notebook), {}))\
            if profile == "quick" else (quick["all"], quick.get(notebook, {}), prof["all"], prof.get(notebook, {}),
                                        prof.get(dataset, {}), prof.get((dataset, notebook), {})):
        merged.update(layer)
    merged.update(overrides)
    for name, value in merged.items():
        CHECKS[name](name, value)
    if merged["k_eval"] not in merged["ks"]:
        raise ValueError(f"k_eval must be one of ks {list(merged['ks'])}, got {merged['k_eval']!r}")
    left = data_mod.DATASETS[dataset].train_size - merged["val_size"]  # training images after the hold-out
    for name, value, limit in (("val_size", merged["val_size"], left + merged["val_size"] - 1),
                               ("n_train", merged["n_train"], left), ("vanilla_n_train", merged["vanilla_n_train"], left)):
        if isinstance(value, numbers.Integral) and value > limit:
            raise ValueError(f"{name} must be at most {limit} on {dataset} ({left + merged['val_size']} training images, "
                             f"{merged['val_size']} of them held out for validation), got {value}")
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
        if name not in CHECKS:
            raise _unknown(name)
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text  # a bare word: --set aa_version=standard
        out[name] = value
    return out
