"""Models: SmallCNN (MNIST-class), VGG-16 with batch norm and ResNet-18 (CIFAR variants).

Every model takes float images in [0, 1], shape [N, C, H, W], normalises inside and returns logits
[N, classes]. Every activation is its own, non-in-place module, so each hidden layer's output can be
hooked by its dotted name (``layer2.1``, ``feature_extractor.relu3``) and is never overwritten.
``forward`` checks only shapes (host metadata, no GPU synchronisation); value ranges are checked by
the library's entry points (:mod:`nslib.checks`).

Usage::

    model = nslib.models.build("smallcnn", "fmnist")
    layers = nslib.models.default_layers(model)   # the hidden blocks the sensitivity analysis hooks
"""
from __future__ import annotations

import contextlib
import difflib
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from nslib.data import DATASETS

__all__ = ["build", "default_layers", "wrap", "layer_names", "get_layer", "eval_mode", "SmallCNN", "VGG16", "ResNet18",
           "Wrapped", "ARCHS"]

ARCHS = ("smallcnn", "vgg16", "resnet18")


class _ImageModel(nn.Module):
    """Shared input handling: shape check, optional zero padding to 32x32, normalisation."""

    def __init__(self, in_channels: int, sizes: tuple[int, ...], mean, std, pad_to: int | None = None):
        super().__init__()
        self.in_channels = in_channels
        self.sizes = sizes  # accepted square input sizes
        self.pad_to = pad_to
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels or x.shape[2] != x.shape[3] \
                or x.shape[2] not in self.sizes:
            want = " or ".join(f"[N, {self.in_channels}, {s}, {s}]" for s in self.sizes)
            raise ValueError(f"{type(self).__name__} expects input of shape {want}, "
                             f"got {tuple(x.shape)}")
        if self.pad_to is not None and x.shape[2] < self.pad_to:
            p = (self.pad_to - x.shape[2]) // 2
            x = F.pad(x, (p, p, p, p))  # pad with black (0) in [0, 1] space, before normalising
        return (x - self.mean) / self.std


class SmallCNN(_ImageModel):
    """The 4-conv / 3-fc MNIST network of the TRADES reference (Zhang et al., 2019), 28x28 inputs.

    Differences from the reference: every ReLU is its own module (the reference reuses one), and the
    input is normalised inside. Like the reference, the last layer starts at zero.
    """

    def __init__(self, in_channels=1, num_classes=10, mean=(0.5,), std=(0.5,), drop=0.5):
        super().__init__(in_channels, (28,), mean, std)
        self.feature_extractor = nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(in_channels, 32, 3)), ("relu1", nn.ReLU()),
            ("conv2", nn.Conv2d(32, 32, 3)), ("relu2", nn.ReLU()),
            ("maxpool1", nn.MaxPool2d(2, 2)),
            ("conv3", nn.Conv2d(32, 64, 3)), ("relu3", nn.ReLU()),
            ("conv4", nn.Conv2d(64, 64, 3)), ("relu4", nn.ReLU()),
            ("maxpool2", nn.MaxPool2d(2, 2)),
        ]))
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(OrderedDict([
            ("fc1", nn.Linear(64 * 4 * 4, 200)), ("relu1", nn.ReLU()),
            ("drop", nn.Dropout(drop)),
            ("fc2", nn.Linear(200, 200)), ("relu2", nn.ReLU()),
            ("fc3", nn.Linear(200, num_classes)),
        ]))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # fan_in, as the reference (kaiming_normal_'s default). fan_out (used here until 0.1.0) learned
                # slower: 78.9% vs 82.4% Fashion-MNIST test accuracy after 2 epochs on 20,000 images
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        nn.init.zeros_(self.classifier.fc3.weight)
        nn.init.zeros_(self.classifier.fc3.bias)

    def forward(self, x):
        x = self._prepare(x)
        return self.classifier(self.flatten(self.feature_extractor(x)))  # [N, classes]

    def default_layers(self):
        return ["feature_extractor.relu1", "feature_extractor.relu2", "feature_extractor.relu3",
                "feature_extractor.relu4", "classifier.relu1", "classifier.relu2"]


def _conv_bn_relu(cin, cout):
    return nn.Sequential(OrderedDict([("conv", nn.Conv2d(cin, cout, 3, padding=1, bias=False)),
                                      ("bn", nn.BatchNorm2d(cout)), ("relu", nn.ReLU())]))


class VGG16(_ImageModel):
    """VGG-16 with batch norm, CIFAR variant (Simonyan and Zisserman, 2015): 13 conv + 1 fc layer.

    Five conv blocks ``block1`` .. ``block5`` (2, 2, 3, 3, 3 conv-bn-relu units, then max-pool);
    28x28 inputs are zero-padded to 32x32 inside.
    """

    def __init__(self, in_channels=3, num_classes=10, mean=(0.5,) * 3, std=(0.5,) * 3):
        super().__init__(in_channels, (28, 32), mean, std, pad_to=32)
        cfg = [(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)]
        cin = in_channels
        for b, (width, n) in enumerate(cfg, start=1):
            units = OrderedDict()
            for i in range(n):
                units[f"unit{i + 1}"] = _conv_bn_relu(cin, width)
                cin = width
            units["pool"] = nn.MaxPool2d(2, 2)
            self.add_module(f"block{b}", nn.Sequential(units))
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        x = self._prepare(x)
        x = self.block5(self.block4(self.block3(self.block2(self.block1(x)))))  # [N, 512, 1, 1]
        return self.fc(self.flatten(x))

    def default_layers(self):
        return [f"block{b}" for b in range(1, 6)]


class BasicBlock(nn.Module):
    """ResNet basic block with separate (non-shared, non-in-place) ReLU modules."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(OrderedDict([
                ("conv", nn.Conv2d(cin, cout, 1, stride=stride, bias=False)), ("bn", nn.BatchNorm2d(cout))]))
        self.relu2 = nn.ReLU()

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet18(_ImageModel):
    """ResNet-18, CIFAR variant (He et al., 2016): 3x3 stem, no max-pool, 4 stages of 2 basic blocks.

    28x28 inputs are zero-padded to 32x32 inside.
    """

    def __init__(self, in_channels=3, num_classes=10, mean=(0.5,) * 3, std=(0.5,) * 3):
        super().__init__(in_channels, (28, 32), mean, std, pad_to=32)
        self.stem = _conv_bn_relu(in_channels, 64)
        cin = 64
        for i, (width, stride) in enumerate([(64, 1), (128, 2), (256, 2), (512, 2)], start=1):
            self.add_module(f"layer{i}", nn.Sequential(BasicBlock(cin, width, stride), BasicBlock(width, width)))
            cin = width
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        x = self.stem(self._prepare(x))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # [N, 512, 4, 4]
        return self.fc(self.flatten(self.pool(x)))

    def default_layers(self):
        return ["stem"] + [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]


class Wrapped(nn.Module):
    """A user's network that expects normalised inputs, made to take [0, 1] inputs.

    The network is kept as ``self.net``; layer names may be given relative to it (``layer2.1.conv1``)
    or to the wrapper (``net.layer2.1.conv1``).
    """

    def __init__(self, net: nn.Module, mean, std):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return self.net((x - self.mean) / self.std)


def wrap(model: nn.Module, mean, std) -> Wrapped:
    """Make ``model``, which expects inputs normalised by ``mean``/``std`` per channel, take [0, 1] inputs.

    Usage: ``model = wrap(torchvision.models.resnet18(num_classes=10), (0.49, 0.48, 0.45), (0.25,) * 3)``
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    mean, std = torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32)
    if mean.dim() != 1 or std.shape != mean.shape:
        raise ValueError(f"mean and std must be 1-D sequences of equal length (one value per channel), "
                         f"got shapes {tuple(mean.shape)} and {tuple(std.shape)}")
    if not bool((std > 0).all()):
        raise ValueError(f"std must be positive, got {std.tolist()}")
    return Wrapped(model, mean, std)


def build(arch: str, dataset: str = "fmnist") -> nn.Module:
    """Build ``arch`` ("smallcnn", "vgg16", "resnet18") sized for ``dataset`` (channels, classes, mean/std).

    SmallCNN takes 28x28 inputs only; VGG-16 and ResNet-18 take 32x32 and 28x28 (padded inside).
    Usage: ``model = build("resnet18", "cifar10")``
    """
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {dataset!r}")
    info = DATASETS[dataset]
    if arch == "smallcnn" and info.size != 28:
        raise ValueError(f"smallcnn takes 28x28 inputs, but dataset {dataset!r} has {info.size}x{info.size} "
                         f"images; use vgg16 or resnet18")
    cls = {"smallcnn": SmallCNN, "vgg16": VGG16, "resnet18": ResNet18}[arch]
    model = cls(in_channels=info.channels, num_classes=info.classes, mean=info.mean, std=info.std)
    model.nslib_spec = {"arch": arch, "dataset": dataset}  # lets load_checkpoint rebuild it
    return model


def _base(model: nn.Module) -> nn.Module:
    return model.net if isinstance(model, Wrapped) else model


def default_layers(model: nn.Module) -> list[str]:
    """Dotted names of the hidden layers the sensitivity analysis hooks by default.

    - SmallCNN: each conv activation and each hidden fully connected activation (6 layers).
    - ResNet18: the stem and the output of each residual block (9 layers).
    - VGG16: the output of each of the five conv blocks.
    - Any other module (a :class:`Wrapped` one included): every ``Conv2d`` and ``Linear`` leaf except
      the last ``Linear`` (the logits). Convolutions are chosen over activations because activation
      modules are often reused within a forward pass (torchvision's ResNet calls one ReLU twice per
      block), which makes their output ambiguous.
    """
    inner = _base(model)
    if isinstance(inner, (SmallCNN, VGG16, ResNet18)):
        names = inner.default_layers()
    else:
        leaves = [n for n, m in inner.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        linear = [n for n, m in inner.named_modules() if isinstance(m, nn.Linear)]
        if linear:
            leaves.remove(linear[-1])
        names = leaves
    if not names:
        raise ValueError(f"found no Conv2d or Linear hidden layer in {type(inner).__name__}; "
                         f"pass the layer names explicitly")
    return names if inner is model else ["net." + n for n in names]


def layer_names(model: nn.Module) -> list[str]:
    """All valid dotted module names of ``model`` (the root, "", excluded)."""
    return [n for n, _ in model.named_modules() if n]


def get_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name``; an unknown name is a ValueError listing the nearest valid names.

    For a :class:`Wrapped` model, names relative to the wrapped network are accepted too.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"layer name must be a non-empty dotted module path, got {name!r}")
    modules = dict(model.named_modules())
    if name in modules:
        return modules[name]
    if isinstance(model, Wrapped) and "net." + name in modules:
        return modules["net." + name]
    valid = layer_names(model)
    near = difflib.get_close_matches(name, valid, n=5, cutoff=0.0)
    raise ValueError(f"unknown layer {name!r} in {type(model).__name__}; nearest valid names: "
                     f"{', '.join(near)}")


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Run the body with every module in eval mode; restore each module's own train/eval flag afterwards.

    Used by every analysis and attack entry point (batch norm on running statistics, dropout off),
    so that a caller's model comes back in exactly the mode it was in, also when the body raises.
    """
    if not isinstance(model, nn.Module):  # the first thing every entry point does with the model: say so here
        raise TypeError(f"model must be a torch.nn.Module returning logits, got {type(model).__name__}")
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training
