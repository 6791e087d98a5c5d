"""``predictions.csv`` of a run: one row per evaluated image (fine-tune: val and test; evaluate: its split).

Columns: ``split``, ``index`` (the image's position in that split of the dataset), ``file`` (where the data
source reads files), then the task's own columns (:meth:`tpp.tasks.Task.prediction_rows`; classification:
``label``, ``prob_<class>`` per class, ``prediction``). Written atomically: the file is whole or absent.

The rows are made and written :data:`CHUNK` images at a time (the task's ``prediction_rows`` of a slice of
the predictions), streamed into a temporary file that is renamed into place: memory holds one chunk of rows,
never a dict per image of a 100,000-image split. Evaluate writes each predicted batch's rows as it comes
(:class:`PredictionsWriter`, :func:`batch_rows`), so it never holds the split's predictions either.
"""
from __future__ import annotations

import contextlib
import csv
import io
import itertools
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch

NAME = "predictions.csv"
CHUNK = 1024  # images whose rows exist at once


class Rows:
    """Prediction rows made lazily, chunk by chunk; ``rows_a + rows_b`` is both, in order. Iterate once or
    many times: each iteration makes the rows again from the (compact) predictions."""

    def __init__(self, *parts: Callable[[], Iterator[dict]]):
        self.parts = parts

    def __iter__(self) -> Iterator[dict]:
        return itertools.chain.from_iterable(part() for part in self.parts)

    def __add__(self, other: "Rows") -> "Rows":
        return Rows(*self.parts, *other.parts)


def split_rows(task, split_name: str, split, index, predictions: torch.Tensor, targets: torch.Tensor,
               label_names: list) -> Rows:
    """The rows of one evaluated split (made when iterated, :data:`CHUNK` at a time); ``index`` (N,): each
    image's position in the dataset's split (None: 0..N-1), ``predictions`` / ``targets`` (N, ...) as the
    task's ``metrics`` takes them."""
    rows = batch_rows(task, split_name, split, index, label_names)

    def make() -> Iterator[dict]:
        for start in range(0, len(predictions), CHUNK):
            stop = min(start + CHUNK, len(predictions))
            yield from rows(start, predictions[start:stop], targets[start:stop])

    return Rows(make)


def batch_rows(task, split_name: str, split, index, label_names: list) -> Callable[..., Iterator[dict]]:
    """``rows(start, predictions, targets)``: the rows of the split's images ``start .. start + B - 1`` from their
    predictions / targets (B, ...), the same rows :func:`split_rows` makes of them (each row is one image's)."""
    paths = getattr(split.images, "paths", None)

    def rows(start: int, predictions: torch.Tensor, targets: torch.Tensor) -> Iterator[dict]:
        for j, row in enumerate(task.prediction_rows(predictions, targets, label_names), start):
            i = j if index is None else int(index[j])
            yield {"split": split_name, "index": i, **({"file": str(paths[j])} if paths else {}), **row}

    return rows


def publish_predictions(run, rows: Iterable[dict]) -> Path | None:
    """Write the rows as ``RUN_DIR/predictions.csv``, streamed into a temporary file renamed into place
    (nothing when the task gives no rows). The columns are those of the first row; every row has them."""
    with PredictionsWriter(run) as writer:
        writer.write(rows)
    return writer.path


class PredictionsWriter:
    """``RUN_DIR/predictions.csv`` written as rows come (``write(rows)``, any number of times, e.g. once per
    predicted batch) into a temporary file that is renamed into place when the ``with`` block ends without an
    error: on failure the temporary file is removed and no ``predictions.csv`` is left (nor one half-written).
    The columns are those of the first row; no file when no row came. ``path``: the file (None without rows);
    a process other than the main one writes nothing."""

    def __init__(self, run):
        self.run, self.path = run, None
        self._stack = contextlib.ExitStack()
        self._writer: csv.DictWriter | None = None

    def __enter__(self) -> "PredictionsWriter":
        return self

    def __exit__(self, *exc) -> bool:
        return self._stack.__exit__(*exc)  # the temporary file renamed into place, or removed on an error

    def write(self, rows: Iterable[dict]) -> None:
        for row in rows:
            if self.path is None:
                self.path = self._open(row)
            if self._writer is not None:
                self._writer.writerow(row)

    def _open(self, first: dict) -> Path:
        from tpp.safe_write import atomic_file

        path = self.run.path / NAME
        if self.run.main:
            fh = self._stack.enter_context(atomic_file(path, newline=""))
            self._writer = csv.DictWriter(fh, fieldnames=list(first), restval="", lineterminator="\n")
            self._writer.writeheader()
        return path


def read_predictions(path: str | Path) -> list[dict]:
    """The rows of a ``predictions.csv`` (as strings; a byte-order mark from a spreadsheet is dropped). A fifo (or
    another file that is no regular one) is a TppError naming it, said at once (never waited on)."""
    from tpp.data.file_kinds import open_regular
    from tpp.errors import TppError

    try:
        with open_regular(path, TppError) as raw, io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as fh:
            return list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise TppError(f"'{path}' cannot be read as a CSV ({type(exc).__name__}: {str(exc)[:120]}).") from None
