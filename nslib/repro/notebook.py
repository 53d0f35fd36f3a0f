"""What every numbered notebook opens and closes with, said once: its settings, figures folder and clock, then its
results saved with their runtime.

A notebook names itself once, in its ``parameters`` cell (``notebook = "02_neuron_sensitivity"``: its file name);
its settings layer is the number in front (``"02"``, :func:`nslib.repro.config.settings`).

Usage (the opening and closing cells of notebooks 01-05)::

    run = notebook.start(profile, dataset, notebook_name, overrides)  # prints what it runs
    cfg, seeds, fig_dir = run.cfg, run.seeds, run.fig_dir
    ...
    print(run.save({"claims": claims, "sections": sections, "numbers": numbers}))
"""
from __future__ import annotations

import time
from pathlib import Path

from nslib.repro import config, report

__all__ = ["Run", "start", "number"]


def number(name: str) -> str:
    """The settings layer of notebook ``name``: its two-digit number (``"02_neuron_sensitivity"`` -> ``"02"``).

    Raises: ValueError naming the notebook when the name does not start with two digits and an underscore."""
    head, sep, _ = str(name).partition("_")
    if not (sep and len(head) == 2 and head.isdigit()):
        raise ValueError(f"notebook must be the notebook's file name without .ipynb, two digits first (e.g. "
                         f"'02_neuron_sensitivity'), got {name!r}")
    return head


class Run:
    """One notebook's run: ``cfg`` (its frozen settings), ``seeds``, ``fig_dir`` (``outputs/<profile>/<dataset>/
    figures``) and the clock started when it opened; :meth:`save` writes its results with their runtime."""

    def __init__(self, profile: str, dataset: str, name: str, overrides: dict | None = None):
        self.profile, self.dataset, self.name = profile, dataset, name
        self.cfg = config.settings(profile, dataset, number(name), overrides or {})  # every knob checked
        self.seeds = list(self.cfg.seeds)
        self.fig_dir = report.figures_dir(profile, dataset)
        self.t_start = time.perf_counter()

    def elapsed(self) -> float:
        """Seconds since the notebook opened."""
        return time.perf_counter() - self.t_start

    def save(self, record: dict) -> Path:
        """:func:`nslib.repro.report.save_result` of ``record`` with ``runtime_s`` (seconds since the opening) and
        the settings as the notebook's parameters; returns the file written."""
        record = {**record, "runtime_s": self.elapsed()}
        return report.save_result(self.profile, self.dataset, self.name, record, self.cfg.as_dict())


def start(profile: str, dataset: str, name: str, overrides: dict | None = None) -> Run:
    """Open notebook ``name``'s run (:class:`Run`) and print what it runs: dataset, architecture, eps, seeds and
    where its figures go."""
    run = Run(profile, dataset, name, overrides)
    print(f"{dataset}, {run.cfg.arch}, eps {run.cfg.eps}, seeds {run.seeds}; figures in {run.fig_dir}")
    return run
