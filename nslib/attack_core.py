"""What every fixed-radius attack of :mod:`nslib.attacks` shares: input and output checks, the eps-ball's box and
projections, seeds, the input gradient, the objectives and success tests: the building blocks an attack author uses
(:mod:`nslib.attacks`, :mod:`nslib.autoattack`, :mod:`nslib.minnorm` do). The attacks themselves are in
:mod:`nslib.attacks` (which re-exports :func:`margin`); the contracts are stated there.
"""
from __future__ import annotations

from itertools import chain

import torch
import torch.nn.functional as F
from torch import nn

from nslib.checks import check_images, check_input_dtype, check_labels, check_logits, model_device
from nslib.fast import autocast

NORMS = ("linf", "l2")
LOSSES = ("ce", "margin", "kl")


def check_model(model) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module returning logits, got {type(model).__name__}")


def check_device(model: nn.Module, x: torch.Tensor) -> None:
    has_state = next(chain(model.parameters(), model.buffers()), None) is not None
    dev = model_device(model)
    if has_state and (dev.type != x.device.type or (dev.index or 0) != (x.device.index or 0)):
        raise ValueError(f"x is on {x.device} but the model is on {dev}; move them to the same device")


def check_inputs(model, x: torch.Tensor, y, *, need_y: bool = True) -> None:
    """The checks that need no forward pass: the model's type and device, ``x``, and ``y``'s shape and dtype."""
    check_model(model)
    check_images(x)
    check_device(model, x)
    check_input_dtype(model, x)  # a float64 batch into a float32 model fails deep inside a layer otherwise
    if y is not None or need_y:
        if y is None:
            raise TypeError("y must be a tensor of class indices [N], got None")
        check_labels(y, x.shape[0])


def check_output(logits, x: torch.Tensor, y) -> None:
    """The checks on the model's first output: logits [N, classes] (not a tuple, a dict or probabilities),
    and labels in [0, classes)."""
    check_logits(logits, x.shape[0])
    if y is not None:
        check_labels(y, x.shape[0], logits.shape[1])


def clean_logits(model: nn.Module, x: torch.Tensor, y, *, need_y: bool = True) -> torch.Tensor:
    """Check ``x``, the model's output and ``y`` once; return the clean fp32 logits [N, classes].

    Runs one forward pass without gradients (the model must already be in eval mode).
    """
    check_inputs(model, x, y, need_y=need_y)
    with torch.no_grad():
        logits = model(x)
    check_output(logits, x, y)
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


def linf_box(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
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


def l2_project(x: torch.Tensor, x_adv: torch.Tensor, eps: float) -> torch.Tensor:
    """Project ``x_adv`` onto the L2 ball of radius eps around ``x``, then clip to [0, 1]."""
    delta = x_adv - x
    norms = delta.flatten(1).norm(dim=1)  # [N]
    factor = (eps / norms.clamp_min(1e-12)).clamp(max=1.0)
    return (x + delta * factor.view(-1, 1, 1, 1)).clamp(0, 1)


def l2_exact(x: torch.Tensor, x_adv: torch.Tensor, eps: float) -> torch.Tensor:
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


def restart_generator(device: torch.device, base: int, restart: int) -> torch.Generator:
    """Generator of restart ``restart``: a function of (base seed, restart) only, so restarts are nested."""
    g = torch.Generator(device=device)
    g.manual_seed((base * 1_000_003 + restart * 7_919 + 1) % (2 ** 63))
    return g


def base_seed(seed) -> int:
    if seed is None:  # drawn from torch's global generator, so torch.manual_seed makes it reproducible
        return int(torch.randint(0, 2 ** 62, (1,)))
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
    return seed


def input_grad(model, x_adv, objective, amp: bool, check=None, with_logits: bool = False):
    """Gradient of ``objective(logits_fp32)`` (summed over the batch) with respect to ``x_adv`` only; with
    ``with_logits``, ``(grad, logits)``: the forward pass's logits at ``x_adv`` too (detached).

    ``check(logits)``, when given, validates the model's output before the loss uses it (first step).
    """
    x_adv = x_adv.detach().requires_grad_(True)
    with torch.enable_grad():
        with autocast(x_adv.device, amp):
            logits = model(x_adv)
        if check is not None:
            check(logits)
        obj = objective(logits.float())
        (grad,) = torch.autograd.grad(obj, x_adv)
    return (grad, logits.detach()) if with_logits else grad


def success(model, y: torch.Tensor, targeted: bool, amp: bool):
    """``success(x_adv, logits, idx) -> [len(idx)] bool``: which of the examples ``idx`` (indices into ``y``) are
    already adversarial at ``x_adv``: misclassified (untargeted) or classified as their target (targeted).
    ``logits`` are the attack step's own; under ``amp`` the bf16 candidates are confirmed by an fp32 forward
    pass (only those), since whether an example counts as adversarial is decided in fp32."""
    def hit(logits, yy):
        pred = logits.float().argmax(1)
        return pred == yy if targeted else pred != yy

    def success(x_adv, logits, idx):
        yy = y[idx]
        out = hit(logits, yy)
        if amp and out.any():
            cand = out.nonzero().flatten()
            with torch.no_grad():
                out[cand] = hit(model(x_adv[cand]).float(), yy[cand])
        return out
    return success


def make_objective(loss: str, y, targeted: bool, p_clean):
    """The batch-summed quantity the attack ascends (a sum, so each example's gradient is its own)."""
    # idx: the examples (indices into y) the logits belong to, when an early-stopping attack has dropped some
    if loss == "kl":  # KL(p(x) || p(x')), as TRADES
        return lambda logits, idx=None: F.kl_div(F.log_softmax(logits, 1), p_clean if idx is None else p_clean[idx],
                                                 reduction="sum")
    sign = -1.0 if targeted else 1.0
    if loss == "ce":
        return lambda logits, idx=None: sign * F.cross_entropy(logits, y if idx is None else y[idx], reduction="sum")
    # margin: move the best other class above y (or the target above all)
    return lambda logits, idx=None: (sign * margin(logits, y if idx is None else y[idx])).sum()


def attack_score(model, x_adv, y, loss: str, targeted: bool, p_clean) -> torch.Tensor:
    """How adversarial each example is, from an fp32 forward pass: higher is worse for the model.

    Margin (> 0 exactly when the attack succeeds) for labelled losses, KL(p(x) || p(x')) for "kl".
    """
    with torch.no_grad():
        logits = model(x_adv).float()
    if loss == "kl":
        return F.kl_div(F.log_softmax(logits, 1), p_clean, reduction="none").sum(1)
    m = margin(logits, y)
    return -m if targeted else m


def ascend(x_adv, grad, alpha, norm):
    if norm == "linf":
        return x_adv + alpha * grad.sign()
    gnorm = grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1) + 1e-10  # 1e-10 as torchattacks' PGDL2
    return x_adv + alpha * grad / gnorm


def project(x, x_adv, eps, norm, lo_hi):
    if norm == "linf":
        lo, hi = lo_hi
        return torch.min(torch.max(x_adv, lo), hi)
    return l2_project(x, x_adv, eps)
