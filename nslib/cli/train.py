"""Train anyone's model robustly: ``python -m nslib train --model SPEC --data DATA --method pgd_at``.

Any model the SPEC grammar of ``nslib analyze`` names (a kit architecture, bare for fresh weights or
``ARCH:PATH`` to start from a checkpoint; ``torchvision:NAME[:PATH]``; ``package.module:function``), on any
data it accepts (a dataset name, ``synthetic:LIKE``, a ``.pt`` file ``{"x", "y"}``) or a folder of images in
ImageFolder layout (streamed by a DataLoader; :mod:`nslib.streams`), with any method of
:data:`nslib.methods.METHODS` (standard, pgd_at, trades, sns on either base, or one a module registers:
``--import mymodule``) and its hyperparameters as flags or ``--set name=value`` (any field of
:class:`nslib.methods.TrainConfig`). The run is :func:`nslib.training.train` itself, so the same settings
give the reproduction's model; it writes ``last.pt``, ``best.pt``, ``history.json`` and ``train.json`` (the
command, the number of ranks, provenance) to ``--out``; ``--resume`` continues from ``last.pt``, bit-identical
to a run never stopped, with the same or another number of ranks.

Under ``torchrun --nproc_per_node=N -m nslib train ...`` every global batch of ``--batch-size`` is split
across the N ranks and trained with DistributedDataParallel (:mod:`nslib.distributed`); the random starts of
the training attack are drawn per example (from the seed, the epoch and the example's index), which the
command also does in one process, so one process and N ranks train the same model (``--batch-starts``, one
process only, draws them per batch instead, as the reproduction does: its models bit for bit). Every bad input
fails before any work with a message naming the flag.

Usage::

    python -m nslib train --model smallcnn --data fmnist --method pgd_at --epochs 10 --out outputs/train/at
    torchrun --nproc_per_node=2 -m nslib train --model smallcnn --data fmnist --method trades --out ...
"""
from __future__ import annotations

import ast
import contextlib
import importlib
import sys
from dataclasses import fields, replace
from pathlib import Path

import torch

from nslib import checks, data as data_mod, distributed, methods, models as models_mod, streams, training
from nslib.cli import specs
from nslib.store import check_writable, claim, outputs_dir, provenance, save_json

__all__ = ["add_arguments", "main", "parse_sets", "build_model", "load_train_data"]

# flag -> TrainConfig field; None (the default) leaves the config's own default
FLAGS = ("method", "base", "epochs", "batch_size", "lr", "eps", "attack_steps", "alpha", "beta", "lam", "k",
         "seed", "n_train", "val_size", "precision", "schedule")


def add_arguments(p) -> None:
    """The flags of ``nslib train`` on the argparse (sub)parser ``p``."""
    specs.add_shared_arguments(p, out="outputs/train/<method>-<model>-<data>", fresh=True, num_images=False,
                               seed="initial weights, split, data order, attack starts")
    p.add_argument("--method", default="pgd_at", help="a key of nslib.methods.METHODS: standard, pgd_at, trades, "
                   "sns (with --base), or one registered by --import")
    p.add_argument("--base", default=None, help="SNS: the base method (pgd_at or trades)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="the global batch (split across torchrun's ranks)")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--schedule", default=None, help="cosine, piecewise or constant")
    p.add_argument("--eps", type=float, default=None, help="training attack's Linf radius (default: the dataset's)")
    p.add_argument("--attack-steps", type=int, default=None)
    p.add_argument("--alpha", type=float, default=None, help="training attack's step size")
    p.add_argument("--beta", type=float, default=None, help="TRADES trade-off")
    p.add_argument("--lam", type=float, default=None, help="SNS penalty weight")
    p.add_argument("--k", type=specs.k_argument, default=None, help="SNS top-k: a fraction, or a count >= 1")
    p.add_argument("--n-train", type=int, default=None, help="train on a stratified subset of this size")
    p.add_argument("--val-size", type=int, default=None, help="images held out for validation")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="any field of nslib.methods.TrainConfig as a Python literal, e.g. val_n_adv=200; repeatable")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import MODULE first (it may register a method in nslib.methods.METHODS); repeatable")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt; with --epochs N "
                   "above the run's, a finished run continues to N epochs (its learning rate from then on that of an "
                   "N-epoch run at that epoch)")
    p.add_argument("--batch-starts", action="store_true", help="draw the training attack's random starts per batch "
                   "as the reproduction does (its models bit for bit; one process only) instead of per example")


def parse_sets(items: list[str]) -> dict:
    """``--set name=value`` pairs as a dict; the value is a Python literal (a bare word stays a string).

    Raises: ValueError naming --set (no "=", or a name that is not a TrainConfig field).
    """
    names = {f.name for f in fields(methods.TrainConfig)}
    out = {}
    for item in items:
        name, eq, text = item.partition("=")
        name = name.strip()
        if not eq or not name:
            raise ValueError(f"--set takes NAME=VALUE, got {item!r}")
        if name not in names:
            raise ValueError(f"--set {name}: not a training parameter; the parameters are {', '.join(sorted(names))}")
        try:
            out[name] = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            out[name] = text.strip()
    return out


def _flag(message: str) -> str:
    """A TrainConfig error names its field; the user typed the flag."""
    for name in FLAGS:
        if message.startswith(f"{name} "):
            return f"--{name.replace('_', '-')}{message[len(name):]}"
    return message


def build_model(spec: str, dataset: str | None, *, num_classes=None, mean=None, std=None):
    """The model to train: a bare kit architecture is built fresh for ``dataset``; other SPECs as analyze's."""
    if spec in models_mod.ARCHS:
        if dataset is None:
            raise ValueError(f"--model {spec} is sized by a dataset: --data must name one "
                             f"({', '.join(d for d in data_mod.DATASETS if d != 'synthetic')} or synthetic:LIKE)")
        return models_mod.build(spec, dataset)
    return specs.load_model(spec, dataset, num_classes=num_classes, mean=mean, std=std)


def load_train_data(spec: str, seed: int, *, image_size=None):
    """What :func:`nslib.training.train` takes as ``data``: a dataset name, ``(x, y)`` tensors, or a streamed
    ImageFolder; with the dataset whose defaults apply (or None)."""
    data = specs.parse_data(spec, folders=True)
    if data["kind"] == "folder":
        return streams.image_folder(spec, size=image_size), None
    if data["kind"] == "file":
        return specs.load_pt_data(spec), None
    if data["kind"] == "synthetic":
        return data_mod.load("synthetic", "train", like=data["like"], seed=seed), data["like"]
    return spec, spec


def _readers(name: str) -> list[str]:
    """The methods of :data:`nslib.methods.METHODS` whose runs read TrainConfig field ``name``."""
    return [m for m in methods.METHODS if name in methods.identity(methods.TrainConfig(method=m))]


def _unread(cfg, given: dict) -> None:
    """A flag (or --set) the chosen method does not read is refused, naming who reads it: it would change nothing
    (``--method pgd_at --lam 0.1``) and so is a mistake, not a setting."""
    used = set(methods.identity(cfg)) | {"channels_last", "compile"}
    for name in given:
        if name not in used:
            flag = f"--{name.replace('_', '-')}" if name in FLAGS else f"--set {name}"
            who = _readers(name)
            if "sns" not in who and name in methods.identity(methods.TrainConfig(method="sns", base="trades")):
                who.append("sns with --base trades")
            raise ValueError(f"{flag}: --method {cfg.method}{f' (base {cfg.base})' if cfg.method == 'sns' else ''} "
                             f"does not read it" + (f"; it is read by {', '.join(who)}" if who else "")
                             + "; leave it out")


def _out(args, cfg) -> Path:
    tag = f"{cfg.method}-{args.model.replace(':', '_').replace('/', '_')}-{Path(args.data).name.replace(':', '_')}"
    return check_writable(args.out or outputs_dir("train", tag), "--out")


def _prepare(args, held: contextlib.ExitStack) -> dict:
    """Every check before any work: the imports, the config, --out (claimed on rank 0, in ``held``), the data, the
    model."""
    for name in args.imports:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ValueError(f"--import {name}: {e}") from None
    overrides = {name: getattr(args, name) for name in FLAGS if getattr(args, name) is not None}
    overrides.update(parse_sets(args.set))
    try:
        cfg = methods.make_config(None, overrides)  # each field checked, the error naming it
    except (ValueError, TypeError) as e:
        raise type(e)(_flag(str(e))) from None
    _unread(cfg, {k: v for k, v in overrides.items() if k != "method"})
    workers = checks.check_positive_int(args.workers, "--workers", minimum=0)
    if args.batch_starts and distributed.active():
        raise ValueError("--batch-starts draws the attack's starts per batch, which splitting a batch across ranks "
                         "changes: one process only (leave it out under torchrun)")
    out = _out(args, cfg)  # a folder that can be written, before anything is loaded
    if distributed.is_main():  # rank 0 writes the run: it holds --out until the run ends
        held.enter_context(claim(out, "--out"))
    if args.resume and not (out / "last.pt").is_file():
        raise ValueError(f"--resume: {out} holds no last.pt to continue; leave --resume out to start a run")
    if not args.resume and out.is_dir() and any(out.iterdir()):
        raise ValueError(f"--out {out} exists and is not empty; pass --resume to continue its run, or another --out")
    data, dataset = load_train_data(args.data, cfg.seed, image_size=args.image_size)
    if isinstance(data, torch.utils.data.Dataset):  # a folder: streamed; its validation images held in memory
        data = (streams.Stream(data, workers=workers), streams.targets(data))
        cfg = replace(cfg, val_size=cfg.val_size or min(1000, max(1, len(data[1]) // 10)))
    try:  # the training attack's radius: a dataset's default (synthetic:LIKE: its twin's), or --eps
        cfg = training.with_attack_defaults(cfg, dataset)
    except ValueError:
        raise ValueError(f"--eps must be given for --method {cfg.method} on --data {args.data} (it has no default "
                         f"radius)") from None
    _check_sizes(cfg, data, dataset)
    torch.manual_seed(cfg.seed)  # the initial weights: one process and every rank build the same ones
    model = build_model(args.model, dataset, num_classes=args.num_classes, mean=args.mean, std=args.std)
    return {"cfg": cfg, "data": data, "model": model, "out": out}


def _check_sizes(cfg, data, dataset) -> None:
    """--val-size and --n-train against the images there are, before any work (training checks them too, later)."""
    n = len(data[1]) if isinstance(data, tuple) else data_mod.DATASETS[data].train_size
    val = cfg.val_size if cfg.val_size is not None else (training.VAL_SIZES.get(dataset, 5000) if isinstance(data, str)
                                                         else max(1, n // 10))
    if val >= n:
        raise ValueError(f"--val-size must be smaller than the {n} training images of --data, got {val}")
    if cfg.n_train is not None and cfg.n_train > n - val:
        raise ValueError(f"--n-train must be at most {n - val} (the {n} training images of --data less the {val} held "
                         f"out for validation), got {cfg.n_train}")


def _work(args) -> int:
    device = distributed.setup(args.device)
    with contextlib.ExitStack() as held:
        try:
            job = _prepare(args, held)
            err = None
        except (ValueError, TypeError) as e:
            err = e
        distributed.agree(err)
        return _train(args, job, device)


def _train(args, job: dict, device) -> int:
    result = training.train(job["model"], job["data"], job["cfg"], out_dir=job["out"], resume=args.resume,
                            device=device, progress=not args.quiet, example_starts=not args.batch_starts)
    if not distributed.is_main():
        return 0 if result["status"] == "done" else 1
    out, best, last = job["out"], result["best"], result["history"][-1] if result["history"] else {}
    save_json(out / "train.json", {"command": {k: v for k, v in vars(args).items() if k != "func"},
                                   "ranks": distributed.world(), "status": result["status"], "best": best,
                                   "provenance": provenance(device, **result["params"])})
    acc = " ".join(f"{k} {100 * last[k]:.1f}%" for k in ("val_clean", "val_pgd") if last.get(k) is not None)
    print(f"nslib train: {result['status']} after {last.get('epoch', 0)} epochs ({acc}); wrote {out}/last.pt, "
          f"best.pt, history.json on {distributed.world()} process(es)")
    if result["status"] != "done":
        print(f"nslib train: the run {result['status']}; best.pt is not a result", file=sys.stderr)
        return 1
    return 0


def main(args) -> int:
    """Entry of ``python -m nslib train`` (arguments parsed by :func:`add_arguments`)."""
    return distributed.run_command("train", _work, args)
