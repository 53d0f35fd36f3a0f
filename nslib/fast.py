"""Speed: a fast copy of a model for attacks and inference (batch norm folded, channels_last, optionally
compiled), and the precision rule of the whole kit (:func:`autocast_dtype`).

**Precision.** "auto" means bf16 autocast where the hardware computes bf16: CUDA, and CPUs with AVX512-BF16
or AMX (:func:`cpu_has_bf16`); fp32 elsewhere, because emulated bf16 is several times slower than fp32 (6x
for a SmallCNN attack step on an AVX2-only EPYC). Training, the attacks inside it and the pair attacks follow
it; the forward passes that count accuracies and compute sensitivities are always fp32 (on pairs that may
have been crafted in bf16).

An attack runs the model in eval mode, where batch norm is an affine map per channel; folding it into
the convolution before it gives the same function with one kernel fewer per layer (on ResNet-18, the
logits agree to about 4e-5). With ``amp=True`` in the attacks (bf16 autocast) and channels_last
memory, the convolutions run on tensor cores; ``torch.compile`` fuses the elementwise work, and mode
"max-autotune" also tunes the kernels and replays the step as a CUDA graph. Compilation is paid once
per model and input shape (minutes with "max-autotune"); without it everything works on the CPU too.

The copy is for inference and attacks only: its parameters do not require gradients (an attack needs
the input gradient alone) and it stays in eval mode. The original model is not changed.

Usage::

    fast_model = nslib.fast.prepare(model, example=x[:8], compile=True)
    x_adv = nslib.attacks.pgd(fast_model, x, y, eps=0.1, amp=True)
"""
from __future__ import annotations

import contextlib
import copy
import os

import torch
from torch import nn

__all__ = ["fold_bn", "prepare", "ChannelsLast", "cpu_has_bf16", "autocast_dtype", "amp_flag", "autocast", "PRECISIONS",
           "attack_batch", "default_device"]

PRECISIONS = ("auto", "fp32", "bf16")


def _cpuinfo_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_bf16() -> bool:
    """True when this CPU computes bf16 in hardware (x86 AVX512-BF16 or AMX tiles).

    Only there does bf16 autocast speed a CPU up: on this kit's AVX2-only test machine, emulated bf16 ran
    an attack step on SmallCNN about 6x *slower* than fp32, while on an AVX512-BF16 EPYC it ran 1.4x faster
    (1.9x with channels_last). Asks torch's own probes (``torch.cpu._is_avx512_bf16_supported``,
    ``_is_amx_tile_supported``) and falls back to the kernel's CPU flags. ``NSLIB_CPU_BF16=0`` or ``=1``
    overrides the answer (to force the fp32 path, or to test the bf16 one).
    """
    forced = os.environ.get("NSLIB_CPU_BF16")
    if forced in ("0", "1"):
        return forced == "1"
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        fn = getattr(torch.cpu, probe, None)
        try:
            if fn is not None and fn():
                return True
        except RuntimeError:
            pass
    return bool(_cpuinfo_flags() & {"avx512_bf16", "amx_bf16"})


def autocast_dtype(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype that ``precision`` means on ``device``: None means plain fp32.

    "fp32": None everywhere. "bf16": bf16 everywhere (slow on a CPU without bf16 hardware, but allowed).
    "auto": bf16 on CUDA and on a CPU with bf16 hardware (:func:`cpu_has_bf16`), fp32 elsewhere.

    Raises: ValueError naming ``precision`` when it is not one of :data:`PRECISIONS`.
    Usage: ``dtype = autocast_dtype("auto", torch.device("cpu"))  # None on an AVX2-only CPU``
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    device = torch.device(device)
    if precision == "bf16" or (precision == "auto" and (device.type == "cuda" or
                                                        (device.type == "cpu" and cpu_has_bf16()))):
        return torch.bfloat16
    return None


def amp_flag(precision: str, device: torch.device | str) -> bool:
    """The attacks' ``amp`` argument for ``precision`` on ``device``: True where :func:`autocast_dtype` gives bf16 (the
    one place a precision string becomes the attacks' flag; training takes the dtype itself)."""
    return autocast_dtype(precision, device) is not None


def attack_batch(device: torch.device | str, batch_size: int | None = None) -> int:
    """Examples per attack call when the caller gives none: 500 on a GPU, 128 on a CPU.

    A CPU keeps a SmallCNN batch of 128 in its caches: an input-gradient step ran 1.8x faster per image
    at batch 128 than at 512 on a 2-core EPYC (1,783 vs 987 images/s, fp32, one process); a GPU wants
    large batches. The attacks are per example, so the batch size changes only the random draws.
    """
    if batch_size is not None:
        return batch_size
    return 128 if torch.device(device).type == "cpu" else 500


def autocast(device: torch.device | str, dtype: torch.dtype | bool | None):
    """``torch.autocast`` on ``device`` with ``dtype``, or a no-op context when ``dtype`` is None or False, or the
    device is neither CUDA nor a CPU. The kit's one autocast helper: training passes the dtype
    :func:`autocast_dtype` gives; the attacks their ``amp`` flag (True: bf16)."""
    dtype = torch.bfloat16 if dtype is True else dtype
    if dtype is None or dtype is False or not amp_device(device):
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def amp_device(device: torch.device | str) -> bool:
    """Whether :func:`autocast` can autocast on ``device``: CUDA and CPUs (elsewhere the attacks run in fp32)."""
    return torch.device(device).type in ("cuda", "cpu")


def _fold_pair(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold eval-mode ``bn`` into ``conv`` in place: conv(x) * s + t with s = gamma / sqrt(var + eps)."""
    with torch.no_grad():
        scale = (bn.weight if bn.weight is not None else torch.ones_like(bn.running_var)) \
            / torch.sqrt(bn.running_var + bn.eps)  # [C_out]
        shift = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_mean)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        conv.weight.mul_(scale.view(-1, *([1] * (conv.weight.dim() - 1))))
        new_bias = (bias - bn.running_mean) * scale + shift
        if conv.bias is None:
            conv.bias = nn.Parameter(new_bias)
        else:
            conv.bias.copy_(new_bias)


def fold_bn(model: nn.Module, example: torch.Tensor | None = None, atol: float = 1e-3) -> nn.Module:
    """A copy of ``model`` in eval mode with each ``BatchNorm2d`` that follows a ``Conv2d`` folded into it.

    A pair is a convolution immediately followed, among its parent's children in registration order,
    by a batch norm over its output channels (nslib's SmallCNN, VGG-16 and ResNet-18 register them in
    execution order); the batch norm becomes ``nn.Identity``. Batch norms without running statistics
    are left alone. When ``example`` is given, the copy's logits are compared with the original's on it
    (both in eval mode) and a mismatch beyond ``atol`` times the logits' scale is an error: a module
    that registers its children out of execution order cannot be folded this way.

    Raises:
        ValueError: the folded copy does not compute the same function on ``example``.

    Usage: ``folded = fold_bn(model, example=x[:16])``
    """
    folded = copy.deepcopy(model).eval()
    count = 0
    for parent in folded.modules():
        names = list(parent._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = parent._modules[a], parent._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) \
                    and bn.running_mean is not None and bn.num_features == conv.out_channels:
                _fold_pair(conv, bn)
                parent._modules[b] = nn.Identity()
                count += 1
    for p in folded.parameters():
        p.requires_grad_(False)
    folded.nslib_folded_bn = count
    if example is not None:
        was = [(m, m.training) for m in model.modules()]
        model.eval()
        try:
            with torch.no_grad():
                ref, out = model(example).float(), folded(example).float()
        finally:
            for m, t in was:
                m.training = t
        err = float((ref - out).abs().max())
        scale = float(ref.abs().max()) or 1.0
        if err > atol * scale:
            raise ValueError(f"folding batch norm changed the logits by up to {err:.3g} (scale {scale:.3g}); "
                             f"{type(model).__name__} registers a batch norm after a convolution that does not "
                             f"feed it. Use the model unfolded")
    return folded


class ChannelsLast(nn.Module):
    """Runs ``net`` on channels_last inputs (the layout tensor cores read without transposes)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x.contiguous(memory_format=torch.channels_last))


def prepare(model: nn.Module, *, example: torch.Tensor | None = None, fold: bool = True,
            channels_last: bool = True, compile: bool = False, mode: str | None = None) -> nn.Module:
    """A fast eval-mode copy of ``model`` for attacks and inference (the original is not changed).

    Args:
        model (nn.Module): the classifier.
        example (Tensor or None): a few inputs to check the folded copy against the original.
        fold (bool): fold batch norm into the convolutions (:func:`fold_bn`).
        channels_last (bool): keep weights and inputs in channels_last memory.
        compile (bool): wrap in ``torch.compile`` (needs a working inductor backend; the first call per
            input shape compiles).
        mode (str or None): ``torch.compile`` mode: None (default), "reduce-overhead" or
            "max-autotune" (kernel tuning and CUDA graphs; long first call).

    Usage: ``fast = prepare(model, example=x[:8], compile=True, mode="max-autotune")``
    """
    net = fold_bn(model, example) if fold else copy.deepcopy(model).eval()
    if not fold:
        for p in net.parameters():
            p.requires_grad_(False)
    if channels_last:
        net = ChannelsLast(net.to(memory_format=torch.channels_last)).eval()
    if compile:
        net = torch.compile(net, mode=mode, dynamic=False)
    return net


def default_device() -> torch.device:
    """CUDA when available, else the CPU: where models are trained and evaluated."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
