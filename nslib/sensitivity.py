"""Neuron sensitivity (Zhang, Liu et al., IEEE TIP 2021, https://arxiv.org/abs/1909.06978).

How much each neuron's output changes between benign and adversarial inputs. For layer l, neuron m and
N pairs (x_i, x'_i)::

    sigma(F_l^m) = (1/N) sum_i (1/dim F_l^m(x_i)) || F_l^m(x_i) - F_l^m(x'_i) ||_1

A neuron of a layer whose output is [N, C, H, W] (any [N, C, ...]) is a channel: the mean over positions
of |difference|, taken per position before averaging so that signed changes do not cancel, then the
mean over pairs. A neuron of a layer whose output is [N, D] is a unit. The relative variant divides by
the mean |clean output| of the neuron (a ratio of means).

- :func:`capture`: a context manager recording named layers' outputs (with their autograd graph).
- :func:`batch_sensitivity`: differentiable sigma of one layer on one batch (for SNS training).
- :func:`neuron_sensitivity`: sigma over N pairs, streamed in batches, exact mean, memory independent of N.
- :func:`top_k`, :func:`layer_summary`: sensitive neurons and per-layer tables.

Usage::

    sigma = neuron_sensitivity(model, x, x_adv)                # {layer name: Tensor [neurons]}
    idx = top_k(sigma, 0.1)                                    # {layer name: indices of the top 10%}
    with capture(model, ["layer2.1.conv1"]) as acts:
        logits = model(torch.cat([x, x_adv]))
    s = batch_sensitivity(acts["layer2.1.conv1"][:n], acts["layer2.1.conv1"][n:])  # keeps the graph
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

import torch
from torch import nn
from tqdm.auto import tqdm

from nslib.checks import check_images, check_logits, check_positive_int, check_choice, model_device
from nslib.hooks import Activations, Hooks, layer_list, capture  # noqa: F401  (capture is public here too)
from nslib.models import default_layers, eval_mode as _eval_mode

RELATIVE = ("ratio_of_means", "mean_of_ratios")  # the two relative sensitivities (see neuron_sensitivity)

__all__ = ["capture", "Activations", "batch_sensitivity", "neuron_sensitivity", "sensitivity_variants", "top_k",
           "resolve_k", "layer_summary", "pick_map_layer"]


# ----------------------------------------------------------------------------------------------------
# the measure


def _neurons(t: torch.Tensor, name: str) -> torch.Tensor:
    """[N, C, ...] -> [N, C, positions]; [N, D] -> [N, D, 1]."""
    if t.dim() < 2:
        raise ValueError(f"{name} must be a layer output [N, C, ...] or [N, D], got shape {tuple(t.shape)}")
    return t.reshape(t.shape[0], t.shape[1], -1)


def channel_mean(t: torch.Tensor) -> torch.Tensor:
    """[N, C, ...] -> [C]: the mean over pairs and positions in one reduction (every pair has the same
    positions, so it equals the mean over positions, then over pairs). A channels_last map is reduced as the
    [N*H*W, C] matrix it is in memory, so the gradient flowing back stays channels_last too: SNS adds it to the
    network's own gradient at each hooked layer, and a contiguous one there made that addition, the ReLU
    backward pass and the convolutions' backward pass convert layouts at every step."""
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1]).mean(0)
    return t.mean((0, *range(2, t.dim())))


def batch_sensitivity(acts_clean: torch.Tensor, acts_adv: torch.Tensor, relative: bool = False):
    """Per-neuron sigma of one layer on one batch of pairs, differentiable through both inputs.

    The building block of SNS training: capture the layer on ``torch.cat([x, x_adv])`` with
    :func:`capture` (which keeps the graph) and pass the two halves here.

    Args:
        acts_clean: the layer's outputs on the benign inputs, [N, C, H, W] (a channel is a neuron) or
            [N, D] (a unit is a neuron); any [N, C, ...] works, positions being all dims after C.
        acts_adv: the outputs on the adversarial inputs, same shape.
        relative: divide by the neuron's mean |clean output| on this batch (a ratio of means).

    Returns:
        sigma, a Tensor [C] (dtype of the inputs) with the autograd graph; with ``relative=True`` a
        tuple ``(sigma, dead)`` where ``dead`` [C] bool marks neurons whose clean output is all zero on
        this batch. Their sigma is NaN, but the gradient stays finite: select with ``sigma[~dead]``
        before reducing (``nan`` poisons a plain ``.mean()``).

    Usage: ``loss = batch_sensitivity(a[:n], a[n:]).topk(k).values.mean()``
    """
    for name, t in (("acts_clean", acts_clean), ("acts_adv", acts_adv)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got "
                            f"{t.dtype if isinstance(t, torch.Tensor) else type(t).__name__}")
    if acts_clean.shape != acts_adv.shape:
        raise ValueError(f"acts_clean and acts_adv must have the same shape, got {tuple(acts_clean.shape)} "
                         f"and {tuple(acts_adv.shape)}")
    if acts_clean.dim() < 2:
        raise ValueError(f"acts_clean must be a layer output [N, C, ...] or [N, D], got shape {tuple(acts_clean.shape)}")
    if acts_clean.shape[0] == 0:
        raise ValueError(f"acts_clean must hold at least one pair, got shape {tuple(acts_clean.shape)}")
    sigma = channel_mean((acts_clean - acts_adv).abs())  # [C]: mean over positions, then pairs
    if not relative:
        return sigma
    scale = channel_mean(acts_clean.abs())  # [C]
    dead = scale == 0
    ratio = sigma / torch.where(dead, torch.ones_like(scale), scale)  # finite everywhere, finite grads
    return torch.where(dead, torch.full_like(ratio, math.nan), ratio), dead


class _PairSums:
    """Per layer, float64 sums over the pairs seen so far: of each pair's mean |clean - adv| over positions
    (``diff``) and, for the relative variants, of its mean |clean| (``scale``) and of its own ratio of the two
    (``ratios``, "mean_of_ratios" only). Exact means over all pairs whatever the batch size."""

    def __init__(self, relative):
        self.relative, self.per_pair = relative, relative == "mean_of_ratios"
        self.diff: dict[str, torch.Tensor] = {}
        self.scale: dict[str, torch.Tensor] = {}
        self.ratios: dict[str, torch.Tensor] = {}

    @staticmethod
    def _add(sums: dict, name: str, value: torch.Tensor) -> None:
        if name in sums and value.shape != sums[name].shape:
            raise ValueError(f"layer {name!r} changed width between batches: {sums[name].numel()} then "
                             f"{value.numel()} neurons")
        sums[name] = sums[name] + value if name in sums else value

    def add(self, name: str, clean: torch.Tensor, adv: torch.Tensor) -> None:
        """Reduce one layer's outputs on a batch of pairs ([b, C, ...] each); keeps nothing of the activations."""
        clean, adv = _neurons(clean, name), _neurons(adv, name)  # [b, C, P] each
        change = (clean - adv).abs().mean(2)  # [b, C]
        self._add(self.diff, name, change.sum(0, dtype=torch.float64))
        if self.relative:
            c = clean.abs().mean(2)  # [b, C]: each pair's mean |clean output|
            self._add(self.scale, name, c.sum(0, dtype=torch.float64))
            if self.per_pair:  # each pair's own ratio, 1.0 where its clean output is zero (as the toolbox does)
                r = torch.where(c > 0, change / torch.where(c > 0, c, 1.0), 1.0)
                self._add(self.ratios, name, r.sum(0, dtype=torch.float64))

    def sigma(self, names, n: int) -> dict[str, torch.Tensor]:
        """The means over ``n`` pairs: sigma, or its relative variant with NaN for dead neurons."""
        sigma = {name: (self.diff[name] / n).float() for name in names}
        if not self.relative:
            return sigma
        out = {}
        for name in names:
            dead = self.scale[name] == 0
            num = self.ratios[name] if self.per_pair else self.diff[name]
            den = torch.full_like(self.scale[name], float(n)) if self.per_pair else torch.where(dead, 1.0, self.scale[name])
            out[name] = torch.where(dead, torch.full_like(sigma[name], math.nan), (num / den).float())
        return out


def neuron_sensitivity(model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, *, layers=None,
                       batch_size: int = 256, relative: bool | str = False,
                       progress: bool = False) -> dict[str, torch.Tensor]:
    """The paper's neuron sensitivity sigma of every neuron of the chosen layers over N pairs.

    Streams over batches of pairs (one forward pass of ``torch.cat([x_b, x_adv_b])`` each); hooks
    reduce each layer's output as soon as it is produced (:class:`_PairSums`), so no activation outlives its
    batch. The mean over all N pairs is exact whatever ``batch_size`` (per-batch sums accumulated in float64,
    divided by N at the end); memory does not grow with N. The model runs in eval mode under
    ``torch.no_grad()``; every module's train/eval mode is restored afterwards and the hooks are
    removed, also on error. Batches are moved to the model's device.

    Args:
        model: maps [N, C, H, W] images in [0, 1] to logits [N, classes].
        x: benign images [N, C, H, W] in [0, 1].
        x_adv: their adversarial versions, same shape, in [0, 1] (crafted against ``model`` for the
            white-box measure, or transferred).
        layers: dotted layer names; None means :func:`nslib.models.default_layers`.
        batch_size: pairs per forward pass (the pass holds twice as many images).
        relative: False; True or "ratio_of_means": each neuron's sigma divided by its mean |clean output|
            over all pairs (the kit's default); "mean_of_ratios": the mean over pairs of each pair's
            mean |change| divided by that pair's mean |clean output|, 1.0 for a pair where the clean
            output is zero (the authors' toolbox, AISafety ``EvalBox/UserEvaluation/sns.py``). The two
            differ where a neuron's clean output varies across inputs: a mean of ratios weighs the
            pairs where it is small.
        progress: show a tqdm progress bar.

    Returns:
        dict layer name -> float32 Tensor [neurons] on the model's device. A relative sigma is NaN for the
        dead neurons, whose clean output is zero on every pair and position (``sigma[layer].isnan()``).

    Raises:
        TypeError/ValueError: bad images (not [N, C, H, W] floats in [0, 1], shapes differ), an
            unknown layer (nearest valid names listed), a model that does not return logits.
        RuntimeError: a layer that runs more than once per forward pass.

    Usage: ``sigma = neuron_sensitivity(model, x, x_adv, layers=["layer2.1.conv1"])``
    """
    return sensitivity_variants(model, x, {"sigma": (x_adv, relative)}, layers=layers, batch_size=batch_size,
                                progress=progress)["sigma"]


def sensitivity_variants(model: nn.Module, x: torch.Tensor, variants: dict, *, layers=None, batch_size: int = 256,
                         progress: bool = False, activity: bool = False) -> dict:
    """Several sigmas of the same benign images at the cost of one pass per distinct set of images.

    ``variants`` maps a key to ``(x_adv, relative)`` (as :func:`neuron_sensitivity` takes them). Each batch runs
    one forward pass of the benign images and every distinct ``x_adv`` (the same tensor object named by two
    variants runs once), ``torch.cat([x_b, x_adv1_b, x_adv2_b, ...])``, and every variant reduces its slices of
    each hooked output: compute once, where one :func:`neuron_sensitivity` call per variant repeats the benign
    pass and the shared adversarial ones. The values are :func:`neuron_sensitivity`'s (a single variant is
    exactly its pass; several batch more images per pass, which can move the last bits of a float32
    convolution).

    With ``activity=True`` the result also holds ``"activity"``: each neuron's mean |clean output| over the pairs
    (the denominator of the ratio-of-means relative sigma), from the same pass. A layer's own ratio of means, its
    mean sigma over its mean activity, does not let one nearly silent neuron (activity 1e-8, any change) set the
    layer's value, as a mean of per-neuron ratios does.

    Returns: ``{key: {layer name: Tensor [neurons]}}``, each as :func:`neuron_sensitivity` returns it.

    Usage: ``s = sensitivity_variants(model, x, {"abs": (x_adv, False), "rel": (x_adv, True)})``
    """
    check_images(x, "x")
    if not isinstance(variants, dict) or not variants:
        raise ValueError(f"variants must be a non-empty dict of key -> (x_adv, relative), got {variants!r}")
    if activity and "activity" in variants:
        raise ValueError('variants must not use the key "activity" with activity=True (the result holds it)')
    advs, slot = [], {}  # the distinct adversarial sets (by identity), and each variant's place in the pass
    for key, (x_adv, relative) in variants.items():
        check_images(x_adv, "x_adv" if len(variants) == 1 else f"variants[{key!r}]'s x_adv")
        if x.shape != x_adv.shape:
            raise ValueError(f"x and x_adv must have the same shape, got {tuple(x.shape)} and {tuple(x_adv.shape)}")
        if relative not in (False, True) + RELATIVE:
            raise ValueError(f"relative must be False, True or one of {', '.join(RELATIVE)}, got {relative!r}")
        j = next((i for i, a in enumerate(advs) if a is x_adv), None)
        if j is None:
            advs.append(x_adv)
            j = len(advs) - 1
        slot[key] = j + 1
    batch_size = check_positive_int(batch_size, "batch_size")
    names = layer_list(model, layers)
    device = model_device(model)
    sums = {key: _PairSums(relative) for key, (_, relative) in variants.items()}
    act = {} if activity else None  # per layer, the float64 sum over pairs of each neuron's mean |clean output|
    parts, b = 1 + len(advs), [0]  # b[0]: pairs in the batch now passing (the pass holds parts * b images)

    def reduce(name, output):
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"layer {name!r} must output a tensor, got {type(output).__name__}")
        if output.dim() < 2 or output.shape[0] != parts * b[0]:
            raise ValueError(f"layer {name!r} must output [N, C, ...] with the batch first; got shape "
                             f"{tuple(output.shape)} for a pass of {parts * b[0]} images")
        chunks = output.split(b[0])
        for key, s in sums.items():
            s.add(name, chunks[0], chunks[slot[key]])
        if act is not None:
            _PairSums._add(act, name, _neurons(chunks[0], name).abs().mean(2).sum(0, dtype=torch.float64))

    with _eval_mode(model), torch.no_grad(), Hooks(model, names, reduce) as hooks:
        for start in tqdm(range(0, x.shape[0], batch_size), desc="sensitivity", disable=not progress, leave=False):
            xb = x[start:start + batch_size]
            b[0] = xb.shape[0]
            out = model(torch.cat([xb] + [a[start:start + batch_size] for a in advs]).to(device))
            if start == 0:
                check_logits(out, parts * b[0])
                if hooks.missing():
                    raise RuntimeError(f"layers {', '.join(hooks.missing())} did not run during the forward "
                                       f"pass of {type(model).__name__}")
    out = {key: s.sigma(names, x.shape[0]) for key, s in sums.items()}
    if act is not None:
        out["activity"] = {name: (act[name] / x.shape[0]).float() for name in names}
    return out


def resolve_k(k, width: int, layer: str | None = None) -> int:
    """Number of neurons meant by ``k`` in a layer of ``width`` neurons.

    An int k in [0, width] is a count; a float in (0, 1] is a fraction: max(1, round(k * width)),
    rounded half up (so ``1`` is one neuron and ``1.0`` is all of them).
    """
    where = f" of layer {layer!r}" if layer is not None else ""
    if isinstance(k, bool) or not isinstance(k, numbers.Real):
        raise TypeError(f"k must be an int (a count) or a float in (0, 1] (a fraction), got {type(k).__name__}")
    if isinstance(k, numbers.Integral):
        if not 0 <= k <= width:
            raise ValueError(f"k must be between 0 and the width {width}{where}, got {k}")
        return int(k)
    if not 0.0 < k <= 1.0:
        raise ValueError(f"k as a fraction must be in (0, 1], got {k}")
    return max(1, math.floor(k * width + 0.5))


def top_k(sensitivity, k, *, which: str = "top", seed: int = 0, layer: str | None = None):
    """Indices of the k most sensitive neurons (or the least, or a seeded random choice of k).

    Args:
        sensitivity: a Tensor [neurons] of one layer, or a dict layer name -> Tensor (as returned by
            :func:`neuron_sensitivity`); NaN entries (dead neurons of the relative variant) rank last
            for both "top" and "bottom".
        k: an int count, or a float fraction of each layer's width (see :func:`resolve_k`).
        which: "top" (most sensitive first), "bottom" (least sensitive first) or "random"
            (a seeded uniform choice of k neurons, in ascending order).
        seed: seed of the random choice.
        layer: the layer's name, used in error messages for a single tensor.

    Returns:
        int64 Tensor [k] of neuron indices on the input's device (a dict of them for a dict input).

    Raises:
        ValueError: k above a layer's width (the message names the layer), a fraction outside (0, 1].

    Usage: ``idx = top_k(sigma, 0.1)["layer2.1"]``
    """
    check_choice(which, "which", ("top", "bottom", "random"))
    if isinstance(sensitivity, Mapping):
        return {name: top_k(s, k, which=which, seed=seed, layer=name) for name, s in sensitivity.items()}
    if not isinstance(sensitivity, torch.Tensor) or sensitivity.dim() != 1:
        raise TypeError(f"sensitivity must be a 1-D Tensor [neurons] or a dict of them, got "
                        f"{tuple(sensitivity.shape) if isinstance(sensitivity, torch.Tensor) else type(sensitivity).__name__}")
    s = sensitivity.detach()
    width = s.numel()
    kk = resolve_k(k, width, layer)
    if which == "random":
        g = torch.Generator().manual_seed(int(seed))
        return torch.randperm(width, generator=g)[:kk].sort().values.to(s.device)
    fill = -math.inf if which == "top" else math.inf
    key = torch.where(torch.isnan(s), torch.full_like(s, fill), s.float())
    order = torch.argsort(key, descending=(which == "top"), stable=True)
    return order[:kk]


def _finite(s: torch.Tensor) -> torch.Tensor:
    s = s.detach().float().flatten().cpu()
    return s[~torch.isnan(s)]


def layer_summary(results, *, k=0.1, dead=None) -> list[dict]:
    """One row per model and layer: neurons, dead neurons, mean, median, top-k mean and max of sigma.

    Args:
        results: a dict layer name -> Tensor (one model, named "model"), or a dict model name -> such a
            dict, or model name -> a ``(sigma, dead)`` tuple (dead: a dict of bool masks).
        k: size of the top-k mean, an int or a fraction of each layer's width.
        dead: for a single model, its dict of dead masks; otherwise taken from the tuples, or counted
            as the NaN entries.

    Returns:
        a list of dicts with keys model, layer, neurons, dead, mean, median, top_k_mean, max, k; the
        statistics skip NaN (dead) neurons. ``pandas.DataFrame(rows)`` gives a table.

    Usage: ``rows = layer_summary({"vanilla": s_van, "pgd-at": s_at}, k=0.1)``
    """
    if not isinstance(results, Mapping) or not results:
        raise TypeError(f"results must be a non-empty dict of sensitivities, got {type(results).__name__}")
    first = next(iter(results.values()))
    if isinstance(first, torch.Tensor):
        results = {"model": (results, dead)}
    rows = []
    for model_name, value in results.items():
        sigma, dmask = value if isinstance(value, tuple) else (value, None)
        for layer, s in sigma.items():
            f = _finite(s)
            n_dead = int(dmask[layer].sum()) if dmask is not None else int(torch.isnan(s).sum())
            kk = resolve_k(k, s.numel(), layer) if f.numel() else 0
            top = f.sort(descending=True).values[:max(1, min(kk, f.numel()))] if f.numel() else f
            nan = math.nan
            rows.append({
                "model": model_name, "layer": layer, "neurons": s.numel(), "dead": n_dead,
                "mean": float(f.mean()) if f.numel() else nan,
                "median": float(f.median()) if f.numel() else nan,
                "top_k_mean": float(top.mean()) if f.numel() else nan,
                "max": float(f.max()) if f.numel() else nan,
                "k": kk,
            })
    return rows


def pick_map_layer(model, x: torch.Tensor, min_size: int = 8, layers=None) -> str:
    """The deepest of ``layers`` (None: the default ones) whose output is a map of at least ``min_size`` x
    ``min_size``; one forward pass of two images. ValueError when there is none."""
    layers = default_layers(model) if layers is None else list(layers)
    with torch.no_grad(), _eval_mode(model), capture(model, layers, detach=True) as acts:
        model(x[:2].to(next(model.parameters()).device))
    good = [n for n in layers if acts[n].dim() == 4 and min(acts[n].shape[-2:]) >= min_size]
    if not good:
        raise ValueError(f"no analysed layer of {type(model).__name__} outputs maps of at least {min_size}x{min_size}")
    return good[-1]
