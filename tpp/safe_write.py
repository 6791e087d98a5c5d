"""Writing files safely: atomically (:func:`write_atomic`, :func:`atomic_file`: readers see the old content or the
new, never a part), never onto a device or folder (:func:`refuse_special`), as strict JSON (:func:`finite_json`: no
NaN), with file names that are no UTF-8 escaped (:data:`ESCAPED_BYTES`), a failure one :class:`~tpp.errors.TppError`
naming the file (:func:`write_error`)."""
from __future__ import annotations

import codecs
import contextlib
import errno
import math
import os
from pathlib import Path

from tpp.errors import TppError


def finite_json(value):
    """``value`` with every NaN or infinite float replaced by None: ``json.dumps`` would write ``NaN``, which is
    not JSON (strict parsers, jq and browsers refuse the whole file). An undefined metric reads as null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


def write_error(path: Path, exc: OSError, what: str = "cannot write") -> TppError:
    """The one-paragraph error for a failed write (disk full, no permission, a folder in the way)."""
    reason = exc.strerror or str(exc)
    hint = " Free some space or choose another location." if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ""
    return TppError(f"{what} '{path}': {reason}.{hint}")


def refuse_special(path: Path) -> None:
    """An output is renamed onto ``path``: refuse one that exists and is no regular file (a device such as
    /dev/full, a fifo, a folder), which the rename would replace."""
    if os.path.lexists(path) and not (path.is_file() and not path.is_symlink()):
        raise TppError(f"'{path}' exists and is not a regular file; write the output to a new file name.")


def _escape_bytes(exc: UnicodeEncodeError) -> tuple[str, int]:
    """A file name's bytes that are no UTF-8 (Python holds them as lone surrogates) written as ``\\xNN``."""
    chars = exc.object[exc.start:exc.end]
    return "".join(f"\\x{ord(c) - 0xDC00:02x}" if 0xDC80 <= ord(c) <= 0xDCFF else f"\\u{ord(c):04x}"
                   for c in chars), exc.end


ESCAPED_BYTES = "tpp-escaped-bytes"  # the encoding error handler of every text file tpp writes: never a crash
codecs.register_error(ESCAPED_BYTES, _escape_bytes)


def write_atomic(path: Path, text: str) -> None:
    """Write a file so that readers see the old content or the new, never a part (see :func:`atomic_file`)."""
    with atomic_file(path) as fh:
        fh.write(text)


@contextlib.contextmanager
def atomic_file(path: Path, newline: str | None = None):
    """A text file handle writing into a temporary file renamed onto ``path`` when the block ends: readers see
    the old content or the new, never a part. On any failure the temporary file is removed; an OSError (disk
    full, a folder named ``path`` ...) becomes a TppError."""
    path = Path(path)
    refuse_special(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", newline=newline, encoding="utf-8", errors=ESCAPED_BYTES) as fh:
            yield fh
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError):
            raise write_error(path, exc) from exc
        raise
