"""Models: output shapes, shape errors, hookable layers, wrap, and no host sync in forward."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from nslib import models

CASES = [("smallcnn", "fmnist", (1, 28, 28)), ("vgg16", "cifar10", (3, 32, 32)), ("vgg16", "fmnist", (1, 28, 28)),
         ("resnet18", "cifar10", (3, 32, 32)), ("resnet18", "mnist5k", (1, 28, 28))]


@pytest.mark.parametrize("arch,dataset,shape", CASES)
def test_output_shape_and_default_layers(arch, dataset, shape):
    torch.manual_seed(0)
    model = models.build(arch, dataset).eval()
    x = torch.rand((3,) + shape)
    assert model(x).shape == (3, 10)
    outs = {}
    layers = models.default_layers(model)
    hooks = [models.get_layer(model, n).register_forward_hook(lambda m, i, o, n=n: outs.setdefault(n, []).append(o))
             for n in layers]
    model(x)
    for h in hooks:
        h.remove()
    assert set(outs) == set(layers)
    assert all(len(v) == 1 for v in outs.values())  # each hooked layer runs once per forward pass
    expected = {"smallcnn": 6, "vgg16": 5, "resnet18": 9}[arch]
    assert len(layers) == expected


@pytest.mark.parametrize("arch,dataset,shape", CASES)
def test_activations_are_separate_and_not_inplace(arch, dataset, shape):
    model = models.build(arch, dataset)
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert relus and all(not r.inplace for r in relus)
    assert len({id(r) for r in relus}) == len(relus)


@pytest.mark.parametrize("bad", [(2, 3, 28, 28), (2, 1, 32, 32), (1, 28, 28), (2, 1, 28, 27)])
def test_wrong_shape_is_rejected_with_what_was_received(bad):
    model = models.build("smallcnn", "fmnist")
    with pytest.raises(ValueError, match=r"expects input of shape \[N, 1, 28, 28\], got " + r"\(" + ", ".join(map(str, bad))):
        model(torch.rand(bad))


def test_deep_models_pad_28_to_32_inside():
    model = models.build("resnet18", "fmnist").eval()
    x = torch.rand(2, 1, 28, 28)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    with torch.no_grad():
        assert torch.allclose(model(x), model(padded), atol=1e-6)


def test_forward_has_no_value_checks():
    # values outside [0, 1] pass through forward: range checks belong to the entry points, which
    # would otherwise force a GPU->host sync on every call
    model = models.build("smallcnn", "fmnist")
    assert model(torch.full((1, 1, 28, 28), 5.0)).shape == (1, 10)


def test_unknown_dataset_or_arch_is_an_error():
    with pytest.raises(ValueError, match="arch must be one of"):
        models.build("alexnet", "fmnist")
    with pytest.raises(ValueError, match="dataset must be one of"):
        models.build("smallcnn", "svhn")
    with pytest.raises(ValueError, match="smallcnn takes 28x28"):
        models.build("smallcnn", "cifar10")


def test_unknown_layer_lists_nearest_names():
    model = models.build("resnet18", "cifar10")
    with pytest.raises(ValueError, match=r"unknown layer 'layer2.1.conv'.*layer2.1.conv1"):
        models.get_layer(model, "layer2.1.conv")


def test_wrap_normalises_and_keeps_names():
    import torchvision  # a hard dependency of nslib
    net = torchvision.models.resnet18(num_classes=10).eval()
    mean, std = (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)
    model = models.wrap(net, mean, std).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        ref = net((x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))
        assert torch.allclose(model(x), ref, atol=1e-6)
    assert models.get_layer(model, "layer2.1.conv1") is net.layer2[1].conv1
    layers = models.default_layers(model)
    assert "net.layer2.1.conv1" in layers and "net.fc" not in layers
    with pytest.raises(ValueError, match="std must be positive"):
        models.wrap(net, mean, (0.2, 0.0, 0.2))
