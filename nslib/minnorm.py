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

from nslib.attacks import NORMS, _autocast, _clean_logits, margin
from nslib.checks import check_choice, check_eps, check_images, check_number, check_positive_int
from nslib.models import eval_mode

__all__ = ["cw_l2", "fmn"]

BOUNDARY_SEARCH_STEPS = 10  # bisection steps from x toward a starting point (adv-lib's default): 2^-10 of the way


def cw_l2(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, c: float = 0.1, steps: int = 100,
          binary_search_steps: int = 9, lr: float = 0.01, confidence: float = 0.0, abort_early: bool = True,
          amp: bool = False) -> torch.Tensor:
    r"""C&W-L2, 'Towards Evaluating the Robustness of Neural Networks' [https://arxiv.org/abs/1608.04644].

    A minimal-norm attack: minimises ||x' - x||_2^2 + c * max(z_y - max_{j != y} z_j + confidence, 0) with
    Adam in tanh space (x' = (tanh(w) + 1) / 2, so x' stays in [0, 1]), over the whole batch at once, with a
    binary search over c per example (c times 10 until a success, then bisection). Each example's
    optimisation stops early once its loss has not decreased by 0.01% over a tenth of ``steps``; the other
    examples go on (Adam is per coordinate, so an example's path does not depend on the rest of the batch).

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
    amp_active = amp and x.device.type in ("cuda", "cpu")  # as attacks._autocast
    with eval_mode(model):
        _clean_logits(model, x, y)
        n = x.shape[0]
        dev = x.device
        lo = torch.zeros(n, device=dev, dtype=torch.float64)
        hi = torch.full((n,), float("inf"), device=dev, dtype=torch.float64)
        const = torch.full((n,), c, device=dev, dtype=torch.float64)
        best_l2 = torch.full((n,), float("inf"), device=dev)
        best_adv = x.clone()
        w0 = torch.atanh((x * 2 - 1) * (1 - 1e-6))  # tanh space; 1e-6 keeps 0 and 1 finite
        check_every = max(steps // 10, 1)
        for _ in range(binary_search_steps):
            w = w0.clone()
            adam_m, adam_v = torch.zeros_like(w), torch.zeros_like(w)  # Adam's moments, per coordinate
            adam_t = torch.zeros(n, device=dev, dtype=x.dtype)  # steps taken, per example
            succeeded = torch.zeros(n, dtype=torch.bool, device=dev)
            active = torch.ones(n, dtype=torch.bool, device=dev)
            prev = torch.full((n,), float("inf"), device=dev)
            const_x = const.to(x.dtype)
            for it in range(steps):
                w.requires_grad_(True)
                with torch.enable_grad():
                    x_adv = (torch.tanh(w) + 1) / 2
                    with _autocast(x, amp):
                        logits = model(x_adv)
                    logits = logits.float()
                    l2sq = (x_adv - x).pow(2).flatten(1).sum(1)  # [N]
                    m = margin(logits, y)  # [N]: > 0 means misclassified
                    loss_each = l2sq + const_x * (confidence - m).clamp(min=0).to(x.dtype)
                    (grad,) = torch.autograd.grad(loss_each.sum(), w)
                with torch.no_grad():
                    w, x_now = w.detach(), x_adv.detach()
                    if amp_active:
                        m = margin(model(x_now).float(), y)
                    l2 = l2sq.detach().float().sqrt()
                    hit = (m > confidence) & active
                    improve = hit & (l2 < best_l2)
                    best_l2 = torch.where(improve, l2, best_l2)
                    best_adv = torch.where(improve.view(-1, 1, 1, 1), x_now, best_adv)
                    succeeded |= hit
                    # Adam (betas 0.9, 0.999, eps 1e-8, as torch.optim.Adam), only for active examples, so a
                    # stopped example keeps its iterate and moments
                    act = active.view(-1, 1, 1, 1)
                    adam_t = adam_t + active.to(x.dtype)
                    adam_m = torch.where(act, 0.9 * adam_m + 0.1 * grad, adam_m)
                    adam_v = torch.where(act, 0.999 * adam_v + 0.001 * grad * grad, adam_v)
                    t = adam_t.clamp(min=1).view(-1, 1, 1, 1)
                    step = lr * (adam_m / (1 - 0.9 ** t)) / ((adam_v / (1 - 0.999 ** t)).sqrt() + 1e-8)
                    w = torch.where(act, w - step, w)
                    if abort_early and (it + 1) % check_every == 0:
                        loss_now = loss_each.detach().float()
                        active &= loss_now <= prev * 0.9999
                        prev = loss_now
                        if not bool(active.any()):
                            break
            # binary search on c, per example
            hi = torch.where(succeeded, torch.minimum(hi, const), hi)
            lo = torch.where(succeeded, lo, torch.maximum(lo, const))
            const = torch.where(torch.isinf(hi), const * 10, (lo + hi) / 2)
    return best_adv.clamp(0, 1)


# ---------------------------------------------------------------------------------------------------------
# FMN


def fmn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, norm: str = "l2", steps: int = 100,
        alpha_init: float = 1.0, alpha_final: float | None = None, gamma_init: float = 0.05,
        gamma_final: float = 0.001, starting_points: torch.Tensor | None = None, amp: bool = False) -> torch.Tensor:
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

    Returns, per example, the adversarial x' of smallest norm found (margin > 0 on fp32 logits; the last
    iterate is checked too), or ``x`` itself where none was found. Robust accuracy at a radius is read off
    it by :func:`nslib.evaluate.min_norm_accuracy`.

    Args:
        model (nn.Module): maps images in [0, 1] to logits; run in eval mode, mode restored.
        x (Tensor): clean images, never modified.
        y (Tensor): true labels.
        norm (str): "l2" or "linf", the norm minimised.
        steps (int): gradient steps, >= 1 (one forward and backward pass each).
        alpha_init (float): initial step size (the L2 length of a step), > 0.
        alpha_final (float or None): final step size, >= 0; None means alpha_init / 100.
        gamma_init (float): initial factor of the eps updates, in [0, 1).
        gamma_final (float): final factor of the eps updates, in [0, 1).
        starting_points (Tensor or None): a warm start like ``x`` (e.g. another attack's output): where
            one is adversarial, the attack starts from the boundary point found by bisection between x
            and it (10 steps); elsewhere, and when None, from x.
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
    amp_active = amp and x.device.type in ("cuda", "cpu")  # as attacks._autocast
    p, dual = (2, 2) if norm == "l2" else (float("inf"), 1)
    with eval_mode(model):
        _clean_logits(model, x, y)
        n, view = x.shape[0], (-1,) + (1,) * (x.dim() - 1)
        x_adv = x if starting_points is None else _boundary_start(model, x, y, starting_points, norm)
        worst = torch.maximum(x, 1 - x).flatten(1).norm(p=p, dim=1)  # [N]: no point of [0, 1] is farther
        eps = torch.full((n,), float("inf"), device=x.device, dtype=x.dtype)
        best_norm = torch.full((n,), float("inf"), device=x.device, dtype=x.dtype)
        best_adv = x.clone()
        found = torch.zeros(n, dtype=torch.bool, device=x.device)
        for i in range(steps + 1):
            if i == steps:  # the last iterate: checked, not stepped from
                m_fp32 = _fp32_margin(model, x_adv, y)
            else:
                m, grad = _margin_grad(model, x_adv, y, amp)
                m_fp32 = _fp32_margin(model, x_adv, y) if amp_active else m
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
    return best_adv


def _check_gamma(v, name: str) -> float:
    v = check_number(v, name)
    if v >= 1:
        raise ValueError(f"{name} must be in [0, 1), got {v!r}")
    return v


def _margin_grad(model, x_adv, y, amp: bool):
    """The margin [N] (fp32 logits, or bf16 under amp) and its input gradient, like ``x_adv``."""
    x_adv = x_adv.detach().requires_grad_(True)
    with torch.enable_grad():
        with _autocast(x_adv, amp):
            logits = model(x_adv)
        m = margin(logits.float(), y)  # [N]
        (grad,) = torch.autograd.grad(m.sum(), x_adv)
    return m.detach(), grad


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
