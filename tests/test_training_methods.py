"""Training methods as data: a new method is one function and one row of METHODS; TrainConfig checks and
overrides; identity (what resume and model caches key on). Tiny networks on the real MNIST-5k subset."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nslib import methods, training
from nslib.methods import METHODS, Method, TrainConfig, identity


class Net(nn.Module):
    """conv (8 ch, stride 2) -> relu -> fc (10): trains in seconds on a few hundred MNIST images."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, stride=2)  # 28 -> 13
        self.relu = nn.ReLU()
        self.fc = nn.Linear(8 * 13 * 13, 10)

    def forward(self, x):
        return self.fc(self.relu(self.conv(x - 0.13)).flatten(1))


def net(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    return Net()


def fast(**kw) -> dict:
    args = dict(epochs=3, batch_size=32, lr=0.05, n_train=200, val_size=100, progress=False, device="cpu")
    return {**args, **kw}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def noisy_loss(net, x, y, x_adv, cfg, acts):
    """The toy method: CE on x plus CE on x with Gaussian noise of std eps (draws from the global RNG)."""
    logits = net(x)
    noisy = net((x + cfg.eps * torch.randn_like(x)).clamp(0, 1))
    return F.cross_entropy(logits.float(), y) + F.cross_entropy(noisy.float(), y), logits, None


@pytest.fixture
def noisy():
    """Registers the toy method for one test: one function, one row."""
    METHODS["noisy"] = Method(noisy_loss, params=("eps",))
    try:
        yield "noisy"
    finally:
        del METHODS["noisy"]


def state_of(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


class Stop(Exception):
    pass


def stop_after(n):
    def callback(epoch, record):
        if epoch == n:
            raise Stop
    return callback


# ----------------------------------------------------------------------------------------------
# a new method: one function, one row

def test_a_registered_method_trains_checkpoints_and_resumes_exactly(noisy, tmp_path):
    args = fast(method=noisy, eps=0.3)
    model = net()
    res = training.train(model, "mnist5k", out_dir=tmp_path / "straight", **args)
    hist = res["history"]
    assert res["status"] == "done" and [h["epoch"] for h in hist] == [1, 2, 3]
    assert hist[-1]["train_loss"] < 0.7 * hist[0]["train_loss"]  # both CE terms start near 2 ln 10
    assert hist[-1]["val_clean"] > 0.5  # chance is 0.1
    assert hist[-1]["eps"] is None and "val_pgd" not in hist[-1] and "penalty" not in hist[-1]  # no attack
    for name in ("last.pt", "best.pt", "history.json"):
        assert (tmp_path / "straight" / name).exists()
    stored = json.loads((tmp_path / "straight" / "history.json").read_text())
    assert stored["best"]["metric"] == max(h["val_clean"] for h in hist)  # no attack: best by clean accuracy
    assert res["params"]["method"] == "noisy" and res["params"]["eps"] == 0.3
    with pytest.raises(ValueError, match="holds no optimizer state"):  # best.pt cannot be resumed from
        fresh = net()
        optimizer = torch.optim.SGD(fresh.parameters())
        training.load_checkpoint(tmp_path / "straight" / "best.pt", fresh, optimizer=optimizer)

    with pytest.raises(Stop):
        training.train(net(), "mnist5k", out_dir=tmp_path / "resumed", callback=stop_after(2), **args)
    resumed = net(seed=7)  # other weights and another global random state: everything comes from last.pt
    torch.manual_seed(99)
    res2 = training.train(resumed, "mnist5k", out_dir=tmp_path / "resumed", **args)
    assert res2["status"] == "done" and len(res2["history"]) == 3
    assert_same_state(state_of(resumed), state_of(model))  # the noise draws were replayed too
    assert res2["history"][-1]["train_loss"] == hist[-1]["train_loss"]


def test_identity_holds_the_shared_fields_and_only_the_methods_own(noisy):
    shared = set(methods.SHARED)
    assert set(identity(TrainConfig(method="noisy"))) == shared | {"eps"}
    assert set(identity(TrainConfig())) == shared  # standard
    attack = {"eps", "alpha", "attack_steps", "eps_warmup_epochs", "val_n_adv", "val_attack_steps"}
    assert set(identity(TrainConfig(method="pgd_at"))) == shared | attack
    assert set(identity(TrainConfig(method="trades"))) == shared | attack | {"beta"}
    sns = shared | attack | {"base", "lam", "k", "layers", "relative"}
    assert set(identity(TrainConfig(method="sns", base="pgd_at"))) == sns
    assert set(identity(TrainConfig(method="sns", base="trades"))) == sns | {"beta"}  # the base's params too
    # a field outside the identity does not change it; one inside does
    cfg = TrainConfig(method="pgd_at", lam=0.01)
    assert identity(dataclasses.replace(cfg, lam=0.05, beta=1.0, k=3)) == identity(cfg)
    assert identity(dataclasses.replace(cfg, eps=0.2)) != identity(cfg)
    assert identity(TrainConfig(method="sns", lam=0.05)) != identity(TrainConfig(method="sns", lam=0.01))


def test_config_errors_name_the_field_and_overrides_replace_it():
    with pytest.raises(ValueError, match="lr must be a finite number >= 0, got -1"):
        TrainConfig(lr=-1)
    with pytest.raises(ValueError, match=r"base must be one of 'standard', 'pgd_at', 'trades', got 'sns'"):
        TrainConfig(method="sns", base="sns")
    with pytest.raises(TypeError, match="relative must be True or False"):
        TrainConfig(method="sns", relative="yes")
    TrainConfig(method="pgd_at", lam=-1, beta=-1)  # fields the method does not read are not checked
    with pytest.raises(ValueError, match="lam must be"):
        dataclasses.replace(TrainConfig(method="sns"), lam=-1)
    with pytest.raises(TypeError, match=r"unknown training parameters \['epoch'\]"):
        training.train(net(), "mnist5k", epoch=1)
    with pytest.raises(TypeError, match="config must be a TrainConfig"):
        training.train(net(), "mnist5k", {"epochs": 1})
    # keywords override the config's fields
    cfg = TrainConfig(epochs=5, batch_size=32, lr=0.05, n_train=64, val_size=50)
    res = training.train(net(), "mnist5k", cfg, epochs=1, progress=False, device="cpu")
    assert len(res["history"]) == 1 and res["params"]["epochs"] == 1 and res["params"]["batch_size"] == 32


# ----------------------------------------------------------------------------------------------
# resume compares the identity only

def test_resume_ignores_fields_outside_the_identity_and_refuses_changes_inside(tmp_path):
    args = fast(epochs=1, n_train=64, val_size=50, eps=0.1, attack_steps=1, val_attack_steps=1, val_n_adv=20)
    model = net()
    training.train(model, "mnist5k", method="pgd_at", lam=0.01, out_dir=tmp_path / "at", **args)
    again = net(seed=5)
    res = training.train(again, "mnist5k", method="pgd_at", lam=0.05, out_dir=tmp_path / "at", **args)
    assert res["status"] == "done" and len(res["history"]) == 1  # finished: not trained again
    assert_same_state(state_of(again), state_of(model))  # the stored weights were loaded
    with pytest.raises(ValueError, match=r"eps: stored 0.1, asked 0.2.*resume=False"):
        training.train(net(), "mnist5k", method="pgd_at", out_dir=tmp_path / "at", **{**args, "eps": 0.2})

    sns = dict(method="sns", layers=["relu"], k=2)
    training.train(net(), "mnist5k", lam=0.01, out_dir=tmp_path / "sns", **sns, **args)
    model = net(seed=3)
    before = state_of(model)
    with pytest.raises(ValueError, match=r"last.pt was trained with other parameters \(lam: stored 0.01, "
                                         r"asked 0.05\)"):
        training.train(model, "mnist5k", lam=0.05, out_dir=tmp_path / "sns", **sns, **args)
    assert_same_state(state_of(model), before)  # refused before anything was loaded
