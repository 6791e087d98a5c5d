"""The lock a run holds on its ``output_dir``: a second tpp process there (a resume of a run still going) is refused.

The lock is a POSIX record lock (``fcntl.lockf``, ``F_SETLK``) on the file :data:`~tpp.run_folder.LOCK_FILE` inside
the run folder, the one kind of lock that NFS carries to its server, so a second machine on the same shared storage
is refused too (a ``flock`` on the folder itself held on one machine only: Linux's NFS client has no lock handler
for folders). The kernel drops it when its descriptor closes or the process ends, even by SIGKILL. The run removes
the file when it ends (:func:`unlock_folder`); a killed run's leftover is taken over by the next one.

POSIX locks belong to a process: a second lock of the same process on the file succeeds, and closing *any*
descriptor of the file releases them. So this process remembers the lock files it holds (:data:`_HELD`), refuses a
second lock on one of them without opening it, and nothing else of tpp opens the file.

Where no lock can be taken (no ``fcntl`` on Windows, a filesystem answering ``ENOLCK`` / ``EOPNOTSUPP``) the run
goes on unlocked after one note saying so."""
from __future__ import annotations

import contextlib
import errno
import os
import sys
import threading
from pathlib import Path

from tpp.errors import TppError
from tpp.run_folder import LOCK_FILE

_HELD: dict[tuple[int, int], int] = {}  # (st_dev, st_ino) of each lock file this process holds -> its descriptor
_NOTED: set[str] = set()  # folders already said to be unlockable (the note is given once)
_GUARD = threading.Lock()
_REFUSED = {errno.EACCES, errno.EAGAIN}  # what F_SETLK answers when another process holds the lock
_ATTEMPTS = 5  # a lock file removed (its run ended) between opening and locking it: open the new one


def in_use(path: Path) -> TppError:
    """The refusal of a folder another tpp process (or this one, through another RunDir) holds."""
    return TppError(f"output_dir '{path}' is in use by another tpp process (a run still going there); "
                    "wait for it to end or stop it, or choose another output_dir=...")


def lock_folder(path: Path, create: bool = True) -> int | None:
    """An exclusive, non-blocking lock on run folder ``path``: the descriptor of its lock file (give it back with
    :func:`unlock_folder`), or None where no lock can be taken (a note says so, once per folder) or, with
    ``create=False``, where the folder has no lock file (no run holds it). A TppError when another process holds
    it."""
    try:
        import fcntl
    except ImportError:  # Windows
        return _unlockable(path, "this system has no fcntl locks")
    lock = Path(path) / LOCK_FILE
    for _ in range(_ATTEMPTS):
        if _held_here(lock):
            raise in_use(path)
        try:
            fd = os.open(lock, os.O_WRONLY | (os.O_CREAT if create else 0) | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as exc:  # no permission, a read-only folder, a symbolic link planted as the lock file
            if not create and isinstance(exc, FileNotFoundError):
                return None
            return _unlockable(path, exc)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in _REFUSED:
                raise in_use(path) from None
            if exc.errno == errno.ESTALE:  # NFS: removed by the run that held it
                continue
            return _unlockable(path, exc)
        if _same_file(fd, lock):
            with _GUARD:
                _HELD[_key(fd)] = fd
            return fd
        os.close(fd)  # locked a file its run removed as it ended: the folder's lock file is another one now
    return _unlockable(path, "its lock file keeps being replaced")


def unlock_folder(path: Path, fd: int) -> None:
    """Give back :func:`lock_folder`'s lock: its file is removed while still held (so nobody takes a lock on a
    file that is gone), then the descriptor closes."""
    with _GUARD, contextlib.suppress(OSError):
        _HELD.pop(_key(fd), None)
    try:
        if _same_file(fd, Path(path) / LOCK_FILE):
            os.unlink(Path(path) / LOCK_FILE)
    except OSError:  # gone with its folder, a read-only remount: the next run takes it over
        pass
    finally:
        os.close(fd)


def refuse_if_in_use(path: Path) -> None:
    """Refuse at once (before the config and data checks) an ``output_dir`` a running tpp process holds; creates
    nothing (a folder without a lock file is held by no run)."""
    if Path(path).is_dir():
        fd = lock_folder(Path(path), create=False)
        if fd is not None:
            with _GUARD:
                _HELD.pop(_key(fd), None)
            os.close(fd)  # this process held no other lock on the file, so this releases only this probe's


def _key(fd: int) -> tuple[int, int]:
    info = os.fstat(fd)
    return info.st_dev, info.st_ino


def _held_here(lock: Path) -> bool:
    """Whether this process holds ``lock`` already (another RunDir of it): checked without opening the file, as
    closing a second descriptor of it would release the lock."""
    try:
        info = os.stat(lock, follow_symlinks=False)
    except OSError:
        return False
    with _GUARD:
        return (info.st_dev, info.st_ino) in _HELD


def _same_file(fd: int, lock: Path) -> bool:
    """Whether ``lock`` still names the file open as ``fd`` (not removed or replaced since it was opened)."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(lock, follow_symlinks=False))
    except OSError:
        return False


def _unlockable(path: Path, why) -> None:
    """No lock: the run goes on after one note (once per folder) that two runs there must not overlap."""
    if isinstance(why, OSError):
        why = why.strerror or str(why)
    key = os.path.abspath(path)
    with _GUARD:
        if key in _NOTED:
            return None
        _NOTED.add(key)
    print(f"[tpp] note: run folder '{path}' cannot be locked here ({why}): do not run two `tpp run` on it at once",
          file=sys.stderr, flush=True)
    return None
