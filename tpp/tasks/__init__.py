"""Task kinds (what a head predicts) and their registry: one file + one registration each.

A task file subclasses :class:`Task` and calls :func:`register`. The task answers every question the
recipes, the adapter card, the serving bank, the HTTP service, ``tpp predict`` and ``tpp compare`` would
otherwise answer with an ``if task == ...``: its head, loss, predictions, metrics, the validation score
used for selection, its card entry, what it chooses on the validation split (classification: the decision
threshold), its ``predictions.csv`` rows, its report lines and its serving output. :func:`task_of_card`
returns the task as a card sets it up (:meth:`Task.for_card`), so evaluate, ``tpp predict`` and
``tpp serve`` decide as the fine-tune chose. Its options (a dataclass,
help text per field, checks in ``__post_init__``) are the config section named after the task
(``segmentation: {dice_weight: 2}``).

Shapes: B images, C channels, S input pixels, N patch tokens of width D, K classes. A head's
``forward(patch_tokens (B, N, D), grid (h, w), pixel_values (B, C, S, S)) -> logits``.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from tpp.errors import ConfigError, TppError
from tpp.registry import import_submodules


@dataclass
class NoOptions:
    """A task without options of its own."""


class Task:
    """Base of every task kind. Subclasses set the class attributes and override the methods."""
    name: str = ""
    summary: str = ""
    options_cls: type = NoOptions
    head_noun: str = "task head"  # how logs name the head ("decoder" ...)
    main_metric: str = ""  # key of a split's metrics that says "this split was scored by this task"
    # ``tpp compare`` columns this task fills: (key, header or None for CSV only, format spec); a metric
    # ``k`` is printed with its interval when ``k_ci95_low`` / ``k_ci95_high`` are filled too
    columns: tuple = ()

    # -- config and data -------------------------------------------------------------------------
    def check_config(self, cfg) -> None:
        """What the task needs of the config alone (ConfigError naming the key)."""

    def check_data(self, dataset, options=None) -> None:
        """What the task needs of the loaded data, and of its section ``options`` on that data when given
        (TppError naming the dataset or key)."""

    def targets(self, split) -> torch.Tensor:
        """Training / evaluation targets of a split (labels (N,), masks (N, h, w) ...)."""
        raise NotImplementedError

    # -- model -----------------------------------------------------------------------------------
    def build_head(self, options, info, dataset) -> nn.Module:
        """A fresh head for ``dataset`` on a backbone described by ``info``."""
        raise NotImplementedError

    def card_entry(self, options, dataset, info, targets: torch.Tensor) -> dict:
        """The card's ``task`` entry: ``type`` (this task's name), ``label_names``, and what rebuilds the head."""
        raise NotImplementedError

    def head_from_card(self, entry: dict, hidden_size: int, channels: int) -> nn.Module:
        """An empty head shaped as the card's ``task`` entry says (its tensors are loaded afterwards)."""
        raise NotImplementedError

    # -- training and evaluation -----------------------------------------------------------------
    def augment(self, images: torch.Tensor, targets: torch.Tensor, options, hflip: bool, frame: int = 0):
        """Training augmentation of a batch -> (images, targets). ``frame``: border pixels of the images that hold
        a padding visual prompt, not the image (a geometric augmentation must leave them in place)."""
        return images, targets

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, options) -> torch.Tensor:
        raise NotImplementedError

    def predictions(self, logits: torch.Tensor, entry: dict, size: tuple | None = None) -> torch.Tensor:
        """Logits -> what the task outputs per image (probabilities (B, K), masks (B, h, w) uint8 ...);
        ``size``: the targets' spatial size where it may differ from the card's."""
        raise NotImplementedError

    def output_shape(self, entry: dict) -> tuple:
        """Shape of one image's predictions under the card's ``task`` entry."""
        raise NotImplementedError

    def score(self, predictions: torch.Tensor, targets: torch.Tensor, dataset) -> tuple[float, dict]:
        """Validation score for best-step selection (higher is better) and the values to log."""
        raise NotImplementedError

    def metrics(self, predictions: torch.Tensor, targets: torch.Tensor, dataset, seed: int) -> dict:
        """A split's full metrics (JSON-ready); holds ``main_metric`` and ``n``."""
        raise NotImplementedError

    def scorer(self, dataset, seed: int) -> "Scorer":
        """A split's :meth:`metrics` fed batch by batch (``add(predictions, targets)``, then ``result()``), so that
        evaluate scores predictions as they are made. Default: :class:`HeldScorer` (the batches held, scored whole
        at the end: classification's AUROC and bootstrap need every probability); a task whose metrics sum over
        images (segmentation) scores each batch and lets it go."""
        return HeldScorer(self, dataset, seed)

    def card_metrics(self, summary: dict) -> dict:
        """What the card records of a fine-tune's metrics (a split without images: None)."""
        return {f"{k}_{self.main_metric}": summary[k].get(self.main_metric) for k in ("val", "test")}

    def definitions(self) -> dict:
        """Short definitions of the reported numbers (``metrics.json``'s ``definitions``; docs/metrics.md)."""
        return {}

    def summary_extras(self, model, head_parameters: int) -> dict:
        """Task-specific entries of a fine-tune's ``metrics.json``."""
        return {}

    def publish_extras(self, run, options, split, predictions: torch.Tensor) -> None:
        """Files next to the adapter people would rather look at (overlays ...)."""

    # -- decisions and per-image outputs ---------------------------------------------------------
    def choose_on_validation(self, options, entry: dict, predictions: torch.Tensor, targets: torch.Tensor) -> dict:
        """The card's ``task`` entry completed with what is chosen on the validation split's predictions
        (classification: the decision threshold). Default: the entry unchanged."""
        return entry

    def for_card(self, entry: dict) -> "Task":
        """The task as one card's ``task`` entry sets it up (classification: its decision threshold and
        bootstrap draws); its ``metrics`` and serving output then follow the card. Default: the task itself."""
        return self

    def decision_line(self) -> str | None:
        """How this (card-bound) task turns outputs into decisions, for logs and reports (None: nothing to say)."""
        return None

    def prediction_rows(self, predictions: torch.Tensor, targets: torch.Tensor, label_names: list) -> list[dict]:
        """``predictions.csv`` columns of each image after its split, index and file (classification: label,
        probability per class, prediction). Default: [] (the task writes no per-image rows)."""
        return []

    def report(self, summary: dict) -> str:
        """The line ``tpp run finetune`` prints."""
        raise NotImplementedError

    def split_line(self, split: str, result: dict) -> str:
        """One evaluated split as a line of ``tpp run evaluate``."""
        raise NotImplementedError

    def compare_values(self, result: dict) -> dict:
        """``tpp compare`` column values of one split's results."""
        return {self.main_metric: result.get(self.main_metric)}

    # -- serving ---------------------------------------------------------------------------------
    def check_entry(self, entry: dict) -> list[str]:
        """Problems of a (possibly forged) card's ``task`` entry, before anything is built from it."""
        return []

    def entry_frame(self, entry: dict) -> int | None:
        """The input frame (px) the card's head crops from what it outputs (a padding visual prompt's border),
        None for a head that does not crop; checked against the card's input rule when the card is."""
        return None

    def check_head(self, entry: dict, head_state: dict) -> str | None:
        """Why the head tensors do not fit the card's ``task`` entry (None: they fit)."""
        return None

    def per_image(self, output: torch.Tensor, image: np.ndarray):
        """One image's prediction as a service returns it (``image``: the array as uploaded)."""
        raise NotImplementedError

    def json_entry(self, result, label_names: list) -> dict:
        """The HTTP response entry of one image (next to ``file``)."""
        raise NotImplementedError

    def csv_entry(self, result, label_names: list, stem: str) -> tuple[dict, dict]:
        """``tpp predict``: (CSV columns of one image, {file name: uint8 array} to write beside the CSV)."""
        raise NotImplementedError


class Scorer:
    """A split's metrics from its batches: ``add(predictions (B, ...), targets (B, ...))`` in image order, then
    ``result()``: what the task's ``metrics`` gives for the whole split."""

    def add(self, predictions: torch.Tensor, targets: torch.Tensor) -> None:
        raise NotImplementedError

    def result(self) -> dict:
        raise NotImplementedError


class HeldScorer(Scorer):
    """Holds the batches (concatenated at the end) and scores them with ``task.metrics``: the split's predictions
    and targets are held whole, as small as they are for classification ((N, K) probabilities, (N,) labels)."""

    def __init__(self, task: Task, dataset, seed: int):
        self.task, self.dataset, self.seed = task, dataset, seed
        self.predictions: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []

    def add(self, predictions, targets):
        self.predictions.append(predictions)
        self.targets.append(targets)

    def result(self):
        """``task.metrics`` of every batch added. None added (a split of no images) is a TppError naming the task,
        not ``torch.cat([])``'s ValueError: there is nothing to score."""
        if not self.predictions:
            raise TppError(f"task '{self.task.name}': no predictions were added to score (a split of no images?); "
                           "evaluate a split that holds images.")
        return self.task.metrics(torch.cat(self.predictions), torch.cat(self.targets), self.dataset, self.seed)


_TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    """Add a task to the registry; the name must be new."""
    if not task.name or task.name in _TASKS:
        raise ValueError(f"task '{task.name}' is registered twice (or has no name)")
    _TASKS[task.name] = task
    return task


def get_task(name) -> Task:
    """A task by name, with a config error listing the known ones."""
    _load_builtin()
    if not isinstance(name, str) or name not in _TASKS:
        raise ConfigError(f"unknown task {str(name)[:60]!r}. Known tasks: {', '.join(sorted(_TASKS))}.")
    return _TASKS[name]


def all_tasks() -> list[Task]:
    _load_builtin()
    return [_TASKS[k] for k in sorted(_TASKS)]


def task_of_card(card: dict) -> Task | None:
    """The registered task of an adapter card's ``task`` entry, set up by that entry (:meth:`Task.for_card`:
    classification decides with the card's threshold). None: no head, e.g. a TPP adapter."""
    _load_builtin()
    entry = card.get("task")
    task = _TASKS.get(entry.get("type")) if isinstance(entry, dict) else None
    return task.for_card(entry) if task is not None else None


def task_of_result(result) -> Task | None:
    """The task whose main metric a split's results hold (``tpp compare``, reports); ``metrics.json``'s
    ``definitions`` (the same keys, text values) is no split."""
    if not isinstance(result, dict):
        return None
    return next((t for t in all_tasks() if t.main_metric and t.main_metric in result
                 and not isinstance(result[t.main_metric], str)), None)


@functools.cache  # once per process, not a directory listing per lookup
def _load_builtin() -> None:
    """Import every module of this package: each task registers itself, so adding one is one file."""
    import_submodules(__name__, __path__)
