"""Paths, provenance and atomic writes: everything nslib writes goes through here.

Paths resolve from the repository root (the folder holding ``pyproject.toml`` and ``nslib/``), not from
the working directory, because papermill runs the notebooks from ``notebooks/``. ``NSLIB_OUTPUTS`` and
``NSLIB_DATA`` override the two folders (an installed copy of nslib outside a checkout uses them, or
falls back to the working directory).

Every file is written atomically: to a temporary file in the same folder, then renamed over the
target, so an interrupted run never leaves half a file and never destroys the previous version.
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import platform
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

try:
    import fcntl
except ImportError:  # Windows: no advisory locks (see claim)
    fcntl = None

from nslib import __version__

__all__ = ["repo_root", "data_dir", "outputs_dir", "provenance", "atomic_write_bytes", "save_json",
           "load_json", "save_torch", "params_key", "MANIFEST", "write_manifest", "claim", "check_writable",
           "check_result_dir", "new_result_dir", "writing_result", "replace_dir", "remove_orphan_temps", "remove_orphan_result_temps"]

MANIFEST = "nslib-manifest.json"  # what the kit wrote in a result folder: all that replacing it may remove


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


# ----------------------------------------------------------------------------------------------------
# result folders: nothing the kit did not write is ever deleted

def write_manifest(folder: str | os.PathLike) -> Path:
    """List every file under ``folder`` (paths relative to it) in ``folder/MANIFEST``, with provenance.

    Written last, into a complete result: what :func:`replace_dir` may later remove is exactly this list."""
    folder = Path(folder)
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() or p.is_symlink())
    return save_json(folder / MANIFEST, {"files": [f for f in files if f != MANIFEST], "provenance": provenance()})


def _protected(folder: Path) -> str | None:
    """Why ``folder`` may never be replaced (None if it may): it is, or holds, the working directory, the
    repository or the outputs root."""
    for what, place in (("the working directory", Path.cwd()), ("the repository", repo_root()),
                        ("the outputs root", outputs_dir())):
        place = place.resolve()
        if folder == place:
            return f"it is {what}"
        if folder in place.parents:
            return f"it holds {what} ({place})"
    return None


def _foreign(folder: Path) -> list[str]:
    """The entries under ``folder`` that its manifest does not list (all of them without a readable one)."""
    try:
        listed = set(load_json(folder / MANIFEST)["files"]) | {MANIFEST}
    except (OSError, ValueError, KeyError, TypeError):
        listed = set()
    found = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir() or p.is_symlink()}
    return sorted(found - listed)


def _adopt(folder: Path, legacy) -> None:
    """A result folder of a kit version that wrote no manifest: when every file in it is one of
    ``legacy[0]`` (the names the kit writes there) and the JSON file ``legacy[1]`` among them carries the
    kit's provenance, write the manifest it would have had."""
    names, proof = legacy
    files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir()}
    try:
        ours = bool(files) and files <= set(names) and "nslib_version" in load_json(folder / proof)["provenance"]
    except (OSError, ValueError, KeyError, TypeError):
        ours = False
    if ours:
        write_manifest(folder)


@contextlib.contextmanager
def claim(folder: str | os.PathLike, flag: str = "--out", *, wait: bool = False):
    """Hold an exclusive advisory lock on the result or run folder ``folder`` (``fcntl`` on ``.NAME.lock`` beside
    it) while a command writes it, so that two commands never write one folder at once. ``wait=False`` (the
    commands): a folder another process holds is a ValueError naming ``flag``, before any work; ``wait=True`` (the
    reproduction's model cache): wait for it. Once held, the empty temp folders a killed command left beside
    ``folder`` are removed (:func:`remove_orphan_result_temps`). Released on exit, on error and when the process
    dies; the lock file is removed on release (a waiter that locked the removed file tries again on the new one).
    Where ``fcntl`` is missing (Windows) nothing is locked."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    path = folder.parent / f".{folder.name}.lock"
    if fcntl is None:
        remove_orphan_result_temps(folder)
        yield folder
        return
    while True:
        handle = open(path, "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            handle.close()
            raise ValueError(f"{flag} {folder} is being written by another nslib command right now; wait for it "
                             f"to finish, or choose another {flag}") from None
        try:
            if os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino:
                break  # the lock file still in place is the one locked
        except FileNotFoundError:
            pass
        handle.close()  # released and removed meanwhile by its holder: lock the new one
    try:
        remove_orphan_result_temps(folder)  # held: no other command is assembling a result there
        yield folder
    finally:
        try:
            path.unlink(missing_ok=True)  # while still held, so nobody locks a file about to vanish unawares
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()


def check_writable(folder: str | os.PathLike, flag: str = "--out") -> Path:
    """``folder`` resolved, checked before any work to be a folder (or nothing yet) that can be created and
    written: not a file, not below a file, not in a read-only place. Raises: ValueError naming ``flag``."""
    folder = Path(folder).resolve()
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{flag} must be a folder, but {folder} is a file")
    place = folder.parent  # where the folder (or a temp folder beside it) is made
    while not place.exists():
        place = place.parent
    if not place.is_dir() or not os.access(place, os.W_OK | os.X_OK):
        why = "is a file" if not place.is_dir() else "is not writable"
        raise ValueError(f"{flag} {folder}: cannot write there ({place} {why})")
    if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {folder}: cannot write there (it is not writable)")
    return folder


def check_result_dir(folder: str | os.PathLike, force: bool = False, flag: str = "--out", legacy=None) -> Path:
    """Check, before any work, that a result may be written to ``folder`` (replacing it when ``force``).

    Refused: the working directory, the repository, the outputs root or a folder holding one of them; a
    path that is a file or below one, or where nothing can be written; an existing non-empty folder without
    ``force``; with ``force``, a folder holding anything its manifest (:data:`MANIFEST`) does not list, i.e.
    anything the kit did not write there. ``legacy``, ``(names, proof)``: a folder without a manifest that
    holds only ``names`` with the kit's provenance in the JSON file ``proof`` (written by an older version) is
    adopted. Returns the folder's resolved path. Raises: ValueError naming ``flag``.
    """
    folder = Path(folder).resolve()
    why = _protected(folder)
    if why is not None:
        raise ValueError(f"{flag} {folder} cannot hold a result: {why}; name a new folder, e.g. {flag} "
                         f"{folder / 'analysis'}")
    check_writable(folder, flag)
    if folder.is_dir() and any(folder.iterdir()):
        if not force:
            raise ValueError(f"{flag} {folder} exists and is not empty; pass --force to replace it, or another {flag}")
        if legacy is not None and not (folder / MANIFEST).exists():
            _adopt(folder, legacy)
        foreign = _foreign(folder)
        if foreign:
            raise ValueError(f"{flag} {folder} holds files nslib did not write there ({', '.join(foreign[:5])}"
                             f"{' ...' if len(foreign) > 5 else ''}); --force replaces only a folder of the kit's "
                             f"own results: move them, or choose another {flag}")
    return folder


def new_result_dir(folder: str | os.PathLike, flag: str = "--out") -> Path:
    """A fresh temp folder beside ``folder`` (the same file system: the final move is a rename) to assemble a
    result in. Raises: ValueError naming ``flag`` where nothing can be written."""
    folder = Path(folder)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes it 0700: the result folder follows the umask, as mkdir's
        return tmp
    except OSError as e:
        raise ValueError(f"{flag} {folder}: cannot write there ({e.strerror or e})") from None


@contextlib.contextmanager
def writing_result(folder: str | os.PathLike, force: bool = False, flag: str = "--out", legacy=None):
    """Assemble a result for ``folder`` in a fresh temp folder beside it (yielded), then, when the block ends
    without error, list it in its manifest, check ``folder`` again (:func:`check_result_dir`: something may have
    appeared there meanwhile) and move it into place (:func:`replace_dir`); the temp folder is removed in every case,
    so an error or Ctrl-C leaves the old result as it was. Hold :func:`claim` on ``folder`` around it."""
    tmp = new_result_dir(folder, flag)
    try:
        yield tmp
        write_manifest(tmp)
        check_result_dir(folder, force, flag, legacy)
        replace_dir(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


_TEMP_DIR = re.compile(r"^\..+\.[a-z0-9_]{8}$")  # what new_result_dir names (mkdtemp's 8 random characters)


def remove_orphan_result_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove the empty temp folders :func:`new_result_dir` left beside ``folder`` when a command writing it was
    killed before it wrote anything (``.NAME.XXXXXXXX``, empty: nothing of a result is lost). Call it while holding
    :func:`claim` on ``folder``, so that no other command is assembling one there."""
    folder = Path(folder)
    if not folder.parent.is_dir():
        return []
    gone = [p for p in folder.parent.glob(f".{folder.name}.*") if _TEMP_DIR.match(p.name) and p.is_dir()
            and not p.is_symlink() and not any(p.iterdir())]
    for p in gone:
        p.rmdir()
    return gone


def replace_dir(new: str | os.PathLike, folder: str | os.PathLike) -> Path:
    """Move the complete result folder ``new`` to ``folder`` (checked by :func:`check_result_dir` first).

    An old ``folder`` is renamed aside, ``new`` renamed into place, and only then are the files the old
    manifest lists removed (and folders left empty): the old result stays until the new one is in place,
    and nothing unlisted is deleted (an unlisted file, or an old folder without a manifest, stays aside
    as ``.NAME.old-*`` beside ``folder``)."""
    new, folder = Path(new), Path(folder)
    if not folder.exists():
        new.rename(folder)
        return folder
    aside = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
    aside.rmdir()  # a free name on the same file system, for the rename
    folder.rename(aside)
    try:
        new.rename(folder)
    except BaseException:
        aside.rename(folder)  # the old result back in place
        raise
    if _foreign(aside) or not (aside / MANIFEST).exists():
        if not any(aside.iterdir()):
            aside.rmdir()  # an empty folder: nothing to keep
        return folder
    inside = aside.resolve()
    for rel in load_json(aside / MANIFEST)["files"] + [MANIFEST]:
        where = (aside / rel).parent.resolve()  # an edited manifest cannot reach outside the folder
        if where == inside or inside in where.parents:
            (aside / rel).unlink(missing_ok=True)
    for sub in sorted((p for p in aside.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        if not any(sub.iterdir()):
            sub.rmdir()
    if not any(aside.iterdir()):
        aside.rmdir()
    return folder


_TEMP = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")  # what _temp_beside names (mkstemp's 8 random characters)


def remove_orphan_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove the temp files an interrupted atomic write (kill -9) left in ``folder``: ``.NAME.XXXXXXXX.tmp``
    of :func:`atomic_write_bytes` and :func:`save_torch`, nothing else. Call it where one process owns the
    folder (a training run's), before it writes. Returns what was removed."""
    folder = Path(folder)
    gone = [p for p in folder.glob(".*.tmp") if _TEMP.match(p.name) and p.is_file()] if folder.is_dir() else []
    for p in gone:
        p.unlink(missing_ok=True)
    return gone
