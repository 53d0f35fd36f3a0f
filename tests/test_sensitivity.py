"""Oracle tests for nslib.sensitivity: a plain loop implementation of the paper's formula, hooks left
behind, the spatial-mean-first trap, top-k rules, and a torchvision ResNet-18 with nested names."""
from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
from torch import nn

from nslib.models import eval_mode
from nslib.sensitivity import (batch_sensitivity, capture, layer_summary, neuron_sensitivity, resolve_k,
                               sensitivity_variants, top_k)


class Nested(nn.Module):
    """Conv (signed: tanh) -> nested conv/bn/relu -> flatten -> fc/relu -> fc, random widths."""

    def __init__(self, seed: int, c_in: int = 2, size: int = 8):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        w1, w2, h = (int(torch.randint(2, 6, (1,), generator=g)) for _ in range(3))
        self.stem = nn.Sequential(OrderedDict(conv=nn.Conv2d(c_in, w1, 3, padding=1), act=nn.Tanh()))
        self.body = nn.Sequential(OrderedDict(block=nn.Sequential(OrderedDict(
            conv=nn.Conv2d(w1, w2, 3, stride=2, padding=1), bn=nn.BatchNorm2d(w2), relu=nn.ReLU()))))
        self.flatten = nn.Flatten()
        self.head = nn.Sequential(OrderedDict(fc1=nn.Linear(w2 * (size // 2) ** 2, h), relu=nn.ReLU(),
                                              fc2=nn.Linear(h, 3)))
        torch.manual_seed(seed)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(m.weight, std=0.7)
                nn.init.normal_(m.bias, std=0.3)
        bn = self.body.block.bn
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        return self.head(self.flatten(self.body(self.stem(x))))


LAYERS = ["stem.conv", "stem", "body.block.bn", "body.block", "head.fc1", "head.relu"]


def pairs(n, c=2, size=8, seed=0, dtype=torch.float64, noise=0.1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, c, size, size, generator=g, dtype=dtype)
    x_adv = (x + noise * (2 * torch.rand(x.shape, generator=g, dtype=dtype) - 1)).clamp(0, 1)
    return x, x_adv


def per_pair_outputs(model, x, x_adv, layer):
    """The layer's output on each benign image and on its adversarial version, one image per forward pass,
    in eval mode (the model's mode restored): a list of (a, b), each [C, ...]."""
    module = dict(model.named_modules())[layer]
    seen = {}
    handle = module.register_forward_hook(lambda m, i, o: seen.__setitem__("o", o.detach().clone()))
    was = model.training
    model.eval()
    out = []
    try:
        for i in range(x.shape[0]):
            with torch.no_grad():
                model(x[i:i + 1])
                a = seen["o"][0]
                model(x_adv[i:i + 1])
                out.append((a, seen["o"][0]))
    finally:
        handle.remove()
        model.train(was)
    return out


def oracle(model, x, x_adv, layer, relative=False):
    """The formula with plain loops over samples and channels, one image per forward pass."""
    total, clean_total = None, None
    for a, b in per_pair_outputs(model, x, x_adv, layer):
        if total is None:
            total, clean_total = [0.0] * a.shape[0], [0.0] * a.shape[0]
        for c in range(a.shape[0]):
            d = (a[c] - b[c]).abs().flatten()  # a unit of a linear layer: one value
            total[c] += float(d.sum()) / d.numel()
            clean_total[c] += float(a[c].abs().flatten().sum()) / d.numel()
    n = x.shape[0]
    sigma = torch.tensor([t / n for t in total], dtype=torch.float64)
    if not relative:
        return sigma
    return torch.tensor([t / ct if ct > 0 else math.nan for t, ct in zip(total, clean_total)],
                        dtype=torch.float64)


def hook_counts(model):
    return {n: (len(m._forward_hooks), len(m._forward_pre_hooks)) for n, m in model.named_modules()}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("batch_size", [1, 3, 4, 64])
def test_matches_plain_oracle(seed, batch_size):
    model = Nested(seed).double().train()  # train mode on purpose: the analysis must switch to eval
    x, x_adv = pairs(10, seed=seed)  # N = 10: not divisible by 3 or 4
    sigma = neuron_sensitivity(model, x, x_adv, layers=LAYERS, batch_size=batch_size)
    assert list(sigma) == LAYERS
    assert model.training and model.body.block.bn.training  # mode restored
    for layer in LAYERS:
        ref = oracle(model, x, x_adv, layer)
        assert sigma[layer].dtype == torch.float32 and sigma[layer].shape == ref.shape
        torch.testing.assert_close(sigma[layer].double(), ref, atol=1e-6, rtol=0)
        assert float(ref.max()) > 1e-3  # the comparison is not between zeros


@pytest.mark.parametrize("batch_size", [3, 64])
def test_relative_matches_oracle_and_marks_dead(batch_size):
    model = Nested(1).double()
    with torch.no_grad():  # kill two units of fc1 for every input: relu output all zero
        model.head.fc1.weight[:2] = 0.0
        model.head.fc1.bias[:2] = -1.0
    x, x_adv = pairs(7, seed=3)
    rel = neuron_sensitivity(model, x, x_adv, layers=["head.relu", "stem"], batch_size=batch_size, relative=True)
    assert all(isinstance(v, torch.Tensor) for v in rel.values())  # one return type: a dict of tensors
    dead = {layer: r.isnan() for layer, r in rel.items()}
    for layer in ("head.relu", "stem"):
        ref = oracle(model, x, x_adv, layer, relative=True)
        torch.testing.assert_close(rel[layer].double(), ref, atol=1e-6, rtol=0, equal_nan=True)
        assert torch.equal(dead[layer], torch.isnan(ref))
    assert dead["head.relu"][:2].all() and int(dead["head.relu"].sum()) >= 2
    assert not dead["stem"].any()


def toolbox_relative(model, x, x_adv, layer):
    """The authors' toolbox (AISafety EvalBox/UserEvaluation/sns.py), restated: per pair and channel, mean |change|
    over mean |clean| (1.0 where the clean mean is 0), summed and divided by the number of pairs."""
    ratios = None
    for a, b in per_pair_outputs(model, x, x_adv, layer):
        ratios = [0.0] * a.shape[0] if ratios is None else ratios
        for c in range(a.shape[0]):
            xc, dc = a[c].flatten(), (b[c] - a[c]).flatten()
            x_l1, d_l1 = float(xc.abs().sum()) / len(xc), float(dc.abs().sum()) / len(xc)
            ratios[c] += d_l1 / x_l1 if x_l1 != 0 else 1.0
    return torch.tensor([r / x.shape[0] for r in ratios], dtype=torch.float64)


@pytest.mark.parametrize("batch_size", [2, 64])
def test_mean_of_ratios_matches_the_toolbox_and_differs_from_the_ratio_of_means(batch_size):
    model = Nested(2).double()
    with torch.no_grad():  # units 0-1 dead on every input; unit 2 alive on some inputs only
        model.head.fc1.weight[:2] = 0.0
        model.head.fc1.bias[:2] = -1.0
        model.head.fc1.bias[2] -= 5.5  # its pre-activation spans 4.4-10.2 on these inputs: zero on 5 of 9
    x, x_adv = pairs(9, seed=5)
    per_pair = neuron_sensitivity(model, x, x_adv, layers=["head.relu", "stem"], batch_size=batch_size,
                                  relative="mean_of_ratios")
    ratio = neuron_sensitivity(model, x, x_adv, layers=["head.relu", "stem"], relative="ratio_of_means")
    dead, dead2 = ({layer: r.isnan() for layer, r in v.items()} for v in (per_pair, ratio))
    for layer in ("head.relu", "stem"):
        ref = toolbox_relative(model, x, x_adv, layer)
        ref[dead[layer]] = math.nan  # dead on every pair: NaN in both kit variants (the toolbox says 1.0)
        torch.testing.assert_close(per_pair[layer].double(), ref, atol=1e-6, rtol=0, equal_nan=True)
        assert torch.equal(dead[layer], dead2[layer])
    with torch.no_grad(), eval_mode(model), capture(model, ["head.relu"]) as acts:  # eval: as the measure runs
        model(x)
    assert 0 < int((acts["head.relu"][:, 2] == 0).sum()) < 9 and not dead["head.relu"][2]  # the 1.0 branch runs
    alive = ~dead["stem"]
    assert not torch.allclose(per_pair["stem"][alive], ratio["stem"][alive], rtol=1e-3)  # two different numbers
    with pytest.raises(ValueError, match="relative must be False, True or one of ratio_of_means, mean_of_ratios"):
        neuron_sensitivity(model, x, x_adv, layers=["stem"], relative="toolbox")


def test_float32_model_close_to_oracle():
    model = Nested(4)
    x, x_adv = pairs(9, dtype=torch.float32, seed=4)
    sigma = neuron_sensitivity(model, x, x_adv, layers=["body.block", "head.fc1"], batch_size=4)
    for layer in sigma:
        torch.testing.assert_close(sigma[layer].double(), oracle(model, x, x_adv, layer), atol=1e-5, rtol=1e-5)


def test_spatial_mean_first_differs_on_constructed_example():
    # One 1x1 conv channel that copies its input; the clean/adversarial difference is +0.1 at one
    # position and -0.1 at the other: per-position L1 gives 0.1, the spatial mean first gives 0.
    model = nn.Sequential(OrderedDict(conv=nn.Conv2d(1, 1, 1), flat=nn.Flatten(), fc=nn.Linear(2, 2)))
    with torch.no_grad():
        model.conv.weight.fill_(1.0)
        model.conv.bias.zero_()
        model.fc.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, -1.0]]))
        model.fc.bias.zero_()
    x = torch.tensor([[[[0.5, 0.5]]]])
    x_adv = torch.tensor([[[[0.6, 0.4]]]])
    sigma = neuron_sensitivity(model, x, x_adv, layers=["conv"])["conv"]
    with capture(model, ["conv"]) as acts, torch.no_grad():
        model(torch.cat([x, x_adv]))
    a = acts["conv"]
    spatial_first = (a[0].mean((1, 2)) - a[1].mean((1, 2))).abs()  # the other toolbox's quantity
    torch.testing.assert_close(sigma, torch.tensor([0.1]), atol=1e-6, rtol=0)
    assert float(spatial_first.abs().max()) < 1e-6
    assert float((sigma - spatial_first).abs().max()) > 0.09


def test_capture_removes_hooks_also_on_error():
    model = Nested(0)
    before = hook_counts(model)
    x, x_adv = pairs(2, dtype=torch.float32)
    with capture(model, ["stem.conv", "head.fc1"]) as acts:
        assert hook_counts(model) != before  # hooks are really registered while inside
        model(x)
    assert set(acts) == {"stem.conv", "head.fc1"} and acts["head.fc1"].shape[0] == 2
    assert hook_counts(model) == before
    with pytest.raises(KeyError, match="boom"):
        with capture(model, ["stem.conv"]):
            model(x)
            raise KeyError("boom")
    assert hook_counts(model) == before
    with pytest.raises(ValueError, match="nearest valid names"):
        with capture(model, ["stem.conv", "head.fc9"]):
            pass
    assert hook_counts(model) == before
    with pytest.raises(ValueError, match="nearest valid names"):
        neuron_sensitivity(model, x, x_adv, layers=["body.blok"])
    assert hook_counts(model) == before


def test_module_run_twice_is_an_error_and_hooks_are_removed():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3, padding=1)
            self.relu = nn.ReLU()  # used twice
            self.fc = nn.Linear(2 * 16, 3)

        def forward(self, x):
            return self.fc(self.relu(self.relu(self.conv(x))).flatten(1))

    model = Shared()
    before = hook_counts(model)
    x, x_adv = pairs(3, c=1, size=4, dtype=torch.float32)
    with pytest.raises(RuntimeError, match="more than once"):
        with capture(model, ["relu"]):
            model(x)
    with pytest.raises(RuntimeError, match="more than once"):
        neuron_sensitivity(model, x, x_adv, layers=["relu"])
    assert hook_counts(model) == before
    # two separate forward passes are fine: each replaces the previous outputs
    with capture(model, ["conv"]) as acts:
        model(x)
        model(x_adv[:2])
    assert acts["conv"].shape[0] == 2


def test_capture_keeps_graph_for_training_and_detach_drops_it():
    model = Nested(2)
    x, x_adv = pairs(4, dtype=torch.float32)
    n = x.shape[0]
    with capture(model, ["stem", "head.fc1"]) as acts:
        logits = model(torch.cat([x, x_adv]))
    assert acts["stem"].grad_fn is not None
    loss = logits.sum() * 0 + sum(batch_sensitivity(acts[l][:n], acts[l][n:]).mean() for l in acts)
    loss.backward()
    assert model.stem.conv.weight.grad is not None and float(model.stem.conv.weight.grad.abs().sum()) > 0
    with capture(model, ["stem"], detach=True) as acts:
        model(x)
    assert acts["stem"].grad_fn is None and not acts["stem"].requires_grad


def test_capture_detects_in_place_modification():
    model = nn.Sequential(OrderedDict(conv=nn.Conv2d(1, 2, 3, padding=1), relu=nn.ReLU(inplace=True),
                                      flat=nn.Flatten(), fc=nn.Linear(2 * 16, 3)))
    x, _ = pairs(2, c=1, size=4, dtype=torch.float32)
    with torch.no_grad(), capture(model, ["conv", "relu"]) as acts:
        model(x)
    assert acts["relu"].min() >= 0
    with pytest.raises(RuntimeError, match="modified in place"):
        acts["conv"]
    # neuron_sensitivity reduces inside the hook, before the in-place ReLU: still the formula
    x, x_adv = pairs(5, c=1, size=4, dtype=torch.float32)
    sigma = neuron_sensitivity(model, x, x_adv, layers=["conv"], batch_size=2)["conv"]
    ref_model = nn.Sequential(OrderedDict(conv=model.conv, relu=nn.ReLU(), flat=nn.Flatten(), fc=model.fc))
    torch.testing.assert_close(sigma.double(), oracle(ref_model, x, x_adv, "conv"), atol=1e-5, rtol=1e-5)


def test_mode_restored_per_module():
    model = Nested(0).train()
    model.body.eval()  # a mixed state must come back exactly
    x, x_adv = pairs(3, dtype=torch.float32)
    neuron_sensitivity(model, x, x_adv, layers=["stem"])
    assert model.training and model.stem.training and not model.body.training and not model.body.block.bn.training


def test_batch_sensitivity_matches_streamed_and_is_differentiable():
    model = Nested(3).double()
    x, x_adv = pairs(6, seed=5)
    with torch.no_grad(), capture(model, ["body.block", "head.fc1"]) as acts:
        model.eval()(torch.cat([x, x_adv]))
    sigma = neuron_sensitivity(model, x, x_adv, layers=["body.block", "head.fc1"], batch_size=4)
    for layer in sigma:
        torch.testing.assert_close(batch_sensitivity(acts[layer][:6], acts[layer][6:]).float(), sigma[layer])
    a = torch.randn(3, 2, 2, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, 2, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: batch_sensitivity(a, b), (a, b))
    assert torch.autograd.gradcheck(lambda a, b: batch_sensitivity(a, b, relative=True)[0], (a, b))


def test_batch_sensitivity_keeps_channels_last_and_reads_any_positions():
    """SNS trains channels_last: the gradient its penalty sends back must keep that layout (a reshape used to
    copy it to the contiguous one, which made the network's ReLU backward several times slower)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(8, 16, 12, 12, generator=g).contiguous(memory_format=torch.channels_last).requires_grad_()
    b = torch.randn(8, 16, 12, 12, generator=g).contiguous(memory_format=torch.channels_last).requires_grad_()
    for relative in (False, True):
        sigma = batch_sensitivity(a, b, relative=relative)
        sigma = sigma[0] if relative else sigma
        scale = a.abs().mean((2, 3)).mean(0) if relative else 1
        torch.testing.assert_close(sigma, (a - b).abs().mean((2, 3)).mean(0) / scale)  # positions, then pairs
        grad_a, grad_b = torch.autograd.grad(sigma.sum(), (a, b))
        assert grad_a.is_contiguous(memory_format=torch.channels_last)  # [8, 16, 12, 12]: not both layouts
        assert grad_b.is_contiguous(memory_format=torch.channels_last)
    seq_a, seq_b = torch.randn(4, 3, 7, generator=g), torch.randn(4, 3, 7, generator=g)  # [N, C, L]
    torch.testing.assert_close(batch_sensitivity(seq_a, seq_b), (seq_a - seq_b).abs().mean(2).mean(0))


def test_batch_sensitivity_relative_dead_gives_nan_but_finite_grad():
    a = torch.rand(4, 3, requires_grad=True)
    with torch.no_grad():
        a[:, 1] = 0.0
    b = torch.rand(4, 3, requires_grad=True)
    sigma, dead = batch_sensitivity(a, b, relative=True)
    assert dead.tolist() == [False, True, False] and torch.isnan(sigma[1])
    expected = (a - b).abs().mean(0) / a.abs().mean(0)
    torch.testing.assert_close(sigma[[0, 2]], expected[[0, 2]])
    sigma[~dead].sum().backward()
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()
    with pytest.raises(ValueError, match="same shape"):
        batch_sensitivity(a, b[:2])


def test_input_checks():
    model = Nested(0)
    x, x_adv = pairs(3, dtype=torch.float32)
    with pytest.raises(ValueError, match="x_adv must have values in"):
        neuron_sensitivity(model, x, x_adv + 2)
    with pytest.raises(ValueError, match="same shape"):
        neuron_sensitivity(model, x, x_adv[:2])
    with pytest.raises(ValueError, match="batch_size"):
        neuron_sensitivity(model, x, x_adv, batch_size=0)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        neuron_sensitivity(model, x.tolist(), x_adv)


def test_default_layers_used_when_none():
    from nslib.models import default_layers
    model = Nested(1)
    x, x_adv = pairs(3, dtype=torch.float32)
    sigma = neuron_sensitivity(model, x, x_adv)
    assert list(sigma) == default_layers(model) == ["stem.conv", "body.block.conv", "head.fc1"]


def test_resolve_k_and_top_k():
    s = torch.tensor([0.5, 3.0, 1.0, math.nan, 2.0, 0.1, 0.2, 0.3, 0.4, 0.6])
    assert resolve_k(0.1, 10) == 1 and resolve_k(0.25, 10) == 3 and resolve_k(0.01, 10) == 1
    assert resolve_k(1.0, 10) == 10 and resolve_k(1, 10) == 1 and resolve_k(0, 10) == 0
    assert top_k(s, 3).tolist() == [1, 4, 2]
    assert top_k(s, 3, which="bottom").tolist() == [5, 6, 7]
    assert top_k(s, 1.0).tolist()[-1] == 3 and top_k(s, 1.0, which="bottom").tolist()[-1] == 3  # NaN last
    r0, r1 = top_k(s, 4, which="random", seed=0), top_k(s, 4, which="random", seed=1)
    assert r0.tolist() == top_k(s, 4, which="random", seed=0).tolist()  # seeded
    assert r0.numel() == 4 and len(set(r0.tolist())) == 4 and not torch.equal(r0, r1)
    both = top_k({"a": s, "b": s[:4]}, 0.5)
    assert both["a"].numel() == 5 and both["b"].tolist() == [1, 2]
    with pytest.raises(ValueError, match="layer 'b'"):
        top_k({"a": s, "b": s[:4]}, 5)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        top_k(s, 1.5)
    with pytest.raises(ValueError, match="which"):
        top_k(s, 2, which="middle")


def test_layer_summary_rows():
    s1 = {"l1": torch.tensor([1.0, 2.0, 3.0, 10.0]), "l2": torch.tensor([0.5, math.nan])}
    s2 = {"l1": torch.tensor([1.0, 1.0, 1.0, 1.0]), "l2": torch.tensor([0.25, 0.75])}
    rows = layer_summary({"a": s1, "b": (s2, {"l1": torch.zeros(4, dtype=torch.bool),
                                              "l2": torch.tensor([False, True])})}, k=0.5)
    assert [(r["model"], r["layer"]) for r in rows] == [("a", "l1"), ("a", "l2"), ("b", "l1"), ("b", "l2")]
    r = rows[0]
    assert (r["neurons"], r["dead"], r["mean"], r["median"], r["top_k_mean"], r["max"], r["k"]) == \
        (4, 0, 4.0, 2.0, 6.5, 10.0, 2)
    assert rows[1]["dead"] == 1 and rows[1]["mean"] == 0.5 and rows[3]["dead"] == 1
    single = layer_summary(s2, k=1)
    assert single[0]["model"] == "model" and single[1]["top_k_mean"] == 0.75


def test_torchvision_resnet18_nested_names():
    import torchvision  # a hard dependency of nslib
    from nslib.models import default_layers, wrap
    torch.manual_seed(0)
    model = wrap(torchvision.models.resnet18(num_classes=10), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    x, x_adv = pairs(3, c=3, size=32, dtype=torch.float32, noise=0.03)
    layers = ["layer2.1.conv1", "net.layer3.0.downsample.0", "layer4.1", "fc"]
    sigma = neuron_sensitivity(model, x, x_adv, layers=layers, batch_size=2)
    assert [sigma[l].numel() for l in layers] == [128, 256, 512, 10]
    torch.testing.assert_close(sigma["layer2.1.conv1"].double(), oracle(model, x, x_adv, "net.layer2.1.conv1"),
                               atol=1e-5, rtol=1e-4)
    rel = neuron_sensitivity(model, x, x_adv, layers=["layer4.1"], relative=True)
    assert rel["layer4.1"].shape == (512,)
    full = neuron_sensitivity(model, x, x_adv, batch_size=3)
    assert list(full) == default_layers(model) and len(full) == 20
    assert all(torch.isfinite(s).all() for s in full.values())
    with pytest.raises(RuntimeError, match="more than once"):  # torchvision reuses one ReLU per block
        neuron_sensitivity(model, x, x_adv, layers=["layer1.0.relu"])
    with pytest.raises(ValueError, match="nearest valid names.*layer2.1.conv1"):
        neuron_sensitivity(model, x, x_adv, layers=["layer2.1.conv"])


@pytest.mark.parametrize("batch_size", [3, 64])
def test_variants_share_one_pass_per_batch_and_equal_separate_calls(batch_size):
    # Oracle: one neuron_sensitivity call per variant. Five variants over two distinct adversarial sets must run
    # one forward pass per batch of 3 * b images (benign, own, control), not five passes of 2 * b.
    model = Nested(3).double()
    x, own = pairs(10, seed=3)
    _, control = pairs(10, seed=4, noise=0.3)
    variants = {"abs": (own, False), "rel": (own, "ratio_of_means"), "rel_pairs": (own, "mean_of_ratios"),
                "abs_transfer": (control, False), "rel_transfer": (control, True)}
    passes = []
    handle = model.register_forward_pre_hook(lambda m, args: passes.append(args[0].shape[0]))
    try:
        got = sensitivity_variants(model, x, variants, layers=LAYERS, batch_size=batch_size)
    finally:
        handle.remove()
    assert passes == [3 * min(batch_size, 10 - i) for i in range(0, 10, batch_size)]
    assert list(got) == list(variants) and hook_counts(model) == hook_counts(Nested(3))
    for key, (x_adv, relative) in variants.items():
        want = neuron_sensitivity(model, x, x_adv, layers=LAYERS, relative=relative, batch_size=batch_size)
        for layer in LAYERS:
            torch.testing.assert_close(got[key][layer], want[layer], atol=1e-6, rtol=1e-6, equal_nan=True)
    # one variant is neuron_sensitivity's own pass: bit for bit
    one = sensitivity_variants(model, x, {"s": (own, True)}, layers=LAYERS, batch_size=batch_size)["s"]
    want = neuron_sensitivity(model, x, own, layers=LAYERS, relative=True, batch_size=batch_size)
    assert all(torch.equal(one[n].nan_to_num(-1.0), want[n].nan_to_num(-1.0)) for n in LAYERS)
    with pytest.raises(ValueError, match="variants must be a non-empty dict"):
        sensitivity_variants(model, x, {})
    with pytest.raises(ValueError, match="relative must be"):
        sensitivity_variants(model, x, {"a": (own, False), "b": (own, "mean")})
    with pytest.raises(ValueError, match=r"variants\['b'\]'s x_adv"):
        sensitivity_variants(model, x, {"a": (own, False), "b": (own - 2, False)})


def test_activity_is_each_neurons_mean_absolute_clean_output_from_the_same_pass():
    # Oracle: each benign image through the model alone, the layer's |output| averaged over positions, then images.
    model = Nested(3).double()
    x, own = pairs(7, seed=5)
    got = sensitivity_variants(model, x, {"abs": (own, False), "rel": (own, "ratio_of_means")}, layers=LAYERS,
                               batch_size=3, activity=True)
    assert list(got) == ["abs", "rel", "activity"]
    for layer in LAYERS:
        outs = per_pair_outputs(model, x, own, layer)
        want = torch.stack([a.abs().reshape(a.shape[0], -1).mean(1) for a, _ in outs]).mean(0)
        torch.testing.assert_close(got["activity"][layer].double(), want, atol=1e-6, rtol=1e-6)
        # the ratio-of-means relative sigma is the absolute one over this activity, neuron by neuron
        live = want > 0
        torch.testing.assert_close(got["rel"][layer][live].double(), (got["abs"][layer].double() / want)[live],
                                   atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match='must not use the key "activity"'):
        sensitivity_variants(model, x, {"activity": (own, False)}, activity=True)
