"""Checkpoints of :func:`nslib.training.train`: ``last.pt`` (weights, optimizer, RNG, history), ``best.pt``
(weights only) and ``history.json``, each written atomically.

Usage::

    model, info = nslib.checkpoints.load_checkpoint("outputs/models/pgd_at/<key>/best.pt")
    info["params"]["method"], info["metric"]["val_pgd"]
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import torch
from torch import nn

from nslib import distributed, models as models_mod
from nslib.store import load_json, provenance, save_json, save_torch

__all__ = ["load_checkpoint", "read_history", "UnreadableCheckpoint"]


# An epoch's mean training loss above this (or not finite) is divergence: cross-entropy starts at ln(classes),
# about 2.3, and a loss of 1e6 means logits a million apart (a diverging run tried: 5.9e21, then nan).
DIVERGED_LOSS = 1e6
STOPPED = ("collapsed", "diverged")  # failures: never a result, never a best checkpoint


class UnreadableCheckpoint(ValueError):
    """A checkpoint file that torch cannot read (truncated, corrupt, not a checkpoint); names the file."""


class Mismatch(ValueError):
    pass


def load_checkpoint(path: str | Path, model: nn.Module | None = None, device: str | torch.device = "cpu", *,
                    optimizer: torch.optim.Optimizer | None = None, rng: bool = False, expect: dict | None = None):
    """Load a checkpoint written by :func:`nslib.training.train`: ``(model, info)``.

    The model is rebuilt from the stored architecture and dataset (or the weights are loaded into
    ``model``); ``info`` tells what trained it: ``params`` (the resolved :class:`nslib.methods.TrainConfig` with
    dataset and spec), ``epoch``, ``seed``, ``status``, ``history``, ``best``, ``metric`` (validation
    accuracies of this checkpoint) and ``provenance`` (nslib and torch versions, device, time).
    The model is returned in eval mode.

    To continue training (what :func:`nslib.training.train` does on resume): ``optimizer`` also restores the
    optimizer's state (``last.pt``; ``best.pt`` holds none); ``rng=True`` restores the global random
    state (CPU, and CUDA on a CUDA ``device``); ``expect`` is a dict of params the stored ones must
    equal, checked before anything is loaded (a ValueError lists every difference).

    Raises: FileNotFoundError (no file); :class:`UnreadableCheckpoint` (a ValueError naming the file: torch
    cannot read it, or it holds no "model" state dict); ValueError (other parameters than ``expect``).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=False)
    except Exception as e:  # noqa: BLE001 -- zip, pickle, magic number, EOF: torch raises any of them
        raise UnreadableCheckpoint(f"checkpoint {path} cannot be read (truncated or corrupt? {type(e).__name__}: "
                                   f"{str(e).splitlines()[0].split('. ')[0] if str(e) else ''})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise UnreadableCheckpoint(f"{path} is not a checkpoint of nslib.training.train (no 'model' state dict), "
                                   f"got {type(ckpt).__name__}")
    stored = ckpt.get("params") or {}
    diff = {key: (stored.get(key), v) for key, v in (expect or {}).items() if stored.get(key) != v}
    if diff:
        raise Mismatch(f"{path} was trained with other parameters "
                        f"({', '.join(f'{key}: stored {a!r}, asked {b!r}' for key, (a, b) in diff.items())})")
    if optimizer is not None and ckpt.get("optimizer") is None:
        raise ValueError(f"{path} holds no optimizer state (best.pt never does); load last.pt, "
                         f"or pass optimizer=None")
    if model is None:
        spec = ckpt.get("spec")
        if not spec:
            raise ValueError(f"{path} holds weights of a model not built by nslib.models.build; "
                             f"pass model= to load them into")
        model = models_mod.build(spec["arch"], spec["dataset"])
    model.load_state_dict(ckpt["model"])
    model.to(device).eval()
    if stored.get("channels_last"):  # the layout it was trained in: the same kernels, the same logits to the bit
        model.to(memory_format=torch.channels_last)
    if optimizer is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
    if rng:
        torch.set_rng_state(ckpt["rng"]["cpu"].cpu())
        if torch.device(device).type == "cuda" and ckpt["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"].cpu(), device)
    info = {key: ckpt.get(key) for key in ("params", "seed", "epoch", "status", "history", "best", "metric",
                                           "provenance", "spec")}
    return model, info


def diverged(run, record: dict) -> bool:
    """The epoch's mean loss is not finite or above :data:`DIVERGED_LOSS`, or a weight is not finite (one sync)."""
    loss = record["train_loss"]
    if not math.isfinite(loss) or loss > DIVERGED_LOSS:
        return True
    params = [p.detach() for p in run.model.parameters() if p.is_floating_point()]
    return bool(params) and not bool(torch.stack([torch.isfinite(p).all() for p in params]).all())


def stop_diverged(run, record: dict) -> None:
    """Mark the run ``diverged``: no validation of NaN weights, no best checkpoint; last.pt records it."""
    run.status, run.best = "diverged", None
    record.update(val_clean=None, val_pgd=None, time_s=record["train_s"])
    run.history.append(record)
    if run.out is not None and distributed.is_main():  # rank 0 alone writes
        (run.out / "best.pt").unlink(missing_ok=True)
        write_checkpoints(run, record, False)
    where = f" in {run.out}" if run.out is not None else ""
    warnings.warn(f"training ({run.cfg.method}, lr {run.cfg.lr:g}, seed {run.cfg.seed}){where} diverged at epoch "
                  f"{record['epoch']}: train loss {record['train_loss']:.3g}; stopped with status 'diverged' and no "
                  f"best checkpoint (a lower lr may help)", RuntimeWarning, stacklevel=4)


def write_checkpoints(run, record: dict, is_best: bool) -> None:
    """``best.pt`` (when ``is_best``), ``last.pt`` and ``history.json`` of a training run (``training._Run``)."""
    state = {key: v.detach().to("cpu", copy=True) for key, v in run.model.state_dict().items()}
    cuda = run.device.type == "cuda"
    rng = {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(run.device) if cuda else None}
    prov = provenance(run.device, **{key: v for key, v in run.params.items() if key != "spec"})
    metric = {"val_clean": record["val_clean"], "val_pgd": record.get("val_pgd")}
    ckpt = {"model": state, "optimizer": run.optimizer.state_dict(), "params": run.params,
            "spec": run.params["spec"], "seed": run.cfg.seed, "epoch": record["epoch"], "status": run.status,
            "history": run.history, "best": run.best, "rng": rng, "metric": metric, "provenance": prov}
    if is_best:  # best first: an interruption between the two writes leaves last.pt one epoch behind
        save_torch(run.out / "best.pt", {**ckpt, "optimizer": None})
    save_torch(run.out / "last.pt", ckpt)
    save_json(run.out / "history.json", {"provenance": prov, "status": run.status, "best": run.best,
                                         "history": run.history})


def read_history(out_dir: str | Path) -> dict:
    """The ``history.json`` of a run folder written by :func:`nslib.training.train`."""
    return load_json(Path(out_dir) / "history.json")
