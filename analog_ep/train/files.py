"""The files of a run directory: each written atomically (a reader sees the old file or the new
one, never part of one, and concurrent writers never share a temporary file), and one training
run per directory at a time (an ``fcntl.flock`` lock that the kernel releases when the process
ends, however it ends)."""
from __future__ import annotations

import fcntl
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

LOCK = ".lock"  # the lock file in a run directory; holds the PID of the run that has it
_UMASK = os.umask(0)  # read once (os.umask can only be read by setting it) and restored at once
os.umask(_UMASK)


class RunDirectoryBusy(ValueError):
    """Another process holds the run directory's lock."""


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Create or replace ``path`` by calling ``write(tmp)`` on a unique temporary file in the
    same directory (same suffix, so writers that infer the format from it work) and renaming it
    over ``path``; the temporary file is removed if ``write`` fails. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=path.suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it private; give it a normal file's mode
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write` of a text file."""
    return atomic_write(path, lambda tmp: tmp.write_text(text))


@contextmanager
def run_lock(out: str | Path, wait_for_pid: float = 2.0) -> Iterator[Path]:
    """Hold the lock of run directory ``out`` (created if needed) for the block. If another
    process holds it, raise :class:`RunDirectoryBusy` naming that process's PID (read from the
    lock file, waiting up to ``wait_for_pid`` seconds for a holder that has just taken it)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            deadline = time.monotonic() + wait_for_pid
            while not (holder := os.pread(fd, 32, 0).decode(errors="replace").strip()) and time.monotonic() < deadline:
                time.sleep(0.05)
            raise RunDirectoryBusy(f"{out} is in use by another training run (PID {holder or 'unknown'}); "
                                   "wait for it to finish or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield out
    finally:
        os.close(fd)  # releases the lock
