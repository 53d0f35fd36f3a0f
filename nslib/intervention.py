"""Sensitive-neuron interventions (experiment E2 of Zhang, Liu et al., IEEE TIP 2021, arXiv 1909.06978).

On adversarial inputs, patch chosen neurons of one layer, either restoring them to their values on the
benign inputs or zeroing them, and see what that does to the prediction. If sensitive neurons carry
the adversarial effect (claim C2), restoring the k most sensitive ones recovers more accuracy than
restoring k random or k least sensitive ones.

- :func:`intervene`: logits on x_adv with chosen neurons of one layer restored or zeroed.
- :func:`intervention_curve`: accuracy as a function of k for top / random / bottom / matched choices,
  neurons chosen on one part of the pairs and accuracy measured on the other.

Usage::

    logits = intervene(model, x, x_adv, "layer2.1", top_k(sigma["layer2.1"], 0.1))
    curve = intervention_curve(model, x, x_adv, y, "layer2.1", ks=[0.01, 0.05, 0.1, 0.2])
"""
from __future__ import annotations

import contextlib
import math
import numbers

import torch
from torch import nn

from nslib.checks import (check_choice, check_images, check_labels, check_logits, check_positive_int,
                          model_device)
from nslib.models import default_layers, get_layer
from nslib.models import eval_mode as _eval_mode
from nslib.hooks import Hooks
from nslib.sensitivity import neuron_sensitivity, resolve_k, top_k

__all__ = ["intervene", "intervention_curve", "matched_choice", "intervention_study"]

MODES = ("restore", "zero")
SELECTIONS = ("top", "random", "bottom", "matched")


def _index(neurons, name: str = "neurons") -> torch.Tensor:
    """Neuron indices from a sequence of ints, an int tensor, or a bool mask [width]."""
    t = torch.as_tensor(neurons) if not isinstance(neurons, torch.Tensor) else neurons.detach()
    if t.dtype == torch.bool:
        if t.dim() != 1:
            raise ValueError(f"{name} as a mask must be 1-D [neurons], got shape {tuple(t.shape)}")
        return t.nonzero().flatten().cpu()
    if t.numel() == 0:
        return torch.zeros(0, dtype=torch.long)
    if t.is_floating_point() or t.dim() > 1:
        raise TypeError(f"{name} must be integer indices [k] or a bool mask [neurons], got dtype {t.dtype} "
                        f"and shape {tuple(t.shape)}")
    t = t.flatten().long().cpu()
    if len(set(t.tolist())) != t.numel():
        raise ValueError(f"{name} must not repeat an index, got {t.tolist()}")
    return t


def _check_width(idx: torch.Tensor, width: int, layer: str, name: str = "neurons") -> None:
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= width):
        raise ValueError(f"{name} must be indices in [0, {width - 1}] (layer {layer!r} has {width} neurons), "
                         f"got values from {int(idx.min())} to {int(idx.max())}")


def _patch(output: torch.Tensor, idx: torch.Tensor, clean: torch.Tensor | None) -> torch.Tensor:
    """A new tensor: ``output`` with channels ``idx`` (dim 1) taken from ``clean``, or zeroed if None."""
    if idx.numel() == 0:
        return output
    idx = idx.to(output.device)
    if clean is None:
        return output.index_fill(1, idx, 0.0)
    return output.index_copy(1, idx, clean.index_select(1, idx))


class _Patcher:
    """Hooks one layer: records its output (``record``) or patches it (``patch``), per forward pass."""

    def __init__(self, model: nn.Module, layer: str, mode: str):
        self.layer, self.mode, self.action, self.clean, self.adv, self.idx = layer, mode, None, None, None, None
        self.hooks = Hooks(model, [layer], self._fn)
        self.width = None

    def _fn(self, name, output):
        if not isinstance(output, torch.Tensor) or output.dim() < 2:
            raise TypeError(f"layer {name!r} must output a tensor [N, C, ...] or [N, D], got "
                            f"{tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__}")
        self.width = output.shape[1]
        if self.action == "record":
            self.clean = output.clone()  # clone: a later in-place op (ReLU(inplace=True)) must not change it
        elif self.action == "keep":
            self.adv = output.clone()  # the unpatched adversarial output, patched per configuration
        elif self.action == "patch":
            _check_width(self.idx, self.width, self.layer)
            return _patch(output, self.idx, self.clean if self.mode == "restore" else None)
        return None


def intervene(model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, layer: str, neurons, *,
              mode: str = "restore", batch_size: int = 256) -> torch.Tensor:
    """Logits of ``model`` on ``x_adv`` with chosen neurons of one layer restored to benign values or zeroed.

    The model runs in eval mode under ``torch.no_grad()``; each module's train/eval mode is restored
    afterwards, and the hook is removed, also on error. Batches are moved to the model's device.

    Args:
        model: maps [N, C, H, W] images in [0, 1] to logits [N, classes].
        x: benign images [N, C, H, W] in [0, 1] (read only for ``mode="restore"``, but always checked).
        x_adv: adversarial images, same shape, in [0, 1].
        layer: dotted module name whose output is patched (a channel of [N, C, H, W], a unit of [N, D]).
        neurons: the neurons to patch: int indices [k] (e.g. from :func:`nslib.sensitivity.top_k`), a
            list of ints, or a bool mask [neurons]; empty means no patch.
        mode: "restore" replaces the neurons' outputs on x_adv by their outputs on x (same example);
            "zero" sets them to 0.
        batch_size: examples per forward pass.

    Returns:
        logits [N, classes] on the model's device.

    Raises:
        ValueError/TypeError: bad images, an unknown layer (nearest valid names listed), indices outside
            the layer's width, an unknown mode.

    Usage: ``acc = (intervene(model, x, x_adv, "layer2.1", idx).argmax(1) == y).float().mean()``
    """
    check_images(x, "x")
    check_images(x_adv, "x_adv")
    if x.shape != x_adv.shape:
        raise ValueError(f"x and x_adv must have the same shape, got {tuple(x.shape)} and {tuple(x_adv.shape)}")
    check_choice(mode, "mode", MODES)
    batch_size = check_positive_int(batch_size, "batch_size")
    get_layer(model, layer)
    idx = _index(neurons)
    device = model_device(model)
    patcher = _Patcher(model, layer, mode)
    patcher.idx = idx
    outs = []
    with _eval_mode(model), torch.no_grad(), patcher.hooks:
        for start in range(0, x.shape[0], batch_size):
            patcher.clean = None
            if mode == "restore" and idx.numel():
                patcher.action = "record"
                model(x[start:start + batch_size].to(device))
            patcher.action = "patch"
            xb = x_adv[start:start + batch_size].to(device)
            out = model(xb)
            if start == 0:
                check_logits(out, xb.shape[0])
            outs.append(out)
    return torch.cat(outs)


def matched_choice(sensitivity: torch.Tensor, target: float, *, seed: int = 0, at_least_one: bool = True):
    """A seeded random set of neurons whose total sensitivity is as close as possible to ``target``.

    Neurons are drawn in a seeded random order and the prefix whose summed sigma is nearest ``target``
    is kept (NaN counts as 0). It usually holds more neurons than the top-k whose total it matches: it
    restores the same *amount* of change, spread over neurons that are not the most changed.

    Returns: int64 Tensor of neuron indices (in draw order).
    """
    s = torch.nan_to_num(sensitivity.detach().double().cpu(), nan=0.0)
    g = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(s.numel(), generator=g)
    totals = torch.cat([torch.zeros(1, dtype=torch.float64), s[order].cumsum(0)])  # [width + 1]
    gap = (totals - target).abs()
    if at_least_one and s.numel():
        gap[0] = math.inf
    m = int(torch.argmin(gap))
    return order[:m]


def intervention_curve(model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor, layer: str,
                       ks, *, selections=SELECTIONS, seeds=(0, 1, 2), mode: str = "restore",
                       split: float = 0.5, split_seed: int = 0, sensitivity: torch.Tensor | None = None,
                       relative: bool = False, batch_size: int = 256) -> dict:
    """Accuracy on adversarial inputs as a function of how many neurons of ``layer`` are patched.

    Neurons are chosen on one set of pairs and accuracy is measured on another: otherwise "restoring
    the neurons that changed most helps most" would hold by construction. Unless ``sensitivity`` is
    given, the pairs are split at random (``split_seed``): a ``split`` share for
    :func:`nslib.sensitivity.neuron_sensitivity`, the rest for accuracy.

    Selections, for each k:
        - "top": the k most sensitive neurons; "bottom": the k least sensitive;
        - "random": k neurons drawn uniformly, once per seed;
        - "matched": neurons drawn at random (once per seed) until their total sensitivity is nearest
          the top-k's total (:func:`matched_choice`); the control that separates "these neurons
          matter" from "these neurons changed most".

    Args:
        model, x, x_adv: as in :func:`intervene`; y: labels [N] int64.
        layer: dotted module name.
        ks: sizes, each an int count or a float fraction of the layer's width
            (:func:`nslib.sensitivity.resolve_k`); 0 is the unpatched adversarial accuracy.
        selections: a subset of ("top", "random", "bottom", "matched").
        seeds: seeds of the random and matched choices (their spread is the band in the figure).
        mode: "restore" or "zero" (see :func:`intervene`).
        split: share of the pairs used to choose neurons, in (0, 1).
        split_seed: seed of the split.
        sensitivity: the layer's sigma [neurons] computed on *other* pairs; then all N pairs measure.
        relative: choose by the relative sensitivity (dead neurons rank last).
        batch_size: examples per forward pass.

    Returns:
        a dict with layer, mode, width, n_select, n_eval, clean_accuracy, adv_accuracy (floats in
        [0, 1] on the measuring pairs), sensitivity (the layer's sigma used to choose, on CPU) and rows:
        one dict per (selection, k, seed) with keys layer, mode, selection, k (the resolved size),
        neurons (how many were patched; differs from k for "matched"), seed (None for top/bottom),
        sensitivity_total, accuracy. ``pandas.DataFrame(curve["rows"])`` gives a table.

    Usage: ``curve = intervention_curve(model, x, x_adv, y, "layer2.1", ks=[1, 0.05, 0.1], seeds=range(5))``
    """
    selections, seeds, ks, batch_size = _check_curve_args(model, x, x_adv, y, layer, ks, selections, seeds, mode,
                                                          batch_size)
    n = x.shape[0]
    if sensitivity is None:
        if not 0.0 < split < 1.0:
            raise ValueError(f"split must be in (0, 1), got {split}")
        if n < 2:
            raise ValueError(f"need at least 2 pairs to split into choosing and measuring sets, got {n}")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(split_seed)))
        n_sel = min(n - 1, max(1, round(split * n)))
        sel, ev = perm[:n_sel].to(x.device), perm[n_sel:].to(x.device)
        sigma = neuron_sensitivity(model, x[sel], x_adv[sel], layers=[layer], batch_size=batch_size,
                                   relative=relative)[layer]
        x, x_adv, y = x[ev], x_adv[ev], y[ev.to(y.device)]
    else:
        if not isinstance(sensitivity, torch.Tensor) or sensitivity.dim() != 1:
            raise TypeError("sensitivity must be a 1-D Tensor [neurons] of the layer, computed on other pairs")
        sigma, n_sel = sensitivity.detach(), 0
    sigma = sigma.float().cpu()
    width = sigma.numel()
    sig0 = torch.nan_to_num(sigma, nan=0.0)

    configs = _configurations(sigma, layer, ks, selections, seeds)
    correct = _count_correct(model, x, x_adv, y, layer, mode, configs, width, batch_size)
    clean_correct, adv_correct = correct[-2], correct[-1]
    m = x.shape[0]
    rows = [{"layer": layer, "mode": mode, "selection": s, "k": kk, "neurons": int(idx.numel()), "seed": seed,
             "sensitivity_total": float(sig0[idx].sum()), "accuracy": c / m}
            for (s, kk, seed, idx), c in zip(configs, correct[:-2])]
    return {"layer": layer, "mode": mode, "width": width, "n_select": n_sel, "n_eval": m,
            "clean_accuracy": clean_correct / m, "adv_accuracy": adv_correct / m, "sensitivity": sigma,
            "rows": rows}


def _check_curve_args(model, x, x_adv, y, layer, ks, selections, seeds, mode, batch_size):
    """The arguments of :func:`intervention_curve`, checked: (selections, seeds, ks, batch_size)."""
    check_images(x, "x")
    check_images(x_adv, "x_adv")
    if x.shape != x_adv.shape:
        raise ValueError(f"x and x_adv must have the same shape, got {tuple(x.shape)} and {tuple(x_adv.shape)}")
    check_labels(y, x.shape[0])
    check_choice(mode, "mode", MODES)
    batch_size = check_positive_int(batch_size, "batch_size")
    get_layer(model, layer)
    selections = tuple(selections)
    if not selections:
        raise ValueError("selections must name at least one of " + ", ".join(SELECTIONS))
    for s in selections:
        check_choice(s, "selections", SELECTIONS)
    seeds = [int(s) for s in seeds]
    if not seeds and any(s in ("random", "matched") for s in selections):
        raise ValueError("seeds must hold at least one seed for the random and matched selections")
    ks = list(ks) if not isinstance(ks, (numbers.Real, str)) else [ks]
    if not ks:
        raise ValueError("ks must hold at least one size")
    return selections, seeds, ks, batch_size


def _configurations(sigma, layer, ks, selections, seeds) -> list[tuple]:
    """``[(selection, k, seed, neuron indices)]``: every choice of neurons :func:`intervention_curve` patches."""
    sig0 = torch.nan_to_num(sigma, nan=0.0)
    width = sigma.numel()
    configs = []
    for k in ks:
        kk = resolve_k(k, width, layer)
        top = top_k(sigma, kk, which="top", layer=layer)
        for s in selections:
            if s == "top":
                configs.append((s, kk, None, top))
            elif s == "bottom":
                configs.append((s, kk, None, top_k(sigma, kk, which="bottom", layer=layer)))
            elif s == "random":
                configs += [(s, kk, seed, top_k(sigma, kk, which="random", seed=seed, layer=layer))
                            for seed in seeds]
            else:
                target = float(sig0[top].sum())
                configs += [(s, kk, seed, matched_choice(sigma, target, seed=seed, at_least_one=kk > 0))
                            for seed in seeds]
    return configs


def _rest_of(model: nn.Module, layer: str) -> tuple[nn.Module, list[nn.Module]]:
    """``(top, steps)``: the modules that run after ``layer`` inside the ``nn.Sequential`` containers that enclose
    it, innermost first, and the outermost module so reached (``layer`` itself when its parent is no Sequential).

    Applying ``steps`` to the layer's output gives ``top``'s output: what a patched pass computes between the
    two, without the layers before ``layer`` (compute once: every configuration of a layer shares them).
    """
    modules = dict(model.named_modules())
    path = (layer if layer in modules else "net." + layer).split(".")  # Wrapped: names relative to the net
    steps: list[nn.Module] = []
    while path:
        parent = modules[".".join(path[:-1])]  # "" is the model itself
        if not isinstance(parent, nn.Sequential):
            break
        names = list(parent._modules)
        steps += [parent._modules[n] for n in names[names.index(path[-1]) + 1:]]
        path = path[:-1]
    return modules[".".join(path)], steps


@contextlib.contextmanager
def _returning(module: nn.Module, value: torch.Tensor):
    """Within the block, ``module`` returns ``value`` without computing (the rest of the model runs as usual).
    An instance attribute shadows the class's ``forward`` for this one module; on exit, also on error, the
    module's own is back (an instance ``forward`` it already had included)."""
    own = vars(module).get("forward")
    module.forward = lambda *args, **kwargs: value
    try:
        yield
    finally:
        if own is None:
            del module.forward
        else:
            module.forward = own


class _Suffix:
    """Logits of a patched pass from the layer's patched output: the rest of the enclosing Sequentials
    (:func:`_rest_of`), then the model's forward with their outermost module's computation skipped, or
    nothing more when that module's output is the model's logits. Bit-identical to the full patched pass
    (the same modules on the same tensors); :meth:`check` holds it to that on the first batch, and a model
    where it does not hold (a forward that reads its submodules other than by calling them) keeps the full
    pass."""

    def __init__(self, model: nn.Module, layer: str):
        self.model = model
        self.top, self.steps = _rest_of(model, layer)
        self.top_out, self.calls, self.is_logits, self.ok = None, 0, False, True

    def record(self):
        """A forward hook on ``top`` that keeps its output of the last pass and counts its calls."""
        def keep(module, args, output):
            self.top_out, self.calls = output, self.calls + 1
        return self.top.register_forward_hook(keep)

    def logits(self, h: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
        for m in self.steps:
            h = m(h)
        if self.is_logits:
            return h
        self.calls = 0
        with _returning(self.top, h):
            return self.model(xb)

    def check(self, h: torch.Tensor, xb: torch.Tensor, want: torch.Tensor) -> None:
        """``want``: a full patched pass's logits from the patched output ``h``, which :meth:`logits` must equal,
        with ``top`` called once in it. Call after a pass whose logits told :attr:`is_logits`."""
        got = self.logits(h.clone(), xb)
        self.ok = (self.is_logits or self.calls == 1) and torch.equal(got, want)


def _count_correct(model, x, x_adv, y, layer, mode, configs, width, batch_size) -> list[int]:
    """Correct predictions per configuration, then clean, then unpatched adversarial (one list).

    Per batch, the clean and the adversarial pass run whole; each configuration then runs only what comes
    after the patched layer where the model's structure shows it (:class:`_Suffix`; bit-identical)."""
    device = model_device(model)
    patcher = _Patcher(model, layer, mode)
    suffix = _Suffix(model, layer)
    correct = torch.zeros(len(configs) + 2, dtype=torch.long, device=device)  # configs, clean, adversarial
    with _eval_mode(model), torch.no_grad(), patcher.hooks, _removing(suffix.record()):
        for start in range(0, x.shape[0], batch_size):
            xb = x[start:start + batch_size].to(device)
            xab = x_adv[start:start + batch_size].to(device)
            yb = y[start:start + batch_size].to(device)
            patcher.action = "record"
            out = model(xb)
            if start == 0:
                check_logits(out, xb.shape[0])
                if patcher.width != width:
                    raise ValueError(f"sensitivity has {width} neurons but layer {layer!r} has {patcher.width}")
            correct[-2] += (out.argmax(1) == yb).sum()  # counts stay on the device: no sync per pass
            patcher.action = "keep"
            out = model(xab)
            correct[-1] += (out.argmax(1) == yb).sum()
            suffix.is_logits = suffix.top_out is out  # top's output is the model's: nothing runs after it
            patcher.action = None
            check = next((i for i, c in enumerate(configs) if c[3].numel()), 0)  # a configuration that patches
            for i, (_, _, _, idx) in enumerate(configs):
                # a new tensor each time (an in-place op after the layer must not reach the kept output)
                h = _patch(patcher.adv, idx, patcher.clean if mode == "restore" else None) if idx.numel() \
                    else patcher.adv.clone()
                if start == 0 and i == check:
                    patcher.action, patcher.idx = "patch", idx
                    want = model(xab)  # the full patched pass, once: the suffix must give the very same logits
                    patcher.action = None
                    suffix.check(h, xab, want)
                if suffix.ok:
                    logits = suffix.logits(h, xab)
                else:
                    patcher.action, patcher.idx = "patch", idx
                    logits = model(xab)
                    patcher.action = None
                correct[i] += (logits.argmax(1) == yb).sum()
    return correct.tolist()


@contextlib.contextmanager
def _removing(handle):
    try:
        yield handle
    finally:
        handle.remove()


def intervention_study(model, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor, *, layers=None, ks=(0.1,),
                       modes=("restore", "zero"), seeds=(0, 1, 2), split_seed: int = 0) -> dict:
    """:func:`intervention_curve` for each layer and mode: ``{mode: [curve per layer]}``.

    Neurons are chosen on half of the pairs and accuracy measured on the other half (``split_seed``), so
    the measure never sees the pairs that chose the neurons. The split is :func:`intervention_curve`'s, and
    the sensitivities of every layer come from one pass over the choosing half (compute once: they depend on
    neither the layer's curve nor the mode), so each curve is the one :func:`intervention_curve` returns alone.
    """
    layers = default_layers(model) if layers is None else list(layers)
    check_images(x, "x")
    check_images(x_adv, "x_adv")
    n = x.shape[0]
    if n < 2 or x_adv.shape != x.shape:  # intervention_curve says what is wrong
        return {mode: [intervention_curve(model, x, x_adv, y, layer, list(ks), seeds=seeds, mode=mode,
                                          split_seed=split_seed) for layer in layers] for mode in modes}
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(split_seed)))
    n_sel = min(n - 1, max(1, round(0.5 * n)))  # intervention_curve's split at its default share
    sel, ev = perm[:n_sel].to(x.device), perm[n_sel:].to(x.device)
    sigma = neuron_sensitivity(model, x[sel], x_adv[sel], layers=layers)
    x, x_adv, y = x[ev], x_adv[ev], y[ev.to(y.device)]
    out = {}
    for mode in modes:
        out[mode] = [intervention_curve(model, x, x_adv, y, layer, list(ks), seeds=seeds, mode=mode,
                                        sensitivity=sigma[layer]) for layer in layers]
        for curve in out[mode]:
            curve["n_select"] = n_sel  # chosen on the other half, as intervention_curve's split says
    return out
