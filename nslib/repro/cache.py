"""The model and pair caches of the reproduction: train once, reuse everywhere.

- **Models** (:func:`get_model`, :func:`get_models`): every trained model lives in
  ``outputs/models/<dataset>/<name>/<key>/`` where ``key`` hashes every parameter that shaped it, so a notebook
  trains what is missing, resumes what was interrupted, and never reuses a model trained with other parameters.
- **Test images**: :func:`nslib.data.test_set`, a fixed, class-stratified subset, the same for every model.
- **Adversarial pairs** (:func:`adversarial_pairs`): PGD pairs cached per model and attack parameters, so
  02, 03, 04 and 05 analyse the very same pairs.

Usage::

    model, info = get_model("fmnist", "smallcnn", "pgd_at", seed=0, epochs=2, n_train=2000)
"""
from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path

import torch

from nslib import attacks, fast, methods, models as models_mod, training
from nslib.checkpoints import UnreadableCheckpoint
from nslib.progress import stage
from nslib.store import claim, outputs_dir, params_key, save_json, save_torch

__all__ = ["MODELS", "LABELS", "Diverged", "label", "model_key", "get_model", "get_models", "describe", "c1_models", "adversarial_pairs"]

# The reproduction's models: name -> the training method (and SNS's base) that makes it. Any other method
# registered in nslib.methods.METHODS can be asked for by its own name too.
MODELS = {
    "vanilla": {"method": "standard"},
    "pgd_at": {"method": "pgd_at"},
    "trades": {"method": "trades"},
    "sns_pgd_at": {"method": "sns", "base": "pgd_at"},
    "sns_trades": {"method": "sns", "base": "trades"},
}
# Raised whenever training changes what the same parameters produce, so that no cached model trained by older
# code is reused. 2: TRADES's inner maximisation starts unclipped, as the reference does. 3: SmallCNN's
# convolutions start from Kaiming fan_in, as the reference. 4: TRADES's KL is differentiated through the clean
# log-probabilities (the same value; no NaN gradient where the clean softmax underflows).
TRAINING_CODE = 4
LABELS = {"vanilla": "Vanilla", "pgd_at": "PGD-AT", "trades": "TRADES", "sns_pgd_at": "SNS (PGD-AT)",
          "sns_trades": "SNS (TRADES)"}


def label(name: str) -> str:
    """A model's display name: :data:`LABELS`, or the name itself (a method a user registered). The models of
    :func:`c1_models` carry their own label in ``info["label"]``, computed from their radius."""
    return LABELS.get(name, name)


def _spec(name: str) -> dict:
    if name in MODELS:
        return MODELS[name]
    if name in methods.METHODS:
        return {"method": name}
    raise ValueError(f"name must be one of {', '.join(MODELS)} or a method of nslib.methods.METHODS "
                     f"({', '.join(methods.METHODS)}), got {name!r}")


def model_key(dataset: str, arch: str, name: str, seed: int, *, start: str | None = None,
              **train_args) -> tuple[dict, str]:
    """(params, key): what defines a trained model and its hash.

    The training part is :func:`nslib.training.identity` of the config resolved as training resolves it
    (:func:`nslib.training.with_attack_defaults`: the training attack's eps, steps and step filled from the dataset's
    defaults), the very dict a checkpoint records and training's resume check compares, so the cache and the resume
    check always agree, and a value given or taken from its default is one key: arguments a method does not read
    (attack settings for vanilla, lam/k for non-SNS runs, beta outside TRADES) never split the cache nor block a
    resume. ``start``: the key of the model whose weights the run starts from (None: from scratch, and no entry in
    params).
    """
    cfg = training.TrainConfig(**_spec(name), seed=int(seed), **train_args)
    cfg = training.with_attack_defaults(cfg, dataset)  # as train() resolves it (vanilla's identity holds no attack)
    params = {"dataset": dataset, "arch": arch, "name": name, "training_code": TRAINING_CODE, **training.identity(cfg)}
    if start is not None:
        params["start"] = start
    return params, params_key(params)


def get_model(dataset: str, arch: str, name: str, seed: int = 0, *, checkpoint: str = "best",
              progress: bool = True, start: dict | None = None, **train_args):
    """A trained model from the cache, training (or resuming) it first when needed: ``(model, info)``.

    Args:
        dataset, arch: as in :func:`nslib.models.build`.
        name: one of :data:`MODELS` ("vanilla", "pgd_at", "trades", "sns_pgd_at", "sns_trades").
        seed: training seed (initial weights, data order, attacks).
        checkpoint: "best" (the epoch with the best validation robust accuracy, clean accuracy for
            vanilla: early stopping against robust overfitting; what the analyses use) or "last".
        progress: tqdm bars while training.
        start: None (from scratch: seeded initial weights) or ``{"name": ..., "args": {...}}``: the run starts from
            the weights (best checkpoint) of the model :func:`get_model` gives for that name, the same seed and
            those arguments (trained first when missing); its key joins this model's (params["start"]).
            :attr:`nslib.repro.config.Settings.start_args` gives it.
        train_args: any other argument of :func:`nslib.training.train` (epochs, n_train, lam, k, ...).

    Returns:
        the model on :func:`device` in eval mode, and ``info``: name, label, key, dir, checkpoint (the
        one loaded: "last" when no "best" exists), status ("done" or "collapsed"), collapsed (bool),
        history (per-epoch records), best (the best epoch's record), params, train_s (seconds spent
        training in this call; 0 when cached).

    Raises: :class:`Diverged` (a ValueError) naming the run folder when training diverged
    (:func:`nslib.training.train`: status "diverged"); such a run is never served. A checkpoint that cannot be read is set aside
    (``last.pt.unreadable-TIME``) and the model trained again, with one line on stderr saying so.

    Usage: ``model, info = get_model("fmnist", "smallcnn", "sns_pgd_at", seed=0, lam=0.01, epochs=2)``
    """
    if checkpoint not in ("best", "last"):
        raise ValueError(f"checkpoint must be 'best' or 'last', got {checkpoint!r}")
    init = None
    if start is not None:  # the starting model first (outside this model's lock: it has its own)
        init, init_info = get_model(dataset, arch, start["name"], seed, progress=progress, **start["args"])
    params, key = model_key(dataset, arch, name, seed, start=None if init is None else init_info["key"], **train_args)
    out = outputs_dir("models", dataset, name, key)
    with _claim(out):  # another run sharing outputs/ that wants this model waits here, then finds it done
        model = _initial(arch, dataset, seed, init)
        t0 = time.perf_counter()
        try:
            result, model, which = _train_and_load(model, dataset, name, out, checkpoint, seed, progress, train_args)
        except UnreadableCheckpoint as err:  # truncated or corrupt: set the run's checkpoints aside, train it again
            moved = _set_aside(out)
            print(f"nslib: {err}; moved aside ({', '.join(p.name for p in moved)}), training {name} seed {seed} "
                  f"again", file=sys.stderr, flush=True)
            model = _initial(arch, dataset, seed, init)
            result, model, which = _train_and_load(model, dataset, name, out, checkpoint, seed, progress, train_args)
        train_s = time.perf_counter() - t0
        save_json(out / "params.json", params)
    info = {"name": name, "label": LABELS.get(name, name), "key": key, "dir": str(out), "checkpoint": which,
            "status": result["status"], "collapsed": result["status"] == "collapsed",
            "history": result["history"], "best": result["best"], "params": params,
            "train_s": train_s if train_s > 1.0 else 0.0}
    return model, info


class Diverged(ValueError):
    """A training run that diverged (non-finite or exploding loss): never served as a model. SNS's lambda choice
    (:mod:`nslib.repro.zoo`) counts it as a failure of that lambda, as a collapse."""


def _initial(arch: str, dataset: str, seed: int, init=None):
    """The model a run starts from: built under ``seed``, then given ``init``'s weights when there is one."""
    torch.manual_seed(seed)
    model = models_mod.build(arch, dataset)
    if init is not None:
        model.load_state_dict(init.state_dict())
    return model


def _claim(out: Path):
    """Hold an exclusive lock on the run folder ``out`` (:func:`nslib.store.claim`, waiting) while it is trained or
    loaded, so that two reproductions sharing one outputs folder never train the same model at once: the second
    waits, then resumes or loads what the first finished. Released also on error and when the process dies."""
    return claim(out, wait=True)


def _train_and_load(model, dataset, name: str, out: Path, checkpoint: str, seed: int, progress: bool, train_args):
    """Train (or resume, or find done) the run in ``out`` and load its checkpoint: (result, model, which).

    Raises: ValueError naming the run when it diverged (never served); UnreadableCheckpoint naming a file."""
    with stage(f"{LABELS.get(name, name)} seed {seed}"):
        result = training.train(model, dataset, seed=seed, out_dir=out, progress=progress, **_spec(name), **train_args)
    if result["status"] == "diverged":
        last = result["history"][-1] if result["history"] else {}
        raise Diverged(f"the {name} run in {out} diverged at epoch {last.get('epoch')} (train loss "
                         f"{last.get('train_loss', float('nan')):.3g}): it is not a model; lower lr (--set lr=...) "
                         f"and run again")
    which = checkpoint if (out / f"{checkpoint}.pt").exists() else "last"
    model, _ = training.load_checkpoint(out / f"{which}.pt", device=fast.default_device())
    return result, model, which


def _set_aside(out: Path) -> list[Path]:
    """Rename the run's checkpoints to ``NAME.unreadable-TIME`` (kept, never deleted); returns the new paths."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    moved = []
    for name in ("last.pt", "best.pt"):
        if (out / name).exists():
            moved.append((out / name).rename(out / f"{name}.unreadable-{stamp}"))
    return moved


def adversarial_pairs(model, info: dict, x: torch.Tensor, y: torch.Tensor, *, eps: float, precision: str,
                      steps: int = 20, seed: int = 0, batch_size: int | None = None) -> torch.Tensor:
    """PGD adversarial examples against ``model`` (Linf, random start), cached per model and parameters.

    Cached in the model's folder under a key of (eps, steps, seed, a hash of x and y), so notebooks that
    analyse the same model on the same images share the very same pairs. The attack runs at ``precision`` (the
    run's, :attr:`nslib.repro.config.Settings.precision`: "auto" is bf16 autocast on CUDA and on a CPU with bf16
    hardware, :func:`nslib.fast.autocast_dtype`); bf16 pairs are keyed apart.
    The sensitivities computed from them are fp32. Returns x_adv like ``x`` on the CPU.
    """
    digest = hashlib.sha256(x.detach().cpu().numpy().tobytes() + y.cpu().numpy().tobytes()).hexdigest()[:12]
    dev = next(model.parameters()).device
    amp = fast.amp_flag(precision, dev)
    batch_size = fast.attack_batch(dev, batch_size)  # the random starts are drawn per batch
    key = params_key({"eps": eps, "steps": steps, "seed": seed, "data": digest, "checkpoint": info["checkpoint"],
                      "batch": batch_size, **({"amp": "bf16"} if amp else {})})
    path = Path(info["dir"]) / "pairs" / f"pgd-{key}.pt"
    if path.exists():
        try:
            return torch.load(path, weights_only=True)
        except Exception as err:  # noqa: BLE001 -- truncated or corrupt: set aside and craft them again
            aside = path.rename(path.with_name(f"{path.name}.unreadable-{time.strftime('%Y%m%dT%H%M%S')}"))
            print(f"nslib: cached pairs {path} cannot be read ({type(err).__name__}); moved aside to {aside.name}, "
                  f"crafting them again", file=sys.stderr, flush=True)
    x_adv = attacks.pgd_pairs(model, x, y, eps=eps, steps=steps, seed=seed, batch_size=batch_size, amp=amp)
    save_torch(path, x_adv)
    return x_adv


def get_models(dataset: str, arch: str, names, seeds, *, vanilla_epochs: int | None = None,
               vanilla: dict | None = None, progress: bool = True, **train_args) -> dict:
    """``{(name, seed): (model, info)}`` for every name and seed, trained or loaded via :func:`get_model`.

    ``vanilla`` overrides ``train_args`` for the vanilla model alone (e.g. ``{"epochs": 3, "n_train": None}``,
    what :attr:`nslib.repro.config.Settings.vanilla_args` gives); ``vanilla_epochs`` is the shorthand for its epochs
    (given both, they must agree).
    A clean epoch costs one forward-backward pass per image against ``attack_steps + 1`` or more for the
    adversarial methods, so equal compute buys the vanilla model more epochs or more images; an undertrained
    vanilla model is not a vanilla baseline (it can be oddly robust at small eps).
    """
    extra = dict(vanilla or {})
    if vanilla_epochs is not None:
        if extra.get("epochs", vanilla_epochs) != vanilla_epochs:
            raise ValueError(f"vanilla_epochs and vanilla['epochs'] must agree when both are given, got "
                             f"{vanilla_epochs} and {extra['epochs']}")
        extra["epochs"] = vanilla_epochs

    def args(n):
        return {**train_args, **extra} if n == "vanilla" else train_args
    return {(n, s): get_model(dataset, arch, n, s, progress=progress, **args(n)) for s in seeds for n in names}


def describe(trained: dict) -> str:
    """One line per model of ``{(name, seed): (model, info)}``: label, seed, status, the checkpoint loaded (its
    epoch) and its folder, for a notebook to print."""
    return "\n".join(f"{info['label']:18s} seed {seed}: {info['status']}, checkpoint {info['checkpoint']} "
                     f"(epoch {info['best']['epoch'] if info['best'] else '-'}), {info['dir']}"
                     for (_, seed), (_, info) in trained.items())


def c1_models(dataset: str, arch: str, seeds, scales, *, eps: float, progress: bool = True, **train_args) -> dict:
    """PGD-AT models trained at ``scale * eps`` for each of ``scales``: C1's models of graded robustness.

    C1 ranks models by robust accuracy at ``eps``; the five main models hold only two levels of it (Vanilla
    near 0, the four robust models tied within their intervals), so a rank correlation over them mostly
    measures noise. A model trained at a smaller radius is robust in between. Each is trained or loaded by
    :func:`nslib.repro.cache.get_model` with ``train_args`` (those of the other models), its radius and a
    training step scaled with it (the others' step times ``scale``; :func:`nslib.attacks.pgd_step` at the dataset's steps).

    Returns ``{(name, seed): (model, info)}``: names (ids) ``"pgd_at@0.5eps"``, ``info["name"]`` the same and
    ``info["label"]`` "PGD-AT (0.5 eps)", both computed from the scale (never parsed back).
    Usage: ``c1_models("fmnist", "smallcnn", [0, 1, 2], [0.5], eps=0.1, epochs=2, n_train=12000)``
    """
    _, steps, _ = training.attack_settings(dataset, eps, train_args.get("attack_steps"))
    alpha = train_args.get("alpha") or attacks.pgd_step(eps, steps)  # the other models' step (None: PGD's at eps)
    out = {}
    for scale in scales:
        if not 0 < scale < 1:
            raise ValueError(f"scales must be fractions of eps in (0, 1) (a smaller training radius), got {scale!r}")
        args = {**train_args, "eps": scale * eps, "alpha": alpha * scale}
        name = f"pgd_at@{scale:g}eps"
        for s in seeds:
            model, info = get_model(dataset, arch, "pgd_at", s, progress=progress, **args)
            out[(name, s)] = model, {**info, "name": name, "label": f"{LABELS['pgd_at']} ({scale:g} eps)"}
    return out
