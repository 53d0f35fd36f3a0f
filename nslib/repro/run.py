"""The orchestrator: run the numbered notebooks headless with papermill, and the ``reproduce`` command line.

``python -m nslib reproduce --profile quick|full [--datasets ...] [--only 02,03] [--set NAME=VALUE] [--resume]``
checks every setting of every notebook it will run first (:func:`nslib.repro.config.settings`: an unknown name, a
wrong type or an unknown dataset fails at once, before any work), then executes each notebook into
``outputs/<profile>/<dataset>/`` with ``profile``, ``dataset`` and ``overrides`` injected. Its terminal bar
shows the notebook and what the notebook's kernel is doing (model, epoch, step, time left; see
:mod:`nslib.progress`).

Every finished notebook leaves a done-marker holding the hash of its settings and code; with ``--resume``
a notebook whose marker matches is skipped (the report is rebuilt whenever a notebook before it ran), and
trained models are reused through :mod:`nslib.repro.cache` in any case. Ctrl-C stops with one line saying what
was kept and how to resume. A long run goes in chunks: ``timeout 590 python -m nslib reproduce --profile
full --resume`` repeated until it exits 0 completes it.

Nothing in the library imports this module: it sits on top of everything.
"""
from __future__ import annotations

import difflib
import functools
import hashlib
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import papermill
import torch
from jupyter_client.manager import AsyncKernelManager
from papermill.exceptions import PapermillExecutionError
from tqdm.auto import tqdm

from nslib import models as models_mod
from nslib.data import DATASETS
from nslib.fast import default_device as device
from nslib.progress import read_fraction, read_status
from nslib.repro import config
from nslib.repro.report import profile_dir
from nslib.sensitivity import capture
from nslib.store import load_json, params_key, provenance, repo_root, save_json

__all__ = ["notebooks", "plan", "to_run", "reproduce", "announce", "main"]

REPRODUCTION = config.NOTEBOOKS  # the numbered notebooks that make up the reproduction (07+ are tools)


def notebooks(notebooks_dir: str | Path | None = None) -> list[Path]:
    """The numbered notebooks ``NN_name.ipynb`` in reading order."""
    folder = Path(notebooks_dir) if notebooks_dir is not None else repo_root() / "notebooks"
    return sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb") if p.is_file())


def _source_hash(path: Path) -> str:
    nb = json.loads(path.read_text())
    code = [("".join(c["source"]) if isinstance(c["source"], list) else c["source"])
            for c in nb["cells"] if c["cell_type"] == "code"]
    return hashlib.sha256("\n\x00".join(code).encode()).hexdigest()[:12]


def plan(profile: str, datasets=None, only=None, overrides: dict | None = None,
         notebooks_dir: str | Path | None = None) -> list[tuple[str, Path, dict]]:
    """``[(dataset, notebook path, injected parameters)]`` in run order, every setting checked.

    Raises: ValueError naming the profile, a dataset, a notebook number, or a parameter and what it expects.
    """
    overrides = dict(overrides or {})
    datasets = config.check_datasets(datasets) if datasets else list(config.profile_datasets(profile))
    paths = [p for p in notebooks(notebooks_dir) if notebooks_dir is not None or p.name[:2] in REPRODUCTION]
    paths.sort(key=lambda p: p.name[:2] == config.REPORT_NOTEBOOK)  # the report reads the others: it runs last
    if not paths:
        raise ValueError(f"no numbered notebooks found in {notebooks_dir or repo_root() / 'notebooks'}")
    if only:
        wanted = {o.strip().zfill(2) for o in only}
        unknown = wanted - {p.name[:2] for p in paths}
        if unknown:
            raise ValueError(f"only names notebooks that do not exist: {', '.join(sorted(unknown))}; "
                             f"available: {', '.join(p.name[:2] for p in paths)}")
        paths = [p for p in paths if p.name[:2] in wanted]
    out = []
    for dataset in datasets:
        for path in paths:
            number = path.name[:2] if path.name[:2] in config.NOTEBOOKS else None
            cfg = config.settings(profile, dataset, number, overrides)  # fails here, before any notebook runs
            check_against_model(cfg, overrides)  # knobs that name layers or count neurons or images
            out.append((dataset, path, {"profile": profile, "dataset": dataset, "overrides": overrides,
                                        "notebook_name": path.stem}))
    return out


TOP_K_KNOBS = ("k", "ks", "k_eval", "k_grid")  # top-k sizes applied to every default layer of the model
TEST_IMAGE_KNOBS = ("n_pairs", "n_eval", "n_long", "l2_n", "aa_n", "n_sanity")  # counts of test images drawn


@functools.lru_cache(maxsize=None)
def _layer_widths(arch: str, dataset: str) -> tuple[dict, tuple]:
    """({default layer: neurons}, every module name) of the untrained ``arch`` built for ``dataset``: one
    forward pass of two blank images (milliseconds for SmallCNN, about a second for ResNet-18 on a CPU)."""
    model = models_mod.build(arch, dataset).eval()
    layers = models_mod.default_layers(model)
    info = DATASETS[dataset]
    with torch.no_grad(), capture(model, layers, detach=True) as acts:
        model(torch.zeros(2, info.channels, info.size, info.size))
        widths = {name: acts[name].shape[1] for name in layers}
    return widths, tuple(name for name, _ in model.named_modules() if name)


def check_against_model(cfg, overrides=()) -> None:
    """Check the knobs that depend on the model before anything is trained: ``map_layer`` must be a layer
    of ``cfg.arch`` (built for ``cfg.dataset``), every top-k size (:data:`TOP_K_KNOBS`) at most the width
    of every default layer (a fraction always fits), and every count of test images (:data:`TEST_IMAGE_KNOBS`)
    set in ``overrides`` at most the dataset's test split (more would silently mean all of it; a profile's own
    value may exceed it in notebooks that do not read it). Raises: ValueError naming the knob."""
    for knob in (k for k in TEST_IMAGE_KNOBS if k in overrides):
        if getattr(cfg, knob) > DATASETS[cfg.dataset].test_size:
            raise ValueError(f"{knob} must be at most the {DATASETS[cfg.dataset].test_size} test images of "
                             f"{cfg.dataset}, got {getattr(cfg, knob)}")

    widths, modules = _layer_widths(cfg.arch, cfg.dataset)
    if cfg.map_layer is not None and cfg.map_layer not in modules:
        near = difflib.get_close_matches(cfg.map_layer, modules, n=3)
        hint = f"nearest: {', '.join(near)}" if near else f"its default layers: {', '.join(widths)}"
        raise ValueError(f"map_layer must be a layer of {cfg.arch} on {cfg.dataset}, got {cfg.map_layer!r}; {hint}")
    narrowest = min(widths, key=widths.get)
    for knob in TOP_K_KNOBS:
        value = getattr(cfg, knob)
        for k in value if isinstance(value, tuple) else (value,):
            if isinstance(k, int) and k > widths[narrowest]:
                raise ValueError(f"{knob} must be at most the width of every analysed layer of {cfg.arch} on "
                                 f"{cfg.dataset}: {narrowest!r} has {widths[narrowest]} neurons, got {k}")


def _marker_key(profile: str, dataset: str, path: Path, params: dict) -> tuple[dict, str]:
    """A notebook run's settings and the key its done-marker holds (settings and code)."""
    number = path.name[:2] if path.name[:2] in config.NOTEBOOKS else None
    cfg = config.settings(profile, dataset, number, params["overrides"]).as_dict()
    return cfg, params_key({"settings": cfg, "source": _source_hash(path)})


def to_run(profile: str, runs, resume: bool) -> list[bool]:
    """Which of ``runs`` (from :func:`plan`) will execute: all without ``resume``; with it, those whose
    done-marker is missing or stale, and a dataset's report whenever a notebook before it executes."""
    todo, ran = [], set()
    for dataset, path, params in runs:
        out_nb = profile_dir(profile, dataset) / path.name
        marker = out_nb.with_suffix(".done.json")
        done = resume and marker.exists() and out_nb.exists() and \
            load_json(marker).get("key") == _marker_key(profile, dataset, path, params)[1]
        go = not done or (path.name[:2] == config.REPORT_NOTEBOOK and dataset in ran)
        if go:
            ran.add(dataset)
        todo.append(go)
    return todo


def _quiet_kernel_manager(log: Path):
    """A kernel manager on IPC sockets whose kernel writes its stderr to ``log``.

    The terminal shows the progress bar and nothing else: ipykernel warns on stderr about every kernel that
    listens on unencrypted TCP (local IPC sockets need no such warning), and a kernel left behind by Ctrl-C
    says "Parent appears to have exited" there. A cell's errors still reach the executed notebook and the
    terminal's FAILED line; what the kernel process itself printed is kept in ``log``."""
    class IPCKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.transport = "ipc"
            self.ip = str(Path(tempfile.mkdtemp(prefix="nslib-kernel-")) / "kernel")

        async def _async_launch_kernel(self, kernel_cmd, **kw):
            with open(log, "ab") as stderr:  # the child keeps its own descriptor
                kw["stderr"] = stderr
                return await super()._async_launch_kernel(kernel_cmd, **kw)

    return IPCKernelManager


def _execute(path: Path, out_nb: Path, params: dict, status_file: Path, outcome: dict, log: Path | None = None) -> None:
    """Run one notebook (in a worker thread) into ``out_nb``, the kernel's stderr into ``log`` (default beside
    ``out_nb``); store the exception, if any, in ``outcome``."""
    os.environ["NSLIB_PROGRESS_FILE"] = str(status_file)  # inherited by the kernel
    try:
        papermill.execute_notebook(str(path), str(out_nb), parameters=params, kernel_name="python3",
                                   cwd=str(path.parent), progress_bar=False, log_output=False,
                                   kernel_manager_class=_quiet_kernel_manager(log or out_nb.with_suffix(".kernel.log")))
    except BaseException as e:  # noqa: BLE001 -- reported by the main thread, in one line
        outcome["error"] = e


def _run_one(path, out_nb, params, bar, expected: float, log: Path | None = None) -> BaseException | None:
    """Execute a notebook while the terminal bar shows its kernel's progress line.

    The whole-run bar counts expected seconds (:func:`nslib.repro.config.expected_seconds`). While the kernel
    reports the share done of an ``overall`` bar (:func:`nslib.progress.read_fraction`: notebook 01's models to
    train), the notebook's part of the bar is that share; otherwise it advances with the wall clock from where
    it stands, up to 95% of the notebook's share (a slow notebook holds the bar there rather than running into
    the next one's). Either way tqdm's rate is the run's speed against the measured machine and its
    "remaining" the estimate of what is left; with the share it follows the work actually done."""
    status_file = Path(tempfile.mkdtemp(prefix="nslib-progress-")) / "status"
    outcome: dict = {}
    worker = threading.Thread(target=_execute, args=(path, out_nb, params, status_file, outcome, log), daemon=True)
    worker.start()
    label, shown, start, t0 = f"{params['dataset']}/{path.stem}", None, bar.n, time.perf_counter()
    base, t_base = 0.0, t0  # the clock runs on from the last share reported
    while worker.is_alive():
        worker.join(timeout=0.5)
        text = f"{label}: {read_status(status_file)}".rstrip(": ")
        share, now = read_fraction(status_file), time.perf_counter()
        if share is not None:
            base, t_base = max(base, 0.95 * expected * share), now
            candidate = base
        else:
            candidate = base + (now - t_base)
        moved = max(bar.n - start, min(candidate, 0.95 * expected))
        if text != shown or moved - (bar.n - start) >= max(1.0, expected / 100):
            # redraw only on news or a visible step (a log file would otherwise fill with identical lines)
            bar.n = start + moved
            bar.set_postfix_str(text, refresh=True)
            shown = text
    bar.n = start + expected
    bar.refresh()
    return outcome.get("error")


def failed_path(out_nb: Path) -> Path:
    """Where a failed run of ``out_nb`` is kept, with its traceback: ``NN_name.failed.ipynb`` beside it."""
    return out_nb.with_name(f"{out_nb.stem}.failed.ipynb")


def _run_atomically(path: Path, out_nb: Path, params: dict, bar, seconds: float) -> BaseException | None:
    """Execute into ``.NN_name.running.ipynb`` beside ``out_nb`` and rename it over ``out_nb`` only on success:
    a failure goes to :func:`failed_path`, Ctrl-C removes it; either way a finished ``out_nb`` and its
    done-marker stay as they were. Returns the notebook's error (None on success); re-raises Ctrl-C."""
    partial = out_nb.with_name(f".{out_nb.stem}.running.ipynb")
    try:
        error = _run_one(path, partial, params, bar, seconds, log=out_nb.with_suffix(".kernel.log"))
        if isinstance(error, KeyboardInterrupt):
            raise error
    except KeyboardInterrupt:
        partial.unlink(missing_ok=True)
        raise
    if error is not None:
        if partial.exists():
            partial.replace(failed_path(out_nb))
        return error
    failed_path(out_nb).unlink(missing_ok=True)  # the kit's own record of an earlier failure, now superseded
    partial.replace(out_nb)
    return None


def reproduce(profile: str = "quick", datasets=None, only=None, resume: bool = False, overrides: dict | None = None,
              notebooks_dir: str | Path | None = None, progress: bool = True, log=print) -> int:
    """Run the notebooks with papermill into ``outputs/<profile>/<dataset>/``; 0 on success, 1 on a failure,
    130 when interrupted.

    Args:
        profile: a name of :data:`nslib.repro.config.PROFILES`.
        datasets: dataset names (default: the profile's).
        only: notebook numbers to run ("02"), default all of the reproduction (00-06).
        resume: skip notebooks already done with the same settings and code.
        overrides: knob values applied last (``--set``), checked by :func:`nslib.repro.config.settings`.
        notebooks_dir: folder of the notebooks (default ``<repo>/notebooks``).
    """
    runs = plan(profile, datasets, only, overrides, notebooks_dir)
    todo = to_run(profile, runs, resume)
    # the bar counts the expected seconds of what will run (a skipped notebook counts nothing)
    expected = [config.expected_seconds(profile, d, p.name[:2])[0] if go else 0.0 for (d, p, _), go in zip(runs, todo)]
    bar = tqdm(total=sum(expected), desc=f"reproduce ({profile})", disable=not progress, file=sys.stdout,
               bar_format="{desc}: {percentage:3.0f}%|{bar:20}| {elapsed} elapsed, ~{remaining} left{postfix}")
    done = 0

    def say(message: str) -> None:  # a line above the bar, not glued to it
        if log is print and progress:
            tqdm.write(message, file=sys.stdout)
        else:
            log(message)
    try:
        for (dataset, path, params), seconds, go in zip(runs, expected, todo):
            out_dir = profile_dir(profile, dataset)
            out_nb = out_dir / path.name
            marker = out_nb.with_suffix(".done.json")
            if not go:
                say(f"skip {out_nb} (done with the same settings)")
                continue
            cfg, key = _marker_key(profile, dataset, path, params)  # what the done-marker will hold
            out_dir.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            error = _run_atomically(path, out_nb, params, bar, seconds)  # the finished one stays until success
            if error is not None:
                bar.close()
                what = f"raised {error.ename}: {error.evalue}" if isinstance(error, PapermillExecutionError) \
                    else f"{type(error).__name__}: {error}"
                kept = f"; the previous result {out_nb} is kept" if out_nb.exists() else ""
                log(f"FAILED: {path.name} on {dataset} {what}\nthe executed notebook with the traceback: "
                    f"{failed_path(out_nb)} (the kernel's own messages: {out_nb.with_suffix('.kernel.log')}){kept}")
                return 1
            wall = time.perf_counter() - t0
            done += 1
            save_json(marker, {"notebook": path.name, "key": key, "settings": cfg, "runtime_s": wall,
                               "provenance": provenance(device(), **params)})
            say(f"done {out_nb} in {wall:.0f} s (expected {seconds:.0f} s)")
    except KeyboardInterrupt:
        bar.close()
        cmd = " ".join(["python -m nslib reproduce --profile", profile]
                       + ([f"--datasets {','.join(datasets)}"] if datasets else [])
                       + ([f"--only {','.join(only)}"] if only else [])
                       + [f"--set '{k}={v!r}'" for k, v in (overrides or {}).items()] + ["--resume"])
        log(f"\ninterrupted: {done} notebook(s) finished in this run and every finished training epoch are kept; "
            f"resume with: {cmd}")
        return 130
    bar.close()
    report = profile_dir(profile) / "REPORT.md"
    if report.exists():
        log(f"report: {report}")
    return 0


def announce(profile: str, runs, why: str | None = None, todo=None) -> str:
    """The line ``reproduce`` prints before it starts: the profile (and why it was picked), the datasets, the
    device and the expected wall time of the runs that will execute (``todo``, from :func:`to_run`; default
    all) (:data:`nslib.repro.config.EXPECTED_S`, measured on a quiet 2-core CPU)."""
    todo = [True] * len(runs) if todo is None else todo
    times = [config.expected_seconds(profile, d, p.name[:2]) for (d, p, _), go in zip(runs, todo) if go]
    total = sum(t for t, _ in times)
    if all(measured for _, measured in times):
        when = f"expected about {total / 60:.0f} min (measured on a quiet 2-core CPU; other work on the machine " \
               f"slows it)"
    else:
        when = "expected time unknown (not measured for this profile and dataset)"
    picked = f" ({why})" if why else ""
    return (f"nslib reproduce: profile {profile!r}{picked} on {', '.join(sorted({d for d, _, _ in runs}))} "
            f"({len(runs)} notebook runs), device {device()}; {when}")


def _names(text: str | None, flag: str, what: str) -> list[str] | None:
    """A comma-separated list of a flag (None when the flag is absent); an empty one is an error, not 'all'."""
    if text is None:
        return None
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise ValueError(f"{flag} must list {what}; got {text!r} (leave {flag} out for all)")
    return names


def main(args) -> int:
    """Entry of ``python -m nslib reproduce`` (arguments parsed in :mod:`nslib.cli.main`); ``--profile auto``
    (the default) runs "full" where a CUDA device is present and "cpu" elsewhere."""
    profile, why = (config.auto_profile() if args.profile == "auto" else (args.profile, None))
    try:
        overrides = config.parse_overrides(args.set)
        datasets = _names(args.datasets, "--datasets", "dataset names, e.g. fmnist,mnist5k")
        only = _names(args.only, "--only", "notebook numbers, e.g. 02,03")
        runs = plan(profile, datasets, only, overrides)  # every check, before any work
    except ValueError as e:
        print(f"nslib reproduce: {e}", file=sys.stderr)
        return 2
    print(announce(profile, runs, why, to_run(profile, runs, args.resume)), flush=True)
    return reproduce(profile, datasets=datasets, only=only, resume=args.resume, overrides=overrides)
