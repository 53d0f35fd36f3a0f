"""Training: standard, PGD-AT, TRADES and SNS, with checkpoints, resume and a JSON history.

One function, :func:`train`, runs every method; the method only changes the per-batch loss
(:func:`training_loss`):

| method | loss on a batch (x, y) | paper |
|---|---|---|
| standard | CE(f(x), y) | |
| pgd_at | CE(f(x'), y), x' = PGD (CE, random start) | Madry et al., 2018, arXiv:1706.06083 |
| trades | CE(f(x), y) + beta * KL(p(x) || p(x')), x' = PGD on the KL | Zhang et al., 2019, arXiv:1901.08573 |
| sns | loss of ``base`` + lam * sum_l mean_{top-k of l} sigma_batch | Zhang, Liu et al., 2021, arXiv:1909.06978 |

Design decisions, the same in every method:

- **Attacks** come from :mod:`nslib.attacks` (its PGD, through an unchecked entry point that skips the
  per-call input checks, which synchronise with the host; the data were checked once, up front). The
  model is in eval mode while they run (batch norm uses its running statistics, dropout is off) and
  back in train mode for the update.
- **Batch norm and the clean branch**: clean and adversarial examples go through the network in two
  separate forward passes in train mode, clean first, as in the TRADES reference code. Each pass
  normalises with its own batch statistics, and both update the running statistics. PGD-AT makes only
  the adversarial pass; SNS on PGD-AT adds the clean pass, which its penalty needs, so with ``lam=0``
  its loss (and, on a network without batch norm, its whole run) equals PGD-AT's.
- **Dropout** draws the same masks in the clean and the adversarial pass of a batch (the random state
  is replayed), so the SNS penalty and the TRADES KL measure the effect of the perturbation, not of two
  different dropout draws; the adversarial pass draws what it would draw alone.
- **Data order** of epoch e is a permutation drawn from ``seed`` and e alone, and the global RNG state
  (dropout, attack random starts) is stored in every checkpoint, so a resumed run ends with exactly the
  weights of an uninterrupted one.
- **Validation**: a stratified split held out from the training data (5,000 images for fmnist/mnist/
  cifar10, 500 for mnist5k); each epoch records clean accuracy and, for adversarial methods, PGD
  accuracy on it. Two checkpoints are kept: ``last.pt`` and ``best.pt`` (best validation robust
  accuracy for adversarial methods, clean accuracy for standard training).
- **Collapse** (SNS only): the absolute penalty is minimised by shrinking activations to zero. After
  each epoch an SNS run whose validation clean accuracy is within 5 points of chance, or more than
  half of whose hooked neurons are dead (zero on every one of 256 validation images), is stopped and
  recorded with ``status="collapsed"``: it is a failure, never a result (``best`` is then None).
- **Speed on CUDA**: bf16 autocast, channels_last, data resident on the device, no host
  synchronisation inside the step loop (losses are accumulated on the device and read once per
  epoch); ``compile=True`` runs the update passes through torch.compile (not the attack, and not the
  two SNS passes: their hooks record activations as side effects, which a compiled graph does not
  replay, so SNS runs them eagerly and says so). On CPU everything runs in fp32.

Usage::

    model = nslib.models.build("smallcnn", "fmnist")
    result = nslib.training.train(model, "fmnist", method="pgd_at", epochs=10, out_dir="outputs/runs/at")
"""
from __future__ import annotations

import contextlib
import math
import numbers
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from nslib import checks, data as data_mod, models as models_mod
from nslib.store import load_json, provenance, save_json, save_torch

__all__ = ["train", "training_loss", "sns_penalty", "sns_terms", "load_checkpoint", "read_history",
           "evaluate_accuracy", "METHODS", "ATTACK_DEFAULTS", "VAL_SIZES"]

METHODS = ("standard", "pgd_at", "trades", "sns")
SNS_BASES = ("standard", "pgd_at", "trades")
SCHEDULES = ("cosine", "piecewise", "constant")
# Linf radius, PGD steps and step size used for training, per dataset (PAPER.md, "Attack settings").
ATTACK_DEFAULTS = {
    "mnist": {"eps": 0.3, "steps": 40, "alpha": 0.01},
    "mnist5k": {"eps": 0.3, "steps": 40, "alpha": 0.01},
    "fmnist": {"eps": 0.1, "steps": 10, "alpha": 0.02},
    "cifar10": {"eps": 8 / 255, "steps": 10, "alpha": 2 / 255},
}
VAL_SIZES = {"fmnist": 5000, "mnist": 5000, "cifar10": 5000, "mnist5k": 500}
COLLAPSE_DEAD_FRACTION = 0.5  # "most hooked neurons dead"
COLLAPSE_CHANCE_MARGIN = 0.05  # clean accuracy below chance + 5 points


# ----------------------------------------------------------------------------------------------
# SNS penalty

def _resolve_k(k, width: int, layer: str) -> int:
    """k as :func:`nslib.sensitivity.top_k` reads it (int count, or float fraction), at least one neuron."""
    from nslib.sensitivity import resolve_k

    kk = resolve_k(k, width, layer)  # TypeError/ValueError naming k and the layer
    if kk < 1:
        raise ValueError(f"k must select at least one neuron (an int >= 1 or a fraction in (0, 1]), got {k!r}")
    return kk


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.float64 else t.float()


def _penalty(clean: dict, adv: dict, layers: list[str], k, relative: bool) -> torch.Tensor:
    """sum_l mean_{top-k of l} sigma_batch from the recorded outputs of both passes (keeps the graph)."""
    from nslib.sensitivity import batch_sensitivity

    penalty = None
    for name in layers:
        a, b = _at_least_fp32(clean[name]), _at_least_fp32(adv[name])  # [N, C, ...]; fp32 under bf16 autocast
        sigma = batch_sensitivity(a, b)  # [C]: mean |diff| over positions, then over pairs
        if relative:
            # Ratio of means per neuron, as the sensitivity module's relative variant. The denominator
            # is floored at 1% of the layer's mean |clean output|: a neuron silent on this batch then
            # gives a large but finite value and gradient (the analysis marks it NaN instead). The
            # floor scales with the activations, so the ratio stays invariant to rescaling them.
            scale = a.abs().reshape(a.shape[0], a.shape[1], -1).mean(2).mean(0)  # [C]
            sigma = sigma / torch.maximum(scale, 1e-2 * scale.mean().detach() + 1e-12)
        top = torch.topk(sigma.detach(), _resolve_k(k, sigma.numel(), name)).indices  # re-selected per batch
        term = sigma[top].mean()
        penalty = term if penalty is None else penalty + term
    return penalty


def _rng_state(device: torch.device):
    # Host-side generator state (CUDA: seed and offset), read without synchronising the device.
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _set_rng_state(device: torch.device, state) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


def _paired_passes(net, x, x_adv, acts=None, layers=()):
    """Clean then adversarial forward pass with the same dropout masks; the layers' outputs of each."""
    device = x.device
    state = _rng_state(device)
    logits_clean = net(x)
    clean = {name: acts[name] for name in layers}
    _set_rng_state(device, state)  # the adversarial pass draws what it would draw alone
    logits_adv = net(x_adv)
    adv = {name: acts[name] for name in layers}
    return logits_clean, logits_adv, clean, adv


def sns_terms(model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, *, layers: list[str] | None = None,
              k: int | float = 0.1, relative: bool = False):
    """The SNS penalty with the logits of both forward passes: ``(penalty, logits_clean, logits_adv)``.

    Runs ``model`` on x and on x_adv (two passes, in the model's current mode, the same dropout masks
    in both), records the outputs of ``layers`` (default: :func:`nslib.models.default_layers`) and
    returns

        penalty = sum_l mean_{m in TopK_l} sigma_batch(F_l^m)

    where sigma_batch is the neuron sensitivity on this batch
    (:func:`nslib.sensitivity.batch_sensitivity`: a conv neuron is a channel, mean of |difference| over
    positions, then over the batch), differentiable through both branches, and TopK_l are the k most
    sensitive neurons of layer l chosen from the detached values (k an int, or a fraction of the
    layer's width, as :func:`nslib.sensitivity.top_k` reads it). ``relative=True`` divides each
    neuron's sigma by its mean |clean output| (floored at 1% of the layer's mean), which shrinking the
    activations cannot game. The logits let a training loop reuse the passes. No input checks (see
    :func:`sns_penalty`).

    Shapes: x, x_adv [N, C, H, W] in [0, 1]; penalty a 0-d fp32 tensor; logits [N, classes].
    """
    from nslib.sensitivity import capture

    layers = list(layers) if layers is not None else models_mod.default_layers(model)
    with capture(model, layers, detach=False) as acts:
        logits_clean, logits_adv, clean, adv = _paired_passes(model, x, x_adv, acts, layers)
    return _penalty(clean, adv, layers, k, relative), logits_clean, logits_adv


def sns_penalty(model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, *, layers: list[str] | None = None,
                k: int | float = 0.1, relative: bool = False) -> torch.Tensor:
    """The SNS penalty alone (see :func:`sns_terms`), a scalar to add to your own loss.

    Args:
        model: the network, in the mode you train it in (train mode: two passes with batch statistics).
        x, x_adv: clean and adversarial images [N, C, H, W] in [0, 1], same shape.
        layers: dotted layer names (default :func:`nslib.models.default_layers`).
        k: neurons per layer: an int count >= 1 or a fraction in (0, 1] of the layer's width.
        relative: the scale-invariant variant (sigma divided by the neuron's mean |clean output|).

    Raises: TypeError/ValueError for bad images, an unknown layer (nearest valid names listed) or a bad k.

    Usage::

        x_adv = nslib.attacks.pgd(model, x, y, eps=0.1)
        loss = F.cross_entropy(model(x_adv), y) + lam * sns_penalty(model, x, x_adv, k=0.1)
    """
    checks.check_images(x, "x")
    checks.check_images(x_adv, "x_adv")
    if x.shape != x_adv.shape:
        raise ValueError(f"x and x_adv must have the same shape, got {tuple(x.shape)} and {tuple(x_adv.shape)}")
    return sns_terms(model, x, x_adv, layers=layers, k=k, relative=relative)[0]


def training_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor | None = None, *,
                  method: str = "pgd_at", base: str = "pgd_at", beta: float = 6.0, lam: float = 0.01,
                  k: int | float = 0.1, layers: list[str] | None = None, relative: bool = False,
                  _acts=None):
    """The loss :func:`train` minimises on one batch, given its adversarial examples.

    Args:
        model: the network, run in its current mode (train mode in :func:`train`).
        x, y: the clean batch and its labels. x_adv: its adversarial examples (PGD with CE for
            PGD-AT and SNS on PGD-AT or standard, PGD on the KL for TRADES); ignored by "standard".
        method, base, beta, lam, k, layers, relative: as in :func:`train`.

    Returns: ``(loss, logits, penalty)``: the fp32 scalar loss; the logits the training accuracy is
    read from (adversarial for PGD-AT, clean otherwise); the SNS penalty (None for other methods).
    No input checks (the training loop checked its data once).

    Shapes: x, x_adv [N, C, H, W] in [0, 1]; y [N] int64; logits [N, classes].
    Usage: ``loss, _, _ = training_loss(model, x, y, pgd(model, x, y, eps=0.1), method="pgd_at")``
    """
    kind = base if method == "sns" else method
    if method == "standard":
        logits = model(x)
        return F.cross_entropy(logits.float(), y), logits, None
    pen = None
    if method == "sns":
        if _acts is None:
            pen, logits_c, logits_a = sns_terms(model, x, x_adv, layers=layers, k=k, relative=relative)
        else:  # the training loop's hooks, registered once per epoch
            logits_c, logits_a, clean, adv = _paired_passes(model, x, x_adv, _acts, layers)
            pen = _penalty(clean, adv, layers, k, relative)
    elif kind == "trades":
        logits_c, logits_a, _, _ = _paired_passes(model, x, x_adv)
    else:  # pgd_at: the adversarial pass only
        logits_c, logits_a = None, model(x_adv)
    if kind == "standard":
        loss, logits = F.cross_entropy(logits_c.float(), y), logits_c
    elif kind == "pgd_at":
        loss, logits = F.cross_entropy(logits_a.float(), y), logits_a
    else:  # trades: KL(p(x) || p(x')), batch mean, as the reference
        kl = F.kl_div(F.log_softmax(logits_a.float(), 1), F.softmax(logits_c.float(), 1), reduction="batchmean")
        loss, logits = F.cross_entropy(logits_c.float(), y) + beta * kl, logits_c
    if pen is not None:
        loss = loss + lam * pen
    return loss, logits, pen


# ----------------------------------------------------------------------------------------------
# evaluation helpers

@torch.no_grad()
def evaluate_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Clean accuracy of ``model`` in eval mode (its mode is restored), in fp32."""
    with models_mod.eval_mode(model):
        device = checks.model_device(model)
        correct = torch.zeros((), dtype=torch.long, device=device)
        for i in range(0, len(x), batch_size):
            xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
            correct += (model(xb).argmax(1) == yb).sum()
        return correct.item() / max(1, len(x))


def _robust_accuracy(model, x, y, eps, steps, batch_size=500) -> float:
    from nslib.attacks import pgd

    device = checks.model_device(model)
    correct = 0
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
        x_adv = pgd(model, xb, yb, eps=eps, steps=steps, seed=i)
        with torch.no_grad(), models_mod.eval_mode(model):
            correct += int((model(x_adv).argmax(1) == yb).sum())
    return correct / max(1, len(x))


@torch.no_grad()
def _dead_fraction(model, x, layers) -> float:
    """Share of hooked neurons whose output is zero on every example of ``x`` (eval mode)."""
    from nslib.sensitivity import capture

    with models_mod.eval_mode(model), capture(model, layers) as acts:
        model(x)
        dead = total = 0
        for name in layers:
            a = acts[name].abs().float()
            per = a.amax(dim=[0] + list(range(2, a.dim()))) if a.dim() > 2 else a.amax(0)
            dead += int((per == 0).sum())
            total += per.numel()
    return dead / max(1, total)


# ----------------------------------------------------------------------------------------------
# checkpoints

def load_checkpoint(path: str | Path, model: nn.Module | None = None, device: str | torch.device = "cpu"):
    """Load a checkpoint written by :func:`train`: ``(model, info)``.

    The model is rebuilt from the stored architecture and dataset (or the weights are loaded into
    ``model``); ``info`` tells what trained it: ``params`` (every argument of ``train``), ``epoch``,
    ``seed``, ``status``, ``history``, ``best``, ``metric`` (validation accuracies of this checkpoint) and
    ``provenance`` (nslib and torch versions, device, time).
    The model is returned in eval mode.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    ckpt = torch.load(path, map_location=device, weights_only=False)
    if model is None:
        spec = ckpt.get("spec")
        if not spec:
            raise ValueError(f"{path} holds weights of a model not built by nslib.models.build; "
                             f"pass model= to load them into")
        model = models_mod.build(spec["arch"], spec["dataset"])
    model.load_state_dict(ckpt["model"])
    model.to(device).eval()
    info = {key: ckpt.get(key) for key in ("params", "seed", "epoch", "status", "history", "best", "metric",
                                           "provenance", "spec")}
    return model, info


# ----------------------------------------------------------------------------------------------
# train

# ----------------------------------------------------------------------------------------------
# train

def _lr_at(schedule: str, lr: float, progress: float) -> float:
    """Learning rate at ``progress`` in [0, 1] of the whole run."""
    if schedule == "cosine":
        return lr * 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "piecewise":  # x0.1 at half and at three quarters of the run (Madry-style)
        return lr * (0.1 ** ((progress >= 0.5) + (progress >= 0.75)))
    return lr


def _resolve_data(data, val_size, n_train, seed):
    """(x_train, y_train, x_val, y_val, dataset name or None); checks the images and labels once."""
    if isinstance(data, str):
        name = data
        x, y = data_mod.load(name, "train")
        val_size = VAL_SIZES.get(name, 5000) if val_size is None else val_size
    else:
        name = None
        x, y = data
        val_size = max(1, len(x) // 10) if val_size is None else val_size
    checks.check_images(x, "data x")
    checks.check_labels(y, len(x), None, "data y")
    checks.check_positive_int(val_size, "val_size")
    if val_size >= len(x):
        raise ValueError(f"val_size must be smaller than the {len(x)} training images, got {val_size}")
    keep, hold = data_mod.stratified_split(y, val_size, seed=seed)
    x_val, y_val = x[hold], y[hold]
    x, y = x[keep], y[keep]
    if n_train is not None:
        if isinstance(n_train, bool) or not isinstance(n_train, numbers.Integral) or not 0 < n_train <= len(x):
            raise ValueError(f"n_train must be an integer in [1, {len(x)}] (training data after the validation "
                             f"hold-out), got {n_train!r}")
        if n_train < len(x):
            _, sub = data_mod.stratified_split(y, n_train, seed=seed + 1)
            x, y = x[sub], y[sub]
    return x, y, x_val, y_val, name


def _number(v, name: str, minimum: float = 0.0) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not v >= minimum or math.isinf(v):
        raise ValueError(f"{name} must be a finite number >= {minimum:g}, got {v!r}")
    return float(v)


def _check_scalars(p: dict) -> None:
    """Checks that need neither the data nor the model: run before anything is loaded."""
    checks.check_choice(p["method"], "method", METHODS)
    checks.check_choice(p["schedule"], "schedule", SCHEDULES)
    checks.check_positive_int(p["epochs"], "epochs")
    checks.check_positive_int(p["batch_size"], "batch_size")
    checks.check_choice(p["precision"], "precision", ("auto", "fp32", "bf16"))
    for key in ("lr", "momentum", "weight_decay"):
        _number(p[key], key)
    checks.check_positive_int(p["seed"], "seed", minimum=0)
    checks.check_positive_int(p["eps_warmup_epochs"], "eps_warmup_epochs", minimum=0)
    checks.check_positive_int(p["val_n_adv"], "val_n_adv", minimum=0)
    data = p["data"]
    if not isinstance(data, str) and not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise TypeError(f"data must be a dataset name ({', '.join(data_mod.DATASETS)}) or a tuple (x, y), "
                        f"got {type(data).__name__}")
    if isinstance(data, str) and data not in data_mod.DATASETS:
        raise ValueError(f"data must be one of {', '.join(data_mod.DATASETS)} or a tuple (x, y), got {data!r}")
    if p["method"] != "standard":
        if p["eps"] is None:
            raise ValueError("eps must be given for adversarial training on tensors (no dataset default)")
        checks.check_eps(p["eps"], "eps", allow_zero=False)
        checks.check_positive_int(p["attack_steps"], "attack_steps")
        checks.check_positive_int(p["val_attack_steps"], "val_attack_steps")
        _number(p["alpha"], "alpha")
    kind = p["base"] if p["method"] == "sns" else p["method"]
    if p["method"] == "sns":
        checks.check_choice(p["base"], "base", SNS_BASES)
        _number(p["lam"], "lam")
        k = p["k"]
        if isinstance(k, bool) or not isinstance(k, numbers.Real):
            raise TypeError(f"k must be an int (a count) or a float in (0, 1] (a fraction), got {type(k).__name__}")
        if isinstance(k, numbers.Integral) and k < 1:
            raise ValueError(f"k must select at least one neuron (an int >= 1 or a fraction in (0, 1]), got {k!r}")
        if not isinstance(k, numbers.Integral) and not 0.0 < k <= 1.0:
            raise ValueError(f"k as a fraction must be in (0, 1], got {k!r}")
        if p["layers"] is not None and (isinstance(p["layers"], str) or not p["layers"]):
            raise ValueError(f"layers must be a non-empty list of dotted layer names, got {p['layers']!r}")
    if kind == "trades":
        _number(p["beta"], "beta")


def _check_model_params(model: nn.Module, layers: list[str], k, shape) -> None:
    """SNS layers and k against the model: unknown names and k above a layer's width are errors."""
    for name in layers:
        models_mod.get_layer(model, name)  # unknown name: error listing the nearest valid ones
    if len(set(layers)) != len(layers):
        raise ValueError(f"layers must not repeat a layer, got {layers}")
    for name, width in _layer_widths(model, layers, shape).items():
        _resolve_k(k, width, name)


@torch.no_grad()
def _layer_widths(model, layers, shape) -> dict[str, int]:
    from nslib.sensitivity import capture

    device = checks.model_device(model)
    with models_mod.eval_mode(model), capture(model, layers, detach=True) as acts:
        model(torch.zeros((2,) + tuple(shape), device=device))
        return {name: acts[name].shape[1] for name in layers}


def train(model: nn.Module, data, *, method: str = "standard", epochs: int = 10, batch_size: int = 128,
          lr: float = 0.05, momentum: float = 0.9, weight_decay: float = 5e-4, schedule: str = "cosine",
          seed: int = 0, out_dir: str | Path | None = None, resume: bool = True,
          val_size: int | None = None, n_train: int | None = None, val_n_adv: int = 1000,
          eps: float | None = None, alpha: float | None = None, attack_steps: int | None = None,
          eps_warmup_epochs: int = 0, val_attack_steps: int = 10, beta: float = 6.0,
          base: str = "pgd_at", lam: float = 0.01, k: int | float = 0.1, layers: list[str] | None = None,
          relative: bool = False, precision: str = "auto", channels_last: bool | None = None,
          compile: bool = False, device: str | torch.device | None = None, progress: bool = True,
          callback: Callable | None = None) -> dict:
    """Train ``model`` in place with ``method`` ("standard", "pgd_at", "trades", "sns").

    Args:
        model: a classifier taking [0, 1] images (``nslib.models.build`` or ``wrap``).
        data: a dataset name ("fmnist", "mnist5k", "mnist", "cifar10") or a tuple (x, y) of tensors
            (x float [N, C, H, W] in [0, 1], y int64 [N]).
        epochs, batch_size, lr (SGD, momentum, weight_decay), schedule: "cosine" (per step),
            "piecewise" (x0.1 at 50% and 75% of the run) or "constant".
        seed: seeds the initial RNG, the validation split, the data order and the attacks (the
            model's initial weights are the caller's: seed before building it).
        out_dir: folder for ``last.pt``, ``best.pt`` and ``history.json`` (None: nothing written).
        resume: continue from ``out_dir/last.pt`` when it exists. A checkpoint made with other
            parameters is an error (nothing is overwritten).
        val_size: images held out (stratified) for validation; default 5,000 (500 for mnist5k, 10%
            of tensors). n_train: train on a stratified subset of this size (quick runs).
        val_n_adv: validation images attacked each epoch (PGD with ``val_attack_steps`` steps at the
            full eps, random start, fp32).
        eps, alpha, attack_steps: the training attack (Linf PGD with random start); defaults per
            dataset from ``ATTACK_DEFAULTS`` (PAPER.md), alpha 2.5 * eps / steps on tensors.
            eps_warmup_epochs: eps (and alpha with it) ramp up linearly, per step, over these first
            epochs.
        beta: TRADES trade-off.
        base, lam, k, layers, relative: SNS: the base method whose loss it adds to, the penalty
            weight (>= 0), the top-k (int >= 1 or fraction in (0, 1], as ``sensitivity.top_k``),
            the hooked layers (default ``default_layers(model)``) and the relative (scale-invariant)
            penalty. Sweep lam on a log grid from 0.001: large values of the absolute penalty
            collapse the network (see the module docstring).
        precision: "auto" (bf16 autocast on CUDA, fp32 on CPU), "fp32" or "bf16".
        channels_last: default True on CUDA. compile: run the update passes through torch.compile
            (standard, PGD-AT, TRADES; SNS warns and runs its hooked passes eagerly).
        device: where to train (default CUDA when available); the model is moved there.
        progress: tqdm bars. callback: called as ``callback(epoch, record)`` after each epoch's
            checkpoint is written; an exception it raises stops training (used to test resume).

    Returns: ``{"status": "done"|"collapsed", "history": [per-epoch records], "best": record or None,
    "out_dir": str | None, "params": dict}``. Each record holds epoch, lr, eps, train_loss, train_acc,
    val_clean, val_pgd (adversarial methods), penalty and dead_fraction (SNS), train_s (the step loop)
    and time_s (the whole epoch). The model holds the last weights, in eval mode.

    Raises: ValueError/TypeError naming the bad parameter, before any work starts (the checks that
    need the data or the model, such as values outside [0, 1], a layer name or a k above a layer's
    width, run right after loading the data and before the first step).
    Usage: ``train(build("smallcnn", "fmnist"), "fmnist", method="sns", base="pgd_at", lam=0.01)``
    """
    from tqdm.auto import tqdm

    from nslib import attacks
    from nslib.sensitivity import capture

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    dataset = data if isinstance(data, str) else None
    defaults = ATTACK_DEFAULTS.get(dataset, {})
    eps = defaults.get("eps") if eps is None else eps
    attack_steps = defaults.get("steps", 10) if attack_steps is None else attack_steps
    if alpha is None and isinstance(eps, numbers.Real) and isinstance(attack_steps, numbers.Integral) \
            and attack_steps > 0:
        alpha = defaults.get("alpha", 2.5 * eps / attack_steps)
    _check_scalars(dict(method=method, schedule=schedule, epochs=epochs, batch_size=batch_size,
                        precision=precision, lr=lr, momentum=momentum, weight_decay=weight_decay, seed=seed,
                        eps_warmup_epochs=eps_warmup_epochs, val_n_adv=val_n_adv, data=data, eps=eps,
                        attack_steps=attack_steps, val_attack_steps=val_attack_steps, alpha=alpha, base=base,
                        lam=lam, k=k, layers=layers, beta=beta))
    x_tr, y_tr, x_val, y_val, name = _resolve_data(data, val_size, n_train, seed)
    layers = list(layers) if layers is not None else (models_mod.default_layers(model) if method == "sns" else [])
    if method == "sns":
        _check_model_params(model, layers, k, x_tr.shape[1:])
    params = dict(method=method, epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum,
                  weight_decay=weight_decay, schedule=schedule, seed=seed, val_size=len(x_val),
                  n_train=len(x_tr), val_n_adv=val_n_adv, eps=eps, alpha=alpha, attack_steps=attack_steps,
                  eps_warmup_epochs=eps_warmup_epochs, val_attack_steps=val_attack_steps, beta=beta,
                  base=base, lam=lam, k=k, layers=layers, relative=relative, precision=precision,
                  dataset=name, spec=getattr(model, "nslib_spec", None))

    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    channels_last = device.type == "cuda" if channels_last is None else channels_last
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    x_tr, y_tr = x_tr.to(device), y_tr.to(device)  # resident for the whole run
    adversarial = method != "standard"
    kind = base if method == "sns" else method
    n_batches = math.ceil(len(x_tr) / batch_size)
    total_steps = epochs * n_batches
    num_classes = max(int(y_tr.max()), int(y_val.max())) + 1  # chance level for the collapse check

    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    torch.manual_seed(seed)
    history, start_epoch, best, status = [], 0, None, "running"
    out = Path(out_dir) if out_dir is not None else None
    if out is not None and resume and (out / "last.pt").exists():
        ckpt = torch.load(out / "last.pt", map_location=device, weights_only=False)
        diff = {key: (ckpt["params"].get(key), params[key]) for key in params
                if ckpt["params"].get(key) != params[key]}
        if diff:
            raise ValueError(f"{out / 'last.pt'} was trained with other parameters "
                             f"({', '.join(f'{key}: stored {a!r}, asked {b!r}' for key, (a, b) in diff.items())}); "
                             f"use another out_dir, or resume=False to start over")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["rng"]["cpu"])
        if device.type == "cuda" and ckpt["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"].cpu(), device)
        history, start_epoch, status = ckpt["history"], ckpt["epoch"], ckpt["status"]
        best = ckpt.get("best")
        if status in ("done", "collapsed") or start_epoch >= epochs:
            model.eval()
            return {"status": status, "history": history, "best": best, "out_dir": str(out), "params": params}

    if compile and method == "sns":
        warnings.warn("compile=True: the SNS passes run eagerly (compiled graphs do not replay the hooks that "
                      "record the layers' outputs)", UserWarning, stacklevel=2)
    net = torch.compile(model) if compile and method != "sns" else model
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()
    attack_loss = "kl" if kind == "trades" else "ce"

    epoch_bar = tqdm(range(start_epoch, epochs), desc=f"{method} epochs", disable=not progress,
                     initial=start_epoch, total=epochs)
    for epoch in epoch_bar:
        t0 = time.perf_counter()
        model.train()
        sum_loss = torch.zeros((), device=device)
        sum_pen = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        seen = 0
        eps_now = eps
        batch_iter = data_mod.batches(x_tr, y_tr, batch_size, shuffle=True, seed=seed * 100_003 + epoch,
                                      augment=bool(name and data_mod.DATASETS[name].augment))
        # SNS: the hooks stay registered for the epoch (registered once, not per step)
        hooks = capture(model, layers, detach=False) if method == "sns" else contextlib.nullcontext()
        with hooks as acts:
            for i, (xb, yb) in enumerate(tqdm(batch_iter, total=n_batches, leave=False, disable=not progress,
                                              desc=f"epoch {epoch + 1}")):
                step = epoch * n_batches + i
                for group in optimizer.param_groups:
                    group["lr"] = _lr_at(schedule, lr, step / total_steps)
                if channels_last:
                    xb = xb.contiguous(memory_format=torch.channels_last)
                x_adv = None
                if adversarial:
                    if eps_warmup_epochs > 0:
                        eps_now = eps * min(1.0, (epoch + (i + 1) / n_batches) / eps_warmup_epochs)
                    # eval mode inside (and restored); no input checks, no host synchronisation
                    x_adv = attacks._pgd_unchecked(model, xb, yb, eps=eps_now, alpha=alpha * eps_now / eps,
                                                   steps=attack_steps, loss=attack_loss, amp=use_bf16)
                model.train()
                with autocast:
                    loss, logits, pen = training_loss(net, xb, yb, x_adv, method=method, base=base, beta=beta,
                                                      lam=lam, k=k, layers=layers, relative=relative, _acts=acts)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                sum_loss += loss.detach().float() * len(xb)
                if pen is not None:
                    sum_pen += pen.detach().float() * len(xb)
                correct += (logits.detach().argmax(1) == yb).sum()
                seen += len(xb)
        # ---- end of epoch: validation, collapse check, checkpoint (host syncs happen only here)
        record = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"], "eps": eps_now if adversarial else None,
                  "train_loss": sum_loss.item() / seen, "train_acc": correct.item() / seen,
                  "train_s": time.perf_counter() - t0}
        model.eval()
        record["val_clean"] = evaluate_accuracy(model, x_val, y_val)
        if method == "sns":
            record["penalty"] = sum_pen.item() / seen
        if adversarial:
            n_adv = min(val_n_adv, len(x_val))
            record["val_pgd"] = (_robust_accuracy(model, x_val[:n_adv], y_val[:n_adv], eps, val_attack_steps)
                                 if n_adv else None)
        if method == "sns":
            record["dead_fraction"] = _dead_fraction(model, x_val[:256].to(device), layers)
            if (record["val_clean"] < 1.0 / num_classes + COLLAPSE_CHANCE_MARGIN
                    or record["dead_fraction"] > COLLAPSE_DEAD_FRACTION):
                status = "collapsed"
        record["time_s"] = time.perf_counter() - t0
        history.append(record)
        metric = record["val_pgd"] if adversarial and record.get("val_pgd") is not None else record["val_clean"]
        is_best = status != "collapsed" and (best is None or metric > best["metric"])
        if is_best:
            best = {"epoch": epoch + 1, "metric": metric, "val_clean": record["val_clean"],
                    "val_pgd": record.get("val_pgd")}
        if status == "collapsed":
            best = None  # a collapsed run is a failure, never a result: no best checkpoint either
            if out is not None:
                (out / "best.pt").unlink(missing_ok=True)
        elif epoch + 1 == epochs:
            status = "done"
        if out is not None:
            _write_checkpoints(out, model, optimizer, params, history, epoch + 1, status, best, record, is_best,
                               device)
        epoch_bar.set_postfix({key: f"{record[key]:.3f}" for key in ("train_loss", "val_clean", "val_pgd")
                               if record.get(key) is not None})
        if callback is not None:
            callback(epoch + 1, record)
        if status == "collapsed":
            break
    model.eval()
    return {"status": status, "history": history, "best": best, "out_dir": str(out) if out else None,
            "params": params}


def _write_checkpoints(out, model, optimizer, params, history, epoch, status, best, record, is_best, device):
    state = {key: v.detach().to("cpu", copy=True) for key, v in model.state_dict().items()}
    rng = {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}
    prov = provenance(device, **{key: v for key, v in params.items() if key != "spec"})
    metric = {"val_clean": record["val_clean"], "val_pgd": record.get("val_pgd")}
    ckpt = {"model": state, "optimizer": optimizer.state_dict(), "params": params, "spec": params["spec"],
            "seed": params["seed"], "epoch": epoch, "status": status, "history": history, "best": best,
            "rng": rng, "metric": metric, "provenance": prov}
    if is_best:  # best first: an interruption between the two writes leaves last.pt one epoch behind
        save_torch(out / "best.pt", {**ckpt, "optimizer": None})
    save_torch(out / "last.pt", ckpt)
    save_json(out / "history.json", {"provenance": prov, "status": status, "best": best, "history": history})


def read_history(out_dir: str | Path) -> dict:
    """The ``history.json`` of a run folder written by :func:`train`."""
    return load_json(Path(out_dir) / "history.json")
