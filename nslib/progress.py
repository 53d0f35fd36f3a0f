"""Progress bars that also tell the terminal running ``reproduce`` what a notebook's kernel is doing.

Inside a notebook, tqdm draws its bars into the executed notebook, which the person watching
``python -m nslib reproduce`` never sees. :class:`bar` is ``tqdm.auto.tqdm`` that, when the environment variable
``NSLIB_PROGRESS_FILE`` names a file (the runner sets it for each kernel), also writes one line there about
once a second: every open bar, outermost first, with its count and time left
(``sns epochs 1/2 <00:40 | epoch 2 35/63 <00:08``). The runner reads that line into its own bar. Without the
variable it is plain tqdm.

Usage: ``for xb, yb in bar(batches, total=n, desc="epoch 1"): ...``
"""
from __future__ import annotations

import contextlib
import os
import time

from tqdm.auto import tqdm

__all__ = ["bar", "stage", "status_line", "read_status"]

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
        with open(tmp, "w") as f:
            f.write(status_line())
        os.replace(tmp, path)
    except OSError:  # the status line is a courtesy: never let it stop the work
        pass


def read_status(path) -> str:
    """The last line a kernel wrote to ``path`` ('' when there is none yet)."""
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


class bar(tqdm):  # noqa: N801 -- used like tqdm
    """``tqdm.auto.tqdm`` that also reports to ``NSLIB_PROGRESS_FILE`` (see the module docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
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

    def close(self):
        if any(b is self for b in _OPEN):
            _forget(self)
        super().close()
