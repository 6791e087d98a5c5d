"""Images that stay on disk until read: a folder of 100,000 scans is a list of paths, not 60 GB of pixels.

The paths themselves are kept packed (:class:`PackedStrings`: one UTF-8 byte buffer and an offset array),
not as a Python string per image: a 100,000-image split costs a few MB of bookkeeping, and no per-image
objects are left to fragment the heap.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Callable, Iterable

import numpy as np

from tpp.errors import TppError


class PackedStrings(Sequence):
    """An immutable sequence of strings stored as one uint8 buffer of their UTF-8 bytes (``data``) and the end
    offset of each (``ends``, int64 (N,)). ``packed[i]`` is a ``str``, ``packed[index]`` (a slice or an integer
    array) another PackedStrings; equal to any sequence of the same strings."""

    __slots__ = ("data", "ends")

    def __init__(self, strings: Iterable[str] = ()):
        if isinstance(strings, PackedStrings):
            self.data, self.ends = strings.data, strings.ends
            return
        encoded = [os.fspath(s).encode("utf-8", "surrogateescape") for s in strings]  # str or os.PathLike
        self.ends = np.cumsum([len(b) for b in encoded], dtype=np.int64)
        self.data = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()

    @classmethod
    def _of(cls, data: np.ndarray, ends: np.ndarray) -> "PackedStrings":
        out = cls.__new__(cls)
        out.data, out.ends = data, ends
        return out

    @property
    def starts(self) -> np.ndarray:
        return np.concatenate([[0], self.ends[:-1]]).astype(np.int64) if len(self.ends) else self.ends

    @property
    def nbytes(self) -> int:
        return self.data.nbytes + self.ends.nbytes

    def __len__(self) -> int:
        return len(self.ends)

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            i = range(len(self))[index]  # negative indices, IndexError
            start = int(self.ends[i - 1]) if i else 0
            return self.data[start:int(self.ends[i])].tobytes().decode("utf-8", "surrogateescape")
        return self.take(np.arange(len(self))[index])

    def take(self, index) -> "PackedStrings":
        """The strings at the integer positions ``index`` (N,), in that order (vectorised: no str per item)."""
        index = np.asarray(index)
        if index.size and index.dtype.kind not in "iu":
            raise TypeError(f"PackedStrings.take needs integer positions, not {index.dtype} (a mask: np.flatnonzero)")
        index = index.astype(np.int64).reshape(-1)
        starts, lengths = self.starts[index], (self.ends - self.starts)[index]
        ends = np.cumsum(lengths, dtype=np.int64)
        # byte k of the result comes from data[starts[item] + (k - new start of item)]
        offsets = np.repeat(starts - (ends - lengths), lengths)
        return PackedStrings._of(self.data[np.arange(int(ends[-1]) if len(ends) else 0) + offsets], ends)

    @classmethod
    def concat(cls, parts: list["PackedStrings"]) -> "PackedStrings":
        parts = [PackedStrings(p) for p in parts]
        if not parts:
            return cls()
        shift = np.cumsum([0] + [len(p.data) for p in parts[:-1]], dtype=np.int64)
        return cls._of(np.concatenate([p.data for p in parts]),
                       np.concatenate([p.ends + s for p, s in zip(parts, shift)]).astype(np.int64))

    def __eq__(self, other) -> bool:
        if isinstance(other, PackedStrings):
            return np.array_equal(self.ends, other.ends) and np.array_equal(self.data, other.data)
        if isinstance(other, Sequence) and not isinstance(other, (str, bytes)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None

    def __repr__(self) -> str:
        return f"PackedStrings({len(self)} strings, {self.nbytes:,} bytes)"


class DataChanged(TppError):
    """A file of the data that changed or vanished since it was checked at load, found when a batch decodes it.
    In a data-loader worker (``data.num_workers``) torch re-raises it in the main process as
    ``DataChanged(<the worker's traceback>)``: the message is cut back to the worker's own, so the user reads
    which file and why, not a traceback."""

    def __init__(self, message: str):
        own = f"\n{type(self).__module__}.{type(self).__qualname__}: "
        if message.startswith("Caught ") and own in message:
            message = message.rsplit(own, 1)[1].rstrip("\n")
        super().__init__(message)


class ImageFiles:
    """Images decoded from files on demand: ``files[i]`` is uint8 (H, W[, C]), ``files[index]`` (an
    integer array) the files at those positions (still lazy). ``decode(path) -> uint8 array`` gives every
    file the same shape (``shape``: (H, W[, C]) of one image). ``paths``: :class:`PackedStrings`."""

    dtype = np.dtype(np.uint8)

    def __init__(self, paths: Iterable[str], decode: Callable[[str], np.ndarray], shape: tuple):
        self.paths, self.decode, self.image_shape = PackedStrings(paths), decode, tuple(shape)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> tuple:
        return (len(self.paths), *self.image_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.image_shape)

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            return self.decode(self.paths[index])
        return ImageFiles(self.paths[index], self.decode, self.image_shape)

    def __array__(self, dtype=None, copy=None):  # np.asarray(files): every image, decoded (small sets only)
        out = np.stack([self.decode(p) for p in self.paths]) if len(self.paths) else np.zeros(self.shape, np.uint8)
        return out if dtype is None else out.astype(dtype)
