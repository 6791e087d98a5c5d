"""``predictions.csv`` of a run: one row per evaluated image (fine-tune: val and test; evaluate: its split).

Columns: ``split``, ``index`` (the image's position in that split of the dataset), ``file`` (where the data
source reads files), then the task's own columns (:meth:`tpp.tasks.Task.prediction_rows`; classification:
``label``, ``prob_<class>`` per class, ``prediction``). Written atomically: the file is whole or absent.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import torch

NAME = "predictions.csv"


def split_rows(task, split_name: str, split, index, predictions: torch.Tensor, targets: torch.Tensor,
               label_names: list) -> list[dict]:
    """The rows of one evaluated split; ``index`` (N,): each image's position in the dataset's split (None:
    0..N-1), ``predictions`` / ``targets`` as the task's ``metrics`` takes them."""
    rows = task.prediction_rows(predictions, targets, label_names)
    index = np.arange(len(rows)) if index is None else np.asarray(index)
    paths = getattr(split.images, "paths", None)
    return [{"split": split_name, "index": int(i), **({"file": str(paths[j])} if paths else {}), **row}
            for j, (i, row) in enumerate(zip(index, rows))]


def publish_predictions(run, rows: list[dict]) -> Path | None:
    """Write the rows as ``RUN_DIR/predictions.csv`` (atomically; nothing when the task gives no rows)."""
    from tpp.rundir import write_atomic

    if not rows:
        return None
    columns = list(dict.fromkeys(k for row in rows for k in row))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path = run.path / NAME
    if run.main:
        write_atomic(path, text.getvalue())
    return path


def read_predictions(path: str | Path) -> list[dict]:
    """The rows of a ``predictions.csv`` (as strings)."""
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))
