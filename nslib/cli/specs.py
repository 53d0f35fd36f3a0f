"""The user's model and data, as the commands name them (``analyze``, ``train``, ``evaluate``): the SPEC grammar,
loading, and the checks run before any work.

``SPEC`` names the model:

- ``smallcnn:PATH`` (or ``vgg16:``, ``resnet18:``): a kit architecture, sized for ``--data``, with the
  weights of PATH (a checkpoint of :func:`nslib.training.train` or a plain state dict);
- ``torchvision:NAME[:PATH]``: a torchvision architecture with ``--num-classes`` outputs and the weights
  of PATH (random weights without it); ``--mean`` and ``--std`` when the network expects normalised
  inputs (it is then wrapped to take [0, 1] images);
- ``package.module:function[:PATH]``: a factory called with no arguments that returns the model (with the
  weights of PATH when given, e.g. a checkpoint of ``nslib train``).

``--data`` is a dataset name of :mod:`nslib.data` ("fmnist", "mnist5k", "mnist", "cifar10"), or
``synthetic:LIKE`` (random images shaped like LIKE), or a ``.pt`` file holding ``{"x": [N, C, H, W] in [0,
1], "y": [N]}``. A dataset name gives a fixed class-stratified subset of its test split
(:func:`nslib.data.test_set`, the reproduction's own images).

Every error is a ``ValueError`` naming the flag (``--model``, ``--data``, ``--layers``, ``--k``) and what it
expected, raised before anything is computed.

Usage::

    x, y, eps = load_data("fmnist", 200)
    model = load_model("smallcnn:outputs/models/fmnist/pgd_at/<key>/best.pt", dataset_of("fmnist"))
    layers = check_fit(model, x, y)
"""
from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import nn

from nslib import checks, data as data_mod, fast, models as models_mod, streams, training
from nslib.sensitivity import capture

__all__ = ["parse_data", "load_model", "load_data", "load_pt_data", "dataset_of", "add_shared_arguments", "k_argument",
           "check_model", "check_fit"]


def parse_data(spec: str, *, folders: bool = False) -> dict:
    """What ``--data`` names, read once for every command: ``{"kind": "folder" | "file" | "synthetic" | "dataset",
    "like": the registry dataset that sizes a kit architecture and gives the default radius (synthetic:LIKE's LIKE, a
    dataset itself; None for a file or folder)}``. ``folders``: the command reads a folder of images in ImageFolder layout (train, evaluate).

    Raises: ValueError naming --data and what it takes.
    """
    spec = str(spec)
    if folders and streams.is_folder(spec):
        return {"kind": "folder", "like": None}
    if spec.endswith(".pt"):
        return {"kind": "file", "like": None}
    if spec.startswith("synthetic:"):
        return {"kind": "synthetic", "like": spec.split(":", 1)[1]}
    if spec not in data_mod.DATASETS or spec == "synthetic":
        raise ValueError(f"--data must be one of {', '.join(d for d in data_mod.DATASETS if d != 'synthetic')}, "
                         f"synthetic:LIKE{', a .pt file or a folder of images' if folders else ' or a .pt file'}, "
                         f"got {spec!r}")
    return {"kind": "dataset", "like": spec}


def _state_dict(path: str) -> dict:
    """The weights in ``path``: a checkpoint of :func:`nslib.training.train` (its "model") or a state dict."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"--model names a weights file that does not exist: {p}")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 -- zip, pickle, magic number, EOF: torch raises any of them
        raise ValueError(f"--model: {p} cannot be read as PyTorch weights (corrupt or truncated? "
                         f"{type(e).__name__}: {_first_sentence(e)})") from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"--model: {p} holds no state dict (a dict of tensors, or a checkpoint with one under "
                         f"'model' or 'state_dict'), got {type(obj).__name__}")
    return obj


def _first_sentence(e: BaseException) -> str:
    """The first sentence of an error's message (torch's load errors run to several)."""
    return str(e).splitlines()[0].split(". ")[0] if str(e) else ""


def _load_weights(model: nn.Module, state: dict, what: str) -> None:
    """Load ``state`` into ``model``; a mismatch is a ValueError naming the first keys that differ."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} (file {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = [f"{label}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}" for label, keys in
                 (("missing in the file", missing), ("not in the model", unexpected), ("other shapes", shapes))
                 if keys]
        raise ValueError(f"--model: the weights do not fit {what}; " + "; ".join(parts))
    model.load_state_dict(state)


def load_model(spec: str, dataset: str | None = None, *, num_classes: int | None = None, mean=None,
               std=None) -> nn.Module:
    """The model a ``--model`` SPEC names (see the module docstring), on the CPU, in eval mode.

    Raises: ValueError naming --model (a malformed SPEC, a missing file, weights that do not fit the
    architecture: the first mismatching keys), or --num-classes, --mean, --std.
    """
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(f"--model must be ARCH:PATH, torchvision:NAME[:PATH] or package.module:function, "
                         f"got {spec!r}")
    head, rest = spec.split(":", 1)
    if head in models_mod.ARCHS:
        if dataset is None:
            raise ValueError(f"--model {head}:... is sized by a dataset: --data must then name one "
                             f"({', '.join(d for d in data_mod.DATASETS if d != 'synthetic')} or synthetic:LIKE)")
        model = models_mod.build(head, dataset)
        _load_weights(model, _state_dict(rest), f"{head} built for {dataset}")
    elif head == "torchvision":
        import torchvision  # only this SPEC needs it, and importing it takes about a second

        name, _, path = rest.partition(":")
        if name not in torchvision.models.list_models():
            raise ValueError(f"--model: torchvision has no architecture {name!r}")
        kw = {} if num_classes is None else {"num_classes": checks.check_positive_int(num_classes, "--num-classes")}
        model = torchvision.models.get_model(name, weights=None, **kw)
        if path:
            _load_weights(model, _state_dict(path), f"torchvision {name}")
    elif "." in head or rest.partition(":")[0].isidentifier():
        rest, _, path = rest.partition(":")  # package.module:function[:PATH] (PATH: weights, e.g. nslib train's)
        try:
            factory = getattr(importlib.import_module(head), rest)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"--model: cannot import {rest!r} from {head!r} ({e})") from None
        try:
            model = factory()
        except Exception as e:  # noqa: BLE001 -- the user's code: any error, named as theirs
            raise ValueError(f"--model: {spec}() raised {type(e).__name__}: {e}") from None
        if not isinstance(model, nn.Module):
            raise ValueError(f"--model: {spec}() must return a torch.nn.Module, got {type(model).__name__}")
        if path:
            _load_weights(model, _state_dict(path), f"{head}:{rest}()")
    else:
        raise ValueError(f"--model must start with one of {', '.join(models_mod.ARCHS)}, 'torchvision' or a "
                         f"module path, got {spec!r}")
    if (mean is None) != (std is None):
        raise ValueError("--mean and --std go together (the per-channel normalisation the network expects)")
    if mean is not None:
        model = models_mod.wrap(model, mean, std)
    return model.eval()


def load_data(name: str, n: int | None = 1000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, float | None]:
    """``(x, y, the dataset's eps or None)``: ``n`` test images of ``name`` (see the module docstring)."""
    if n is not None:
        n = checks.check_positive_int(n, "--n", minimum=2)  # the interventions split the pairs in two halves
    data = parse_data(name)
    if data["kind"] == "file":
        x, y = load_pt_data(name)
        if n is not None and n > len(x):
            raise ValueError(f"--n: {name} holds {len(x)} images, got {n} (0: all of them)")
        return x[:n], y[:n], None
    if data["kind"] == "synthetic":
        x, y = data_mod.load("synthetic", "test", like=data["like"], n=1000 if n is None else n, seed=seed)
        return x, y, training.ATTACK_DEFAULTS.get(data["like"], {}).get("eps")
    size = data_mod.DATASETS[name].test_size
    if n is not None and n > size:
        raise ValueError(f"--n: {name}'s test split holds {size:,} images, got {n} (0: all of them)")
    x, y = data_mod.test_set(name, n, seed=seed)
    return x, y, training.ATTACK_DEFAULTS.get(name, {}).get("eps")


def load_pt_data(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` of a ``--data`` file: a dict with "x" and "y", or a tuple (x, y), each checked; a file torch cannot
    read, or that holds anything else, is a ValueError naming --data (every command reads such files here)."""
    if not Path(name).is_file():
        raise ValueError(f"--data names a file that does not exist: {name}")
    try:
        obj = torch.load(name, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 -- zip, pickle, magic number, EOF: torch raises any of them
        raise ValueError(f"--data: {name} cannot be read by torch.load (corrupt or truncated? {type(e).__name__})") \
            from None
    if isinstance(obj, dict) and "x" in obj and "y" in obj:
        x, y = obj["x"], obj["y"]
    elif isinstance(obj, (tuple, list)) and len(obj) == 2:
        x, y = obj
    else:
        got = f"a dict with keys {sorted(map(str, obj))}" if isinstance(obj, dict) else \
            f"a {type(obj).__name__} of {len(obj)} items" if isinstance(obj, (tuple, list)) else type(obj).__name__
        raise ValueError(f"--data: {name} must hold {{'x': [N, C, H, W] in [0, 1], 'y': [N]}} (or a tuple (x, y)), "
                         f"got {got}")
    checks.check_images(x, "--data x")
    checks.check_labels(y, x.shape[0], None, "--data y")
    return x, y


def dataset_of(data: str) -> str | None:
    """The registry dataset that sizes a kit architecture for ``--data`` (``synthetic:LIKE`` -> LIKE), or None
    for a ``.pt`` file."""
    try:
        return parse_data(data, folders=True)["like"]
    except ValueError:
        return None


def k_argument(text: str) -> int | float:
    """``--k`` as the top-k rule reads it (:func:`nslib.checks.check_k`): a whole number >= 1 is a count of neurons
    (an int), anything else a fraction (a float; 1.5 is then refused by the check, never rounded)."""
    k = float(text)
    return int(k) if k >= 1 and k.is_integer() else k


def add_shared_arguments(p, *, out: str, folders: bool = True, fresh: bool = False, num_images: bool = True,
                         seed: str = "the attacks' seed and the test subset's") -> None:
    """The flags every command that runs a model shares (``analyze``, ``train``, ``evaluate``), declared once:
    ``--model --data [--num-images] --seed --precision --device --out --quiet`` and ``--num-classes --mean --std``, and
    for a command that reads a folder of images (``folders``) ``--workers --image-size``.

    Args: out: where ``--out`` defaults to; fresh: a bare architecture name builds fresh weights (train);
    num_images: the command reads a test subset (``--num-images``, also spelled ``--n``); seed: what --seed seeds.
    """
    p.add_argument("--model", required=True, metavar="SPEC", help=("smallcnn, vgg16 or resnet18 (fresh weights, sized "
                   "for --data), " if fresh else "") + "ARCH:PATH (a kit architecture with a checkpoint or state dict), "
                   "torchvision:NAME[:PATH] or package.module:function[:PATH]")
    p.add_argument("--data", required=True, help="fmnist, mnist5k, mnist, cifar10, synthetic:LIKE, a .pt file holding "
                   "{'x': [N, C, H, W] in [0, 1], 'y': [N]}" + (", or a folder of images in ImageFolder layout "
                                                                 "(streamed)" if folders else ""))
    if num_images:
        p.add_argument("--num-images", "--n", dest="n", type=int, default=1000, help="test images (a fixed "
                       "class-stratified subset; 0: all); under torchrun spell it --num-images (torchrun reads --n as "
                       "its own --nnodes or --nproc-per-node)")
    p.add_argument("--seed", type=int, default=None if fresh else 0, help=seed + (" (default: the training "
                   "config's, 0)" if fresh else ""))
    p.add_argument("--precision", default="auto", choices=fast.PRECISIONS, help="auto (bf16 autocast where the hardware "
                   "computes bf16: CUDA, AVX512-BF16/AMX CPUs; fp32 elsewhere), fp32 or bf16; accuracies and sigma are "
                   "counted in fp32")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available; under torchrun "
                   "cuda:LOCAL_RANK)")
    p.add_argument("--num-classes", type=int, default=None, help="outputs of a torchvision architecture")
    p.add_argument("--mean", type=float, nargs="+", default=None, help="per-channel mean the network expects")
    p.add_argument("--std", type=float, nargs="+", default=None, help="per-channel std the network expects")
    if folders:
        p.add_argument("--workers", type=int, default=2, help="DataLoader workers for a folder of images")
        p.add_argument("--image-size", type=int, default=None, help="resize and centre-crop a folder's images")
    p.add_argument("--out", default=None, help=f"output folder (default: {out})")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def check_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """A forward pass of two images: the data fit the model, it returns finite logits [N, classes] with a
    gradient to the input, its weights are finite and the labels are classes of it (what every command needs)."""
    checks.check_images(x, "--data x")
    checks.check_finite_model(model, "--model")
    xb = x[:2].to(checks.model_device(model))
    checks.check_input_dtype(model, xb, "--data x")
    with models_mod.eval_mode(model), torch.no_grad():
        try:
            out = model(xb)
        except RuntimeError as e:
            raise ValueError(f"--data: images of shape {list(x.shape[1:])} do not fit the model ({e})") from None
        checks.check_logits(out, min(2, x.shape[0]), "--model")
        checks.check_finite_logits(out, "--model")
    checks.check_labels(y, x.shape[0], out.shape[1], "--data y", why=f"the model returns {out.shape[1]} logits")
    with models_mod.eval_mode(model):
        checks.check_differentiable(model, xb, "--model")


def check_fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, layers=None, k=None) -> list[str]:
    """What an analysis needs: :func:`check_model`, and at least 2 images (the interventions choose on one half of
    the pairs and measure on the other), every layer existing, hooked once and at least ``k`` neurons wide.
    Returns the layer names (the default ones when None)."""
    checks.check_images(x, "--data x")
    if x.shape[0] < 2:
        raise ValueError(f"--n must be at least 2 (the interventions choose neurons on one half of the pairs and "
                         f"measure on the other), got {x.shape[0]} image(s)")
    names = models_mod.default_layers(model) if layers is None else list(layers)
    if not names:
        raise ValueError("--layers must name at least one layer (comma-separated dotted names)")
    for name in names:
        models_mod.get_layer(model, name)  # unknown: the nearest valid names
    check_model(model, x, y)
    with models_mod.eval_mode(model), capture(model, names, detach=True) as acts, torch.no_grad():
        model(x[:2].to(checks.model_device(model)))
        widths = {name: acts[name].shape[1] for name in names}
    if k is not None:
        for name, width in widths.items():
            if isinstance(k, int) and k > width:
                raise ValueError(f"--k must be at most the width of every analysed layer: {name!r} has {width} "
                                 f"neurons, got {k}")
    return names
