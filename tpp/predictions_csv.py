"""``predictions.csv`` of a run: one row per evaluated image (fine-tune: val and test; evaluate: its split).

Columns: ``split``, ``index`` (the image's position in that split of the dataset), ``file`` (where the data
source reads files), then the task's own columns (:meth:`tpp.tasks.Task.prediction_rows`; classification:
``label``, ``prob_<class>`` per class, ``prediction``). Written atomically: the file is whole or absent.

The rows are made and written :data:`CHUNK` images at a time (the task's ``prediction_rows`` of a slice of
the predictions), streamed into a temporary file that is renamed into place: memory holds one chunk of rows,
never a dict per image of a 100,000-image split.
"""
from __future__ import annotations

import csv
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
    paths = getattr(split.images, "paths", None)

    def make() -> Iterator[dict]:
        for start in range(0, len(predictions), CHUNK):
            stop = min(start + CHUNK, len(predictions))
            rows = task.prediction_rows(predictions[start:stop], targets[start:stop], label_names)
            for j, row in enumerate(rows, start):
                i = j if index is None else int(index[j])
                yield {"split": split_name, "index": i, **({"file": str(paths[j])} if paths else {}), **row}

    return Rows(make)


def publish_predictions(run, rows: Iterable[dict]) -> Path | None:
    """Write the rows as ``RUN_DIR/predictions.csv``, streamed into a temporary file renamed into place
    (nothing when the task gives no rows). The columns are those of the first row; every row has them."""
    from tpp.rundir import atomic_file

    rows = iter(rows)
    first = next(rows, None)
    if first is None:
        return None
    path = run.path / NAME
    if not run.main:
        return path
    with atomic_file(path, newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(first), restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerow(first)
        writer.writerows(rows)
    return path


def read_predictions(path: str | Path) -> list[dict]:
    """The rows of a ``predictions.csv`` (as strings; a byte-order mark from a spreadsheet is dropped)."""
    from tpp.errors import TppError

    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            return list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise TppError(f"'{path}' cannot be read as a CSV ({type(exc).__name__}: {str(exc)[:120]}).") from None
