"""What kind of file a path is, and opening it only when it is a regular file.

A fifo named ``scan.png`` in a data folder, ``config.yaml`` or ``predictions.csv`` would make a plain ``open``
wait for a writer for ever (and ``Path.is_file()`` reports it as missing); a socket cannot be opened at all, a
device may never end. :func:`irregular` names such a path without opening it, :func:`open_regular` opens a path
non-blocking and refuses it, naming it (``'x.png' is not a regular file (fifo).``), when the open descriptor is
no regular file. Used by the image reader (:mod:`tpp.data.images`), label tables, configs, ``tpp predict``,
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


def irregular(path: str | Path) -> str | None:
    """:func:`file_kind` of ``path`` (symbolic links followed) when it exists and is no regular file: a fifo named
    ``scan.png`` in a data folder, a socket, a device. None for a regular file and for a path that does not exist
    (or cannot be looked at): the caller says that. Nothing is opened (opening a fifo waits for a writer)."""
    try:
        return file_kind(os.stat(path).st_mode)
    except (OSError, ValueError):
        return None


def nonblocking(path, flags: int) -> int:
    """An ``opener`` for :func:`open`: ``os.open`` non-blocking, so opening a fifo returns at once (no writer
    awaited); the caller then checks the descriptor is a regular file (:func:`file_kind` of its ``fstat``)."""
    return os.open(path, flags | getattr(os, "O_NONBLOCK", 0))


def open_regular(path: str | Path, error: type[TppError] = ImageError, what: str = ""):
    """``path`` opened for binary reading (a file object, closed by ``with``) when it is a regular file (symbolic
    links followed), else ``error`` naming it (``{what}'x.png' is not a regular file (fifo).``; ``what``: e.g.
    ``"config file "``). A fifo, socket or device is refused from its ``stat``, never opened (opening some devices
    has side effects: a tape rewinds); a regular file is opened non-blocking and checked again on the open
    descriptor, so one swapped for a fifo after the look answers at once instead of waiting for a writer for ever.
    A path that does not exist or cannot be read: the ``OSError``."""
    kind = file_kind(os.stat(path).st_mode)
    if not kind:
        try:
            fd = nonblocking(path, os.O_RDONLY)
        except OSError:
            kind = irregular(path)  # swapped for a socket since the stat (ENXIO): said as what it is
            if not kind:
                raise
        else:
            kind = file_kind(os.fstat(fd).st_mode)
            if not kind:
                return os.fdopen(fd, "rb")
            os.close(fd)
    raise error(f"{what}'{path}' is not a regular file ({kind}).")


def read_regular(path: str | Path, error: type[TppError] = ImageError, what: str = "") -> bytes:
    """The bytes of ``path`` when it is a regular file (:func:`open_regular`: ``error`` naming it otherwise, the
    ``OSError`` when it does not exist or cannot be read)."""
    with open_regular(path, error, what) as fh:
        return fh.read()
