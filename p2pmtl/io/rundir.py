"""Output folders: unique default names, names that are safe in paths, and a lock so that two
runs never write into one folder.

A folder *holds a run* when it has any of the files a run, study or sweep writes
(:data:`RUN_MARKERS`). :func:`claim` refuses such a folder unless the caller resumes or
overwrites, and refuses a folder whose lock file names a live process in any case.
"""
from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path
from typing import Optional

RUN_MARKERS = ("summary.json", "metrics.csv", "metrics.parquet", "curves.csv", "config.toml", "cells.json",
               "study.toml")
LOCK = ".p2pmtl.lock"
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]{0,99}$")
SAFE_NAME_RULE = "1-100 characters from A-Z a-z 0-9 . _ + = -, starting with a letter or digit"


class OutputError(OSError):
    """An output folder that cannot be used (held by another run, a file, not writable)."""


def check_name(key: str, value: str) -> str:
    """``value`` if it is safe as one path component, else ``ValueError`` naming ``key``."""
    if not isinstance(value, str) or not SAFE_NAME.match(value) or value in (".", ".."):
        raise ValueError(f"{key} = {value!r}: not a safe name; allowed: {SAFE_NAME_RULE}")
    return value


def safe_component(text: str) -> str:
    """A path component made from ``text``: unsafe characters become ``_`` (for ids derived
    from several validated names, e.g. a sweep cell ``attack__byz0.2__seed0``)."""
    out = re.sub(r"[^A-Za-z0-9._+=-]", "_", text)[:150].lstrip(".") or "_"
    return out


def unique_default(root: Path, name: str) -> Path:
    """``root/NAME-YYYYmmdd-HHMMSS`` created atomically; ``-2``, ``-3``, ... when two runs start
    in the same second (or the folder exists for any other reason)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    base = f"{safe_component(name)}-{time.strftime('%Y%m%d-%H%M%S')}"
    for i in range(1, 10_000):
        path = root / (base if i == 1 else f"{base}-{i}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise OutputError(f"cannot find a free run folder name under {root}")


def holds_run(path: Path) -> bool:
    return any((Path(path) / m).exists() for m in RUN_MARKERS)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_owner(path: Path) -> Optional[int]:
    """The pid in ``path``'s lock file if that process is alive, else None."""
    lock = Path(path) / LOCK
    try:
        pid = int(lock.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if _alive(pid) else None


class FolderLock:
    """Holds ``path/.p2pmtl.lock`` (this process's pid) until :meth:`release`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path) / LOCK
        self.held = False

    def acquire(self) -> "FolderLock":
        owner = lock_owner(self.path.parent)
        if owner is not None and owner != os.getpid():
            raise OutputError(f"{self.path.parent} is in use by a live run (pid {owner}); "
                              f"wait for it or choose another --out")
        if owner == os.getpid() and self.path.exists():
            return self  # re-entrant: a study or sweep driving runs into its own subfolders
        tmp = self.path.with_name(f"{LOCK}.{os.getpid()}")
        tmp.write_text(f"{os.getpid()}\n")
        os.replace(tmp, self.path)
        self.held = True
        return self

    def release(self) -> None:
        if self.held:
            try:
                self.path.unlink()
            except OSError:
                pass
            self.held = False

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def claim(path: Path, *, resume: bool = False, overwrite: bool = False, what: str = "run",
          own: tuple[str, ...] = ()) -> FolderLock:
    """Make ``path`` ready for a new ``what`` and lock it.

    - ``path`` is a file: :class:`OutputError`;
    - a live run holds its lock: :class:`OutputError`, whatever the flags;
    - it holds an earlier run: refused unless ``resume`` (keep its files) or ``overwrite``
      (its run files are removed first); with ``resume``, a folder that holds run files but
      none of ``own`` (the markers of this kind: ``cells.json`` for a sweep) holds something
      else and is refused;
    - otherwise it is created. Permission errors surface as :class:`OutputError`."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"--out {path}: is a file, not a folder")
    owner = lock_owner(path) if path.is_dir() else None
    if owner is not None and owner != os.getpid():
        raise OutputError(f"{path} is in use by a live run (pid {owner}); wait for it or choose another --out")
    if resume and own and path.is_dir() and holds_run(path) and not any((path / m).exists() for m in own):
        raise OutputError(f"{path} holds another kind of run, not a {what}; choose another --out")
    if path.is_dir() and holds_run(path) and not resume:
        if not overwrite:
            raise OutputError(f"{path} already holds a {what} (it has "
                              f"{', '.join(m for m in RUN_MARKERS if (path / m).exists())}); "
                              f"choose another --out, or pass --overwrite to replace it")
        for m in (*RUN_MARKERS, "arrays", "parts", "cells", "summary.json.tmp"):
            p = path / m
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        for p in path.glob("*.png"):
            p.unlink()
    try:
        path.mkdir(parents=True, exist_ok=True)
        return FolderLock(path).acquire()
    except OutputError:
        raise
    except OSError as e:
        raise OutputError(f"cannot write to {path}: {e.strerror or e}") from None
