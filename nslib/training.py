"""Training: standard, PGD-AT, TRADES and SNS, with checkpoints, resume and a JSON history.

One function, :func:`train`, runs every method; a method is a per-batch loss and one row of
:data:`METHODS` (:mod:`nslib.methods` has the table, the forward passes and how to add a method).
Every hyperparameter is a field of :class:`TrainConfig`; :func:`identity` names the ones that define
a trained model.

Design decisions, the same in every method:

- **Attacks** come from :mod:`nslib.attacks` (PGD through an unchecked entry point: its per-call input checks
  sync with the host; the data were checked once, up front), with the model in eval mode (batch norm's running
  statistics, no dropout), back in train mode for the update.
- **Data order** of epoch e is a permutation drawn from ``seed`` and e alone, and the global RNG state
  (dropout, attack random starts) is stored in every checkpoint, so a resumed run ends with exactly the
  weights of an uninterrupted one.
- **Validation**: a stratified hold-out (:func:`validation_split`; 5,000 images, 500 for mnist5k); each epoch
  records clean accuracy and, for adversarial methods, :func:`validation_pgd` (``val_pgd``). ``last.pt`` and
  ``best.pt`` are kept (best validation robust accuracy for adversarial methods, clean accuracy otherwise).
- **Collapse** (SNS, any method with hooks): shrinking activations to zero minimises the penalty. A run whose
  validation clean accuracy is within 5 points of chance, or more than half of whose hooked neurons are dead
  (zero on 256 validation images), stops with ``status="collapsed"``: a failure, never a result (no ``best``).
- **Speed on CUDA**: bf16 autocast, channels_last, data on the device, no host sync inside the step loop
  (losses are read once per epoch); ``compile=True`` compiles the update passes (not the attack, nor SNS's
  two passes, whose hooks' side effects a compiled graph does not replay). A CPU with bf16 hardware
  (AVX512-BF16, AMX): the same bf16 and channels_last; other CPUs fp32 (emulated bf16 is slower).

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
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from nslib import attacks, checks, data as data_mod, distributed, fast, models as models_mod, streams
from nslib.evaluate import robust_accuracy
from nslib.progress import bar  # tqdm that also tells the reproduce terminal
from nslib.sensitivity import capture
from nslib.checkpoints import (DIVERGED_LOSS, STOPPED, Mismatch, diverged, stop_diverged, write_checkpoints,
                               load_checkpoint, read_history)
from nslib.store import remove_orphan_temps
from nslib.methods import (METHODS, Method, TrainConfig, attack_of, identity, make_config, resolve_method_k,
                           sns_penalty, sns_terms)

__all__ = ["train", "TrainConfig", "identity", "training_loss", "sns_penalty", "sns_terms", "load_checkpoint",
           "read_history", "evaluate_accuracy", "validation_pgd", "validation_split", "with_attack_defaults",
           "attack_settings", "ATTACK_DEFAULTS", "VAL_SIZES"]

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


def training_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor | None = None,
                  config: TrainConfig | None = None, *, _acts=None, **overrides):
    """The loss :func:`train` minimises on one batch, given its adversarial examples.

    Args:
        model: the network, run in its current mode (train mode in :func:`train`).
        x, y: the clean batch and its labels. x_adv: its adversarial examples (PGD with CE for
            PGD-AT and SNS on PGD-AT or standard, PGD on the KL for TRADES); ignored by "standard".
        config, overrides: a :class:`TrainConfig` and/or its fields as keywords (method, base, beta,
            lam, k, layers, relative); without a config the method defaults to "pgd_at".

    Returns: ``(loss, logits, penalty)``: the fp32 scalar loss; the logits the training accuracy is
    read from (adversarial for PGD-AT, clean otherwise); the SNS penalty (None for other methods).
    No input checks on the tensors (the training loop checked its data once).

    Shapes: x, x_adv [N, C, H, W] in [0, 1]; y [N] int64; logits [N, classes].
    Usage: ``loss, _, _ = training_loss(model, x, y, pgd(model, x, y, eps=0.1), method="pgd_at")``
    """
    cfg = make_config(config, overrides, method="pgd_at")
    method = METHODS[cfg.method]
    if not method.hooks or _acts is not None:  # _acts: the training loop's hooks, registered once per epoch
        return method.loss(model, x, y, x_adv, cfg, _acts)
    layers = list(cfg.layers) if cfg.layers is not None else models_mod.default_layers(model)
    with capture(model, layers, detach=False) as acts:
        return method.loss(model, x, y, x_adv, replace(cfg, layers=layers), acts)


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


def validation_pgd(model, x, y, eps, steps, batch_size=500) -> float:
    """The validation robust accuracy :func:`train` records each epoch: :func:`nslib.evaluate.robust_accuracy`
    under PGD-``steps`` at ``eps`` (seed 0)."""
    attack = partial(attacks.pgd, eps=eps, steps=steps, seed=0)
    return robust_accuracy(model, x, y, attack, batch_size=batch_size).robust_accuracy


@torch.no_grad()
def _dead_fraction(model, x, layers) -> float:
    """Share of hooked neurons whose output is zero on every example of ``x`` (eval mode)."""
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
# train: the steps

def _lr_at(schedule: str, lr: float, progress: float) -> float:
    """Learning rate at ``progress`` in [0, 1] of the whole run."""
    if schedule == "cosine":
        return lr * 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "piecewise":  # x0.1 at half and at three quarters of the run (Madry-style)
        return lr * (0.1 ** ((progress >= 0.5) + (progress >= 0.75)))
    return lr


def _check_data_arg(data) -> None:
    if not isinstance(data, str) and not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise TypeError(f"data must be a dataset name ({', '.join(data_mod.DATASETS)}) or a tuple (x, y), "
                        f"got {type(data).__name__}")
    if isinstance(data, str) and data not in data_mod.DATASETS:
        raise ValueError(f"data must be one of {', '.join(data_mod.DATASETS)} or a tuple (x, y), got {data!r}")


DEFAULT_ATTACK_STEPS = 10  # a dataset without ATTACK_DEFAULTS trains against PGD-10


def attack_settings(dataset: str | None, eps=None, steps=None, alpha=None) -> tuple:
    """``(eps, steps, alpha)`` of the training attack: each one given, else the dataset's ``ATTACK_DEFAULTS``
    (steps :data:`DEFAULT_ATTACK_STEPS` and alpha :func:`nslib.attacks.pgd_step` where it has none; eps stays None
    without a dataset). The one place the training attack's defaults are resolved."""
    defaults = ATTACK_DEFAULTS.get(dataset, {})
    eps = defaults.get("eps") if eps is None else eps
    steps = defaults.get("steps", DEFAULT_ATTACK_STEPS) if steps is None else steps
    if alpha is None and isinstance(eps, numbers.Real) and isinstance(steps, numbers.Integral) and steps > 0:
        alpha = defaults.get("alpha", attacks.pgd_step(eps, steps))
    return eps, steps, alpha


def with_attack_defaults(cfg: TrainConfig, dataset: str | None) -> TrainConfig:
    """eps, attack_steps and alpha filled by :func:`attack_settings` where None."""
    eps, steps, alpha = attack_settings(dataset, cfg.eps, cfg.attack_steps, cfg.alpha)
    if eps is None and "eps" in identity(cfg):
        raise ValueError(f"eps must be given for method {cfg.method!r} on tensors (no dataset default)")
    return replace(cfg, eps=eps, alpha=alpha, attack_steps=steps)


def _load_data(data):
    """(x, y, dataset name or None), the images and the labels' shape checked once."""
    x, y = data_mod.load(data, "train") if isinstance(data, str) else data
    streams.check_images(x, "data x")  # a tensor, or a streamed folder (its first images)
    checks.check_labels(y, len(x), None, "data y")
    return x, y, data if isinstance(data, str) else None


def validation_split(y: torch.Tensor, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(keep, hold)``: indices into the training labels ``y`` of the images :func:`train` keeps and of the
    ``val_size`` it holds out for validation (stratified, seeded by the run's ``seed``)."""
    if val_size >= len(y):
        raise ValueError(f"val_size must be smaller than the {len(y)} training images, got {val_size}")
    return data_mod.stratified_split(y, val_size, seed=seed)


def _split(x, y, name, val_size, n_train, seed):
    """(x_train, y_train, x_val, y_val): a stratified validation hold-out, then a stratified subset."""
    if val_size is None:
        val_size = VAL_SIZES.get(name, 5000) if name is not None else max(1, len(x) // 10)
    keep, hold = validation_split(y, val_size, seed)
    x_val, y_val = x[hold], y[hold]
    x, y = x[keep], y[keep]
    if n_train is not None:
        if not n_train <= len(x):
            raise ValueError(f"n_train must be an integer in [1, {len(x)}] (training data after the validation "
                             f"hold-out), got {n_train!r}")
        if n_train < len(x):
            _, sub = data_mod.stratified_split(y, n_train, seed=seed + 1)
            x, y = x[sub], y[sub]
    return x, y, x_val, y_val


@torch.no_grad()
def _probe(model: nn.Module, shape, layers: list[str], k) -> int:
    """The number of classes, from one eval-mode pass of 2 zero images, before any step.

    The model must return logits [N, classes]; the hooked layers must exist, be distinct and be at
    least k neurons wide.
    """
    hooks = capture(model, layers, detach=True) if layers else contextlib.nullcontext()
    with models_mod.eval_mode(model), hooks as acts:  # unknown or repeated layers: errors naming them
        out = model(torch.zeros((2,) + tuple(shape), device=checks.model_device(model)))
        checks.check_logits(out, 2, "model")
        for name in layers:
            resolve_method_k(k, acts[name].shape[1], name)
    return out.shape[1]


@dataclass
class _Run:
    """The state of one training run, shared by its steps."""

    model: nn.Module
    cfg: TrainConfig  # resolved: eps, n_train, val_size, layers, channels_last filled in
    params: dict  # what checkpoints store: the config, the dataset and the model's spec
    device: torch.device
    out: Path | None
    optimizer: torch.optim.Optimizer
    data: tuple  # x_train, y_train (on the device), x_val, y_val
    num_classes: int  # chance level for the collapse check
    attack: str | None
    amp: torch.dtype | None
    net: nn.Module | None = None  # the model, compiled when asked
    history: list = field(default_factory=list)
    best: dict | None = None
    status: str = "running"
    start_epoch: int = 0
    example_starts: bool = False  # attack starts drawn per example (distributed.example_noise), not per batch

    def result(self) -> dict:
        return {"status": self.status, "history": self.history, "best": self.best,
                "out_dir": str(self.out) if self.out is not None else None, "params": self.params}


def _channels_last_default(device: torch.device) -> bool:
    """channels_last where it is faster: on CUDA, and on a CPU in bf16 and in fp32 (a PGD-AT step on SmallCNN
    ran 1.06-1.18x faster in fp32 on an AVX2 EPYC, 5 alternating repeats in one process)."""
    return device.type in ("cuda", "cpu")


def _prepare(model, data, cfg: TrainConfig, out_dir, device) -> _Run:
    """Data loaded, checked and split; the model probed; model, data and optimizer on the device."""
    method = METHODS[cfg.method]
    x, y, name = _load_data(data)
    layers = list(cfg.layers) if cfg.layers is not None else (
        models_mod.default_layers(model) if method.hooks else [])
    classes = _probe(model, x.shape[1:], layers if method.hooks else [], cfg.k)
    checks.check_labels(y, len(x), classes, "data y", why=f"the model returns {classes} logits")
    x_tr, y_tr, x_val, y_val = _split(x, y, name, cfg.val_size, cfg.n_train, cfg.seed)
    x_val = streams.resident(x_val)  # a streamed folder's validation images are read once, into memory
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    amp = fast.autocast_dtype(cfg.precision, device)
    channels_last = _channels_last_default(device) if cfg.channels_last is None else cfg.channels_last
    cfg = replace(cfg, val_size=len(x_val), n_train=len(x_tr), layers=layers, channels_last=channels_last)
    params = {**asdict(cfg), "dataset": name, "spec": getattr(model, "nslib_spec", None)}
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    num_classes = max(int(y_tr.max()), int(y_val.max())) + 1
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    torch.manual_seed(cfg.seed)
    return _Run(model=model, cfg=cfg, params=params, device=device, optimizer=optimizer,
                out=Path(out_dir) if out_dir is not None else None,
                data=(x_tr.to(device), y_tr.to(device), x_val, y_val), num_classes=num_classes,
                attack=attack_of(cfg), amp=amp)


def _resume(run: _Run) -> None:
    """``last.pt``'s weights, optimizer, RNG, history; another :func:`identity` is refused, more epochs continue."""
    expect = {**identity(run.cfg), "dataset": run.params["dataset"], "spec": run.params["spec"]}
    del expect["epochs"]
    try:
        _, info = load_checkpoint(run.out / "last.pt", run.model, run.device, optimizer=run.optimizer, rng=True,
                                  expect=expect)
    except Mismatch as err:
        raise ValueError(f"{err}; use another out_dir, or resume=False to start over") from None
    stored = (info["params"] or {}).get("epochs", run.cfg.epochs)
    if run.cfg.epochs < stored:
        raise ValueError(f"epochs must be at least the {stored} of the run in {run.out}, got {run.cfg.epochs}")
    run.history, run.start_epoch, run.status, run.best = info["history"], info["epoch"], info["status"], info["best"]
    run.status = "running" if run.status == "done" and run.start_epoch < run.cfg.epochs else run.status


def _train_epoch(run: _Run, epoch: int, progress: bool) -> dict:
    """One pass over the training data: the epoch's record before validation."""
    cfg, method, model, device = run.cfg, METHODS[run.cfg.method], run.model, run.device
    x_tr, y_tr = run.data[:2]
    t0 = time.perf_counter()
    model.train()
    sum_loss, sum_pen = torch.zeros((), device=device), torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    seen, has_pen, eps_now = 0, False, cfg.eps
    n_batches = math.ceil(len(x_tr) / cfg.batch_size)
    augment = bool(run.params["dataset"] and data_mod.DATASETS[run.params["dataset"]].augment)
    # (x, index, share) of this rank: data_mod.batches' global batch split across the ranks (or a folder's)
    batch_iter = streams.epoch(x_tr, cfg.batch_size, seed=cfg.seed * 100_003 + epoch, augment=augment, device=device)
    autocast = fast.autocast(device, run.amp)
    # hooks (SNS) stay registered for the epoch (registered once, not per step)
    with capture(model, cfg.layers, detach=False) if method.hooks else contextlib.nullcontext() as acts:
        for i, (xb, ib, share) in enumerate(bar(batch_iter, total=n_batches, leave=False, desc=f"epoch {epoch + 1}",
                                                 disable=not (progress and distributed.is_main()))):
            yb = y_tr[ib]
            for group in run.optimizer.param_groups:
                group["lr"] = _lr_at(cfg.schedule, cfg.lr, (epoch * n_batches + i) / (cfg.epochs * n_batches))
            if cfg.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            x_adv = None
            if run.attack is not None:
                if cfg.eps_warmup_epochs > 0:
                    eps_now = cfg.eps * min(1.0, (epoch + (i + 1) / n_batches) / cfg.eps_warmup_epochs)
                # eval mode inside (and restored); no input checks, no host synchronisation
                x_adv = attacks.pgd_unchecked(model, xb, yb, eps=eps_now, alpha=cfg.alpha * eps_now / cfg.eps,
                                               steps=cfg.attack_steps, loss=run.attack, amp=run.amp is not None,
                                               noise=distributed.starts(xb, ib, cfg.seed, epoch, run.example_starts))
            model.train()
            with autocast:
                loss, logits, pen = method.loss(run.net, xb, yb, x_adv, cfg, acts)
            run.optimizer.zero_grad(set_to_none=True)
            (loss * share).backward()  # share: 1.0 alone; DDP averages ranks, so each mean is weighted by its size
            run.optimizer.step()
            sum_loss += loss.detach().float() * len(xb)
            if pen is not None:
                sum_pen += pen.detach().float() * len(xb)
                has_pen = True
            correct += (logits.detach().argmax(1) == yb).sum()
            seen += len(xb)
    sum_loss, sum_pen, correct, seen = distributed.all_sum([sum_loss.item(), sum_pen.item(), correct.item(), seen])
    record = {"epoch": epoch + 1, "lr": run.optimizer.param_groups[0]["lr"],
              "eps": eps_now if run.attack is not None else None, "train_loss": sum_loss / seen,
              "train_acc": int(correct) / seen, "train_s": time.perf_counter() - t0}
    if has_pen:
        record["penalty"] = sum_pen / seen
    return record


def _end_of_epoch(run: _Run, record: dict) -> None:
    """Validation, the collapse check, the best epoch and the checkpoints (the epoch's host syncs are here)."""
    cfg, model, (_, _, x_val, y_val) = run.cfg, run.model, run.data
    if diverged(run, record):
        stop_diverged(run, record)
        return
    t0 = time.perf_counter()
    model.eval()
    record["val_clean"] = distributed.sharded_mean(partial(evaluate_accuracy, model), x_val, y_val, 1000)
    if run.attack is not None:
        n_adv = min(cfg.val_n_adv, len(x_val))
        robust = partial(validation_pgd, model, eps=cfg.eps, steps=cfg.val_attack_steps)
        record["val_pgd"] = distributed.sharded_mean(robust, x_val[:n_adv], y_val[:n_adv], 500) if n_adv else None
    if METHODS[cfg.method].hooks:
        record["dead_fraction"] = _dead_fraction(model, x_val[:256].to(run.device), cfg.layers)
        if (record["val_clean"] < 1.0 / run.num_classes + COLLAPSE_CHANCE_MARGIN
                or record["dead_fraction"] > COLLAPSE_DEAD_FRACTION):
            run.status = "collapsed"
    record["time_s"] = record["train_s"] + time.perf_counter() - t0
    run.history.append(record)
    metric = record["val_pgd"] if record.get("val_pgd") is not None else record["val_clean"]
    is_best = run.status != "collapsed" and (run.best is None or metric > run.best["metric"])
    if is_best:
        run.best = {"epoch": record["epoch"], "metric": metric, "val_clean": record["val_clean"],
                    "val_pgd": record.get("val_pgd")}
    if run.status == "collapsed":
        run.best = None  # a collapsed run is a failure, never a result: no best checkpoint either
        if run.out is not None and distributed.is_main():
            (run.out / "best.pt").unlink(missing_ok=True)
    elif record["epoch"] == cfg.epochs:
        run.status = "done"
    if run.out is not None and distributed.is_main():  # rank 0 alone writes
        write_checkpoints(run, record, is_best)


# ----------------------------------------------------------------------------------------------
# train

def train(model: nn.Module, data, config: TrainConfig | None = None, *, out_dir: str | Path | None = None,
          resume: bool = True, device: str | torch.device | None = None, progress: bool = True,
          callback: Callable | None = None, example_starts: bool = False, **overrides) -> dict:
    """Train ``model`` in place with the method of ``config`` (a key of :data:`METHODS`).

    Args:
        model: a classifier taking [0, 1] images (``nslib.models.build`` or ``wrap``).
        data: a dataset name ("fmnist", "mnist5k", "mnist", "cifar10") or a tuple (x, y) of tensors
            (x float [N, C, H, W] in [0, 1], y int64 [N]).
        config: a :class:`TrainConfig` (None: its defaults). overrides: any of its fields as keywords
            (``method="pgd_at", epochs=10``), replacing the config's.
        out_dir: folder for ``last.pt``, ``best.pt`` and ``history.json`` (None: nothing written).
        resume: continue from ``out_dir/last.pt`` when it exists. A checkpoint whose :func:`identity`
            (or dataset, or model spec) differs is an error (nothing is overwritten).
        device: where to train (default CUDA when available); the model is moved there.
        progress: tqdm bars. callback: called as ``callback(epoch, record)`` after each epoch's
            checkpoint is written; an exception it raises stops training (used to test resume).
        example_starts: attack starts drawn per example, not per batch; always on under torchrun (DDP over
            the split global batch; :mod:`nslib.distributed`). False keeps the reproduction's numbers.

    Returns: ``{"status": "done"|"collapsed"|"diverged", "history": [per-epoch records], "best": record or None,
    "out_dir": str | None, "params": dict}``. Each record holds epoch, lr, eps, train_loss, train_acc,
    val_clean, val_pgd (adversarial methods: clean and attacked both correct), penalty and
    dead_fraction (SNS), train_s (the step loop) and time_s (the whole epoch). ``params`` is the
    resolved config with dataset and spec. The model holds the last weights, in eval mode.

    Raises: ValueError/TypeError naming the bad parameter, before any work starts (the checks that
    need the data or the model run right after loading the data and before the first step: images
    outside [0, 1], labels outside [0, classes) with classes the width of the model's output, a model
    that returns anything but logits [N, classes] (a tuple, a dict), an unknown layer name, a k above
    a layer's width). A run whose epoch loss is not finite or above :data:`DIVERGED_LOSS`, or whose weights
    are not finite, stops with status "diverged" (a RuntimeWarning names it) and keeps no best checkpoint.
    Usage: ``train(build("smallcnn", "fmnist"), "fmnist", method="sns", base="pgd_at", lam=0.01)``
    """
    cfg = make_config(config, overrides)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _check_data_arg(data)
    cfg = with_attack_defaults(cfg, data if isinstance(data, str) else None)
    distributed.check_batch(cfg.batch_size)
    run = _prepare(model, data, cfg, out_dir, device)
    if run.out is not None and distributed.is_main():
        remove_orphan_temps(run.out)  # a kill -9 inside a checkpoint write leaves one; this run owns the folder
    run.example_starts = bool(example_starts) or distributed.active()
    if run.out is not None and resume and (run.out / "last.pt").exists():
        _resume(run)
        if run.status in ("done", *STOPPED) or run.start_epoch >= cfg.epochs:
            model.eval()
            return run.result()
    hooks = METHODS[cfg.method].hooks
    if cfg.compile and hooks:
        warnings.warn(f"compile=True: the {cfg.method} passes run eagerly (compiled graphs do not replay the "
                      f"hooks that record the layers' outputs)", UserWarning, stacklevel=2)
    net = distributed.wrap_ddp(model, run.device)  # the model itself in one process
    run.net = torch.compile(net) if cfg.compile and not hooks else net
    epochs = bar(range(run.start_epoch, cfg.epochs), desc=f"{cfg.method} epochs", initial=run.start_epoch,
                 total=cfg.epochs, disable=not progress or not distributed.is_main())
    for epoch in epochs:
        record = _train_epoch(run, epoch, progress)
        _end_of_epoch(run, record)
        epochs.set_postfix({key: f"{record[key]:.3f}" for key in ("train_loss", "val_clean", "val_pgd")
                         if record.get(key) is not None})
        if callback is not None:
            callback(epoch + 1, record)
        if run.status in STOPPED:
            break
    model.eval()
    return run.result()
