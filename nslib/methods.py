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

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from nslib import checks, models as models_mod

__all__ = ["Method", "METHODS", "attack_of", "sns_terms", "sns_penalty"]

# TrainConfig fields that every method trained against an attack reads
ATTACK_PARAMS = ("eps", "alpha", "attack_steps", "eps_warmup_epochs", "val_n_adv", "val_attack_steps")


@dataclass(frozen=True)
class Method:
    """One training method.

    Args:
        loss: ``loss(net, x, y, x_adv, cfg, acts) -> (loss, logits, penalty or None)``: the fp32 scalar
            loss of one batch, run in train mode (under autocast on CUDA); ``logits`` [N, classes] are
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
    # KL(p(x) || p(x')), batch mean, as the reference code
    kl = F.kl_div(F.log_softmax(logits_adv.float(), 1), F.softmax(logits_clean.float(), 1), reduction="batchmean")
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


# ----------------------------------------------------------------------------------------------
# the table

METHODS: dict[str, Method] = {
    "standard": Method(standard_loss, from_logits=_ce_clean),
    "pgd_at": Method(pgd_at_loss, attack="ce", params=ATTACK_PARAMS, from_logits=_ce_adv),
    "trades": Method(trades_loss, attack="kl", params=ATTACK_PARAMS + ("beta",), from_logits=_trades),
    "sns": Method(sns_loss, attack="ce", hooks=True, uses_base=True,
                  params=ATTACK_PARAMS + ("base", "lam", "k", "layers", "relative")),
}
