"""nslib.repro.cache: the model cache keys on training's identity (so it and the resume check agree), takes any
registered method without other edits, and survives the sweep a user makes (run, change lam, run again)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nslib import training
from nslib.repro import cache
from nslib.methods import METHODS, Method

TINY = dict(epochs=1, batch_size=64, n_train=256, val_size=100, val_n_adv=20, val_attack_steps=1, attack_steps=1,
            lam=0.01, k=0.1, progress=False)


def test_model_key_is_training_identity():
    base = dict(epochs=2, n_train=100)
    _, k1 = cache.model_key("fmnist", "smallcnn", "pgd_at", 0, lam=0.01, k=0.1, **base)
    _, k2 = cache.model_key("fmnist", "smallcnn", "pgd_at", 0, lam=0.1, k=0.3, **base)
    assert k1 == k2  # the lambda ablation never retrains PGD-AT
    _, s1 = cache.model_key("fmnist", "smallcnn", "sns_pgd_at", 0, lam=0.01, **base)
    _, s2 = cache.model_key("fmnist", "smallcnn", "sns_pgd_at", 0, lam=0.1, **base)
    assert s1 != s2
    _, v1 = cache.model_key("fmnist", "smallcnn", "vanilla", 0, attack_steps=3, **base)
    _, v2 = cache.model_key("fmnist", "smallcnn", "vanilla", 0, attack_steps=5, **base)
    assert v1 == v2
    params, _ = cache.model_key("fmnist", "smallcnn", "sns_trades", 0, **base)
    assert {"beta", "lam", "k", "base"} <= set(params)  # SNS on TRADES reads TRADES' beta too
    cfg = training.with_attack_defaults(training.TrainConfig(method="sns", base="trades", seed=0, **base), "fmnist")
    assert params["training_code"] == cache.TRAINING_CODE  # models trained by older code are never reused
    assert {k: v for k, v in params.items() if k not in ("dataset", "arch", "name", "training_code")} \
        == training.identity(cfg)  # the resolved config's identity: what the checkpoint records
    assert params["eps"] == 0.1 and params["attack_steps"] == 10 and params["alpha"] == 0.02
    # a value given or left to its default is one key (nothing need be dropped to keep a key)
    assert cache.model_key("fmnist", "smallcnn", "pgd_at", 0, eps=0.1, attack_steps=10, alpha=0.02, **base)[1] == k1
    assert cache.model_key("fmnist", "smallcnn", "pgd_at", 0, eps=0.2, **base)[1] != k1
    with pytest.raises(ValueError, match="name must be one of"):
        cache.model_key("fmnist", "smallcnn", "madry", 0)
    with pytest.raises(TypeError):
        cache.model_key("fmnist", "smallcnn", "vanilla", 0, epochz=3)


def test_get_models_gives_the_vanilla_overrides_to_the_vanilla_model_only(monkeypatch):
    calls = {}
    monkeypatch.setattr(cache, "get_model", lambda d, a, n, s, progress=True, **kw: calls.setdefault((n, s), kw))
    cache.get_models("fmnist", "smallcnn", ["vanilla", "pgd_at"], [0, 1], vanilla={"epochs": 3, "n_train": None},
                     epochs=2, n_train=1000, lr=0.05)
    assert calls[("vanilla", 1)] == {"epochs": 3, "n_train": None, "lr": 0.05}
    assert calls[("pgd_at", 0)] == {"epochs": 2, "n_train": 1000, "lr": 0.05}
    calls.clear()
    cache.get_models("fmnist", "smallcnn", ["vanilla"], [0], vanilla_epochs=8, epochs=2)  # the shorthand
    assert calls[("vanilla", 0)] == {"epochs": 8}
    with pytest.raises(ValueError, match=r"vanilla_epochs and vanilla\['epochs'\] must agree"):
        cache.get_models("fmnist", "smallcnn", ["vanilla"], [0], vanilla_epochs=8, vanilla={"epochs": 3})


def test_c1_models_train_pgd_at_at_a_fraction_of_eps_with_a_step_scaled_with_it(monkeypatch):
    calls = {}
    monkeypatch.setattr(cache, "get_model", lambda d, a, n, s, progress=True, **kw: (calls.setdefault((n, s), kw), ("m", {}))[1])
    out = cache.c1_models("fmnist", "smallcnn", [0, 1], [0.5], eps=0.1, epochs=2, attack_steps=2, alpha=0.125)
    assert list(out) == [("pgd_at@0.5eps", 0), ("pgd_at@0.5eps", 1)]
    assert out[("pgd_at@0.5eps", 1)][1] == {"name": "pgd_at@0.5eps", "label": "PGD-AT (0.5 eps)"}  # from the scale
    assert calls[("pgd_at", 1)] == {"epochs": 2, "attack_steps": 2, "eps": 0.05, "alpha": pytest.approx(0.0625)}
    calls.clear()
    cache.c1_models("fmnist", "smallcnn", [0], [0.25], eps=0.1)  # the dataset's PGD-10: step 2.5 * 0.025 / 10
    assert calls[("pgd_at", 0)] == {"eps": 0.025, "alpha": pytest.approx(0.00625)}
    assert cache.c1_models("fmnist", "smallcnn", [0], [], eps=0.1) == {}
    with pytest.raises(ValueError, match=r"scales must be fractions of eps in \(0, 1\)"):
        cache.c1_models("fmnist", "smallcnn", [0], [1.0], eps=0.1)
    assert cache.label("trades") == "TRADES"
    assert cache.label("mine") == "mine"


@pytest.mark.slow
def test_lam_sweep_retrains_only_the_sns_models(tmp_path, monkeypatch):
    """Issue: changing lam after a finished run crashed in training's resume check for models that do not use
    lam. Now the sweep reuses PGD-AT and trains only SNS again."""
    monkeypatch.setenv("NSLIB_OUTPUTS", str(tmp_path))
    first = cache.get_models("mnist5k", "smallcnn", ["pgd_at", "sns_pgd_at"], [0], **TINY)
    again = cache.get_models("mnist5k", "smallcnn", ["pgd_at", "sns_pgd_at"], [0], **{**TINY, "lam": 0.05})
    assert again[("pgd_at", 0)][1]["dir"] == first[("pgd_at", 0)][1]["dir"]          # reused, not retrained
    assert again[("sns_pgd_at", 0)][1]["dir"] != first[("sns_pgd_at", 0)][1]["dir"]  # a new SNS model
    assert again[("sns_pgd_at", 0)][1]["params"]["lam"] == 0.05
    a = first[("pgd_at", 0)][0].state_dict()
    b = again[("pgd_at", 0)][0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_model_started_from_another_starts_from_its_weights_and_keys_on_it(tmp_path, monkeypatch):
    """start: the robust model begins at the vanilla model's weights (its best checkpoint), the vanilla model is
    trained first when missing, and the start's key joins the model's own, so another start is another model."""
    monkeypatch.setenv("NSLIB_OUTPUTS", str(tmp_path))
    args = {k: v for k, v in TINY.items() if k != "progress"}
    van, van_info = cache.get_model("mnist5k", "smallcnn", "vanilla", 0, progress=False, **args)
    seen = {}
    real_train = training.train

    def spy(model, data, **kw):  # the weights the run starts from
        seen["start"] = {k: v.clone() for k, v in model.state_dict().items()}
        return real_train(model, data, **kw)
    monkeypatch.setattr(training, "train", spy)
    start = {"name": "vanilla", "args": args}
    model, info = cache.get_model("mnist5k", "smallcnn", "pgd_at", 0, progress=False, start=start, **args)
    assert all(torch.equal(seen["start"][k], v) for k, v in van.state_dict().items())
    assert info["params"]["start"] == van_info["key"]
    _, scratch = cache.get_model("mnist5k", "smallcnn", "pgd_at", 0, progress=False, **args)
    assert scratch["key"] != info["key"] and "start" not in scratch["params"]
    _, other = cache.get_model("mnist5k", "smallcnn", "pgd_at", 0, progress=False,
                               start={"name": "vanilla", "args": {**args, "epochs": 2}}, **args)
    assert other["params"]["start"] != info["params"]["start"] and other["key"] != info["key"]


def _noisy_loss(net, x, y, x_adv, cfg, acts):
    logits = net(x)
    noisy = net((x + cfg.eps * torch.randn_like(x)).clamp(0, 1))
    return F.cross_entropy(logits.float(), y) + F.cross_entropy(noisy.float(), y), logits, None


@pytest.mark.slow
def test_a_registered_method_is_cached_by_the_reproduction_without_other_edits(tmp_path, monkeypatch):
    monkeypatch.setenv("NSLIB_OUTPUTS", str(tmp_path))
    METHODS["noisy"] = Method(_noisy_loss, params=("eps",))
    try:
        model, info = cache.get_model("mnist5k", "smallcnn", "noisy", 0, eps=0.2, **TINY)
        assert info["status"] == "done" and info["label"] == "noisy"
        assert "eps" in info["params"] and "lam" not in info["params"]
        again, info2 = cache.get_model("mnist5k", "smallcnn", "noisy", 0, eps=0.2, **TINY)
        assert info2["dir"] == info["dir"] and info2["train_s"] == 0.0  # loaded, not trained again
        _, other = cache.get_model("mnist5k", "smallcnn", "noisy", 0, eps=0.3, **TINY)
        assert other["dir"] != info["dir"]  # its own parameter is in its key
    finally:
        del METHODS["noisy"]


def _claim_child(outputs: str, barrier, results) -> None:
    """One of two reproductions sharing ``outputs``: counts the training epochs it runs itself."""
    import os

    os.environ["NSLIB_OUTPUTS"] = outputs
    torch.set_num_threads(1)
    from nslib import training as training_mod
    from nslib.repro import cache as cache_mod

    real, epochs = training_mod._train_epoch, []

    def counting(run, epoch, progress):
        epochs.append(epoch)
        return real(run, epoch, progress)

    training_mod._train_epoch = counting
    barrier.wait()  # both ask for the model at the same moment
    model, info = cache_mod.get_model("mnist5k", "smallcnn", "pgd_at", 0, **{**TINY, "epochs": 2})
    results.put((len(epochs), info["status"], sum(float(p.sum()) for p in model.parameters())))


def test_two_runs_sharing_the_cache_train_a_model_once(tmp_path):
    """Two processes want the same untrained model at once: one trains it, the other waits and loads it (with no
    lock both would train: the run takes seconds, the barrier releases them together)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_claim_child, args=(str(tmp_path), barrier, results)) for _ in range(2)]
    for p in procs:
        p.start()
    got = [results.get(timeout=240) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert sorted(n for n, _, _ in got) == [0, 2]  # trained once, two epochs; loaded once
    assert {status for _, status, _ in got} == {"done"} and got[0][2] == got[1][2]  # the same weights
    assert len(list((tmp_path / "models" / "mnist5k" / "pgd_at").glob("*/last.pt"))) == 1
