"""nslib.repro.config: one table of profiles, every knob checked, derived values computed once."""
from __future__ import annotations

import time

import pytest

from nslib import training
from nslib.repro import cache, config


def test_every_profile_and_notebook_resolves_to_valid_settings():
    for profile in config.PROFILES:
        for dataset in ("fmnist", "mnist5k", "mnist", "cifar10"):
            for nb in config.NOTEBOOKS:
                cfg = config.settings(profile, dataset, nb)
                assert 0 < cfg.eps <= 1
                assert cfg.k_eval in cfg.ks


def test_every_knob_is_declared_once_with_a_default_a_check_and_a_unit():
    fields = {f for f in config.Settings.__dataclass_fields__} - {"profile", "dataset", "notebook"}
    assert fields == set(config.KNOBS)
    for name, knob in config.KNOBS.items():
        knob.check(name, knob.default)  # every default passes its own check
        assert knob.doc, name
    for profile, layers in config.PROFILES.items():  # no layer names a knob that does not exist
        for layer, values in layers.items():
            if layer != "datasets":
                assert set(values) <= set(config.KNOBS), (profile, layer, set(values) - set(config.KNOBS))
    for name, value in config.PROFILES["quick"].get("all", {}).items():  # quick states only differences
        assert value != config.KNOBS[name].default, name


def test_a_new_knob_is_one_entry_in_KNOBS(monkeypatch):
    """The extension guide's knob recipe: one entry in KNOBS (nslib/repro/config.py) and nothing else. It is then
    a field of the settings, checked, settable with --set, recorded, and (train=True) a keyword of training."""
    knob = config.Knob(0.5, config._real(0, 1), "a toy weight (dimensionless)", train=True)
    monkeypatch.setitem(config.KNOBS, "toy_weight", knob)
    monkeypatch.setitem(config.CHECKS, "toy_weight", knob.check)
    monkeypatch.setattr(config, "Settings", config.settings_class())  # what importing the edited module does
    assert config.settings("quick", "fmnist", "05").toy_weight == 0.5
    cfg = config.settings("cpu", "fmnist", "05", config.parse_overrides(["toy_weight=0.25"]))
    assert cfg.toy_weight == 0.25 and cfg.train_args["toy_weight"] == 0.25 and cfg.as_dict()["toy_weight"] == 0.25
    with pytest.raises(ValueError, match=r"toy_weight must be a number in \[0, 1\], got 2"):
        config.settings("quick", "fmnist", "05", {"toy_weight": 2})


def test_layers_merge_in_order():
    assert config.settings("quick", "fmnist", "00").n_train == 20000      # the notebook layer
    assert config.settings("quick", "fmnist", "01").n_train == 2000
    assert config.settings("quick", "mnist5k", "00").n_train is None      # (dataset, notebook) beats notebook
    full00 = config.settings("full", "fmnist", "00")
    assert (full00.epochs, full00.n_train, full00.min_test_acc) == (15, None, 0.915)
    assert config.settings("full", "cifar10", "05").arch == "resnet18"
    assert config.settings("quick", "fmnist", "05", {"n_eval": 7}).n_eval == 7   # overrides last


def test_eps_and_alpha_are_derived_once():
    cfg = config.settings("quick", "fmnist", "02")
    assert cfg.eps == training.ATTACK_DEFAULTS["fmnist"]["eps"]
    assert cfg.alpha == pytest.approx(2.5 * 0.1 / 3)  # a 3-step attack still reaches the ball's edge
    assert cfg.train_args["eps"] == 0.1  # every argument resolved and passed; the cache keys the resolved config
    big = config.settings("quick", "fmnist", "02", {"eps": 0.2})
    assert big.eps == 0.2 and big.alpha == pytest.approx(2.5 * 0.2 / 3) and big.train_args["eps"] == 0.2
    full = config.settings("full", "fmnist", "02")  # the dataset's own steps and eps: its own step size
    assert full.alpha is None
    assert config.settings("full", "fmnist", "02", {"eps": 0.2}).alpha == pytest.approx(2.5 * 0.2 / 10)


def test_settings_are_frozen_and_json_ready():
    cfg = config.settings("quick", "fmnist", "03")
    with pytest.raises(AttributeError):
        cfg.eps = 0.3
    assert isinstance(cfg.seeds, tuple)
    d = cfg.as_dict()
    assert d["seeds"] == [0] and d["alpha"] == cfg.alpha and d["notebook"] == "03"


@pytest.mark.parametrize("overrides, message", [
    ({"seeds": "[0,1"}, r"seeds must be a non-empty list .* got '\[0,1' \(a string"),
    ({"seeds": [0, 0]}, "distinct"),
    ({"epochs": -1}, "epochs must be an integer >= 1, got -1"),
    ({"epochs": True}, "epochs must be an integer"),
    ({"nonexistent": 3}, "unknown parameter 'nonexistent'"),
    ({"epoch": 3}, "did you mean epochs"),
    ({"eps": 8}, r"eps must be a number in \(0, 1\]"),
    ({"k": 0}, "k must be an int >= 1"),
    ({"k": 1.5}, "k must be an int >= 1"),
    ({"modes": ["restore", "shuffle"]}, r"modes\[1\] must be one of"),
    ({"k_eval": 0.3}, "k_eval must be one of ks"),
    ({"e2_models": ["madry"]}, r"e2_models\[0\] must be a model of nslib.repro.cache.MODELS"),
    ({"vanilla_n_train": 0}, "vanilla_n_train must be an integer >= 1, 'all' or None, got 0"),
    ({"vanilla_n_train": "most"}, "vanilla_n_train must be an integer >= 1, 'all' or None, got 'most'"),
    ({"c1_eps_scales": [1.0]}, r"c1_eps_scales\[0\] must be a number in \(0, 1\), got 1.0"),
    ({"c1_eps_scales": [0.5, 0.5]}, "distinct"),
    ({"vanilla_n_train": 60000}, "vanilla_n_train must be at most 59500 on fmnist .* got 60000"),
    ({"n_train": 59501}, "n_train must be at most 59500"),
    ({"val_size": 60000}, "val_size must be at most 59999 on fmnist"),
])
def test_bad_overrides_fail_naming_the_knob(overrides, message):
    with pytest.raises(ValueError, match=message):
        config.settings("quick", "fmnist", "05", overrides)


def test_bad_profile_dataset_and_notebook():
    with pytest.raises(ValueError, match="profile must be one of quick, cpu, full, got 'fast'"):
        config.settings("fast", "fmnist")
    with pytest.raises(ValueError, match="datasets must be drawn from .* got 'bogus'"):
        config.settings("quick", "bogus")
    with pytest.raises(ValueError, match="notebook must be one of"):
        config.settings("quick", "fmnist", "42")


def test_parse_overrides_reads_literals_and_rejects_unknown_names_at_once():
    assert config.parse_overrides(["epochs=3", "seeds=[0, 1]", "aa_version=standard", "eps = 0.2"]) == \
        {"epochs": 3, "seeds": [0, 1], "aa_version": "standard", "eps": 0.2}
    assert config.parse_overrides(["seeds=[0,1"]) == {"seeds": "[0,1"}  # a string: settings() rejects it
    with pytest.raises(ValueError, match="NAME=VALUE"):
        config.parse_overrides(["epochs"])
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="unknown parameter 'nonexistent'"):
        config.parse_overrides(["nonexistent=3"])
    assert time.perf_counter() - t0 < 1.0


def test_every_profile_fits_the_embedded_datasets():
    """The quick profile once asked mnist5k's notebook 00 for 20,000 of its 3,500 training images: every
    profile's n_train and val_size must fit each embedded dataset, for every notebook."""
    from nslib import data

    for profile in config.PROFILES:
        for dataset in ("fmnist", "mnist5k"):
            for nb in config.NOTEBOOKS:
                cfg = config.settings(profile, dataset, nb)
                left = data.DATASETS[dataset].train_size - cfg.val_size
                assert left > 0, (profile, dataset, nb, cfg.val_size)
                assert cfg.n_train is None or cfg.n_train <= left, (profile, dataset, nb, cfg.n_train, left)
                test = data.DATASETS[dataset].test_size
                assert max(cfg.n_pairs, cfg.n_eval if nb == "05" else 0) <= test, (profile, dataset, nb)


def test_auto_profile_picks_by_cuda_and_every_profile_announces_a_measured_time():
    assert config.auto_profile(cuda=True)[0] == "full"
    assert config.auto_profile(cuda=False) == ("cpu", "no CUDA device")
    for profile in ("quick", "cpu"):  # measured on two cores: what `reproduce` announces and its bar's weights
        for nb in config.NOTEBOOKS:
            seconds, measured = config.expected_seconds(profile, "fmnist", nb)
            assert measured and seconds > 0, (profile, nb)
    assert config.expected_seconds("full", "fmnist", "01") == (config.DEFAULT_NOTEBOOK_S, False)


def test_the_cpu_profile_decides_with_three_seeds_on_1000_test_images():
    """The main job on a CPU trains every model a verdict depends on with >= 3 seeds and reports
    accuracies on >= 1,000 test images."""
    cfg = config.settings("cpu", "fmnist", "05")
    assert len(cfg.seeds) >= 3 and cfg.n_eval >= 1000 and cfg.precision == "auto"
    assert config.profile_datasets("cpu") == ("fmnist", "mnist5k")  # C5: a second dataset
    assert len(cfg.c3_seeds) >= 5 and len(cfg.lam_grid) >= 3 and max(cfg.lam_grid) / min(cfg.lam_grid) >= 10  # C3
    # MNIST-5k at the radius its 3,500 training images support against AutoAttack (chosen on validation, the
    # profile says how); the full profile keeps the paper's 0.3
    assert config.settings("cpu", "mnist5k", "05").eps == 0.15 and config.settings("full", "mnist5k", "05").eps == 0.3
    # AutoAttack on every test image C3 judges (the masking check's gap and the worst case), on both datasets
    for dataset in ("fmnist", "mnist5k"):
        c = config.settings("cpu", dataset, "05")
        assert c.aa_n == c.n_eval == 1000


def test_vanilla_args_give_the_vanilla_model_its_own_epochs_and_images():
    """The vanilla model's clean epochs are cheap, so it may train on more images than the adversarial models
    (12,000 images left it below 88%); by default it shares their images."""
    assert config.settings("quick", "fmnist", "02", {"c1_eps_scales": []}).c1_eps_scales == ()  # none: allowed
    quick = config.settings("quick", "fmnist", "02")
    assert quick.vanilla_args == {"epochs": quick.vanilla_epochs, "start": None}  # n_train shared: the key unchanged
    assert config.settings("quick", "fmnist", "02", {"vanilla_n_train": "all"}).vanilla_args["n_train"] is None
    assert config.settings("quick", "fmnist", "02", {"vanilla_n_train": 5000}).vanilla_args["n_train"] == 5000
    cpu = config.settings("cpu", "fmnist", "02")
    assert cpu.vanilla_args["n_train"] is None and cpu.n_train is None  # every image
    # the quick vanilla model keeps the cache key it had when get_models took only vanilla_epochs
    _, now = cache.model_key("fmnist", quick.arch, "vanilla", 0, **{**quick.train_args, **quick.vanilla_args})
    old_args = {k: v for k, v in quick.train_args.items() if k != "start"}  # before robust models had a start
    _, before = cache.model_key("fmnist", quick.arch, "vanilla", 0, **{**old_args, "epochs": quick.vanilla_epochs})
    assert quick.train_args["start"] is None  # quick's robust models start from scratch: their keys are unchanged
    _, robust = cache.model_key("fmnist", quick.arch, "pgd_at", 0, **old_args)
    assert cache.model_key("fmnist", quick.arch, "pgd_at", 0, **quick.train_args)[1] == robust
    cpu = config.settings("cpu", "fmnist", "02")
    assert cpu.train_args["start"] == {"name": "vanilla", "args": {**{k: v for k, v in cpu.train_args.items()
                                                                       if k != "start"}, **cpu.vanilla_args}}
    assert now == before
