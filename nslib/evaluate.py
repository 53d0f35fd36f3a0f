"""Robust accuracy under one attack or a suite of attacks, with 95% confidence intervals, and the AutoAttack wrapper.

An example counts as robust when the model classifies it correctly both clean and after the attack
(so a fixed-radius attack cannot do worse than the clean accuracy: ``x`` itself is in the ball). Every
verdict is an fp32 forward pass in eval mode; the model's train/eval flags are restored afterwards.
Intervals are Wilson score intervals for a binomial proportion.

Usage::

    res = robust_accuracy(model, x, y, lambda m, xb, yb: attacks.pgd(m, xb, yb, eps=0.1, steps=20))
    rows = run_suite(model, x, y, [{"attack": "pgd", "eps": 0.1, "steps": 20}, {"attack": "fgsm", "eps": 0.1}])
    print(format_table(rows))
"""
from __future__ import annotations

import inspect
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from nslib import attacks as _attacks, minnorm
from nslib.autoattack import autoattack
from nslib.fast import attack_batch
from nslib.checks import check_choice, check_eps, check_images, check_labels, check_logits, check_positive_int, \
    model_device
from nslib.checks import check_finite
from nslib.models import eval_mode

__all__ = ["RobustAccuracy", "wilson_interval", "robust_accuracy", "min_norm_accuracy", "run_suite",
           "format_table", "autoattack", "Attack", "ATTACKS", "attack_label", "attack_norm", "attack_grammar",
           "parse_attack", "takes", "NORM_LABELS", "accuracy_of", "perturbation_norms", "craft", "accuracy_on"]


def wilson_interval(correct: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval (low, high) for ``correct`` successes out of ``n``; (0, 1) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)  # 1.96 for 95%
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low = 0.0 if correct == 0 else max(0.0, centre - half)  # exact at the ends (no rounding residue)
    high = 1.0 if correct == n else min(1.0, centre + half)
    return low, high


@dataclass
class RobustAccuracy:
    """Result of :func:`robust_accuracy`: accuracies are fractions in [0, 1]; (low, high) is the 95% CI."""
    clean_accuracy: float
    robust_accuracy: float
    low: float
    high: float
    n: int
    correct_clean: int
    correct_robust: int
    wall_s: float
    robust: torch.Tensor = field(repr=False)  # [n] bool, on the CPU: which examples stayed correct


def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(x)
    check_logits(out, x.shape[0])
    return out.float().argmax(1)


def robust_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack, *, batch_size: int | None = None,
                    progress: bool = False, skip_wrong: bool = False) -> RobustAccuracy:
    """Share of examples classified correctly both clean and after ``attack``, with a 95% Wilson interval.

    Args:
        model (nn.Module): maps images in [0, 1] to logits; evaluated in eval mode, flags restored.
        x (Tensor): images [N, C, H, W] in [0, 1], on any device (moved batch by batch to the model's).
        y (Tensor): labels [N] int64.
        attack (callable): ``attack(model, x, y) -> x_adv``, e.g.
            ``functools.partial(nslib.attacks.pgd, eps=0.1, steps=20)``; called on each batch (with
            ``skip_wrong``, on its examples the model classifies correctly clean).
        batch_size (int or None): examples per attack call, >= 1 (None: 500 on a GPU, 128 on a CPU,
            :func:`nslib.fast.attack_batch`).
        progress (bool): show a tqdm bar over batches.
        skip_wrong (bool): attack only the examples classified correctly clean (the others are not robust
            whatever the attack does): less work for an attack that cannot stop early by itself. It changes
            the batches the attack sees, so a randomly started attack draws other starts; the kit's PGD and
            MIM stop early instead (``early_stop=True``), which keeps each example's draws and so gives, example
            by example, the full attack's answer or a stronger one.

    Raises:
        ValueError, TypeError: bad input, or an attack that returns something shaped unlike its input.

    Usage: ``robust_accuracy(model, x, y, partial(pgd, eps=0.1), batch_size=256).robust_accuracy``
    """
    check_images(x)
    check_labels(y, x.shape[0])
    with eval_mode(model):
        check_finite(model, x)  # NaN logits would read as a robust accuracy (PGD stays at its start)
    if not callable(attack):
        raise TypeError(f"attack must be a callable (model, x, y) -> x_adv, got {type(attack).__name__}")
    device = model_device(model)
    batch_size = check_positive_int(attack_batch(device, batch_size), "batch_size")
    n = x.shape[0]
    clean_ok, robust_ok = [], []
    t0 = time.perf_counter()
    starts = range(0, n, batch_size)
    if progress:
        starts = tqdm(starts, desc="robust accuracy", unit="batch")
    with eval_mode(model):
        for i in starts:
            xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
            ok = _predict(model, xb) == yb
            todo = ok.nonzero().flatten() if skip_wrong else torch.arange(len(yb), device=yb.device)
            robust = torch.zeros_like(ok)
            if len(todo):
                xs = xb if len(todo) == len(xb) else xb[todo]
                x_adv = attack(model, xs, yb[todo])
                if isinstance(x_adv, tuple):  # autoattack returns (x_adv, accuracy)
                    x_adv = x_adv[0]
                if not isinstance(x_adv, torch.Tensor) or x_adv.shape != xs.shape:
                    got = tuple(x_adv.shape) if isinstance(x_adv, torch.Tensor) else type(x_adv).__name__
                    raise ValueError(f"attack must return x_adv shaped like its input {tuple(xs.shape)}, got {got}")
                robust[todo] = ok[todo] & (_predict(model, x_adv) == yb[todo])  # correct clean and attacked
            clean_ok.append(ok.cpu())
            robust_ok.append(robust.cpu())
    wall = time.perf_counter() - t0
    clean, robust = torch.cat(clean_ok), torch.cat(robust_ok)
    k = int(robust.sum())
    low, high = wilson_interval(k, n)
    return RobustAccuracy(clean_accuracy=float(clean.float().mean()), robust_accuracy=k / n, low=low, high=high,
                          n=n, correct_clean=int(clean.sum()), correct_robust=k, wall_s=wall, robust=robust)


def min_norm_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor, *,
                      radius: float | None = None, norm: str = "l2") -> dict:
    """Robust accuracy at ``radius`` from the output of a minimal-norm attack (:func:`nslib.minnorm.fmn`,
    :func:`nslib.minnorm.cw_l2`).

    An example is robust at ``radius`` when it is classified correctly clean and its smallest
    perturbation found exceeds ``radius`` (or none was found: ``x_adv`` is still classified correctly).

    Returns a dict: ``clean_accuracy``, ``norms`` [N] (the perturbation's norm where the attack
    succeeded, inf where it failed, 0 where the clean input is already misclassified), ``median_norm``
    over the examples that are correct clean (inf when half of them or more resisted; torch's median is
    the lower of the two middle values), and, when ``radius`` is given,
    ``robust_accuracy``, ``low``, ``high`` (95% Wilson interval), ``n``.

    Raises:
        ValueError, TypeError: bad input: images outside [0, 1], ``x_adv`` not shaped like ``x``, labels
            of the wrong shape or outside [0, classes) (classes: the width of the model's logits).

    Usage: ``min_norm_accuracy(model, x, y, fmn(model, x, y), radius=1.0)["robust_accuracy"]``
    """
    check_images(x)
    check_images(x_adv, "x_adv")
    check_labels(y, x.shape[0])
    norm = check_choice(norm, "norm", _attacks.NORMS)
    if x_adv.shape != x.shape:
        raise ValueError(f"x_adv must have the shape of x {tuple(x.shape)}, got {tuple(x_adv.shape)}")
    device = model_device(model)
    with eval_mode(model):
        xd, yd = x.to(device), y.to(device)
        with torch.no_grad():
            logits = model(xd)
        classes = check_logits(logits, x.shape[0]).shape[1]
        check_labels(y, x.shape[0], classes, why=f"the model returns {classes} logits")
        clean_ok = (logits.float().argmax(1) == yd).cpu()
        adv_ok = (_predict(model, x_adv.to(device)) == yd).cpu()
    norms = perturbation_norms(x, x_adv, norm, broken=~adv_ok, correct=clean_ok)
    out = {"norms": norms, "clean_accuracy": float(clean_ok.float().mean()),
           "median_norm": float(norms[clean_ok].median()) if bool(clean_ok.any()) else 0.0}
    if radius is not None:
        radius = check_eps(radius, "radius")
        robust = clean_ok & (norms > radius)
        k, n = int(robust.sum()), x.shape[0]
        low, high = wilson_interval(k, n)
        out.update(robust_accuracy=k / n, low=low, high=high, n=n, robust=robust)
    return out


def perturbation_norms(x: torch.Tensor, x_adv: torch.Tensor, norm: str, *, broken: torch.Tensor,
                       correct: torch.Tensor) -> torch.Tensor:
    """Each example's smallest perturbation as a minimal-norm attack reports it: the ``norm`` ("l2" or "linf") of
    ``x_adv - x`` (in float64, on the CPU) where the attack ``broken`` it, inf where it did not, 0 where the model is
    wrong on it clean (not ``correct``): it is robust at a radius r when that is > r."""
    delta = (x_adv.double() - x.double()).flatten(1).cpu()
    norms = delta.norm(dim=1) if norm == "l2" else delta.abs().amax(1)
    norms = torch.where(broken.cpu(), norms, torch.full_like(norms, float("inf")))
    return torch.where(correct.cpu(), norms, torch.zeros_like(norms))


@dataclass(frozen=True)
class Attack:
    """One entry of :data:`ATTACKS`: the attack function and what :func:`run_suite` needs to know about it.

    ``fn(model, x, y, **params) -> x_adv`` (or ``(x_adv, details)``); ``label(params)`` is the name a person
    reads, computed from the parameters that ran (``{"steps": 10}`` -> "PGD-10"); ``min_norm``: it returns the
    smallest perturbation it found and takes no radius (robust accuracy at a ``"radius"`` of the suite entry);
    ``seeded``: it takes ``seed``; ``whole_batch``: it runs once over all of x and batches by itself;
    ``stops_early``: it takes ``early_stop`` (stop attacking an example once it is broken), which
    :func:`run_suite` turns on, since a suite reads only robust accuracy; ``norm``: the norm of its radius (or, for a
    minimal-norm attack, of the perturbation it minimises) when ``fn`` takes no ``norm`` argument.
    """
    fn: Callable
    label: Callable[[dict], str]
    min_norm: bool = False
    seeded: bool = False
    whole_batch: bool = False
    stops_early: bool = False
    norm: str = "linf"  # the norm of its radius when ``fn`` takes no ``norm`` argument (C&W-L2: "l2")


NORM_LABELS = {"linf": "Linf", "l2": "L2"}  # how a label spells a norm


def takes(fn: Callable, name: str) -> bool:
    """Whether the attack function ``fn`` takes a ``name`` argument."""
    return name in inspect.signature(fn).parameters


def _default(fn: Callable, name: str):
    return inspect.signature(fn).parameters[name].default


def _steps_label(name: str, fn: Callable) -> Callable[[dict], str]:
    """"PGD-10", "PGD-L2-20 x3" (restarts), "MIM-10", "FMN-L2-100": the attack, its norm unless Linf is both it and
    the function's default, steps (``fn``'s own default when not given), restarts."""
    default_steps, default_norm = _default(fn, "steps"), _default(fn, "norm") if takes(fn, "norm") else "linf"

    def label(p: dict) -> str:
        norm = p.get("norm", default_norm)
        norm = "" if norm == default_norm == "linf" else f"-{NORM_LABELS[norm]}"  # "FMN-Linf": FMN's default is L2
        restarts = f" x{p['restarts']}" if p.get("restarts", 1) > 1 else ""
        return f"{name}{norm}-{p.get('steps', default_steps)}{restarts}"
    return label


# name -> Attack: the one place an attack is declared, read by run_suite, craft, the E3 suite, `analyze --attack` and
# `nslib evaluate --attacks` (parse_attack: its grammar, attack_label: its labels, attack_norm: which radius it takes)
ATTACKS = {
    "fgsm": Attack(_attacks.fgsm, label=lambda p: "FGSM"),
    "pgd": Attack(_attacks.pgd, label=_steps_label("PGD", _attacks.pgd), seeded=True, stops_early=True),
    "mim": Attack(_attacks.mim, label=_steps_label("MIM", _attacks.mim), stops_early=True),
    "cw_l2": Attack(minnorm.cw_l2, label=lambda p: "C&W-L2", min_norm=True, norm="l2"),
    "fmn": Attack(minnorm.fmn, label=_steps_label("FMN", minnorm.fmn), min_norm=True),
    "autoattack": Attack(autoattack, label=lambda p: "AutoAttack" + (" (custom)" if p.get("version") == "custom"
                                                                      else ""), seeded=True, whole_batch=True),
}


def attack_norm(spec: dict) -> str:
    """The norm of a suite entry's radius ("linf" or "l2"): its ``"norm"`` parameter, else its function's default,
    else the entry's declared :attr:`Attack.norm`."""
    entry = ATTACKS[spec["attack"]]
    if "norm" in spec:
        return spec["norm"]
    return _default(entry.fn, "norm") if takes(entry.fn, "norm") else entry.norm


def _spelled(name: str) -> str:
    """How the command line spells an attack of :data:`ATTACKS` ("cw_l2" -> "cw-l2")."""
    return name.replace("_", "-")


def attack_grammar() -> str:
    """The ``--attacks`` grammar, from :data:`ATTACKS`: each name, ``[-NORM]`` where it takes a norm, ``[-STEPS]`` where
    it takes steps."""
    return ", ".join(_spelled(name) + ("[-linf|l2]" if takes(entry.fn, "norm") else "")
                     + ("[-STEPS]" if takes(entry.fn, "steps") else "") for name, entry in ATTACKS.items())


def parse_attack(text: str) -> dict:
    """A suite entry from the command line's spelling: ``NAME[-NORM][-STEPS]``, NAME an attack of :data:`ATTACKS` ("_"
    spelled "-"), NORM (linf or l2) where its function takes ``norm``, STEPS where it takes ``steps``; what is not
    given is the function's own default. ``"pgd-l2-50"`` -> ``{"attack": "pgd", "norm": "l2", "steps": 50}``.

    Raises: ValueError naming the text, with the grammar, when it names no attack or a part the attack does not take.
    """
    text = str(text).strip().lower()
    wrong = ValueError(f"unknown attack {text!r}; expected one of {attack_grammar()}")
    names = sorted(ATTACKS, key=len, reverse=True)  # the longest first: "cw_l2" before a name "cw" would be
    name = next((n for n in names if text == _spelled(n) or text.startswith(_spelled(n) + "-")), None)
    if name is None:
        raise wrong
    fn, spec = ATTACKS[name].fn, {"attack": name}
    rest = text[len(name) + 1:].split("-") if len(text) > len(name) else []
    if rest and rest[0] in _attacks.NORMS and takes(fn, "norm"):
        spec["norm"] = rest.pop(0)
    if rest and rest[0].isdigit() and takes(fn, "steps"):
        spec["steps"] = int(rest.pop(0))
        if spec["steps"] < 1:
            raise ValueError(f"attack {text!r} needs at least one step")
    if rest:
        raise wrong
    return spec


def craft(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: dict, *, seed: int = 0,
          batch_size: int | None = None) -> torch.Tensor:
    """Adversarial examples of one fixed-radius attack ``spec`` (``{"attack": name, **params}``, see
    :data:`ATTACKS`) in batches on the model's device, each batch seeded with ``seed`` (an attack that batches by
    itself runs once); x_adv like ``x``, on the CPU. ValueError for an unknown or a minimal-norm attack."""
    if not isinstance(spec, dict) or spec.get("attack") not in ATTACKS or ATTACKS[spec["attack"]].min_norm:
        raise ValueError(f"spec must name a fixed-radius attack of ATTACKS "
                         f"({', '.join(n for n, a in ATTACKS.items() if not a.min_norm)}), got {spec!r}")
    entry, device = ATTACKS[spec["attack"]], model_device(model)
    kwargs = {k: v for k, v in spec.items() if k != "attack"} | ({"seed": seed} if entry.seeded else {})
    step = x.shape[0] if entry.whole_batch else attack_batch(device, batch_size)
    parts = []
    for i in range(0, x.shape[0], step):
        torch.manual_seed(seed)
        out = entry.fn(model, x[i:i + step].to(device), y[i:i + step].to(device), **kwargs)
        parts.append((out[0] if isinstance(out, tuple) else out).cpu())
    return torch.cat(parts)


def attack_label(spec: dict) -> str:
    """The name a person reads for a suite entry ``{"attack": name, **params}``, from its parameters."""
    return ATTACKS[spec["attack"]].label({k: v for k, v in spec.items() if k != "attack"})


def run_suite(model: nn.Module, x: torch.Tensor, y: torch.Tensor, suite: list[dict], *, batch_size: int | None = None,
              seed: int = 0, progress: bool = False) -> list[dict]:
    """Run a list of attacks; return one row per attack (a list of dicts, ready for pandas or a CSV).

    Each entry of ``suite`` is ``{"attack": name, **parameters}`` with ``name`` in :data:`ATTACKS`
    ("fgsm", "pgd", "mim", "cw_l2", "fmn", "autoattack"). ``seed`` goes to the attacks that take one (pgd,
    autoattack) and seeds torch before each attack. The minimal-norm attacks ("cw_l2", "fmn") take a
    ``"radius"`` (in their norm: L2, or fmn's ``"norm"``) for their robust accuracy and also report the median
    smallest perturbation; "autoattack" runs once over all of ``x`` (it batches by itself) and reports the
    robust accuracy after each of its attacks.

    Row keys: attack (the entry's name), label (:func:`attack_label`, computed from the parameters), params,
    clean_accuracy, robust_accuracy, low, high (its 95% interval), n, seed, wall_s, outcomes (1 or 0 per example: still
    correct or not; minimal-norm attacks only with a radius), and median_l2 or median_linf (minimal-norm attacks)
    or per_attack (autoattack).

    Usage: ``run_suite(model, x, y, [{"attack": "pgd", "eps": 0.1, "steps": 20}])  # row label "PGD-20"``
    """
    check_images(x)
    check_labels(y, x.shape[0])
    with eval_mode(model):
        check_finite(model, x)  # once, before any attack: non-finite numbers never become rows
    batch_size = attack_batch(model_device(model), batch_size)
    rows = []
    for spec in suite:
        if not isinstance(spec, dict) or spec.get("attack") not in ATTACKS:
            raise ValueError(f"each suite entry must be a dict with 'attack' one of {', '.join(ATTACKS)}, "
                             f"got {spec!r}")
        if "label" in spec:
            raise ValueError(f"suite entries take no 'label' (a row's label is computed from its parameters: "
                             f"attack_label), got {spec!r}")
        params = {k: v for k, v in spec.items() if k != "attack"}
        name, entry = spec["attack"], ATTACKS[spec["attack"]]
        kwargs = dict(params)
        if entry.seeded:
            kwargs.setdefault("seed", seed)
        if entry.stops_early:  # only robust accuracy is read: a broken example needs no more steps
            kwargs.setdefault("early_stop", True)
        torch.manual_seed(seed)
        row = {"attack": name, "label": entry.label(params), "params": params, "seed": seed,
               "early_stop": bool(kwargs.get("early_stop", False))}
        if entry.min_norm:
            radius, norm = kwargs.pop("radius", None), kwargs.get("norm", "l2")
            t0 = time.perf_counter()
            device = model_device(model)
            parts = [entry.fn(model, x[i:i + batch_size].to(device), y[i:i + batch_size].to(device),
                              **kwargs).cpu() for i in range(0, x.shape[0], batch_size)]
            wall = time.perf_counter() - t0
            res = min_norm_accuracy(model, x.cpu(), y.cpu(), torch.cat(parts), radius=radius, norm=norm)
            row.update(clean_accuracy=res["clean_accuracy"],
                       robust_accuracy=res.get("robust_accuracy", float("nan")),
                       low=res.get("low", float("nan")), high=res.get("high", float("nan")),
                       n=x.shape[0], wall_s=wall, **{f"median_{norm}": res["median_norm"]},
                       **({"outcomes": res["robust"].int().tolist()} if "robust" in res else {}))
        else:
            fn = entry.fn
            details = {}

            def attack(m, xb, yb, fn=fn, kwargs=kwargs, details=details):
                out = fn(m, xb, yb, **kwargs)
                if isinstance(out, tuple):
                    details.update(out[1])
                    out = out[0]
                return out

            bs = x.shape[0] if entry.whole_batch else batch_size
            if entry.whole_batch:
                kwargs.setdefault("batch_size", batch_size)
            res = robust_accuracy(model, x, y, attack, batch_size=bs, progress=progress)
            row.update(clean_accuracy=res.clean_accuracy, robust_accuracy=res.robust_accuracy, low=res.low,
                       high=res.high, n=res.n, wall_s=res.wall_s, outcomes=res.robust.int().tolist())
            if details:
                row["per_attack"] = dict(details)
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    """A plain-text table of :func:`run_suite` rows (accuracies in percent, 95% intervals in brackets)."""
    head = f"{'attack':<14} {'clean':>6} {'robust':>7} {'95% CI':>15} {'n':>6} {'seed':>5} {'time s':>8}  params"
    lines = [head, "-" * len(head)]
    for r in rows:
        extra = "".join(f" median {label} {r[f'median_{norm}']:.3f}" for norm, label in NORM_LABELS.items()
                        if f"median_{norm}" in r)
        lines.append(f"{r['label']:<14} {100 * r['clean_accuracy']:6.1f} {100 * r['robust_accuracy']:7.1f} "
                     f"[{100 * r['low']:5.1f}, {100 * r['high']:5.1f}] {r['n']:6d} {r['seed']:5d} "
                     f"{r['wall_s']:8.2f}  {r['params']}{extra}")
    return "\n".join(lines)


def accuracy_of(ok: torch.Tensor) -> dict:
    """The kit's one shape of an accuracy with its interval, from per-example outcomes (bool or 0/1 [N]):
    ``{"accuracy", "low", "high" (95% Wilson), "n", "correct"}``. Every single accuracy the kit reports has it (a table
    that reports clean and robust accuracy side by side, :func:`run_suite`, names them, with the same low and high)."""
    k, n = int(ok.sum()), len(ok)
    low, high = wilson_interval(k, n)
    return {"accuracy": k / n if n else float("nan"), "low": low, "high": high, "n": n, "correct": k}


@torch.no_grad()
def accuracy_on(model, x_adv: torch.Tensor, y: torch.Tensor, x: torch.Tensor | None = None,
                batch_size: int = 500, outcomes: bool = False) -> dict:
    """Accuracy on ``x_adv`` (counting only examples also correct on ``x`` when given) with its 95% Wilson
    interval: ``{"accuracy", "low", "high", "n", "correct"}``, and with ``outcomes=True`` "outcomes": 1 or 0 per
    example (classified correctly or not), for paired comparisons."""
    dev = next(model.parameters()).device
    with eval_mode(model):
        ok = []
        for i in range(0, len(x_adv), batch_size):
            yb = y[i:i + batch_size].to(dev)
            good = model(x_adv[i:i + batch_size].to(dev)).argmax(1) == yb
            if x is not None:
                good &= model(x[i:i + batch_size].to(dev)).argmax(1) == yb
            ok.append(good.cpu())
    ok = torch.cat(ok)
    out = accuracy_of(ok)
    return {**out, "outcomes": ok.int().tolist()} if outcomes else out
