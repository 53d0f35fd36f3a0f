"""Minimal-norm attacks: the smallest perturbation that changes a prediction, per example.

Robust accuracy at a radius is read off their output by :func:`nslib.evaluate.min_norm_accuracy`. They keep
the contracts of :mod:`nslib.attacks` (input never modified, eval mode restored, output in [0, 1], checked
inputs), except that there is no eps-ball: the output is the successful perturbation of smallest norm found,
or ``x`` itself where none was found.

:func:`fmn` is the stronger per gradient (Pintor et al. report it ahead of C&W at a tenth of the cost):
use it for the min-norm column; :func:`cw_l2` stays as the classic reference.

Usage::

    x_adv = nslib.minnorm.fmn(model, x, y, steps=100)
    x_adv = nslib.minnorm.cw_l2(model, x, y, steps=200)
"""
from __future__ import annotations

import math

import torch
from torch import nn

from nslib.attack_core import NORMS, clean_logits, margin
from nslib.checks import check_choice, check_eps, check_images, check_number, check_positive_int
from nslib.fast import amp_device, autocast
from nslib.models import eval_mode

__all__ = ["cw_l2", "fmn", "nearest_classes"]

BOUNDARY_SEARCH_STEPS = 10  # bisection steps from x toward a starting point (adv-lib's default): 2^-10 of the way
CANDIDATES = 10  # highest other logits ranked by their linearised boundary distance (one backward pass each)


def cw_l2(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, c: float = 0.1, steps: int = 100,
          binary_search_steps: int = 9, lr: float = 0.01, confidence: float = 0.0, abort_early: bool = True,
          targets: int = 1, amp: bool = False) -> torch.Tensor:
    r"""C&W-L2, 'Towards Evaluating the Robustness of Neural Networks' [https://arxiv.org/abs/1608.04644].

    A minimal-norm attack: minimises ||x' - x||_2^2 + c * max(z_y - max_{j != y} z_j + confidence, 0) with
    Adam in tanh space (x' = (tanh(w) + 1) / 2, so x' stays in [0, 1]), over the whole batch at once, with a
    binary search over c per example (c times 10 until a success, then bisection). Each example's
    optimisation stops early once its loss has not decreased by 0.01% over a tenth of ``steps``; the other
    examples go on (Adam is per coordinate, so an example's path does not depend on the rest of the batch).

    The untargeted loss follows the currently highest other class, which need not be the class whose
    boundary is nearest (on a linear model it then stops up to 1.3x past the minimum). So the search is run
    again for each of the ``targets`` classes whose linearised boundary z_j = z_y is nearest to x, with
    z_j in place of the best other logit (:func:`nearest_classes`), and the smallest success is kept. Cost:
    (1 + ``targets``) times the untargeted attack, plus the few gradients of the ranking.

    Returns, per example, the successful x' of smallest L2 distance found (misclassified with the given
    confidence, decided on fp32 logits), or ``x`` itself where none was found. Robust accuracy at an L2
    radius is the share of examples whose smallest perturbation exceeds it
    (:func:`nslib.evaluate.min_norm_accuracy`).

    Args:
        model (nn.Module): maps images in [0, 1] to logits; run in eval mode, mode restored.
        x (Tensor): clean images, never modified.
        y (Tensor): true labels.
        c (float): initial trade-off constant, > 0.
        steps (int): Adam steps per binary search step, >= 1.
        binary_search_steps (int): outer steps over c, >= 1.
        lr (float): Adam learning rate (in tanh space), > 0.
        confidence (float): required margin kappa, >= 0.
        abort_early (bool): stop an example's inner loop when its loss stalls.
        targets (int): targeted searches after the untargeted one, >= 0 (0: the classic attack alone).
        amp (bool): bf16 autocast for the forward/backward passes (CUDA or CPU); success is
            then decided on an extra fp32 forward pass.

    Shapes:
        x: [N, C, H, W] in [0, 1]; y: [N] int64; output: like ``x``.

    Raises:
        ValueError, TypeError: bad input (see the module docstring).

    Usage: ``x_adv = cw_l2(model, x, y, steps=200)``
    """
    c = check_eps(c, "c", allow_zero=False)
    steps = check_positive_int(steps, "steps")
    binary_search_steps = check_positive_int(binary_search_steps, "binary_search_steps")
    lr = check_eps(lr, "lr", allow_zero=False)
    confidence = check_eps(confidence, "confidence")
    targets = check_positive_int(targets, "targets", minimum=0)
    with eval_mode(model):
        clean = clean_logits(model, x, y)
        n, dev = x.shape[0], x.device
        best = (torch.full((n,), float("inf"), device=dev), x.clone())  # smallest L2 found, and its x'
        for target in [None, *nearest_classes(model, x, y, clean, targets, "l2").unbind(1)]:
            lo = torch.zeros(n, device=dev, dtype=torch.float64)
            hi = torch.full((n,), float("inf"), device=dev, dtype=torch.float64)
            const = torch.full((n,), c, device=dev, dtype=torch.float64)
            for _ in range(binary_search_steps):
                succeeded = _cw_search(model, x, y, target, const.to(x.dtype), best, steps=steps, lr=lr,
                                       confidence=confidence, abort_early=abort_early, amp=amp)
                hi = torch.where(succeeded, torch.minimum(hi, const), hi)
                lo = torch.where(succeeded, lo, torch.maximum(lo, const))
                const = torch.where(torch.isinf(hi), const * 10, (lo + hi) / 2)
    return best[1].clamp(0, 1)


def _cw_search(model, x, y, target, const, best, *, steps, lr, confidence, abort_early, amp) -> torch.Tensor:
    """One C&W optimisation at the per-example constants ``const`` [N], from x. Updates ``best`` (the
    smallest L2 [N] and its x') in place; returns which examples succeeded [N] bool.

    Every example takes every Adam step (torch.optim.Adam, per coordinate); one that stopped early has its
    later iterates ignored (it never becomes active again), which gives the same result as freezing it."""
    best_l2, best_adv = best
    w = torch.atanh((x * 2 - 1) * (1 - 1e-6)).requires_grad_(True)  # tanh space; 1e-6 keeps 0 and 1 finite
    opt = torch.optim.Adam([w], lr=lr)  # betas 0.9, 0.999, eps 1e-8
    succeeded = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    active = torch.ones_like(succeeded)
    prev = torch.full((x.shape[0],), float("inf"), device=x.device)
    check_every = max(steps // 10, 1)
    for it in range(steps):
        with torch.enable_grad():
            x_adv = (torch.tanh(w) + 1) / 2
            with autocast(x.device, amp):
                logits = model(x_adv)
            l2sq = (x_adv - x).pow(2).flatten(1).sum(1)  # [N]
            m, m_step = _margins(logits.float(), y, target)  # [N]: > 0 means misclassified (toward target)
            loss_each = l2sq + const * (confidence - m_step).clamp(min=0).to(x.dtype)
            (w.grad,) = torch.autograd.grad(loss_each.sum(), w)  # not backward(): the model's .grad stay untouched
        with torch.no_grad():
            x_now = x_adv.detach()
            if amp and amp_device(x.device):  # as fast.autocast: success on fp32 logits
                m = _fp32_margin(model, x_now, y)
            l2 = l2sq.detach().float().sqrt()
            hit = (m.detach() > confidence) & active
            improve = hit & (l2 < best_l2)
            best_l2.copy_(torch.where(improve, l2, best_l2))
            best_adv.copy_(torch.where(improve.view(-1, 1, 1, 1), x_now, best_adv))
            succeeded |= hit
        opt.step()
        if abort_early and (it + 1) % check_every == 0:
            loss_now = loss_each.detach().float()
            active &= loss_now <= prev * 0.9999
            prev = loss_now
            if not bool(active.any()):
                break
    return succeeded


def _margins(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None):
    """(the untargeted margin, the margin a step follows) [N]: z_target - z_y for a target, else the same."""
    m = margin(logits, y)
    if target is None:
        return m, m
    return m, (logits.gather(1, target[:, None]) - logits.gather(1, y[:, None])).squeeze(1)


def nearest_classes(model: nn.Module, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor, count: int,
                    norm: str = "l2") -> torch.Tensor:
    """The ``count`` classes j != y whose linearised boundary z_j = z_y is nearest to x, nearest first.

    The distance is |z_j - z_y| / ||grad_x (z_j - z_y)||_* (dual norm: L2 for l2, L1 for linf), exact for a
    linear model; it is computed for the :data:`CANDIDATES` highest other logits (one backward pass each,
    on one forward pass). Args: ``logits`` the clean fp32 logits [N, classes]; ``count`` >= 0 (capped at
    the candidates; none for two classes, where the one other class is what the untargeted margin follows).
    Returns an int64 tensor [N, count]. The model must already be in eval mode.
    """
    pool_size = min(logits.shape[1] - 1, CANDIDATES)
    count = min(count, pool_size)
    if count == 0 or logits.shape[1] == 2:  # two classes: a targeted run would repeat the untargeted one
        return torch.zeros(x.shape[0], 0, dtype=torch.long, device=x.device)
    others = logits.scatter(1, y[:, None], float("-inf"))
    pool = others.topk(pool_size, dim=1).indices  # [N, P]
    x_grad = x.detach().requires_grad_(True)
    dist = []
    with torch.enable_grad():
        z = model(x_grad).float()
        for i in range(pool_size):
            gap = (z.gather(1, pool[:, i:i + 1]) - z.gather(1, y[:, None])).squeeze(1)  # [N]
            (g,) = torch.autograd.grad(gap.sum(), x_grad, retain_graph=i + 1 < pool_size)
            dual = g.flatten(1).norm(p=2 if norm == "l2" else 1, dim=1)
            dist.append(gap.detach().abs() / dual.clamp_min(1e-12))
    order = torch.stack(dist, 1).argsort(dim=1, stable=True)[:, :count]  # [N, count]
    return pool.gather(1, order)


# ---------------------------------------------------------------------------------------------------------
# FMN


def fmn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, norm: str = "l2", steps: int = 100,
        alpha_init: float = 1.0, alpha_final: float | None = None, gamma_init: float = 0.05,
        gamma_final: float = 0.001, starting_points: torch.Tensor | None = None, targets: int = 1,
        amp: bool = False) -> torch.Tensor:
    r"""FMN, 'Fast Minimum-norm Adversarial Attacks through Adaptive Norm Updates' [https://arxiv.org/abs/2102.12827].

    A minimal-norm attack. Each example has a radius eps and an iterate x' in the eps-ball around x. Every
    step takes the margin m = max_{j != y} z_j - z_y (> 0: misclassified) and its input gradient g at x';
    then eps shrinks to eps * (1 - gamma) where x' is adversarial (and to at most the smallest adversarial
    norm found), grows to eps * (1 + gamma) where x' is not but an adversarial was found before, and, until
    one is found, jumps to ||x' - x|| + |m| / ||g||_* (the distance to the linearised boundary; ||.||_* is
    the dual norm: L2 for l2, L1 for linf), or to ||x' - x|| * (1 + gamma) if that is more (one departure
    from the paper: an iterate stuck on a tie, m = 0, would never cross); x' moves by alpha * g / ||g||_2
    and is projected onto the eps-ball and [0, 1]. alpha and gamma decay from their initial to their final
    values on a cosine. The gradient is taken as zero on the coordinates at 0 or 1 that it would push out of
    [0, 1] (a second departure: there, the paper's boundary estimate underestimates and the steps are lost).

    The untargeted margin follows the currently highest other class, which need not be the class whose
    boundary is nearest: on a linear model it then ends up to 1.3x past the minimum. So, as the paper's
    targeted variant, the attack is run again for each of the ``targets`` classes whose linearised boundary
    is nearest to x (:func:`nearest_classes`), with m = z_t - z_y, and the smallest success over all runs is
    kept (success is always "misclassified"). Cost: (1 + ``targets``) x ``steps`` gradients, plus one
    backward pass per candidate class for the ranking (at most :data:`CANDIDATES`).

    Returns, per example, the adversarial x' of smallest norm found (margin > 0 on fp32 logits; the last
    iterate is checked too), or ``x`` itself where none was found. Robust accuracy at a radius is read off
    it by :func:`nslib.evaluate.min_norm_accuracy`.

    Args:
        model (nn.Module): maps images in [0, 1] to logits; run in eval mode, mode restored.
        x (Tensor): clean images, never modified.
        y (Tensor): true labels.
        norm (str): "l2" or "linf", the norm minimised.
        steps (int): gradient steps per run, >= 1 (one forward and backward pass each).
        alpha_init (float): initial step size (the L2 length of a step), > 0.
        alpha_final (float or None): final step size, >= 0; None means alpha_init / 100.
        gamma_init (float): initial factor of the eps updates, in [0, 1).
        gamma_final (float): final factor of the eps updates, in [0, 1).
        starting_points (Tensor or None): a warm start like ``x`` (e.g. another attack's output) for the
            untargeted run: where one is adversarial, it starts from the boundary point found by bisection
            between x and it (10 steps); elsewhere, and when None, from x.
        targets (int): targeted runs after the untargeted one, >= 0 (0: the paper's untargeted attack alone).
        amp (bool): bf16 autocast for the forward/backward passes (CUDA or CPU); success is
            then decided on an extra fp32 forward pass per step.

    Shapes:
        x: [N, C, H, W] in [0, 1]; y: [N] int64; starting_points: like ``x``; output: like ``x``.

    Raises:
        ValueError, TypeError: bad input (see the module docstring), ``starting_points`` not like ``x``.

    Usage: ``x_adv = fmn(model, x, y, steps=100)``
    """
    norm = check_choice(norm, "norm", NORMS)
    steps = check_positive_int(steps, "steps")
    alpha_init = check_eps(alpha_init, "alpha_init", allow_zero=False)
    alpha_final = alpha_init / 100 if alpha_final is None else check_eps(alpha_final, "alpha_final")
    gamma_init, gamma_final = _check_gamma(gamma_init, "gamma_init"), _check_gamma(gamma_final, "gamma_final")
    targets = check_positive_int(targets, "targets", minimum=0)
    schedule = {"steps": steps, "alpha": (alpha_init, alpha_final), "gamma": (gamma_init, gamma_final)}
    view = (-1,) + (1,) * (x.dim() - 1)
    with eval_mode(model):
        clean = clean_logits(model, x, y)
        x_start = x if starting_points is None else _boundary_start(model, x, y, starting_points, norm)
        best_adv, best_norm = _fmn_run(model, x, y, x_start, None, norm, schedule, amp)
        for target in nearest_classes(model, x, y, clean, targets, norm).unbind(1):
            adv, dist = _fmn_run(model, x, y, x, target, norm, schedule, amp)
            better = dist < best_norm
            best_norm = torch.where(better, dist, best_norm)
            best_adv = torch.where(better.view(view), adv, best_adv)
    return best_adv


def _fmn_run(model, x, y, x_adv, target, norm: str, schedule: dict, amp: bool):
    """One FMN run from ``x_adv`` (untargeted when ``target`` is None): (the adversarial x' of smallest norm,
    or x, and that norm [N], inf where none was found)."""
    amp_active = amp and amp_device(x.device)  # as fast.autocast
    p, dual = (2, 2) if norm == "l2" else (float("inf"), 1)
    steps, (alpha_init, alpha_final), (gamma_init, gamma_final) = (schedule[k] for k in ("steps", "alpha", "gamma"))
    n, view = x.shape[0], (-1,) + (1,) * (x.dim() - 1)
    worst = torch.maximum(x, 1 - x).flatten(1).norm(p=p, dim=1)  # [N]: no point of [0, 1] is farther
    eps = torch.full((n,), float("inf"), device=x.device, dtype=x.dtype)
    best_norm = torch.full((n,), float("inf"), device=x.device, dtype=x.dtype)
    best_adv = x.clone()
    found = torch.zeros(n, dtype=torch.bool, device=x.device)
    for i in range(steps + 1):
        if i == steps:  # the last iterate: checked, not stepped from
            m_fp32 = _fp32_margin(model, x_adv, y)
        else:
            m_fp32, m, grad = _margin_grad(model, x_adv, y, amp, target)
            m_fp32 = _fp32_margin(model, x_adv, y) if amp_active else m_fp32
        with torch.no_grad():
            is_adv = m_fp32 > 0  # [N]
            dnorm = (x_adv - x).flatten(1).norm(p=p, dim=1)  # [N]
            better = is_adv & (dnorm < best_norm)
            best_norm = torch.where(better, dnorm, best_norm)
            best_adv = torch.where(better.view(view), x_adv, best_adv)
            found |= is_adv
            if i == steps:
                break
            cosine = (1 + math.cos(math.pi * i / steps)) / 2
            alpha = alpha_final + (alpha_init - alpha_final) * cosine
            gamma = gamma_final + (gamma_init - gamma_final) * cosine
            # coordinates on a face of [0, 1] that the gradient pushes outwards cannot move: without them,
            # the boundary estimate counts slopes that clipping cancels (on MNIST's 0/1 pixels it stalled
            # just short of the boundary) and the step is not spent on them
            grad = grad.masked_fill(((x_adv <= 0) & (grad < 0)) | ((x_adv >= 1) & (grad > 0)), 0)
            g = grad.flatten(1)
            to_boundary = m.abs().to(x.dtype) / g.norm(p=dual, dim=1).clamp_min(1e-12)  # linearised, [N]
            # until a first success, at least the growth of a failure after one: an iterate on the boundary
            # (a tie, margin 0, distance 0) would otherwise keep its radius and never cross
            first = torch.maximum(dnorm + to_boundary, dnorm * (1 + gamma))
            eps = torch.where(is_adv, torch.minimum(eps * (1 - gamma), best_norm),
                              torch.where(found, eps * (1 + gamma), first))
            eps = torch.minimum(eps, worst)
            step = alpha * grad / g.norm(dim=1).clamp_min(1e-12).view(view)
            x_adv = _project(x, x_adv + step, eps, norm)
    return best_adv, best_norm


def _check_gamma(v, name: str) -> float:
    v = check_number(v, name)
    if v >= 1:
        raise ValueError(f"{name} must be in [0, 1), got {v!r}")
    return v


def _margin_grad(model, x_adv, y, amp: bool, target=None):
    """(the untargeted margin [N], the margin the step follows [N] (z_target - z_y for a target), and the
    input gradient of the latter, like ``x_adv``), on fp32 logits (bf16 under amp)."""
    x_adv = x_adv.detach().requires_grad_(True)
    with torch.enable_grad():
        with autocast(x_adv.device, amp):
            logits = model(x_adv)
        m, m_step = _margins(logits.float(), y, target)  # [N]
        (grad,) = torch.autograd.grad(m_step.sum(), x_adv)
    return m.detach(), m_step.detach(), grad


def _fp32_margin(model, x_adv, y) -> torch.Tensor:
    with torch.no_grad():
        return margin(model(x_adv).float(), y)


def _project(x, x_adv, eps, norm: str) -> torch.Tensor:
    """Project each example onto the ball of radius eps[i] around x[i], then clip to [0, 1]."""
    delta = x_adv - x
    view = (-1,) + (1,) * (x.dim() - 1)
    if norm == "linf":
        e = eps.view(view)
        delta = torch.maximum(torch.minimum(delta, e), -e)
    else:
        factor = (eps / delta.flatten(1).norm(dim=1).clamp_min(1e-12)).clamp(max=1.0)  # [N]
        delta = delta * factor.view(view)
    return (x + delta).clamp(0, 1)


def _mid_point(x, x_start, t, norm: str) -> torch.Tensor:
    """The point between x (t = 0) and x_start (t = 1): along the segment (l2), or x_start's delta clipped
    to the Linf radius t (linf)."""
    t = t.view((-1,) + (1,) * (x.dim() - 1))
    delta = x_start - x
    delta = delta * t if norm == "l2" else torch.maximum(torch.minimum(delta, t), -t)
    return (x + delta).clamp(0, 1)


def _boundary_start(model, x, y, x_start, norm: str) -> torch.Tensor:
    """Where ``x_start`` is adversarial, the adversarial end of a bisection toward it; ``x`` elsewhere."""
    check_images(x_start, "starting_points")
    if x_start.shape != x.shape or x_start.dtype != x.dtype or x_start.device != x.device:
        raise ValueError(f"starting_points must be like x ({tuple(x.shape)}, {x.dtype}, {x.device}), got "
                         f"({tuple(x_start.shape)}, {x_start.dtype}, {x_start.device})")
    adv = _fp32_margin(model, x_start, y) > 0  # [N]
    lo = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
    hi = torch.ones_like(lo)  # hi stays adversarial: t = 1 is x_start
    for _ in range(BOUNDARY_SEARCH_STEPS):
        t = (lo + hi) / 2
        mid_adv = _fp32_margin(model, _mid_point(x, x_start, t, norm), y) > 0
        lo, hi = torch.where(mid_adv, lo, t), torch.where(mid_adv, t, hi)
    view = (-1,) + (1,) * (x.dim() - 1)
    return torch.where(adv.view(view), _mid_point(x, x_start, hi, norm), x)
