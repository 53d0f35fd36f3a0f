"""Input checks for the library's entry points (attacks, analysis, training, evaluation).

Each check runs once per call, never inside ``forward``: the value-range check reads the tensor's min
and max, which synchronises a GPU with the host. Every error names the argument, what was expected and
what was received.
"""
from __future__ import annotations

import math
import numbers

import torch
from torch import nn

__all__ = ["check_images", "check_labels", "check_logits", "check_eps", "check_positive_int", "check_number",
           "check_bool", "check_k", "check_choice", "model_device", "check_finite_model", "check_finite_logits",
           "check_differentiable", "check_device", "check_input_dtype", "check_finite"]


def check_images(x, name: str = "x") -> torch.Tensor:
    """``x`` must be a floating tensor [N, C, H, W] with values in [0, 1]."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of images [N, C, H, W] in [0, 1], "
                        f"got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must be a 4-D batch [N, C, H, W], got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor with values in [0, 1], got dtype {x.dtype} "
                        f"(divide uint8 images by 255)")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")
    lo, hi = torch.aminmax(x.detach())
    lo, hi = float(lo), float(hi)
    if not (lo >= 0.0 and hi <= 1.0):  # also catches NaN
        raise ValueError(f"{name} must have values in [0, 1], got min {lo:.4g} and max {hi:.4g}"
                         f" (pass unnormalised images; models normalise inside)")
    return x


def check_labels(y, n: int, num_classes: int | None = None, name: str = "y", *, why: str = "") -> torch.Tensor:
    """``y`` must be an integer tensor [n] with values in [0, num_classes); ``why`` says where num_classes
    comes from (e.g. "the model returns 10 logits") in the error."""
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of class indices [N], got {type(y).__name__}")
    if y.dim() != 1 or y.shape[0] != n:
        raise ValueError(f"{name} must have shape [{n}] (one label per image), got {tuple(y.shape)}")
    if y.is_floating_point() or y.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer class indices (int64), got dtype {y.dtype}")
    if num_classes is not None and n > 0:
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= num_classes:
            source = f" ({why})" if why else ""
            raise ValueError(f"{name} must hold class indices in [0, {num_classes - 1}]{source}, "
                             f"got values from {lo} to {hi}")
    return y


def _describe(v) -> str:
    return f"Tensor {list(v.shape)}" if isinstance(v, torch.Tensor) else type(v).__name__


def check_logits(out, n: int, name: str = "model") -> torch.Tensor:
    """A model's output must be a logits tensor [n, classes], not a tuple, a dict or probabilities."""
    if isinstance(out, (tuple, list)):
        raise TypeError(f"{name} must return a logits tensor [N, classes], got a {type(out).__name__} of "
                        f"{len(out)} items ({', '.join(map(_describe, out))}); wrap the model so that forward "
                        f"returns the logits alone")
    if isinstance(out, dict):
        items = ", ".join(f"{k!r} ({_describe(v)})" for k, v in out.items())
        raise TypeError(f"{name} must return a logits tensor [N, classes], got a dict with keys {items}; "
                        f"wrap the model so that forward returns the logits")
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"{name} must return a logits tensor [N, classes], got {type(out).__name__}")
    if out.dim() != 2 or out.shape[0] != n:
        raise ValueError(f"{name} must return logits of shape [{n}, classes], got {tuple(out.shape)}")
    if out.shape[1] < 2:
        raise ValueError(f"{name} must return at least 2 class logits, got shape {tuple(out.shape)}")
    o = out.detach().float()
    if bool(((o >= 0) & (o <= 1)).all()) and torch.allclose(o.sum(1), torch.ones_like(o[:, 0]), atol=1e-4):
        raise ValueError(f"{name} must return logits, but its outputs are probabilities (non-negative, "
                         f"each row sums to 1); remove the final softmax")
    return out


def check_eps(eps, name: str = "eps", allow_zero: bool = True) -> float:
    """A perturbation radius: a finite non-negative number."""
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(eps).__name__}")
    eps = float(eps)
    if not (eps >= 0.0) or eps == float("inf") or (eps == 0.0 and not allow_zero):
        expected = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {expected}, got {eps}")
    return eps


def check_positive_int(v, name: str, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {v!r}")
    return int(v)


def check_number(v, name: str, minimum: float = 0.0) -> float:
    """A finite real number >= ``minimum`` (not a bool)."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not v >= minimum or math.isinf(v):
        raise ValueError(f"{name} must be a finite number >= {minimum:g}, got {v!r}")
    return float(v)


def check_bool(v, name: str) -> bool:
    if not isinstance(v, bool):
        raise TypeError(f"{name} must be True or False, got {v!r}")
    return v


def check_k(k, name: str = "k"):
    """Neurons per layer: an int count >= 1 or a float fraction in (0, 1] (the width is checked later)."""
    if isinstance(k, bool) or not isinstance(k, numbers.Real):
        raise TypeError(f"{name} must be an int (a count) or a float in (0, 1] (a fraction), got {type(k).__name__}")
    if isinstance(k, numbers.Integral) and k < 1:
        raise ValueError(f"{name} must select at least one neuron (an int >= 1 or a fraction in (0, 1]), got {k!r}")
    if not isinstance(k, numbers.Integral) and not 0.0 < k <= 1.0:
        raise ValueError(f"{name} as a fraction must be in (0, 1], got {k!r}")
    return k


def check_choice(v, name: str, choices) -> str:
    if v not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {v!r}")
    return v


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a model with neither)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def check_finite_model(model: nn.Module, name: str = "model") -> None:
    """Every floating parameter and buffer of ``model`` must be finite (a NaN weight makes every result NaN,
    or a chance-level accuracy that reads as a result). One host sync per tensor: once per call."""
    for kind, items in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
        for key, t in items:
            if t.is_floating_point() and not bool(torch.isfinite(t.detach()).all()):
                bad = int((~torch.isfinite(t.detach())).sum())
                raise ValueError(f"{name} has non-finite weights: {kind} {key!r} holds {bad} NaN/inf value(s) of "
                                 f"{t.numel()}; a diverged or corrupted model gives no result")


def check_finite_logits(logits: torch.Tensor, name: str = "model") -> torch.Tensor:
    """The model's clean logits must be finite (NaN logits leave every attack at its start: sign(NaN) = 0)."""
    finite = torch.isfinite(logits.detach())
    if not bool(finite.all()):
        rows = int((~finite).any(1).sum())
        raise ValueError(f"{name} returns non-finite logits (NaN or inf) on {rows} of {logits.shape[0]} clean "
                         f"images; a diverged or corrupted model gives no result")
    return logits


def check_differentiable(model: nn.Module, x: torch.Tensor, name: str = "model") -> None:
    """The logits must depend on the input through autograd (attacks follow the input gradient): refused,
    a forward that runs under ``torch.no_grad()``, detaches its input or leaves autograd (numpy)."""
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        out = model(x)
        grad = None
        if isinstance(out, torch.Tensor) and out.requires_grad:
            (grad,) = torch.autograd.grad(out.float().sum(), x, allow_unused=True)
    if grad is None:
        raise ValueError(f"{name}'s logits carry no gradient to the input (does forward run under torch.no_grad(), "
                         f"call .detach() or leave torch?); attacks and neuron sensitivity need the input gradient")


def check_device(device, name: str = "--device") -> torch.device:
    """A device string torch knows and this machine has ("cpu", "cuda", "cuda:1", "mps")."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"{name} must be a device such as cpu, cuda or cuda:0, got {device!r} ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{name} {device}: this machine has no CUDA device (torch {torch.__version__}); use cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"{name} {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{name} {device}: MPS is not available on this machine; use cpu")
    return dev


def check_input_dtype(model: nn.Module, x: torch.Tensor, name: str = "x") -> None:
    """``x`` must have the dtype of the model's floating parameters (a float64 batch into a float32 model
    fails deep inside a layer otherwise)."""
    for t in model.parameters():
        if t.is_floating_point():
            if t.dtype != x.dtype:
                raise TypeError(f"{name} has dtype {x.dtype} but the model's parameters are {t.dtype}; convert "
                                f"one of them (x.to({t.dtype}) or model.to({x.dtype}))")
            return


@torch.no_grad()
def check_finite(model: nn.Module, x: torch.Tensor, name: str = "model", n: int = 8) -> None:
    """The weights of ``model`` and its clean logits on the first ``n`` images of ``x`` must be finite: the
    cheap once-per-call check of the evaluation entry points (the model is run in its current mode)."""
    check_finite_model(model, name)
    check_finite_logits(model(x[:n].to(model_device(model))), name)
