"""Adversarial attacks of fixed radius: FGSM, PGD and MIM (the helpers they share: :mod:`nslib.attack_core`).

The minimal-norm attacks are in :mod:`nslib.minnorm`; the AutoAttack wrapper in :mod:`nslib.evaluate`.

Every attack is a plain function ``attack(model, x, y, *, eps, ...) -> x_adv`` over a batch on the model's
device. The contracts, kept by every function here (and tested in tests/test_attacks.py):

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

import torch
import torch.nn.functional as F
from torch import nn

from nslib.attack_core import (LOSSES, NORMS, ascend, base_seed, check_inputs, check_output, clean_logits,
                               input_grad, l2_exact, linf_box, make_objective, project, restart_generator, attack_score,
                               success, margin)
from nslib.checks import check_choice, check_eps, check_positive_int
from nslib.fast import attack_batch
from nslib.models import eval_mode  # noqa: F401  (re-exported: attacks.eval_mode is public)
from nslib.progress import bar

__all__ = ["fgsm", "pgd", "mim", "margin", "NORMS", "LOSSES", "pgd_pairs", "pgd_step", "PGD_STEP_SCALE"]

KL_START_STD = 0.001  # TRADES's inner maximisation starts at x + 0.001 * N(0, 1) (Zhang et al., 2019)
# PGD's default step, as a multiple of eps / steps: 2.5 reaches the ball's edge from anywhere within the steps, with
# room to move along it (Madry et al., 2018)
PGD_STEP_SCALE = 2.5


def pgd_step(eps: float, steps: int) -> float:
    """PGD's default step size for ``steps`` steps at radius ``eps``: ``PGD_STEP_SCALE * eps / steps`` (the kit's one
    place for it: attacks, training and the reproduction all read it here)."""
    return PGD_STEP_SCALE * eps / steps


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
        check_inputs(model, x, y)
        grad = input_grad(model, x, make_objective("ce", y, targeted, None), amp,
                           check=lambda logits: check_output(logits, x, y))
        lo, hi = linf_box(x, eps)
        return torch.min(torch.max(x + eps * grad.sign(), lo), hi)


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None, *, eps: float, alpha: float | None = None,
        steps: int = 10, norm: str = "linf", random_start: bool = True, restarts: int = 1, loss: str = "ce",
        targeted: bool = False, seed: int | None = None, amp: bool = False,
        early_stop: bool = False) -> torch.Tensor:
    r"""PGD, 'Towards Deep Learning Models Resistant to Adversarial Attacks' [https://arxiv.org/abs/1706.06083].

    Projected gradient ascent on a loss, in the Linf ball (signed steps) or the L2 ball (normalised
    steps), clipped to [0, 1]; the last iterate of each run is kept.

    Args:
        model (nn.Module): maps images in [0, 1] to logits; run in eval mode, mode restored.
        x (Tensor): clean images, never modified.
        y (Tensor or None): true labels (target labels when ``targeted``); ignored, and may be None,
            for ``loss="kl"``.
        eps (float): radius of the ball, >= 0.
        alpha (float or None): step size; None means :func:`pgd_step` (2.5 * eps / steps).
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
        early_stop (bool): for robust accuracy, where only whether each example can be broken matters:
            an example is returned at the first iterate found adversarial (misclassified; classified as
            its target when ``targeted``) and no longer attacked, and a restart attacks only the examples
            no earlier run broke. Robust accuracy is then never higher than without it (an example the
            full run ends on correctly may have been broken on the way) and costs less; the iterates of the
            examples not broken are unchanged. Not for ``loss="kl"`` (no labels to judge by) nor where
            the perturbations themselves are wanted (neuron sensitivity pairs: use the full run).

    Shapes:
        x: [N, C, H, W] in [0, 1]; y: [N] int64; output: like ``x``.

    Raises:
        ValueError, TypeError: bad input (see the module docstring), ``targeted`` with ``loss="kl"``,
            no labels for ce/margin, or ``early_stop`` with ``loss="kl"``.

    Usage: ``x_adv = pgd(model, x, y, eps=8/255, steps=20, restarts=5, seed=0)``
    """
    eps = check_eps(eps)
    norm = check_choice(norm, "norm", NORMS)
    loss = check_choice(loss, "loss", LOSSES)
    steps = check_positive_int(steps, "steps")
    restarts = check_positive_int(restarts, "restarts")
    alpha = pgd_step(eps, steps) if alpha is None else check_eps(alpha, "alpha")
    if loss == "kl" and targeted:
        raise ValueError("targeted=True needs labels; it is not defined for loss='kl'")
    if loss == "kl" and early_stop:
        raise ValueError("early_stop=True judges success by the labels; it is not defined for loss='kl'")
    base = base_seed(seed)
    with eval_mode(model):
        p_clean = None
        if loss == "kl":  # the clean prediction is part of the loss
            p_clean = F.softmax(clean_logits(model, x, y, need_y=False), 1)
            y = None
        else:  # the first step's output is checked before its loss is computed (no extra forward pass)
            check_inputs(model, x, y)
        objective = make_objective(loss, y, targeted, p_clean)
        lo_hi = linf_box(x, eps) if norm == "linf" else None
        stop = success(model, y, targeted, amp) if early_stop else None
        best = best_score = None
        for r in range(restarts):
            g = restart_generator(x.device, base, r)
            check = (lambda logits: check_output(logits, x, y)) if r == 0 and loss != "kl" else None
            start = ("gauss" if loss == "kl" else norm) if random_start else None
            if early_stop and best is not None:  # only what no earlier run broke; the others keep their example
                todo = (best_score <= 0).nonzero().flatten()
                if len(todo) == 0:
                    break
                x_adv = _pgd_run(model, x, objective, eps=eps, alpha=alpha, steps=steps, norm=norm, lo_hi=lo_hi,
                                 start=start, gen=g, amp=amp, check=None, stop=stop, rows=todo)
                x_adv = torch.where((best_score > 0).view(-1, 1, 1, 1), best, x_adv)
                score = best_score.clone()
                score[todo] = attack_score(model, x_adv[todo], y[todo], loss, targeted, p_clean)
            else:
                x_adv = _pgd_run(model, x, objective, eps=eps, alpha=alpha, steps=steps, norm=norm, lo_hi=lo_hi,
                                 start=start, gen=g, amp=amp, check=check, stop=stop)
                score = None
            if restarts == 1:
                best = x_adv
                break
            if score is None:
                score = attack_score(model, x_adv, y, loss, targeted, p_clean)  # [N], fp32
            if best is None:
                best, best_score = x_adv, score
            else:
                better = score > best_score  # strict: ties keep the earlier restart (nesting)
                best = torch.where(better.view(-1, 1, 1, 1), x_adv, best)
                best_score = torch.where(better, score, best_score)
    return l2_exact(x, best, eps) if norm == "l2" else best


def _pgd_run(model, x, objective, *, eps, alpha, steps, norm, lo_hi, start, gen, amp, check,
             noise=None, stop=None, rows=None) -> torch.Tensor:
    """One PGD run from a (random) start; returns the last iterate, inside the ball and [0, 1]. ``noise(kind)``
    (Linf and gauss starts) draws the start like x, "uniform" or "normal", in place of ``gen``. ``stop``
    (:func:`success`): early stopping, each example is returned at the first iterate found adversarial (read
    from the step's own forward pass) and leaves the batch; the others run on exactly as without it. ``rows``
    (with ``stop``): attack only these examples, from the starts the whole batch would draw (so that a restart
    on the examples still robust gives each the iterates it would have had); the others are returned at their
    start."""
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
        x_adv = project(x, x_adv, eps, norm, lo_hi)
    if stop is not None:
        return _pgd_run_stopping(model, x, x_adv, objective, eps=eps, alpha=alpha, steps=steps, norm=norm,
                                 lo_hi=lo_hi, amp=amp, check=check, stop=stop, rows=rows)
    for i in range(steps):
        grad = input_grad(model, x_adv, objective, amp, check if i == 0 else None)  # like x
        x_adv = project(x, ascend(x_adv, grad, alpha, norm), eps, norm, lo_hi)
    return x_adv


def _freeze_broken(out: torch.Tensor, idx: torch.Tensor, going: torch.Tensor, x_adv: torch.Tensor, *per_example):
    """Early stopping's step: the examples found adversarial (``~going``) are kept in ``out`` at the iterate
    ``x_adv`` where they were found; the attack goes on with the rest. Returns ``idx`` (their rows of ``out``),
    ``x_adv`` and each per-example tensor (gradient, momentum, box), cut to those still attacked."""
    out[idx[~going]] = x_adv[~going]
    return (idx[going], x_adv[going], *(t[going] for t in per_example))


def _pgd_run_stopping(model, x, x_adv, objective, *, eps, alpha, steps, norm, lo_hi, amp, check, stop, rows=None):
    """:func:`_pgd_run`'s steps with early stopping: the batch shrinks to the examples not yet adversarial, so
    an attack on a model that most examples break costs a fraction of the full run. Every example's iterates
    are those of the full run (each example's gradient is its own) until it is found adversarial; the last
    iterate of the others is not checked (the caller's evaluation reads it)."""
    out = x_adv.clone()
    idx = torch.arange(x.shape[0], device=x.device) if rows is None else rows  # the examples still attacked
    if rows is not None:
        x_adv = x_adv[rows]
    lo, hi = lo_hi if lo_hi is not None else (None, None)
    for i in range(steps):
        grad, logits = input_grad(model, x_adv, lambda z, idx=idx: objective(z, idx), amp,
                                   check if i == 0 else None, with_logits=True)
        going = ~stop(x_adv, logits, idx)
        if not bool(going.all()):
            idx, x_adv, grad = _freeze_broken(out, idx, going, x_adv, grad)
            if len(idx) == 0:
                return out
        box = (lo[idx], hi[idx]) if lo is not None else None
        x_adv = project(x[idx], ascend(x_adv, grad, alpha, norm), eps, norm, box)
    out[idx] = x_adv
    return out


def pgd_unchecked(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, alpha: float, steps: int,
                   loss: str = "ce", seed: int | None = None, amp: bool = False, noise=None) -> torch.Tensor:
    """Linf PGD with random start and one restart, without input checks or host synchronisation.

    For the library's own loops (adversarial training calls it on every step): :func:`pgd` checks its
    inputs and the model's output on every call, which reads values on the host and so synchronises a
    GPU. The caller guarantees what those checks would: x in [0, 1] on the model's device, valid labels,
    eps > 0, a model returning logits. Same iterates as ``pgd(model, x, y, eps=eps, alpha=alpha,
    steps=steps, loss=loss, seed=seed, amp=amp)`` (added for nslib.training); ``noise``: see _pgd_run.
    """
    base = 0 if noise is not None else base_seed(seed)  # host-side draw from torch's global CPU generator
    with eval_mode(model):
        p_clean = None
        if loss == "kl":
            with torch.no_grad():
                p_clean = F.softmax(model(x).float(), 1)
        objective = make_objective(loss, None if loss == "kl" else y, False, p_clean)
        return _pgd_run(model, x, objective, eps=eps, alpha=alpha, steps=steps, norm="linf", lo_hi=linf_box(x, eps),
                        start="gauss" if loss == "kl" else "linf", gen=restart_generator(x.device, base, 0),
                        amp=amp, check=None, noise=noise)


def mim(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, alpha: float | None = None,
        steps: int = 10, decay: float = 1.0, targeted: bool = False, amp: bool = False,
        early_stop: bool = False) -> torch.Tensor:
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
        early_stop (bool): return each example at the first iterate found adversarial and stop attacking it
            (for robust accuracy; see :func:`pgd`).

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
        check_inputs(model, x, y)
        objective = make_objective("ce", y, targeted, None)
        lo, hi = linf_box(x, eps)
        momentum = torch.zeros_like(x)
        x_adv = out = x
        idx = torch.arange(x.shape[0], device=x.device)  # the examples still attacked (all, without early_stop)
        stop = success(model, y, targeted, amp) if early_stop else None
        tiny = torch.finfo(x.dtype).tiny  # only guards an all-zero gradient (0 / 0)
        for i in range(steps):
            check = (lambda z: check_output(z, x, y)) if i == 0 else None
            if stop is None:
                grad = input_grad(model, x_adv, objective, amp, check)
            else:
                grad, logits = input_grad(model, x_adv, lambda z, idx=idx: objective(z, idx), amp, check,
                                           with_logits=True)
                going = ~stop(x_adv, logits, idx)
                if not bool(going.all()):
                    out = out.clone() if out is x else out
                    idx, x_adv, grad, momentum, lo, hi = _freeze_broken(out, idx, going, x_adv, grad, momentum, lo, hi)
                    if len(idx) == 0:
                        return out
            grad = grad / grad.abs().mean(dim=(1, 2, 3), keepdim=True).clamp_min(tiny)
            momentum = grad + decay * momentum
            x_adv = torch.min(torch.max(x_adv + alpha * momentum.sign(), lo), hi)
    if stop is None:
        return x_adv
    out = out.clone() if out is x else out
    out[idx] = x_adv
    return out


def pgd_pairs(model, x: torch.Tensor, y: torch.Tensor, *, eps: float, steps: int = 20, seed: int = 0,
              batch_size: int | None = None, amp: bool = False, progress: bool = False,
              early_stop: bool = False) -> torch.Tensor:
    """The reproduction's pairs, uncached: Linf PGD-``steps`` with random start (step 2.5 eps / steps) in
    batches of ``batch_size`` (None: 500 on a GPU, 128 on a CPU), the batch starting at image i seeded
    with ``seed + i``; x_adv like ``x``, on the CPU. ``early_stop`` (:func:`pgd`): where only robust accuracy
    is read (further restarts), never for the pairs that neuron sensitivity is measured on."""
    dev = next(model.parameters()).device
    batch_size = attack_batch(dev, batch_size)
    parts = []
    for i in bar(range(0, len(x), batch_size), desc=f"PGD-{steps} pairs", disable=not progress):
        xb, yb = x[i:i + batch_size].to(dev), y[i:i + batch_size].to(dev)
        parts.append(pgd(model, xb, yb, eps=eps, steps=steps, seed=seed + i, amp=amp, early_stop=early_stop).cpu())
    return torch.cat(parts)
