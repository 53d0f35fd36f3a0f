"""Minimal-norm attacks: the smallest perturbation that changes a prediction, per example.

Robust accuracy at a radius is read off their output by :func:`nslib.evaluate.min_norm_accuracy`. They keep
the contracts of :mod:`nslib.attacks` (input never modified, eval mode restored, output in [0, 1], checked
inputs), except that there is no eps-ball: the output is the successful perturbation of smallest norm found,
or ``x`` itself where none was found.

Usage::

    x_adv = nslib.minnorm.cw_l2(model, x, y, steps=200)
"""
from __future__ import annotations

import torch
from torch import nn

from nslib.attacks import _autocast, _clean_logits, margin
from nslib.checks import check_eps, check_positive_int
from nslib.models import eval_mode

__all__ = ["cw_l2"]



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
        amp (bool): bf16 autocast for the forward/backward passes on CUDA (no-op on CPU); success is
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
    amp_active = amp and x.device.type == "cuda"
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
