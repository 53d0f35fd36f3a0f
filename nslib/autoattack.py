"""AutoAttack (the reference code, ``pyautoattack``), wrapped: checked arguments, the caller's state kept.

AutoAttack changes global state as it runs: it reseeds torch, clears ``sys.settrace`` (its dynamic-defense
check), logs through its own logger, and FAB calls ``.backward()``, which adds into the parameters' ``.grad``.
:func:`autoattack` runs it inside :func:`_isolated`, a context manager that saves and restores all of it, and
reads the robust accuracy after each attack from AutoAttack's debug log.

Usage::

    x_adv, acc = autoattack(model, x, y, eps=0.3)   # acc: {"clean": 0.99, "apgd-ce": 0.93, ...}
"""
from __future__ import annotations

import contextlib
import logging
import re
import sys
import warnings

import torch
from torch import nn

from nslib.attack_core import NORMS, check_model, clean_logits, l2_exact, l2_project, linf_box
from nslib.checks import check_choice, check_eps, check_positive_int
from nslib.models import eval_mode

__all__ = ["autoattack", "AA_NAMES"]

AA_NAMES = ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t")
_AA_STANDARD = {"standard": ["apgd-ce", "apgd-t", "fab-t", "square"], "plus":
                ["apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"], "rand": ["apgd-ce", "apgd-dlr"]}
_AA_ACC = re.compile(r"robust accuracy after ([A-Za-z-]+): ([0-9.]+)%")
_AA_INIT = re.compile(r"initial accuracy: ([0-9.]+)%")


class _Capture(logging.Handler):
    """Keeps every record of AutoAttack's logger (its per-batch debug lines stay out of the user's handlers)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


def _attack_order(version: str, attacks) -> list[str]:
    """The attacks AutoAttack will run, in order; ValueError for an unknown version or attack list."""
    version = check_choice(version, "version", ("standard", "plus", "rand", "custom"))
    if version == "custom":
        if not attacks or any(a not in AA_NAMES for a in attacks):
            raise ValueError(f"attacks must be a non-empty list drawn from {', '.join(AA_NAMES)} for "
                             f"version='custom', got {attacks!r}")
        return list(attacks)
    if attacks is not None:
        raise ValueError(f"attacks is only used with version='custom', got version={version!r}")
    return _AA_STANDARD[version]


@contextlib.contextmanager
def _isolated(model: nn.Module):
    """Run AutoAttack without leaving a trace: the model in eval mode, its parameters frozen with ``.grad`` set
    aside, torch's random state, ``sys.settrace`` and AutoAttack's logger all restored afterwards, also when the
    body raises. Yields the :class:`_Capture` holding AutoAttack's log records."""
    logger = logging.getLogger("auto-attack")
    capture = _Capture()
    saved = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() \
        else None
    trace = sys.gettrace()
    log_state = (logger.level, logger.propagate)
    with eval_mode(model):
        try:
            for p, _, _ in saved:
                p.grad = None
                p.requires_grad_(False)
            logger.addHandler(capture)
            logger.setLevel(logging.DEBUG)
            logger.propagate = False
            yield capture
        finally:
            logger.removeHandler(capture)
            logger.setLevel(log_state[0])
            logger.propagate = log_state[1]
            sys.settrace(trace)
            for p, req, grad in saved:
                p.requires_grad_(req)
                p.grad = grad
            torch.set_rng_state(cpu_rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state_all(cuda_rng)


def _read_log(records, order: list[str]) -> dict[str, float]:
    """"clean" and each attack's robust accuracy from AutoAttack's log; its warnings re-emitted as UserWarning."""
    accuracy: dict[str, float] = {}
    for rec in records:
        msg = rec.getMessage()
        if rec.levelno >= logging.WARNING:
            warnings.warn(f"AutoAttack: {msg}", UserWarning, stacklevel=3)
        elif (mt := _AA_INIT.search(msg)) is not None:
            accuracy["clean"] = float(mt.group(1)) / 100
        elif (mt := _AA_ACC.search(msg)) is not None:
            accuracy[mt.group(1).lower()] = float(mt.group(2)) / 100
    for name in order:  # attacks skipped once nothing was left robust
        accuracy.setdefault(name, 0.0)
    return accuracy


def autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "linf",
               version: str = "standard", attacks: list[str] | None = None, seed: int = 0,
               batch_size: int = 500, restarts: int | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    r"""AutoAttack, 'Reliable Evaluation of Adversarial Robustness with an Ensemble of Diverse
    Parameter-free Attacks' [https://arxiv.org/abs/2003.01690], the reference code (``pyautoattack``).

    A wrapper, not a reimplementation. Around ``AutoAttack.run_standard_evaluation`` it: puts the model
    in eval mode and restores every module's flag; sets the parameters' ``requires_grad`` off and their
    ``.grad`` aside (FAB calls ``.backward()``, which would add into them) and restores both; saves and
    restores torch's global random state (the sub-attacks reseed it) and any ``sys.settrace`` function
    (its dynamic-defense check clears it); re-emits AutoAttack's check warnings (randomised or dynamic
    defense, probabilities as outputs, too few classes, Square beating the gradient attacks) as Python
    ``UserWarning``; and reads the robust accuracy after each attack from its debug log, which it keeps
    out of the user's logging.

    Args:
        model (nn.Module): maps images in [0, 1] to logits.
        x (Tensor): clean images, never modified.
        y (Tensor): true labels.
        eps (float): radius, >= 0.
        norm (str): "linf" or "l2".
        version (str): "standard" (APGD-CE, APGD-T, FAB-T, Square), "plus", "rand", or "custom" with
            ``attacks`` a list drawn from "apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t".
        attacks (list or None): the attacks of ``version="custom"``.
        seed (int): AutoAttack's seed (its sub-attacks reseed torch with it).
        batch_size (int): examples per AutoAttack batch.
        restarts (int or None): restarts of the untargeted APGD and FAB attacks; None keeps AutoAttack's
            own (1 in "standard"; 5 in "custom", where its constructor's default stays).

    Shapes:
        x: [N, C, H, W] in [0, 1]; y: [N] int64; output: like ``x``.

    Returns:
        (x_adv, accuracy): ``x_adv`` holds the first successful adversarial example per example (``x``
        where none was found), inside [0, 1] and the eps-ball; ``accuracy`` maps "clean" and then each
        attack run, in order, to the robust accuracy after it (a fraction; AutoAttack logs it to 0.01
        percentage points). Attacks skipped because no example was left robust map to 0.0.

    Raises:
        ImportError: pyautoattack is not installed (``pip install nslib[autoattack]``).
        ValueError, TypeError: bad input (see the module docstring), an unknown version or attack.

    Usage: ``x_adv, acc = autoattack(model, x, y, eps=0.3)``
    """
    try:
        from pyautoattack import AutoAttack  # an optional extra: imported where it is used
    except ImportError as e:
        raise ImportError("autoattack needs the package pyautoattack: pip install 'nslib[autoattack]' "
                          "(or pip install pyautoattack)") from e
    eps = check_eps(eps)
    norm = check_choice(norm, "norm", NORMS)
    order = _attack_order(version, attacks)
    batch_size = check_positive_int(batch_size, "batch_size")
    if restarts is not None:
        restarts = check_positive_int(restarts, "restarts")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    check_model(model)
    with _isolated(model) as log:
        clean_logits(model, x, y)
        aa = AutoAttack(model, norm={"linf": "Linf", "l2": "L2"}[norm], eps=eps, version=version,
                        attacks=attacks if version == "custom" else None, seed=seed, device=x.device)
        if restarts is not None:
            aa.apgd.n_restarts = aa.fab.n_restarts = restarts
        x_adv, _ = aa.run_standard_evaluation(x.detach(), y.detach().to(x.device), batch_size=batch_size)
    accuracy = _read_log(log.records, order)
    # every attack's contract: x_adv exactly inside [0, 1] and the eps-ball, in x's dtype
    if norm == "linf":
        lo, hi = linf_box(x, eps)
        x_adv = torch.min(torch.max(x_adv.to(x.dtype), lo), hi)
    else:
        x_adv = l2_exact(x, l2_project(x, x_adv.to(x.dtype), eps), eps)
    return x_adv, accuracy
