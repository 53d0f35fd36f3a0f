"""Progress bars that also tell the terminal running ``reproduce`` what a notebook's kernel is doing.

Inside a notebook, tqdm draws its bars into the executed notebook, which the person watching
``python -m nslib reproduce`` never sees. :class:`bar` is ``tqdm.auto.tqdm`` that, when the environment variable
``NSLIB_PROGRESS_FILE`` names a file (the runner sets it for each kernel), also writes one line there about
once a second: every open bar, outermost first, with its count and time left
(``sns epochs 1/2 <00:40 | epoch 2 35/63 <00:08``). The runner reads that line into its own bar. Without the
variable it is plain tqdm.

A bar opened with ``overall=True`` stands for most of a notebook's work (notebook 01's models to train): while
it is open, a second line holds the share of it done, its count refined by the bars inside it (model 3 of 12,
epoch 1 of 2, step 30 of 60: (2 + (0 + 30/60) / 2) / 12), which the runner turns into the notebook's share of
its expected time, so that the whole run's "time left" follows the machine's real speed.

Usage: ``for xb, yb in bar(batches, total=n, desc="epoch 1"): ...``
"""
from __future__ import annotations

import contextlib
import os
import time

from tqdm.auto import tqdm

__all__ = ["bar", "stage", "status_line", "fraction", "read_status", "read_fraction"]

_OPEN: list = []  # open bars and stage names, outermost first
_LAST_WRITE = [0.0]
_INTERVAL_S = 1.0


def _describe(b) -> str:
    d = b.format_dict
    text = f"{d.get('prefix') or 'working'} {d['n']}" + (f"/{d['total']}" if d.get("total") else "")
    rate, total = d.get("rate"), d.get("total")
    if not rate and d["n"] and d.get("elapsed"):
        rate = d["n"] / d["elapsed"]
    if rate and total:
        text += " <" + tqdm.format_interval((total - d["n"]) / rate)
    return text


def status_line() -> str:
    """The open bars and stages of this process in one line, outermost first."""
    return " | ".join(b if isinstance(b, str) else _describe(b) for b in _OPEN)


def fraction() -> float | None:
    """The share done of the outermost open ``overall`` bar, refined by the bars inside it; None when none is open
    or its total is 0 (nothing of it left to do)."""
    k = next((i for i, b in enumerate(_OPEN) if getattr(b, "overall", False)), None)
    if k is None or not _OPEN[k].total:
        return None
    share = 0.0
    for b in reversed(_OPEN[k:]):  # innermost first: each bar's count plus the share of its current item
        if isinstance(b, str) or not b.total:
            continue
        share = min(1.0, (min(b.n, b.total) + (share if b.n < b.total else 0.0)) / b.total)
    return share


def _forget(item) -> None:
    _OPEN[:] = [b for b in _OPEN if b is not item]  # by identity: tqdm's == compares counters
    _write_status(force=True)


@contextlib.contextmanager
def stage(text: str):
    """Name what the bars inside belong to (``with stage("PGD-AT seed 0"): train(...)``)."""
    _OPEN.append(text)
    _write_status(force=True)
    try:
        yield
    finally:
        _forget(text)


def _write_status(force: bool = False) -> None:
    path = os.environ.get("NSLIB_PROGRESS_FILE")
    now = time.monotonic()
    if not path or (not force and now - _LAST_WRITE[0] < _INTERVAL_S):
        return
    _LAST_WRITE[0] = now
    try:
        tmp = f"{path}.{os.getpid()}.tmp"
        share = fraction()
        with open(tmp, "w") as f:
            f.write(status_line() + ("" if share is None else f"\n{share:.6f}"))
        os.replace(tmp, path)
    except OSError:  # the status line is a courtesy: never let it stop the work
        pass


def _read(path) -> list[str]:
    try:
        with open(path) as f:
            return f.read().split("\n")
    except OSError:
        return []


def read_status(path) -> str:
    """The status line a kernel last wrote to ``path`` ('' when there is none yet)."""
    lines = _read(path)
    return lines[0].strip() if lines else ""


def read_fraction(path) -> float | None:
    """The share done of the kernel's open ``overall`` bar as last written to ``path`` (None: no such bar)."""
    lines = _read(path)
    try:
        return float(lines[1]) if len(lines) > 1 else None
    except ValueError:
        return None


class bar(tqdm):  # noqa: N801 -- used like tqdm
    """``tqdm.auto.tqdm`` that also reports to ``NSLIB_PROGRESS_FILE`` (see the module docstring); ``overall=True``
    marks the bar whose share done stands for the notebook's."""

    def __init__(self, *args, overall: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.overall = overall  # most of the notebook's work: its share done goes to the runner (module docstring)
        if not self.disable:  # a disabled bar has no counters to report
            _OPEN.append(self)
            _write_status(force=True)

    def __iter__(self):
        if self.disable:
            yield from self.iterable
            return
        try:  # tqdm's own loop updates the counter lazily; the status line wants it current
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def update(self, n=1):
        out = super().update(n)
        _write_status()
        return out

    def skip(self, n=1):
        """Take ``n`` items off the total instead of counting them: they cost nothing (a model found trained), so
        the share done counts only the work that is really done."""
        self.total = max(self.n, (self.total or 0) - n)
        self.refresh()
        _write_status(force=True)

    def close(self):
        if any(b is self for b in _OPEN):
            _forget(self)
        super().close()
