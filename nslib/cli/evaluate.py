"""The robustness table of anyone's model: ``python -m nslib evaluate --model SPEC --data DATA``.

Clean accuracy and each attack of ``--attacks`` (any attack of :data:`nslib.evaluate.ATTACKS`: FGSM, PGD-n, MIM-n,
FMN-L2-n, PGD-L2-n, C&W-L2, AutoAttack standard or custom), each with its 95% Wilson interval, on a fixed set of test images, and **the outcome of every
example under every attack**, so that two evaluations on the same images can be compared example by
example later. ``--model`` and ``--data`` take the SPECs of ``nslib analyze`` (:mod:`nslib.cli.specs`), and
``--data`` also a folder of images in ImageFolder layout, streamed in batches (:mod:`nslib.streams`).

The images are split into batches of ``--batch-size``; the attacks of the batch starting at image i are
seeded with ``--seed + i``, so PGD-n is crafted exactly as the reproduction crafts its pairs
(:func:`nslib.attacks.pgd_pairs`): for a checkpoint the kit trained, PGD-20 equals notebook 05's on the same
images. Under ``torchrun`` the batches are dealt to the ranks (:mod:`nslib.distributed`) and the outcomes
gathered: the table and the outcomes are those of one process, bit for bit; rank 0 alone writes.

Written to ``--out`` (a temporary folder beside it, moved into place at the end; ``--force`` replaces only
the files this command writes): ``results.json`` (rows, parameters, provenance), ``results.csv``,
``RESULTS.md`` and ``outcomes.csv`` (one row per image: its index in the data, label, 1 where it is still
classified correctly clean / under each attack, and a minimal-norm attack's smallest perturbation: inf where none was found,
0 where the image is misclassified clean).

Usage::

    python -m nslib evaluate --model smallcnn:outputs/train/at/best.pt --data fmnist --n 1000 --attacks fgsm,pgd-20
    torchrun --nproc_per_node=2 -m nslib evaluate --model ... --data ... --out outputs/eval/at
"""
from __future__ import annotations

import contextlib
import importlib.util
import math
import time
from pathlib import Path

import torch

from nslib import checks, data as data_mod, distributed, evaluate, fast, streams
from nslib.cli import specs
from nslib.models import eval_mode
from nslib.progress import bar
from nslib.store import (atomic_write_bytes, check_result_dir, claim, outputs_dir, provenance, save_json,
                         writing_result)

__all__ = ["parse_attacks", "evaluate_source", "write_results", "add_arguments", "main"]

DEFAULT_ATTACKS = "fgsm,pgd-20,mim-10,fmn-l2-100,pgd-l2-50,autoattack"
FILES = ("results.json", "results.csv", "RESULTS.md", "outcomes.csv")  # what it writes (beside its manifest)
LEGACY = (FILES, "results.json")  # a folder of these alone, from a version without a manifest, may be replaced


def parse_attacks(text: str, autoattack: dict | None = None) -> list[dict]:
    """``--attacks`` as suite entries of :data:`nslib.evaluate.ATTACKS` (``{"attack": name, **params}``), each spelled
    as :func:`nslib.evaluate.parse_attack` reads it (``pgd-20``, ``fmn-l2``, ``mim``: steps not given are the attack's
    own default); ``autoattack``: the parameters of an AutoAttack entry (``{"version", "attacks"}``).

    Raises: ValueError naming --attacks (an unknown name, a part the attack does not take, steps < 1, an attack
    named twice).
    """
    out, seen = [], set()
    for part in (p.strip() for p in str(text).split(",") if p.strip()):
        try:
            spec = evaluate.parse_attack(part)
        except ValueError as e:
            raise ValueError(f"--attacks: {e}") from None
        if spec["attack"] == "autoattack" and autoattack:
            spec.update(autoattack)
        label = evaluate.attack_label(spec)
        if label in seen:
            raise ValueError(f"--attacks names {label} twice")
        seen.add(label)
        out.append(spec)
    if not out:
        raise ValueError("--attacks must name at least one attack")
    return out


# ----------------------------------------------------------------------------------------------------
# the evaluation

def _correct(model, x, y) -> torch.Tensor:
    with torch.no_grad():
        logits = model(x).float()
    return logits.argmax(1) == y


def _attack(model, spec, xb, yb, seed, *, radius, amp) -> tuple[torch.Tensor, dict]:
    """Whether each example of the batch is still classified correctly after ``spec`` (a bool [B] on the CPU)
    and extras: a minimal-norm attack's smallest norms, AutoAttack's accuracy after each of its attacks.

    Any attack of :data:`nslib.evaluate.ATTACKS`: a fixed-radius one at ``radius``, seeded with ``seed`` where it
    takes a seed (PGD as :func:`nslib.attacks.pgd_pairs`: the batch starting at image i seeded with seed + i); a
    minimal-norm one counts an example robust where the smallest perturbation it found exceeds ``radius``."""
    entry = evaluate.ATTACKS[spec["attack"]]
    kwargs = {k: v for k, v in spec.items() if k != "attack"}
    kwargs |= ({"seed": seed} if entry.seeded else {}) | ({"batch_size": len(xb)} if entry.whole_batch else {})
    kwargs |= {"amp": amp} if evaluate.takes(entry.fn, "amp") else {}
    if entry.min_norm:
        x_adv = entry.fn(model, xb, yb, **kwargs)
        adv_ok = _correct(model, x_adv, yb)
        norm = evaluate.attack_norm(spec)
        norms = evaluate.perturbation_norms(xb, x_adv, norm, broken=~adv_ok,
                                            correct=torch.ones_like(adv_ok))  # wrong clean: 0, in _table
        return norms > radius, {"norm": norms, "in": norm}  # inf where not broken: robust at any radius
    out = entry.fn(model, xb, yb, eps=radius, **kwargs)
    x_adv, details = out if isinstance(out, tuple) else (out, None)
    return _correct(model, x_adv, yb).cpu(), ({"after": details} if details is not None else {})


def _batches(source, batch_size: int, workers: int):
    """``(start, x, y)`` of this rank's batches: tensors sliced, or a folder read by a DataLoader."""
    x, y, index = source["x"], source["y"], source["index"]
    starts = distributed.my_batches(len(index), batch_size)
    if x is not None:
        for i in starts:
            yield i, x[i:i + batch_size], y[i:i + batch_size]
        return
    plan = [index[i:i + batch_size].tolist() for i in starts]
    for i, (_, xb, yb) in zip(starts, streams.loader(source["dataset"], plan, workers=workers)):
        yield i, xb, yb


def evaluate_source(model, source: dict, suite: list[dict], *, eps: float, l2_eps: float, seed: int = 0,
                    batch_size: int = 128, amp: bool = False, workers: int = 0, progress: bool = True) -> dict:
    """Clean accuracy and every attack of ``suite`` on the images of ``source``, with per-example outcomes.

    Args: source: ``{"x", "y"}`` tensors (or None for a folder), ``"index"`` [N] the images' indices in the
    data, ``"label"`` [N], ``"dataset"`` (a folder's ImageFolder); suite: :func:`parse_attacks`; eps (the radius of
    an attack in Linf), l2_eps (in L2: :func:`nslib.evaluate.attack_norm`); seed (the batch starting at image i
    uses seed + i); amp (bf16 attacks; counting is fp32).
    Returns (on every rank): ``{"rows": [...], "outcomes": {"index", "label", "clean", <label>..., "<label> L2"}}``.
    """
    device = checks.model_device(model)
    labels = [evaluate.attack_label(s) for s in suite]
    radii = [l2_eps if evaluate.attack_norm(s) == "l2" else eps for s in suite]
    parts, spent = {}, dict.fromkeys(labels, 0.0)
    n_batches = len(distributed.my_batches(len(source["index"]), batch_size))
    with eval_mode(model):
        for i, xb, yb in bar(_batches(source, batch_size, workers), total=n_batches, desc="evaluate",
                             disable=not progress or not distributed.is_main()):
            xb, yb = xb.to(device), yb.to(device)
            part = {"clean": _correct(model, xb, yb).cpu()}
            for spec, label, radius in zip(suite, labels, radii):
                t0 = time.perf_counter()
                ok, extra = _attack(model, spec, xb, yb, seed + i, radius=radius, amp=amp)
                spent[label] += time.perf_counter() - t0
                part[label] = ok & part["clean"]
                part[label + ":extra"] = (extra, len(xb))
            parts[i] = part
    merged = distributed.gather_batches(parts)
    spent = dict(zip(spent, distributed.all_sum(list(spent.values()))))
    return _table(merged, labels, source, spent)


def _table(merged: list[dict], labels: list[str], source: dict, spent: dict) -> dict:
    """Rows and outcomes from the gathered batches (in image order)."""
    outcomes = {"index": source["index"].tolist(), "label": source["label"].tolist()}
    rows, clean = [], None
    for label in ["clean"] + labels:
        ok = torch.cat([p[label] for p in merged])
        outcomes[label] = ok.int().tolist()
        clean = ok if clean is None else clean  # the first label is "clean"
        n = len(ok)
        row = {"attack": label, **evaluate.accuracy_of(ok), "attack_s": round(spent.get(label, 0.0), 3)}
        extras = [p[label + ":extra"] for p in merged] if label != "clean" else []
        if extras and "norm" in extras[0][0]:  # as evaluate.min_norm_accuracy: 0 where wrong clean, inf: not broken
            norms, unit = torch.where(clean, torch.cat([e["norm"] for e, _ in extras]), 0.0), extras[0][0]["in"]
            row[f"median_{unit}"] = float(norms[clean].median()) if bool(clean.any()) else 0.0
            outcomes[f"{label} {evaluate.NORM_LABELS[unit]}"] = [f"{v:.6g}" for v in norms.tolist()]
        if extras and "after" in extras[0][0]:
            names = extras[0][0]["after"].keys()
            row["after"] = {a: sum(e["after"][a] * m for e, m in extras) / n for a in names}
        rows.append(row)
    return {"rows": rows, "outcomes": outcomes}


# ----------------------------------------------------------------------------------------------------
# the files

def markdown(result: dict) -> str:
    """``RESULTS.md``: what was evaluated and the table."""
    p = result["params"]
    lines = [f"# Robustness of {p['model']}", "",
             f"Data: {p['data']}, {p['n']} images; Linf eps {p['eps']:g}, L2 radius {p['l2_eps']:g}; seed {p['seed']} "
             f"(the batch starting at image i seeded with seed + i, batches of {p['batch_size']}); {p['ranks']} "
             f"process(es). Accuracy in percent with its 95% Wilson interval; an attack counts an image as robust "
             f"only when it is also correct clean.", "",
             "| attack | accuracy | 95% interval | correct / n | notes |", "|---|---|---|---|---|"]
    for r in result["rows"]:
        notes = []
        notes += [f"median smallest {label} {r[f'median_{norm}']:.3f}" for norm, label in evaluate.NORM_LABELS.items()
                  if f"median_{norm}" in r]
        if "after" in r:
            notes.append(", ".join(f"after {a}: {100 * v:.1f}%" for a, v in r["after"].items()))
        lines.append(f"| {r['attack']} | {100 * r['accuracy']:.1f} | [{100 * r['low']:.1f}, {100 * r['high']:.1f}] "
                     f"| {r['correct']} / {r['n']} | {'; '.join(notes)} |")
    lines += ["", "`outcomes.csv`: one row per image (its index in the data, its label, 1 where it is still "
              "classified correctly clean and under each attack); `results.json`: the rows, parameters and "
              "provenance."]
    return "\n".join(lines) + "\n"


def _csv(header, rows) -> bytes:
    return ("\n".join([",".join(header)] + [",".join(str(v) for v in r) for r in rows]) + "\n").encode()


def check_out(out, force: bool) -> Path:
    """--out, checked before any work by the rule of every command's result folder
    (:func:`nslib.store.check_result_dir`): new, empty, or (with --force) holding only what nslib wrote there (its
    manifest; a folder an older nslib evaluate wrote, without one, is recognised by its files)."""
    return check_result_dir(out, force, "--out", legacy=LEGACY)


def write_results(out, result: dict, *, force: bool = False) -> Path:
    """Every file into a temporary folder beside ``out``, then moved into place whole (:func:`nslib.store.writing_result`:
    the old result stays until the new one is complete; only files nslib wrote are ever replaced)."""
    out = check_out(out, force)
    with writing_result(out, force, "--out", legacy=LEGACY) as tmp:
        save_json(tmp / "results.json", {k: v for k, v in result.items() if k != "outcomes"})
        linf = ["median_linf"] if any("median_linf" in r for r in result["rows"]) else []
        cols = ["attack", "accuracy", "low", "high", "correct", "n", "median_l2", *linf, "attack_s"]
        atomic_write_bytes(tmp / "results.csv", _csv(cols, [[r.get(c, "") for c in cols] for r in result["rows"]]))
        atomic_write_bytes(tmp / "RESULTS.md", markdown(result).encode())
        o = result["outcomes"]
        atomic_write_bytes(tmp / "outcomes.csv", _csv(list(o), zip(*o.values())))
    return out


# ----------------------------------------------------------------------------------------------------
# the command line

def add_arguments(p) -> None:
    """The flags of ``nslib evaluate`` on the argparse (sub)parser ``p``."""
    specs.add_shared_arguments(p, out="outputs/evaluate/<model>-<data>", seed="the attacks' seed (the batch at image "
                               "i: seed + i) and the subset's")
    p.add_argument("--attacks", default=DEFAULT_ATTACKS, help=f"comma-separated attacks of nslib.evaluate.ATTACKS: "
                   f"{evaluate.attack_grammar()} (steps not given: the attack's own default; a minimal-norm attack counts "
                   f"an image robust where its smallest perturbation exceeds the radius; clean is always measured)")
    p.add_argument("--eps", type=float, default=None, help="radius of the attacks in Linf (default: the dataset's)")
    p.add_argument("--l2-eps", type=float, default=None, help="radius of the attacks in L2 (default: "
                   "2 eps sqrt(pixels) / 10, as notebook 05)")
    p.add_argument("--aa-version", default="standard", choices=("standard", "plus", "rand", "custom"))
    p.add_argument("--aa-attacks", default=None, help="with --aa-version custom: its attacks (default "
                   "apgd-ce,apgd-dlr)")
    p.add_argument("--batch-size", type=int, default=None, help="images per attack call (default 500 on a GPU, "
                   "128 on a CPU, as the reproduction)")
    p.add_argument("--force", action="store_true", help="replace the results in a non-empty --out (only a folder of "
                   "nslib's own results: its manifest lists every file)")


def load_source(data: str, n: int | None, seed: int, *, image_size=None) -> tuple[dict, float | None]:
    """The images ``--data`` names: ``({"x", "y", "index", "label", "dataset"}, the dataset's eps or None)``."""
    kind = specs.parse_data(data, folders=True)["kind"]
    if kind == "folder":
        ds = streams.image_folder(data, size=image_size)
        labels = streams.targets(ds)
        index = streams.subset(labels, n, seed)
        return {"x": None, "y": None, "index": index, "label": labels[index], "dataset": ds}, None
    x, y, eps = specs.load_data(data, n, seed)
    index = torch.arange(len(x))
    if kind == "dataset":  # a registry dataset: the subset's indices in its test split
        index = streams.subset(data_mod.load(data, "test")[1], n, seed)
    return {"x": x, "y": y, "index": index, "label": y, "dataset": None}, eps


def _prepare(args) -> dict:
    """Every check before any work; returns what the evaluation needs."""
    if args.aa_attacks is not None and args.aa_version != "custom":
        raise ValueError(f"--aa-attacks is read with --aa-version custom only (got --aa-version {args.aa_version}); "
                         f"add --aa-version custom, or leave --aa-attacks out")
    aa = {"version": args.aa_version, "attacks": [a.strip() for a in (args.aa_attacks or "apgd-ce,apgd-dlr").split(",")]
          if args.aa_version == "custom" else None}
    suite = parse_attacks(args.attacks, autoattack=aa)
    checks.check_choice(args.precision, "--precision", fast.PRECISIONS)
    n = None if args.n == 0 else checks.check_positive_int(args.n, "--n")
    out = check_out(args.out or outputs_dir("evaluate", f"{args.model.replace(':', '_').replace('/', '_')}-"
                                                       f"{Path(args.data).name.replace(':', '_')}"), args.force)
    source, eps = load_source(args.data, n, args.seed, image_size=args.image_size)
    model = specs.load_model(args.model, specs.dataset_of(args.data), num_classes=args.num_classes,
                               mean=args.mean, std=args.std)
    eps = checks.check_eps(args.eps if args.eps is not None else eps, "--eps", allow_zero=False) \
        if (args.eps is not None or eps is not None) else None
    if eps is None:
        raise ValueError(f"--eps must be given for --data {args.data} (it has no default radius)")
    if eps > 1:
        raise ValueError(f"--eps must be a Linf radius in (0, 1] (images are in [0, 1]), got {eps:g}")
    first = streams.load_indices(source["dataset"], source["index"][:2]) if source["x"] is None \
        else (source["x"][:2], source["y"][:2])
    specs.check_model(model, first[0], first[1])
    with torch.no_grad(), eval_mode(model):
        classes = model(first[0]).shape[1]
    checks.check_labels(source["label"], len(source["label"]), classes, "--data labels",
                        why=f"the model returns {classes} logits")
    l2_eps = args.l2_eps if args.l2_eps is not None else round(2 * eps * math.sqrt(first[0][0].numel()) / 10, 3)
    if any(s["attack"] == "autoattack" for s in suite):
        if importlib.util.find_spec("pyautoattack") is None:
            raise ValueError("--attacks autoattack needs pyautoattack: pip install 'nslib[autoattack]'")
    return {"suite": suite, "out": out, "source": source, "model": model, "eps": eps,
            "l2_eps": checks.check_eps(l2_eps, "--l2-eps", allow_zero=False), "aa": aa}


def _work(args) -> int:
    device = distributed.setup(args.device)
    with contextlib.ExitStack() as held:
        try:
            job = _prepare(args)
            if distributed.is_main():  # rank 0 writes: it holds --out from the checks to the end
                held.enter_context(claim(job["out"], "--out"))
            batch_size = checks.check_positive_int(fast.attack_batch(device, args.batch_size), "--batch-size")
            workers = checks.check_positive_int(args.workers, "--workers", minimum=0)
            err = None
        except (ValueError, TypeError) as e:
            err = e
        distributed.agree(err)
        return _evaluate(args, job, device, batch_size, workers)


def _evaluate(args, job: dict, device, batch_size: int, workers: int) -> int:
    model = job["model"].to(device)
    amp = fast.amp_flag(args.precision, device)
    res = evaluate_source(model, job["source"], job["suite"], eps=job["eps"], l2_eps=job["l2_eps"], seed=args.seed,
                         batch_size=batch_size, amp=amp, workers=workers, progress=not args.quiet)
    if not distributed.is_main():
        return 0
    params = {"model": args.model, "data": args.data, "n": len(job["source"]["index"]), "eps": job["eps"],
              "l2_eps": job["l2_eps"], "attacks": [evaluate.attack_label(s) for s in job["suite"]], "seed": args.seed,
              "batch_size": batch_size, "precision": args.precision, "ranks": distributed.world(),
              "autoattack": job["aa"]}
    result = {"params": params, "rows": res["rows"], "outcomes": res["outcomes"],
              "provenance": provenance(device, **params)}
    out = write_results(job["out"], result, force=args.force)
    table = ", ".join(f"{r['attack']} {100 * r['accuracy']:.1f}%" for r in res["rows"])
    print(f"nslib evaluate: wrote {out}/RESULTS.md ({table})")
    return 0


def main(args) -> int:
    """Entry of ``python -m nslib evaluate`` (arguments parsed by :func:`add_arguments`)."""
    return distributed.run_command("evaluate", _work, args)
