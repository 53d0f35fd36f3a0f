"""Training methods as data: each is a loss function and one row of :data:`METHODS`.

| method | loss on a batch (x, y) | trains against | paper |
|---|---|---|---|
| standard | CE(f(x), y) | - | |
| pgd_at | CE(f(x'), y) | PGD on the CE | Madry et al., 2018, arXiv:1706.06083 |
| trades | CE(f(x), y) + beta * KL(p(x) || p(x')) | PGD on the KL | Zhang et al., 2019, arXiv:1901.08573 |
| sns | base's loss + lam * sum_l mean_{top-k of l} sigma_batch | base's (CE) | Zhang, Liu et al., arXiv:1909.06978 |

:func:`nslib.training.train` reads a method only through its row: the attack it trains against, whether
it records hooked layers (which also turns on the collapse check), and ``params``, the
:class:`nslib.training.TrainConfig` fields that only this method reads (they, and only they, join the
shared fields in :func:`nslib.training.identity`).

Forward passes, the same in every built-in method:

- **Batch norm and the clean branch**: clean and adversarial examples go through the network in two
  separate forward passes in train mode, clean first, as in the TRADES reference code. Each pass
  normalises with its own batch statistics, and both update the running statistics. PGD-AT makes only
  the adversarial pass; SNS on PGD-AT adds the clean pass, which its penalty needs, so with ``lam=0``
  its loss (and, on a network without batch norm, its whole run) equals PGD-AT's.
- **Dropout** draws the same masks in the clean and the adversarial pass of a batch (the random state
  is replayed), so the SNS penalty and the TRADES KL measure the effect of the perturbation, not of two
  different dropout draws; the adversarial pass draws what it would draw alone.

A new method is one function and one row::

    def noisy_loss(net, x, y, x_adv, cfg, acts):
        logits = net(x)
        noisy = net((x + cfg.eps * torch.randn_like(x)).clamp(0, 1))
        return F.cross_entropy(logits.float(), y) + F.cross_entropy(noisy.float(), y), logits, None

    METHODS["noisy"] = Method(noisy_loss, params=("eps",))
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from nslib import checks, fast, models as models_mod
from nslib.sensitivity import channel_mean, batch_sensitivity, capture, resolve_k

__all__ = ["Method", "METHODS", "TrainConfig", "identity", "attack_of", "sns_terms", "sns_penalty"]

# TrainConfig fields that every method trained against an attack reads
ATTACK_PARAMS = ("eps", "alpha", "attack_steps", "eps_warmup_epochs", "val_n_adv", "val_attack_steps")


@dataclass(frozen=True)
class Method:
    """One training method.

    Args:
        loss: ``loss(net, x, y, x_adv, cfg, acts) -> (loss, logits, penalty or None)``: the fp32 scalar
            loss of one batch, run in train mode (under autocast where the precision is bf16); ``logits`` [N, classes] are
            what the training accuracy is read from; ``acts`` the recorded layer outputs when ``hooks``
            (else None); ``cfg`` the resolved :class:`nslib.training.TrainConfig`.
        attack: the PGD loss of the adversarial examples it trains against: "ce", "kl", or None (no
            attack; ``x_adv`` is None).
        hooks: records the outputs of ``cfg.layers`` (SNS); also turns on the collapse check.
        params: the TrainConfig fields this method alone reads.
        from_logits: ``from_logits(logits_clean, logits_adv, y, cfg) -> (loss, logits)``: the loss
            from the two passes' logits (either may be None when the method does not use it); lets a
            method that composes with a base (``uses_base``) reuse its own forward passes.
        uses_base: composes with the method named by ``cfg.base``: trains against the base's attack
            (``attack`` when the base has none) and reads the base's params too.
    """

    loss: Callable
    attack: str | None = None
    hooks: bool = False
    params: tuple[str, ...] = ()
    from_logits: Callable | None = None
    uses_base: bool = False


def attack_of(cfg) -> str | None:
    """The PGD loss ("ce", "kl") of the adversarial examples ``cfg``'s method trains against, or None."""
    method = METHODS[cfg.method]
    if method.uses_base:
        return METHODS[cfg.base].attack or method.attack
    return method.attack


def bases() -> tuple[str, ...]:
    """The methods a composing method (SNS) can use as its base."""
    return tuple(name for name, m in METHODS.items() if m.from_logits is not None and not m.uses_base)


# ----------------------------------------------------------------------------------------------
# standard, PGD-AT, TRADES

def _ce_clean(logits_clean, logits_adv, y, cfg):
    return F.cross_entropy(logits_clean.float(), y), logits_clean


def _ce_adv(logits_clean, logits_adv, y, cfg):
    return F.cross_entropy(logits_adv.float(), y), logits_adv


def _trades(logits_clean, logits_adv, y, cfg):
    # KL(p(x) || p(x')), batch mean, as the reference code; the clean side as log-probabilities (log_target): its
    # gradient through p(x) = 0 (a softmax that underflows on a confident model) is then 0, where the reference's
    # softmax target gives 0 * log 0 = NaN and the run diverges (seen fine-tuning a vanilla model with TRADES)
    kl = F.kl_div(F.log_softmax(logits_adv.float(), 1), F.log_softmax(logits_clean.float(), 1), reduction="batchmean",
                  log_target=True)
    return F.cross_entropy(logits_clean.float(), y) + cfg.beta * kl, logits_clean


def standard_loss(net, x, y, x_adv, cfg, acts):
    """CE on the clean batch."""
    return (*_ce_clean(net(x), None, y, cfg), None)


def pgd_at_loss(net, x, y, x_adv, cfg, acts):
    """CE on the adversarial batch (the adversarial pass only)."""
    return (*_ce_adv(None, net(x_adv), y, cfg), None)


def trades_loss(net, x, y, x_adv, cfg, acts):
    """CE on the clean batch + beta * KL between the clean and adversarial predictions."""
    logits_clean, logits_adv, _, _ = _paired_passes(net, x, x_adv)
    return (*_trades(logits_clean, logits_adv, y, cfg), None)


# ----------------------------------------------------------------------------------------------
# SNS

def resolve_method_k(k, width: int, layer: str) -> int:
    """k as :func:`nslib.sensitivity.top_k` reads it (int count, or float fraction), at least one neuron."""
    kk = resolve_k(k, width, layer)  # TypeError/ValueError naming k and the layer
    if kk < 1:
        raise ValueError(f"k must select at least one neuron (an int >= 1 or a fraction in (0, 1]), got {k!r}")
    return kk


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.float64 else t.float()


def _penalty(clean: dict, adv: dict, layers: list[str], k, relative: bool) -> torch.Tensor:
    """sum_l mean_{top-k of l} sigma_batch from the recorded outputs of both passes (keeps the graph)."""
    penalty = None
    for name in layers:
        a, b = _at_least_fp32(clean[name]), _at_least_fp32(adv[name])  # [N, C, ...]; fp32 under bf16 autocast
        sigma = batch_sensitivity(a, b)  # [C]: mean |diff| over positions, then over pairs
        if relative:
            # Ratio of means per neuron, as the sensitivity module's relative variant. The denominator
            # is floored at 1% of the layer's mean |clean output|: a neuron silent on this batch then
            # gives a large but finite value and gradient (the analysis marks it NaN instead). The
            # floor scales with the activations, so the ratio stays invariant to rescaling them.
            scale = channel_mean(a.abs())  # [C], in the layer's memory layout (see batch_sensitivity)
            sigma = sigma / torch.maximum(scale, 1e-2 * scale.mean().detach() + 1e-12)
        top = torch.topk(sigma.detach(), resolve_method_k(k, sigma.numel(), name)).indices  # re-selected per batch
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


def sns_loss(net, x, y, x_adv, cfg, acts):
    """The base method's loss from the two hooked passes + lam * the SNS penalty."""
    logits_clean, logits_adv, clean, adv = _paired_passes(net, x, x_adv, acts, cfg.layers)
    pen = _penalty(clean, adv, cfg.layers, cfg.k, cfg.relative)
    loss, logits = METHODS[cfg.base].from_logits(logits_clean, logits_adv, y, cfg)
    return loss + cfg.lam * pen, logits, pen


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


# ----------------------------------------------------------------------------------------------
# the table

METHODS: dict[str, Method] = {
    "standard": Method(standard_loss, from_logits=_ce_clean),
    "pgd_at": Method(pgd_at_loss, attack="ce", params=ATTACK_PARAMS, from_logits=_ce_adv),
    "trades": Method(trades_loss, attack="kl", params=ATTACK_PARAMS + ("beta",), from_logits=_trades),
    "sns": Method(sns_loss, attack="ce", hooks=True, uses_base=True,
                  params=ATTACK_PARAMS + ("base", "lam", "k", "layers", "relative")),
}


# ----------------------------------------------------------------------------------------------
# the configuration of a training run

SCHEDULES = ("cosine", "piecewise", "constant")
PRECISIONS = fast.PRECISIONS
# the fields that define a trained model for every method (identity adds the method's own params)
SHARED = ("method", "epochs", "batch_size", "lr", "momentum", "weight_decay", "schedule", "seed", "val_size",
          "n_train", "precision")

@dataclass(frozen=True)
class TrainConfig:
    """Every hyperparameter of :func:`train`, each default given here once; checked when built.

    Args:
        method: a key of :data:`METHODS` ("standard", "pgd_at", "trades", "sns").
        epochs, batch_size, lr (SGD, momentum, weight_decay), schedule: "cosine" (per step),
            "piecewise" (x0.1 at 50% and 75% of the run) or "constant".
        seed: seeds the initial RNG, the validation split, the data order and the attacks (the
            model's initial weights are the caller's: seed before building it).
        val_size: images held out (stratified) for validation; None: 5,000 (500 for mnist5k, 10% of
            tensors). n_train: train on a stratified subset of this size (quick runs); None: all.
        val_n_adv: validation images attacked each epoch (PGD with ``val_attack_steps`` steps at the
            full eps, random start, fp32).
        eps, alpha, attack_steps: the training attack (Linf PGD with random start); None: the
            dataset's ``ATTACK_DEFAULTS`` (PAPER.md), alpha 2.5 * eps / steps on tensors.
            eps_warmup_epochs: eps (and alpha with it) ramp up linearly, per step, over these first
            epochs.
        beta: TRADES trade-off (>= 0).
        base, lam, k, layers, relative: SNS: the base method whose loss it adds to, the penalty
            weight (>= 0), the top-k (int >= 1 or fraction in (0, 1], as ``sensitivity.top_k``),
            the hooked layers (None: ``default_layers(model)``) and the relative (scale-invariant)
            penalty. Sweep lam on a log grid from 0.001: large values of the absolute penalty
            collapse the network (see the module docstring).
        precision: "auto" (bf16 autocast on CUDA and on a CPU with bf16 hardware, fp32 elsewhere:
            :func:`nslib.fast.autocast_dtype`), "fp32" or "bf16". Validation and the verdict numbers
            are always fp32.
        channels_last: None: True on CUDA and CPU. compile: run the update passes through torch.compile
            (standard, PGD-AT, TRADES; SNS warns and runs its hooked passes eagerly).

    Raises: ValueError/TypeError naming the field, what was expected and what was received; only
    the fields the method reads are checked (:func:`identity`, plus channels_last and compile).
    Usage: ``cfg = TrainConfig(method="sns", lam=0.01); dataclasses.replace(cfg, lam=0.1)``
    """

    method: str = "standard"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    seed: int = 0
    val_size: int | None = None
    n_train: int | None = None
    val_n_adv: int = 1000
    eps: float | None = None
    alpha: float | None = None
    attack_steps: int | None = None
    eps_warmup_epochs: int = 0
    val_attack_steps: int = 10
    beta: float = 6.0
    base: str = "pgd_at"
    lam: float = 0.01
    k: int | float = 0.1
    layers: list[str] | None = None
    relative: bool = False
    precision: str = "auto"
    channels_last: bool | None = None
    compile: bool = False

    def __post_init__(self):
        checks.check_choice(self.method, "method", tuple(METHODS))
        if METHODS[self.method].uses_base:
            checks.check_choice(self.base, "base", bases())  # before its params are read
        for name in [*_identity_names(self), "channels_last", "compile"]:
            if name in ("method", "base"):  # checked above
                continue
            if name not in _FIELD_CHECKS:  # a new field is checked, or it is refused: never silently unchecked
                raise TypeError(f"TrainConfig field {name!r} has no check: add one to nslib.methods' field checks "
                                f"(check(value, name), as the others)")
            _FIELD_CHECKS[name](getattr(self, name), name)


def _identity_names(cfg: TrainConfig) -> list[str]:
    method = METHODS[cfg.method]
    names = list(SHARED) + list(method.params)
    if method.uses_base:
        names += [p for p in METHODS[cfg.base].params if p not in names]
    return names


def identity(cfg: TrainConfig) -> dict:
    """The fields that define a model trained with ``cfg``: the shared ones and the method's own params.

    SNS adds its base's params (TRADES: beta). A field outside it (lam for PGD-AT) cannot change the
    trained weights, so resuming and model caches key on this dict and nothing else.
    Usage: ``identity(TrainConfig(method="pgd_at"))`` has eps and attack_steps but no lam.
    """
    return {name: getattr(cfg, name) for name in _identity_names(cfg)}


def _optional(check):
    return lambda v, name: None if v is None else check(v, name)


def _check_layers(v, name):
    if v is not None and (isinstance(v, str) or not v):
        raise ValueError(f"{name} must be a non-empty list of dotted layer names, got {v!r}")


_FIELD_CHECKS = {  # field -> check(value, name): every field a method reads has one (TrainConfig refuses one without)
    "epochs": checks.check_positive_int, "batch_size": checks.check_positive_int,
    "val_attack_steps": checks.check_positive_int,
    "seed": partial(checks.check_positive_int, minimum=0),
    "eps_warmup_epochs": partial(checks.check_positive_int, minimum=0),
    "val_n_adv": partial(checks.check_positive_int, minimum=0),
    "val_size": _optional(checks.check_positive_int), "n_train": _optional(checks.check_positive_int),
    "attack_steps": _optional(checks.check_positive_int),
    "lr": checks.check_number, "momentum": checks.check_number, "weight_decay": checks.check_number,
    "beta": checks.check_number, "lam": checks.check_number, "alpha": _optional(checks.check_number),
    "eps": _optional(partial(checks.check_eps, allow_zero=False)),
    "schedule": partial(checks.check_choice, choices=SCHEDULES),
    "precision": partial(checks.check_choice, choices=PRECISIONS),
    "k": checks.check_k, "layers": _check_layers,
    "relative": checks.check_bool, "compile": checks.check_bool, "channels_last": _optional(checks.check_bool),
}


def make_config(config: TrainConfig | None, overrides: dict, **defaults) -> TrainConfig:
    """``config`` (or the defaults) with ``overrides`` replaced; unknown names are a TypeError."""
    names = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise TypeError(f"unknown training parameters {unknown}; the parameters are TrainConfig's fields: "
                        f"{', '.join(sorted(names))}")
    if config is None:
        return TrainConfig(**{**defaults, **overrides})
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig or None, got {type(config).__name__}")
    return replace(config, **overrides) if overrides else config
