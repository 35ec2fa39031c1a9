"""The temporary folder `sculpt export` builds a bundle in, and the cleanup of those that a
killed export left behind.

The folder is ``.NAME.tmp-PID-XXXXXXXX`` beside ``--out`` (PID: the exporting process), and the
export holds an exclusive ``flock`` on it while it works; the kernel drops the lock when the
process ends, however it ends (SIGKILL, OOM kill). Each export first removes the folders of this
form in its parent folder (of any bundle name) that are stale: the PID in the name is not a
running process here, **and** the folder's lock can be taken. A live export is never touched:
its PID runs from before its folder exists (so the moment between creating the folder and
locking it is covered), and an export in another PID namespace sharing the volume (another
container) holds its lock. A reused PID keeps a stale folder until that process ends: the safe
side. Where the filesystem has no ``flock`` (some network filesystems) the PID alone decides.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["remove_stale", "staging_folder", "temp_prefix"]

log = logging.getLogger(__name__)

_TEMP_NAME = re.compile(r"\.(?P<bundle>.+)\.tmp-(?P<pid>\d+)-[a-z0-9_]+")


def temp_prefix(out: Path, pid: int | None = None) -> str:
    """The name a temporary folder for ``out`` starts with (mkdtemp adds random characters)."""
    return f".{out.name}.tmp-{os.getpid() if pid is None else pid}-"


def _pid_running(pid: int) -> bool:
    if pid <= 0:  # never an export's own PID (and kill(0) would mean the process group)
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _open_locked(folder: Path) -> int | None:
    """An open descriptor of ``folder`` holding its exclusive flock, or None where the
    filesystem does not support flock. BlockingIOError: another process holds the lock."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise
    except OSError:  # ENOLCK, EBADF on filesystems without flock
        os.close(fd)
        return None
    return fd


def remove_stale(parent: Path) -> list[Path]:
    """Remove the temporary folders in ``parent`` that dead exports left; return them."""
    removed: list[Path] = []
    if not parent.is_dir():
        return removed
    for entry in sorted(parent.iterdir()):
        match = _TEMP_NAME.fullmatch(entry.name)
        if match is None or entry.is_symlink() or not entry.is_dir():
            continue
        pid = int(match["pid"])
        if _pid_running(pid):
            continue
        try:
            fd = _open_locked(entry)
        except OSError:  # BlockingIOError: a live export elsewhere; or gone, or unreadable
            continue
        try:
            shutil.rmtree(entry)
        except OSError as exc:
            log.warning("could not remove %s, left by a stopped export: %s", entry, exc)
            continue
        finally:
            if fd is not None:
                os.close(fd)
        log.warning("removed %s: left by export process %d, which is no longer running", entry, pid)
        removed.append(entry)
    return removed


@contextlib.contextmanager
def staging_folder(out: Path) -> Iterator[Path]:
    """A new, locked temporary folder beside ``out`` (stale ones removed first), removed on
    exit unless it was renamed into place meanwhile."""
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(out.parent)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(out), dir=out.parent))
    try:
        lock = _open_locked(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # already gone once renamed to ``out``
        if lock is not None:
            os.close(lock)
