"""Adversarial attacks of fixed radius: FGSM, PGD and MIM, and the helpers every attack shares.

The minimal-norm attacks are in :mod:`nslib.minnorm`; the AutoAttack wrapper in :mod:`nslib.evaluate`.

Every attack is a plain function ``attack(model, x, y, *, eps, ...) -> x_adv`` over a batch on the model's
device. The contracts (DESIGN.md), kept by every function here:

- ``x`` is never modified; the model runs in eval mode during the attack (batch norm uses its running
  statistics, dropout is off) and every module's train/eval flag is restored afterwards, also when the
  attack raises; parameters' ``.grad`` are untouched (gradients are taken with respect to the input only,
  with ``torch.autograd.grad``);
- the output lies in [0, 1] and, for the fixed-radius attacks, in the eps-ball around ``x``, exactly:
  ``(x_adv - x).abs().amax() <= eps`` (linf) and ``(x_adv - x).flatten(1).norm(dim=1) <= eps`` (l2) hold
  when evaluated in float64 (the bounds are nudged by one ulp where rounding would cross them);
- inputs are checked once per call (:mod:`nslib.checks`), the model's output on the first forward pass
  of the attack (no extra pass): values outside [0, 1], a batch that is not 4-D,
  labels of the wrong shape or range, ``eps < 0``, a model that returns a tuple, a dict or probabilities
  are errors that say what was received;
- ``amp=True`` computes the forward and backward passes in bf16 autocast (on CUDA, or on the CPU: fast
  only where the CPU has bf16 hardware, :func:`nslib.fast.cpu_has_bf16`; ``nslib.fast.autocast_dtype("auto",
  device)`` says whether to ask for it); the loss, the updates and the projection stay in the input's
  dtype, and whether an example counts as adversarial (restarts, C&W's search) is always decided on an
  fp32 forward pass.

For speed on a GPU, pass a model prepared by :func:`nslib.fast.prepare` (batch norm folded into the
convolutions, channels_last, optionally compiled) and ``amp=True``.

Usage::

    x_adv = nslib.attacks.pgd(model, x, y, eps=0.1, steps=20)
"""
from __future__ import annotations

import contextlib
from itertools import chain

import torch
import torch.nn.functional as F
from torch import nn

from nslib.progress import bar
from nslib.checks import (check_choice, check_eps, check_images, check_labels, check_logits,
                          check_input_dtype, check_positive_int, model_device)
from nslib.fast import attack_batch
from nslib.models import eval_mode  # noqa: F401  (re-exported: attacks.eval_mode is public)

__all__ = ["fgsm", "pgd", "mim", "margin", "NORMS", "LOSSES", "pgd_pairs"]

NORMS = ("linf", "l2")
LOSSES = ("ce", "margin", "kl")
KL_START_STD = 0.001  # TRADES's inner maximisation starts at x + 0.001 * N(0, 1) (Zhang et al., 2019)


# ---------------------------------------------------------------------------------------------------------
# shared helpers

def _autocast(x: torch.Tensor, amp: bool):
    """bf16 autocast on the input's device (CUDA or CPU) when ``amp``; a no-op context otherwise."""
    if amp and x.device.type in ("cuda", "cpu"):
        return torch.autocast(x.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _check_model(model) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module returning logits, got {type(model).__name__}")


def _check_device(model: nn.Module, x: torch.Tensor) -> None:
    has_state = next(chain(model.parameters(), model.buffers()), None) is not None
    dev = model_device(model)
    if has_state and (dev.type != x.device.type or (dev.index or 0) != (x.device.index or 0)):
        raise ValueError(f"x is on {x.device} but the model is on {dev}; move them to the same device")


def _check_inputs(model, x: torch.Tensor, y, *, need_y: bool = True) -> None:
    """The checks that need no forward pass: the model's type and device, ``x``, and ``y``'s shape and dtype."""
    _check_model(model)
    check_images(x)
    _check_device(model, x)
    check_input_dtype(model, x)  # a float64 batch into a float32 model fails deep inside a layer otherwise
    if y is not None or need_y:
        if y is None:
            raise TypeError("y must be a tensor of class indices [N], got None")
        check_labels(y, x.shape[0])


def _check_output(logits, x: torch.Tensor, y) -> None:
    """The checks on the model's first output: logits [N, classes] (not a tuple, a dict or probabilities),
    and labels in [0, classes)."""
    check_logits(logits, x.shape[0])
    if y is not None:
        check_labels(y, x.shape[0], logits.shape[1])


def _clean_logits(model: nn.Module, x: torch.Tensor, y, *, need_y: bool = True) -> torch.Tensor:
    """Check ``x``, the model's output and ``y`` once; return the clean fp32 logits [N, classes].

    Runs one forward pass without gradients (the model must already be in eval mode).
    """
    _check_inputs(model, x, y, need_y=need_y)
    with torch.no_grad():
        logits = model(x)
    _check_output(logits, x, y)
    return logits.float()


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Best other-class logit minus the logit of class ``y``, per example (> 0: not classified as ``y``).

    Computed by masking class ``y`` with -inf (STYLE #8), right for negative logits too.
    Shapes: ``logits`` [N, classes], ``y`` [N] -> [N] in the logits' dtype.
    """
    true = logits.gather(1, y[:, None]).squeeze(1)  # [N]
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)  # [N]
    return other - true


def _below(value: float, dtype: torch.dtype, device) -> torch.Tensor:
    """The largest number of ``dtype`` that is <= ``value`` (a 0-d tensor)."""
    t = torch.tensor(value, dtype=dtype, device=device)
    if float(t) > value:
        t = torch.nextafter(t, torch.zeros_like(t))
    return t


def _linf_box(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-coordinate bounds (lo, hi) of the intersection of [0, 1] and the Linf ball of radius eps.

    ``x`` + eps is rounded; where the rounding would put a bound outside the ball, it moves one ulp inwards,
    so any value in [lo, hi] is within eps of x also in exact arithmetic.
    """
    # The radius is rounded on the host: a 0-d CPU tensor mixes with x on any device, and no GPU value
    # is read back (no synchronisation, so training loops can call this on every step).
    e = _below(eps, x.dtype, "cpu")
    lo = (x - e).clamp_(min=0)
    hi = (x + e).clamp_(max=1)
    wide = torch.float64  # exact differences of float32 (and narrower) values
    xw, ew = x.to(wide), e.to(wide)
    lo = torch.where(xw - lo.to(wide) > ew, torch.nextafter(lo, x), lo)
    hi = torch.where(hi.to(wide) - xw > ew, torch.nextafter(hi, x), hi)
    return lo, hi


def _l2_project(x: torch.Tensor, x_adv: torch.Tensor, eps: float) -> torch.Tensor:
    """Project ``x_adv`` onto the L2 ball of radius eps around ``x``, then clip to [0, 1]."""
    delta = x_adv - x
    norms = delta.flatten(1).norm(dim=1)  # [N]
    factor = (eps / norms.clamp_min(1e-12)).clamp(max=1.0)
    return (x + delta * factor.view(-1, 1, 1, 1)).clamp(0, 1)


def _l2_exact(x: torch.Tensor, x_adv: torch.Tensor, eps: float) -> torch.Tensor:
    """Shrink the rare outputs whose float64 L2 distance to ``x`` exceeds eps by rounding (once per call)."""
    shrink = 1.0 - 4 * torch.finfo(x.dtype).eps
    for _ in range(8):
        norms = (x_adv.double() - x.double()).flatten(1).norm(dim=1)  # [N]
        over = norms > eps
        if not bool(over.any()):
            return x_adv
        factor = (eps / norms.clamp_min(1e-300) * shrink).clamp(max=1.0).to(x.dtype).view(-1, 1, 1, 1)
        x_adv = torch.where(over.view(-1, 1, 1, 1), (x + (x_adv - x) * factor).clamp(0, 1), x_adv)
        shrink = 1.0 - 2 * (1.0 - shrink)
    return x  # unreachable in practice; the clean input is always inside the ball


def _restart_generator(device: torch.device, base: int, restart: int) -> torch.Generator:
    """Generator of restart ``restart``: a function of (base seed, restart) only, so restarts are nested."""
    g = torch.Generator(device=device)
    g.manual_seed((base * 1_000_003 + restart * 7_919 + 1) % (2 ** 63))
    return g


def _base_seed(seed) -> int:
    if seed is None:  # drawn from torch's global generator, so torch.manual_seed makes it reproducible
        return int(torch.randint(0, 2 ** 62, (1,)))
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
    return seed


def _input_grad(model, x_adv, objective, amp: bool, check=None) -> torch.Tensor:
    """Gradient of ``objective(logits_fp32)`` (summed over the batch) with respect to ``x_adv`` only.

    ``check(logits)``, when given, validates the model's output before the loss uses it (first step).
    """
    x_adv = x_adv.detach().requires_grad_(True)
    with torch.enable_grad():
        with _autocast(x_adv, amp):
            logits = model(x_adv)
        if check is not None:
            check(logits)
        obj = objective(logits.float())
        (grad,) = torch.autograd.grad(obj, x_adv)
    return grad


def _objective(loss: str, y, targeted: bool, p_clean):
    """The batch-summed quantity the attack ascends (a sum, so each example's gradient is its own)."""
    if loss == "kl":  # KL(p(x) || p(x')), as TRADES
        return lambda logits: F.kl_div(F.log_softmax(logits, 1), p_clean, reduction="sum")
    if loss == "ce":
        sign = -1.0 if targeted else 1.0
        return lambda logits: sign * F.cross_entropy(logits, y, reduction="sum")
    sign = -1.0 if targeted else 1.0  # margin: move the best other class above y (or the target above all)
    return lambda logits: (sign * margin(logits, y)).sum()


def _score(model, x_adv, y, loss: str, targeted: bool, p_clean) -> torch.Tensor:
    """How adversarial each example is, from an fp32 forward pass: higher is worse for the model.

    Margin (> 0 exactly when the attack succeeds) for labelled losses, KL(p(x) || p(x')) for "kl".
    """
    with torch.no_grad():
        logits = model(x_adv).float()
    if loss == "kl":
        return F.kl_div(F.log_softmax(logits, 1), p_clean, reduction="none").sum(1)
    m = margin(logits, y)
    return -m if targeted else m


# ---------------------------------------------------------------------------------------------------------
# FGSM, PGD, MIM


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, targeted: bool = False,
         amp: bool = False) -> torch.Tensor:
    r"""FGSM, 'Explaining and Harnessing Adversarial Examples' [https://arxiv.org/abs/1412.6572].

    One step of size eps along the sign of the cross-entropy's input gradient. Distance: Linf.

    Args:
        model (nn.Module): maps images in [0, 1] to logits; run in eval mode, mode restored.
        x (Tensor): clean images, never modified.
        y (Tensor): true labels, or the target labels when ``targeted``.
        eps (float): Linf radius, >= 0.
        targeted (bool): descend the cross-entropy toward ``y`` instead of ascending it.
        amp (bool): bf16 autocast for the forward/backward pass (CUDA or CPU; see the module docstring).

    Shapes:
        x: [N, C, H, W] in [0, 1]; y: [N] int64; output: like ``x``.

    Raises:
        ValueError, TypeError: bad input (see the module docstring).

    Usage: ``x_adv = fgsm(model, x, y, eps=0.1)``
    """
    eps = check_eps(eps)
    with eval_mode(model):
        _check_inputs(model, x, y)
        grad = _input_grad(model, x, _objective("ce", y, targeted, None), amp,
                           check=lambda logits: _check_output(logits, x, y))
        lo, hi = _linf_box(x, eps)
        return torch.min(torch.max(x + eps * grad.sign(), lo), hi)


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None, *, eps: float, alpha: float | None = None,
        steps: int = 10, norm: str = "linf", random_start: bool = True, restarts: int = 1, loss: str = "ce",
        targeted: bool = False, seed: int | None = None, amp: bool = False) -> torch.Tensor:
    r"""PGD, 'Towards Deep Learning Models Resistant to Adversarial Attacks' [https://arxiv.org/abs/1706.06083].

    Projected gradient ascent on a loss, in the Linf ball (signed steps) or the L2 ball (normalised
    steps), clipped to [0, 1]; the last iterate of each run is kept.

    Args:
        model (nn.Module): maps images in [0, 1] to logits; run in eval mode, mode restored.
        x (Tensor): clean images, never modified.
        y (Tensor or None): true labels (target labels when ``targeted``); ignored, and may be None,
            for ``loss="kl"``.
        eps (float): radius of the ball, >= 0.
        alpha (float or None): step size; None means 2.5 * eps / steps.
        steps (int): gradient steps per restart, >= 1.
        norm (str): "linf" or "l2".
        random_start (bool): start uniformly in the Linf ball (norm "linf"), at a random direction and
            radius in the L2 ball (norm "l2"), or, for ``loss="kl"``, at x + 0.001 * N(0, 1) as TRADES
            does: unclipped, like the reference, so the first forward pass may see values just outside
            [0, 1]; every step then projects onto the ball and [0, 1]. Without it the KL attack cannot
            move: its gradient at x' = x is zero.
        restarts (int): independent runs; each example keeps its worst case over the runs (highest
            margin, so a success is never lost; highest KL for "kl"). Restart r depends only on (seed, r):
            the first k restarts of a run with more are the run with ``restarts=k``.
        loss (str): "ce" (cross-entropy), "margin" (best other logit minus the true one, C&W's f6) or
            "kl" (KL(p(x) || p(x')), no labels; TRADES's inner maximisation).
        targeted (bool): move toward the classes in ``y`` (ce and margin only).
        seed (int or None): seeds the random starts; None draws one from torch's global generator.
        amp (bool): bf16 autocast for the forward/backward passes (CUDA or CPU; see the module docstring).

    Shapes:
        x: [N, C, H, W] in [0, 1]; y: [N] int64; output: like ``x``.

    Raises:
        ValueError, TypeError: bad input (see the module docstring), ``targeted`` with ``loss="kl"``,
            or no labels for ce/margin.

    Usage: ``x_adv = pgd(model, x, y, eps=8/255, steps=20, restarts=5, seed=0)``
    """
    eps = check_eps(eps)
    norm = check_choice(norm, "norm", NORMS)
    loss = check_choice(loss, "loss", LOSSES)
    steps = check_positive_int(steps, "steps")
    restarts = check_positive_int(restarts, "restarts")
    alpha = 2.5 * eps / steps if alpha is None else check_eps(alpha, "alpha")
    if loss == "kl" and targeted:
        raise ValueError("targeted=True needs labels; it is not defined for loss='kl'")
    base = _base_seed(seed)
    with eval_mode(model):
        p_clean = None
        if loss == "kl":  # the clean prediction is part of the loss
            p_clean = F.softmax(_clean_logits(model, x, y, need_y=False), 1)
            y = None
        else:  # the first step's output is checked before its loss is computed (no extra forward pass)
            _check_inputs(model, x, y)
        objective = _objective(loss, y, targeted, p_clean)
        lo_hi = _linf_box(x, eps) if norm == "linf" else None
        best = best_score = None
        for r in range(restarts):
            g = _restart_generator(x.device, base, r)
            check = (lambda logits: _check_output(logits, x, y)) if r == 0 and loss != "kl" else None
            x_adv = _pgd_run(model, x, objective, eps=eps, alpha=alpha, steps=steps, norm=norm, lo_hi=lo_hi,
                             start=("gauss" if loss == "kl" else norm) if random_start else None, gen=g, amp=amp,
                             check=check)
            if restarts == 1:
                best = x_adv
                break
            score = _score(model, x_adv, y, loss, targeted, p_clean)  # [N], fp32
            if best is None:
                best, best_score = x_adv, score
            else:
                better = score > best_score  # strict: ties keep the earlier restart (nesting)
                best = torch.where(better.view(-1, 1, 1, 1), x_adv, best)
                best_score = torch.where(better, score, best_score)
    return _l2_exact(x, best, eps) if norm == "l2" else best


def _pgd_run(model, x, objective, *, eps, alpha, steps, norm, lo_hi, start, gen, amp, check,
             noise=None) -> torch.Tensor:
    """One PGD run from a (random) start; returns the last iterate, inside the ball and [0, 1]. ``noise(kind)``
    (Linf and gauss starts) draws the start like x, "uniform" or "normal", in place of ``gen``."""
    n = x.shape[0]
    draw = noise or (lambda kind: (torch.rand if kind == "uniform" else torch.randn)(
        x.shape, generator=gen, device=x.device, dtype=x.dtype))
    if start == "gauss":  # TRADES's start, fed to the model as drawn: trades.py projects only after each step
        # (clipping it to [0, 1] changed about half of the final iterate's pixels)
        x_adv = x + KL_START_STD * draw("normal")
    else:
        x_adv = x
        if start == "linf":
            x_adv = x + (draw("uniform") * 2 - 1) * eps
        elif start == "l2":
            d = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)  # uniform direction
            r = torch.rand(n, generator=gen, device=x.device, dtype=x.dtype)  # radius as a share of eps
            x_adv = x + d / d.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1) * (r * eps).view(-1, 1, 1, 1)
        x_adv = _project(x, x_adv, eps, norm, lo_hi)
    for i in range(steps):
        grad = _input_grad(model, x_adv, objective, amp, check if i == 0 else None)  # like x
        if norm == "linf":
            x_adv = x_adv + alpha * grad.sign()
        else:
            gnorm = grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1) + 1e-10  # 1e-10 as torchattacks' PGDL2
            x_adv = x_adv + alpha * grad / gnorm
        x_adv = _project(x, x_adv, eps, norm, lo_hi)
    return x_adv


def _project(x, x_adv, eps, norm, lo_hi):
    if norm == "linf":
        lo, hi = lo_hi
        return torch.min(torch.max(x_adv, lo), hi)
    return _l2_project(x, x_adv, eps)


def _pgd_unchecked(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, alpha: float, steps: int,
                   loss: str = "ce", seed: int | None = None, amp: bool = False, noise=None) -> torch.Tensor:
    """Linf PGD with random start and one restart, without input checks or host synchronisation.

    For the library's own loops (adversarial training calls it on every step): :func:`pgd` checks its
    inputs and the model's output on every call, which reads values on the host and so synchronises a
    GPU. The caller guarantees what those checks would: x in [0, 1] on the model's device, valid labels,
    eps > 0, a model returning logits. Same iterates as ``pgd(model, x, y, eps=eps, alpha=alpha,
    steps=steps, loss=loss, seed=seed, amp=amp)`` (added for nslib.training); ``noise``: see _pgd_run.
    """
    base = 0 if noise is not None else _base_seed(seed)  # host-side draw from torch's global CPU generator
    with eval_mode(model):
        p_clean = None
        if loss == "kl":
            with torch.no_grad():
                p_clean = F.softmax(model(x).float(), 1)
        objective = _objective(loss, None if loss == "kl" else y, False, p_clean)
        return _pgd_run(model, x, objective, eps=eps, alpha=alpha, steps=steps, norm="linf", lo_hi=_linf_box(x, eps),
                        start="gauss" if loss == "kl" else "linf", gen=_restart_generator(x.device, base, 0),
                        amp=amp, check=None, noise=noise)


def mim(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, alpha: float | None = None,
        steps: int = 10, decay: float = 1.0, targeted: bool = False, amp: bool = False) -> torch.Tensor:
    r"""MIM (MI-FGSM), 'Boosting Adversarial Attacks with Momentum' [https://arxiv.org/abs/1710.06081].

    Signed steps along a momentum of L1-normalised cross-entropy gradients, projected onto the Linf ball
    and [0, 1]; starts at x (deterministic). Distance: Linf.

    Args:
        model (nn.Module): maps images in [0, 1] to logits; run in eval mode, mode restored.
        x (Tensor): clean images, never modified.
        y (Tensor): true labels, or the target labels when ``targeted``.
        eps (float): Linf radius, >= 0.
        alpha (float or None): step size; None means eps / steps.
        steps (int): iterations, >= 1.
        decay (float): momentum decay factor mu, >= 0.
        targeted (bool): descend the cross-entropy toward ``y``.
        amp (bool): bf16 autocast for the forward/backward passes (CUDA or CPU; see the module docstring).

    Shapes:
        x: [N, C, H, W] in [0, 1]; y: [N] int64; output: like ``x``.

    Raises:
        ValueError, TypeError: bad input (see the module docstring).

    Usage: ``x_adv = mim(model, x, y, eps=0.3, steps=20)``
    """
    eps = check_eps(eps)
    steps = check_positive_int(steps, "steps")
    alpha = eps / steps if alpha is None else check_eps(alpha, "alpha")
    decay = check_eps(decay, "decay")
    with eval_mode(model):
        _check_inputs(model, x, y)
        objective = _objective("ce", y, targeted, None)
        lo, hi = _linf_box(x, eps)
        momentum = torch.zeros_like(x)
        x_adv = x
        tiny = torch.finfo(x.dtype).tiny  # only guards an all-zero gradient (0 / 0)
        for i in range(steps):
            grad = _input_grad(model, x_adv, objective, amp, (lambda z: _check_output(z, x, y)) if i == 0 else None)
            grad = grad / grad.abs().mean(dim=(1, 2, 3), keepdim=True).clamp_min(tiny)
            momentum = grad + decay * momentum
            x_adv = torch.min(torch.max(x_adv + alpha * momentum.sign(), lo), hi)
    return x_adv


def pgd_pairs(model, x: torch.Tensor, y: torch.Tensor, *, eps: float, steps: int = 20, seed: int = 0,
              batch_size: int | None = None, amp: bool = False, progress: bool = False) -> torch.Tensor:
    """The reproduction's pairs, uncached: Linf PGD-``steps`` with random start (step 2.5 eps / steps) in
    batches of ``batch_size`` (None: 500 on a GPU, 128 on a CPU), the batch starting at image i seeded
    with ``seed + i``; x_adv like ``x``, on the CPU."""
    dev = next(model.parameters()).device
    batch_size = attack_batch(dev, batch_size)
    parts = []
    for i in bar(range(0, len(x), batch_size), desc=f"PGD-{steps} pairs", disable=not progress):
        xb, yb = x[i:i + batch_size].to(dev), y[i:i + batch_size].to(dev)
        parts.append(pgd(model, xb, yb, eps=eps, steps=steps, seed=seed + i, amp=amp).cpu())
    return torch.cat(parts)
