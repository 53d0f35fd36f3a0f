"""Paths, provenance and atomic writes: everything nslib writes goes through here.

Paths resolve from the repository root (the folder holding ``pyproject.toml`` and ``nslib/``), not from
the working directory, because papermill runs the notebooks from ``notebooks/``. ``NSLIB_OUTPUTS`` and
``NSLIB_DATA`` override the two folders (an installed copy of nslib outside a checkout uses them, or
falls back to the working directory).

Every file is written atomically: to a temporary file in the same folder, then renamed over the
target, so an interrupted run never leaves half a file and never destroys the previous version.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import torch

from nslib import __version__

__all__ = ["repo_root", "data_dir", "outputs_dir", "provenance", "atomic_write_bytes", "save_json",
           "load_json", "save_torch", "params_key"]


def repo_root() -> Path:
    """The checkout's root folder (or the working directory for an installed copy)."""
    here = Path(__file__).resolve().parent.parent
    if (here / "pyproject.toml").exists() and (here / "nslib").is_dir():
        return here
    return Path.cwd()


def data_dir() -> Path:
    """Folder of the datasets: ``$NSLIB_DATA`` or ``<repo>/data``."""
    return Path(os.environ.get("NSLIB_DATA", repo_root() / "data"))


def outputs_dir(*parts: str) -> Path:
    """``$NSLIB_OUTPUTS`` or ``<repo>/outputs``, joined with ``parts`` (not created)."""
    return Path(os.environ.get("NSLIB_OUTPUTS", repo_root() / "outputs")).joinpath(*parts)


def _version() -> str:
    return __version__


def provenance(device: torch.device | str | None = None, **params: Any) -> dict:
    """What every written result carries: nslib/torch versions, device, host, time and ``params``."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {
        "nslib_version": _version(),
        "torch_version": torch.__version__,
        "device": str(device),
        "device_name": name,
        "python": platform.python_version(),
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "params": params,
    }


def _read_umask() -> int:
    mask = os.umask(0o022)  # the only way to read it: set, then straight back (once, at import)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _temp_beside(path: Path) -> tuple[int, str]:
    """A temp file next to ``path`` with the mode a plain ``open`` would give (mkstemp makes it 0600, so
    results would be readable by their owner only)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name + ".", suffix=".tmp")
    os.chmod(tmp, 0o666 & ~_UMASK)
    return fd, tmp


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temp file and a rename; parent folders are created."""
    path = Path(path)
    fd, tmp = _temp_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, (Path, torch.device, torch.dtype)):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return obj.item()
    if hasattr(obj, "tolist"):  # numpy arrays
        return obj.tolist()
    raise TypeError(f"cannot store an object of type {type(obj).__name__} in JSON")


def save_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON (tensors and numpy values become lists/numbers)."""
    text = json.dumps(obj, indent=2, default=_jsonable, allow_nan=True)
    return atomic_write_bytes(path, (text + "\n").encode())


def load_json(path: str | os.PathLike) -> Any:
    with open(path) as f:
        return json.load(f)


def save_torch(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically ``torch.save`` ``obj`` to ``path``."""
    path = Path(path)
    fd, tmp = _temp_beside(path)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def params_key(params: dict) -> str:
    """A short stable hash of a parameter dict: names run folders so stale results are never reused."""
    text = json.dumps(params, sort_keys=True, default=_jsonable)
    return hashlib.sha256(text.encode()).hexdigest()[:12]
