"""Forward hooks on named layers: :func:`capture` records their outputs; :class:`Hooks` runs a function on
each output as it is produced (what :func:`nslib.sensitivity.neuron_sensitivity` and the interventions use).

Hooks are always removed, also when the body raises; a layer that runs more than once per forward pass is an
error (its output would be ambiguous), and an unknown layer name lists the nearest valid names.

Usage::

    with capture(model, ["layer2.1.conv1"]) as acts:
        logits = model(x)
    acts["layer2.1.conv1"]  # [N, C, H, W], with its autograd graph unless detach=True
"""
from __future__ import annotations

import contextlib
from collections.abc import Mapping

import torch
from torch import nn

from nslib.models import default_layers, get_layer

__all__ = ["capture", "Activations"]


# ----------------------------------------------------------------------------------------------------
# hooks


def layer_list(model: nn.Module, layers, name: str = "layers") -> list[str]:
    """Validate ``layers`` (a name, a list of names, or None for the defaults) and resolve each once."""
    if layers is None:
        layers = default_layers(model)
    elif isinstance(layers, str):
        layers = [layers]
    layers = list(layers)
    if not layers:
        raise ValueError(f"{name} must name at least one layer, got an empty list")
    for n in layers:
        get_layer(model, n)  # raises with the nearest valid names
    dup = sorted({n for n in layers if layers.count(n) > 1})
    if dup:
        raise ValueError(f"{name} must not repeat a layer, got {', '.join(dup)} more than once")
    return layers


class Hooks:
    """Forward hooks on named layers calling ``fn(name, output)``; removed on exit, also on error.

    A forward pre-hook on the model marks the start of each forward pass; a layer that runs twice
    within one pass is an error (its output would be ambiguous). ``fn`` may return a replacement
    output (as a forward hook may). ``on_pass`` is called at the start of each pass.
    """

    def __init__(self, model: nn.Module, layers: list[str], fn, on_pass=None):
        self.model, self.layers, self.fn, self.on_pass = model, layers, fn, on_pass
        self.modules = {n: get_layer(model, n) for n in layers}
        self.calls: dict[str, int] = {}
        self.handles: list = []

    def _pre(self, module, args):
        self.calls = dict.fromkeys(self.layers, 0)
        if self.on_pass is not None:
            self.on_pass()

    def _hook(self, name):
        def hook(module, args, output):
            self.calls[name] = self.calls.get(name, 0) + 1
            if self.calls[name] > 1:
                raise RuntimeError(
                    f"layer {name!r} ({type(module).__name__}) runs more than once per forward pass of "
                    f"{type(self.model).__name__}, so its output is ambiguous; hook a module that runs "
                    f"once (e.g. a convolution instead of a shared activation)")
            return self.fn(name, output)
        return hook

    def __enter__(self):
        try:
            self.handles.append(self.model.register_forward_pre_hook(self._pre))
            for n, m in self.modules.items():
                self.handles.append(m.register_forward_hook(self._hook(n)))
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self):
        while self.handles:
            self.handles.pop().remove()

    def __exit__(self, *exc):
        self.remove()
        return False

    def missing(self) -> list[str]:
        """Layers that did not run in the last forward pass."""
        return [n for n in self.layers if not self.calls.get(n)]


class Activations(Mapping):
    """The outputs recorded by :func:`capture`: ``acts[name]`` is the layer's output in the latest pass.

    Reading an output that a later in-place operation changed (e.g. ``ReLU(inplace=True)`` right after
    the hooked layer) is a RuntimeError rather than a silently wrong value.
    """

    def __init__(self):
        self._data: dict[str, tuple[torch.Tensor, int | None]] = {}

    def _put(self, name: str, t: torch.Tensor) -> None:
        self._data[name] = (t, _version(t))

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._data:
            raise KeyError(f"no output recorded for layer {name!r} (recorded: "
                           f"{', '.join(self._data) or 'none'}); run the model inside the capture block")
        t, v = self._data[name]
        if v is not None and _version(t) != v:
            raise RuntimeError(f"the output of layer {name!r} was modified in place after the layer ran "
                               f"(an in-place operation follows it, e.g. ReLU(inplace=True)); hook another "
                               f"layer or make that operation out of place")
        return t

    def __iter__(self):
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return "Activations(" + ", ".join(f"{n}: {tuple(t.shape)}" for n, (t, _) in self._data.items()) + ")"


def _version(t: torch.Tensor) -> int | None:
    try:
        return t._version
    except Exception:  # inference-mode tensors have no version counter
        return None


@contextlib.contextmanager
def capture(model: nn.Module, layers, *, detach: bool = False):
    """Record the outputs of the named layers during the forward passes of ``model`` inside the block.

    Args:
        model: the network; its forward passes inside the block are recorded.
        layers: a dotted module name (``"layer2.1.conv1"``) or a list of them; nested modules included;
            for a :class:`nslib.models.Wrapped` model, names relative to the wrapped network also work.
        detach: False keeps each output as the forward pass produced it, with its autograd graph (what
            SNS training needs); True stores ``output.detach()``.

    Yields:
        :class:`Activations`, a mapping layer name -> output tensor of the *latest* forward pass (each
        pass replaces the previous one; to compare clean and adversarial inputs, run them as one batch,
        ``model(torch.cat([x, x_adv]))``, and split the outputs). It stays readable after the block.

    Raises:
        ValueError: an unknown layer name (the message lists the nearest valid names), or a repeated one.
        RuntimeError: a layer runs more than once in one forward pass of ``model``.

    The hooks are removed when the block ends, also when it raises. Usage::

        with capture(model, ["stem", "layer1.0"]) as acts:
            logits = model(torch.cat([x, x_adv]))
        a = acts["stem"]   # [2N, 64, 32, 32]
    """
    names = layer_list(model, layers)
    acts = Activations()

    def record(name, output):
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"layer {name!r} must output a tensor, got {type(output).__name__}")
        acts._put(name, output.detach() if detach else output)

    with Hooks(model, names, record, on_pass=acts._data.clear):
        yield acts
