"""Capped reads of the files of adapter folders, stores, context sets and Hub snapshots: never through a symbolic
link, never waiting for a FIFO, never more bytes than such a file may have (:func:`read_regular`,
:func:`file_limit`), and folder listings that fail as a :class:`~tpp.errors.TppError` (:func:`list_folder`; the
one wording of that error, :func:`unlistable_error`, for every folder tpp lists, data folders too); and a
file's sha256 read in chunks, never whole (:func:`file_sha256`)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from tpp.data.file_kinds import open_regular_fd
from tpp.errors import TppError

MIB = 2**20
# the most bytes read from one metadata file of an adapter or context folder, a store or a Hub snapshot: the card,
# adapter_config.json, README.md, a context set's context.json (tpp writes them at tens of KiB at most)
METADATA_LIMIT = MIB
WEIGHTS_LIMIT = 4096 * MIB  # one safetensors file of an adapter (see file_limit)


def unlistable(exc: OSError) -> str:
    """Why a folder cannot be listed, as said to the user: ``cannot be listed (Permission denied)``."""
    return f"cannot be listed ({exc.strerror or type(exc).__name__})"


def unlistable_error(folder: str | Path, exc: OSError, then: str = "refused") -> TppError:
    """The one error for a folder that cannot be listed (no permission to read it, gone, no folder):
    ``folder 'PATH' cannot be listed (Permission denied); THEN.``, ``then`` saying what follows or what to do
    (default: ``refused``)."""
    return TppError(f"folder '{folder}' {unlistable(exc)}; {then}.")


def list_folder(folder: Path, then: str = "refused") -> list[os.DirEntry]:
    """The entries of ``folder``, sorted by name; one that cannot be listed (no permission to read it, gone, no
    folder) is a :class:`TppError` naming it (:func:`unlistable_error`, ``then`` as there), never a raw
    ``OSError`` (a 500 through the service)."""
    try:
        with os.scandir(folder) as entries:
            return sorted(entries, key=lambda e: e.name)
    except OSError as exc:
        raise unlistable_error(folder, exc, then) from None


def file_sha256(path: Path) -> str:
    """sha256 (64 hex digits) of a file's bytes, read in 1 MiB chunks: memory stays flat in its size."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(MIB), b""):
            digest.update(block)
    return digest.hexdigest()


def file_limit(name: str) -> int:
    """The most bytes :func:`read_regular` reads from the adapter file ``name``: :data:`METADATA_LIMIT` for the card,
    ``adapter_config.json`` and ``README.md``; :data:`WEIGHTS_LIMIT` for a safetensors file.

    A weights file is not bounded by anything else before it is read: its bytes are read whole, then its tensor
    names are checked against the method's key rule (:func:`tpp.serve.integrity.check_adapter`) and their shapes
    against the backbone only when it loads, so without this cap a forged store or Hub repo could make every load
    read gigabytes into memory before the refusal. No backbone is known where a store is read (the shapes a method
    allows depend on it), so the cap is one generous bound: LoRA on a ViT-L is tens of MiB, and a Hub pull screens
    its files with the same numbers."""
    return WEIGHTS_LIMIT if name.endswith(".safetensors") else METADATA_LIMIT


def read_regular(path: Path, limit: int | None = None, shown: str | Path | None = None) -> bytes:
    """The bytes of a regular file, never through a symbolic link and never waiting for a FIFO's writer (opened by
    :func:`tpp.data.file_kinds.open_regular_fd` with ``follow=False``: a fifo, socket or device refused from its
    ``stat``, unopened, as ``'PATH' is not a regular file (fifo).``); at most ``limit`` bytes (default:
    :func:`file_limit` of its name): a larger file is refused from its size, unread. The one capped read of the
    files of adapter folders, stores and Hub snapshots. ``shown``: how messages name the file (default: ``path``)."""
    shown = path if shown is None else shown
    limit = file_limit(Path(path).name) if limit is None else limit
    try:
        fd, info = open_regular_fd(path, TppError, follow=False, shown=shown)
    except OSError as exc:
        raise TppError(f"'{shown}' cannot be read ({exc.strerror}; symbolic links are refused).") from None
    with os.fdopen(fd, "rb") as fh:
        if info.st_size > limit:
            raise TppError(f"'{shown}' has {info.st_size:,} bytes, larger than the {limit:,} bytes such a file may "
                           "have; refused.")
        # the size found and a byte more, never ``limit + 1`` at once: a read allocates its whole buffer first (4 GiB
        # for every weights file); a file grown since its size was taken is read on in chunks, up to the cap
        parts = [fh.read(info.st_size + 1)]
        size = len(parts[0])
        while info.st_size < size <= limit and (part := fh.read(min(MIB, limit + 1 - size))):
            parts.append(part)
            size += len(part)
        data = b"".join(parts)
    if len(data) > limit:
        raise TppError(f"'{shown}' grew larger than the {limit:,} bytes such a file may have while it was read; "
                       "refused.")
    return data
