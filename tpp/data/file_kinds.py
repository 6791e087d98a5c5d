"""What kind of file a path is, and opening it only when it is a regular file.

A fifo named ``scan.png`` in a data folder, ``config.yaml`` or ``predictions.csv`` would make a plain ``open``
wait for a writer for ever (and ``Path.is_file()`` reports it as missing); a socket cannot be opened at all, a
device may never end. :func:`irregular` names such a path without opening it; :func:`open_regular_fd` is the one
primitive that opens a path that must be a regular file: refused from its ``stat`` before the open, opened
non-blocking, refused again from the ``fstat`` of the descriptor, optionally never through a symbolic link, always
worded ``'x.png' is not a regular file (fifo).`` :func:`open_regular` (a file object) and
:func:`read_whole_regular` (all its bytes) build on it here, :func:`tpp.capped_read.read_regular` (at most a cap
of bytes, no links) there. Used by the image reader (:mod:`tpp.data.images`), label tables, configs, ``tpp predict``,
``tpp compare`` and ``tpp plot``.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from tpp.data.pixels import ImageError
from tpp.errors import TppError

FILE_KINDS = ((stat.S_ISFIFO, "fifo"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
              (stat.S_ISBLK, "block device"), (stat.S_ISDIR, "folder"))


def file_kind(mode: int) -> str | None:
    """What an ``st_mode`` names when it is no regular file (``fifo``, ``socket``, ``character device``, ``block
    device``, ``folder``, ``special file``); None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in FILE_KINDS if test(mode)), "special file")


def irregular(path: str | Path, follow: bool = True) -> str | None:
    """:func:`file_kind` of ``path`` when it exists and is no regular file: a fifo named ``scan.png`` in a data
    folder, a socket, a device. None for a regular file and for a path that does not exist (or cannot be looked
    at): the caller says that. Symbolic links are followed; with ``follow=False`` a link is looked at itself and
    is None too (its open, with O_NOFOLLOW, says what it is). Nothing is opened (opening a fifo waits for a
    writer)."""
    try:
        return _looked_at(path, follow)
    except (OSError, ValueError):
        return None


def _looked_at(path: str | Path, follow: bool) -> str | None:
    """:func:`irregular` that raises the ``OSError`` of a path that cannot be looked at (a missing file is said as
    missing, never as no regular file)."""
    mode = (os.stat if follow else os.lstat)(path).st_mode
    return None if stat.S_ISLNK(mode) else file_kind(mode)


def nonblocking(path, flags: int) -> int:
    """An ``opener`` for :func:`open`: ``os.open`` non-blocking, so opening a fifo returns at once (no writer
    awaited); the caller then checks the descriptor is a regular file (:func:`file_kind` of its ``fstat``)."""
    return os.open(path, flags | getattr(os, "O_NONBLOCK", 0))


def open_regular_fd(path: str | Path, error: type[TppError] = ImageError, what: str = "", *, follow: bool = True,
                    shown: str | Path | None = None) -> tuple[int, os.stat_result]:
    """The one way tpp opens a file that must be regular: ``path`` opened read-only as a raw descriptor, with the
    ``fstat`` of that descriptor (the size a capped read trusts), else ``error`` naming it
    (``{what}'x.png' is not a regular file (fifo).``; ``what``: e.g. ``"config file "``; ``shown``: how the
    message names the file, default ``path``). A fifo, socket or device is refused from its ``stat``, never opened
    (opening some devices has side effects: a tape rewinds); a regular file is opened non-blocking and checked
    again on the open descriptor, so one swapped for a fifo after the look answers at once instead of waiting for a
    writer for ever. ``follow=False`` refuses a symbolic link (O_NOFOLLOW: its open fails, ``ELOOP``). A path that
    does not exist or cannot be read (or a refused link): the ``OSError``. The caller closes the descriptor."""
    shown = path if shown is None else shown
    nofollow = 0 if follow else getattr(os, "O_NOFOLLOW", 0)
    kind = _looked_at(path, follow)
    if not kind:
        try:
            fd = nonblocking(path, os.O_RDONLY | nofollow)
        except OSError:
            kind = irregular(path, follow)  # swapped for a socket since the stat (ENXIO): said as what it is
            if not kind:
                raise
        else:
            info = os.fstat(fd)
            kind = file_kind(info.st_mode)
            if not kind:
                return fd, info
            os.close(fd)
    raise error(f"{what}'{shown}' is not a regular file ({kind}).")


def open_regular(path: str | Path, error: type[TppError] = ImageError, what: str = "", *, follow: bool = True,
                 shown: str | Path | None = None):
    """``path`` opened for binary reading (a file object, closed by ``with``) when it is a regular file
    (:func:`open_regular_fd`, whose refusals and ``OSError`` it raises; symbolic links followed unless
    ``follow=False``)."""
    fd, _ = open_regular_fd(path, error, what, follow=follow, shown=shown)
    return os.fdopen(fd, "rb")


def read_whole_regular(path: str | Path, error: type[TppError] = ImageError, what: str = "") -> bytes:
    """All the bytes of ``path`` when it is a regular file, however many (symbolic links followed;
    :func:`open_regular`: ``error`` naming it otherwise, the ``OSError`` when it does not exist or cannot be read).
    For a run's or the user's own files (configs, logs, metrics); the files of adapter folders, stores and Hub
    snapshots are read capped, never through a link (:func:`tpp.capped_read.read_regular`)."""
    with open_regular(path, error, what) as fh:
        return fh.read()
