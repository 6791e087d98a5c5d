"""``tpp compare``: one results table over finished runs of any recipe.

Each run folder is read as it is: ``config.yaml`` (which recipe wrote it), ``status.json``, ``metrics.json``
and, where there is one, the adapter card. The recipe module's ``compare_row(run)`` gives the run's row (a
new recipe brings its own); the registered task whose main metric a split's metrics hold (``auroc``, ``dice``
...) fills its own columns, so a classification and a segmentation fine-tune (or their evaluations) sit in the
same table. A
value a run does not have is ``None`` (``-`` in the table, an empty cell in the CSV); a column no run has is
left out of the table, while the CSV always has every column, with raw numbers.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from tpp.errors import TppError

MISSING = "-"


@dataclass(frozen=True)
class Column:
    key: str  # CSV header and row key
    header: str | None  # printed header; None: CSV only
    fmt: Callable[[object, dict], str] = lambda v, row: str(v)
    always: bool = False  # printed even when no run has a value


def _number(spec: str, suffix: str = "") -> Callable[[object, dict], str]:
    def fmt(value, row):
        return f"{value:{spec}}{suffix}" if isinstance(value, (int, float)) else str(value)
    return fmt


def _with_interval(key: str, spec: str) -> Callable[[object, dict], str]:
    """A task metric, followed by its 95% interval when the row has ``<key>_ci95_low`` / ``_high``."""
    def fmt(value, row):
        text = _number(spec)(value, row)
        low, high = row.get(f"{key}_ci95_low"), row.get(f"{key}_ci95_high")
        if low is None or high is None:
            return text
        return f"{text} [{_number(spec)(low, row)}, {_number(spec)(high, row)}]"
    return fmt


def _size(value, row) -> str:
    if not isinstance(value, (int, float)):
        return str(value)
    return f"{value / 1024:.0f} KiB" if value < 1024 ** 2 else f"{value / 1024 ** 2:.1f} MiB"


def _task_columns() -> list[Column]:
    """Each registered task's columns (a header of None: CSV only), a metric followed by its interval where
    the row has one."""
    from tpp.tasks import all_tasks

    return [Column(key, header, _with_interval(key, spec))
            for task in all_tasks() for key, header, spec in task.columns]


HEAD_COLUMNS = [
    Column("run", "run", always=True),
    Column("path", None),
    Column("recipe", "recipe", always=True),
    Column("task", "task", always=True),
    Column("method", "method", always=True),
    Column("data", "data"),
    Column("label_fraction", "labels", _number("g")),
    Column("adapter_init", "adapter init"),
    Column("split", "split"),
]
TAIL_COLUMNS = [
    Column("pretext_loss", "pretext loss", _number(".4f")),
    Column("trainable_parameters", "trainable", _number(","), always=True),
    Column("saved_bytes", "saved", _size, always=True),
    Column("wall_time_s", "wall time", _number(".0f", " s"), always=True),
]


def columns() -> list[Column]:
    """Every column in order: the run's description, each task's metrics, sizes and time."""
    return HEAD_COLUMNS + _task_columns() + TAIL_COLUMNS


@dataclass
class Run:
    path: Path
    recipe: str
    config: dict
    metrics: dict

    def cfg(self, *keys):
        """``config.yaml`` value at ``keys`` (None when absent)."""
        return dig(self.config, *keys)


def dig(obj, *keys):
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _read_text(path: Path) -> str:
    """A run file's text; a TppError naming it when it is a fifo, a device or a folder (said at once: a plain
    read of a fifo waits for a writer for ever), the ``OSError`` when it is absent or cannot be read, the
    ``UnicodeDecodeError`` when it is no UTF-8."""
    from tpp.data.file_kinds import read_whole_regular

    return read_whole_regular(path, TppError).decode("utf-8")


def _read_json(path: Path):
    """A JSON file, or None when absent or unreadable (optional files: cards); one that is no regular file (a
    fifo) is a TppError naming it."""
    try:
        return json.loads(_read_text(path))
    except (OSError, ValueError):  # UnicodeDecodeError is a ValueError
        return None


def card_of(adapter_dir) -> dict:
    """The adapter card in ``adapter_dir`` ({} when absent, unreadable, or ``adapter_dir`` is no path)."""
    card = _read_json(Path(adapter_dir) / "tpp_card.json") if isinstance(adapter_dir, (str, Path)) else None
    return card if isinstance(card, dict) else {}


def dir_size_or_none(path):
    """Bytes under a folder, or None when ``path`` is not one."""
    from tpp.adapter_dir import dir_size

    return dir_size(Path(path)) if path and Path(path).is_dir() else None


def _log_time(path: Path):
    """Seconds since the start at the run's last log record (runs whose metrics record no wall time)."""
    try:
        lines = _read_text(path / "log.jsonl").splitlines()
        return json.loads(lines[-1]).get("time") if lines else None
    except (OSError, ValueError, AttributeError):  # a fifo: the TppError naming it
        return None


def task_metrics(result) -> dict:
    """The task's columns of one split's results: the task whose main metric they hold fills them."""
    from tpp.tasks import task_of_result

    task = task_of_result(result)
    return {"task": task.name, **task.compare_values(result)} if task else {}


def init_label(card: dict, init_from) -> str:
    """How the adapter started: random, or from a parent (its stage: TPP named by its pretext, "TPP (mae)",
    "TPP (dino)", any registered pretext's name; "TPP (pretext not recorded)" for a card without one; or a
    fine-tune)."""
    parent = card.get("parent") if card else None
    if isinstance(parent, dict):
        if parent.get("stage") == "tpp":
            pretext = dig(parent, "pretext", "name")
            named = isinstance(pretext, str) and pretext.strip()
            return f"TPP ({pretext.strip()[:40]})" if named else "TPP (pretext not recorded)"
        return str(parent.get("stage") or "parent")
    if card:
        return "random"
    return "parent" if init_from else "random"


def _infer_recipe(path: Path, metrics: dict) -> str | None:
    """The recipe of a run whose config.yaml does not name it: from what it left behind."""
    from tpp.recipes.registry import RECIPES

    stage = card_of(path / "adapter").get("stage")
    if isinstance(stage, str) and stage in RECIPES:
        return stage
    if (path / "backbone").is_dir():
        return "pretrain_backbone"
    if isinstance(metrics.get("adapter"), dict):
        return "evaluate"
    return None


def row_of(recipe: str) -> Callable[[Run], dict]:
    """The recipe module's ``compare_row(run) -> dict``: its columns of the table (column key -> raw value)."""
    from tpp.recipes import get_recipe

    row = getattr(get_recipe(recipe), "compare_row", None)
    if row is None:
        raise TppError(f"recipe {recipe!r} defines no compare_row(run), so tpp compare cannot show its runs")
    return row


def load_run(path: Path) -> Run:
    """Read a finished run folder; a TppError sentence naming it otherwise."""
    if not path.exists():
        raise TppError(f"'{path}' does not exist")
    if not path.is_dir():
        raise TppError(f"'{path}' is not a folder (a run folder is the output_dir of `tpp run`)")
    status = _read_json(path / "status.json")
    state = status.get("status") if isinstance(status, dict) else None
    if state is not None and state != "succeeded":
        error = f" ({str(status['error']).rstrip('.')})" if status.get("error") else ""
        hint = "" if error else "; it is still running, or it was killed"
        raise TppError(f"'{path}' is not a finished run: its status.json says '{state}'{error}{hint}")
    if not (path / "metrics.json").exists():  # a fifo exists (and is named by _read_text), though no file
        if not (path / "config.yaml").exists():
            raise TppError(f"'{path}' has neither metrics.json nor config.yaml: it is not a run folder")
        raise TppError(f"'{path}' has no metrics.json: the run did not finish")
    try:
        metrics = json.loads(_read_text(path / "metrics.json"))
    except (OSError, ValueError) as exc:
        raise TppError(f"'{path / 'metrics.json'}' cannot be read: {exc}") from None
    if not isinstance(metrics, dict):
        raise TppError(f"'{path / 'metrics.json'}' does not hold a run's metrics")
    try:
        config = yaml.safe_load(_read_text(path / "config.yaml")) if (path / "config.yaml").exists() else {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise TppError(f"'{path / 'config.yaml'}' cannot be read: {str(exc)[:200]}") from None
    config = config if isinstance(config, dict) else {}
    recipe = config.get("recipe") if isinstance(config.get("recipe"), str) else None
    recipe = recipe or _infer_recipe(path, metrics)
    from tpp.recipes.registry import RECIPES

    if recipe not in RECIPES:
        raise TppError(f"'{path}' was written by recipe {recipe!r}, which tpp compare does not know "
                       f"(it knows {', '.join(RECIPES)})")
    return Run(path, recipe, config, metrics)


def compare_runs(paths: list) -> list[dict]:
    """One row (column key -> raw value or None) per run folder. Every folder that is not a finished run is
    named in one TppError."""
    runs, problems = [], []
    for p in paths:
        try:
            runs.append(load_run(Path(p)))
        except TppError as exc:
            problems.append(str(exc))
    if problems:
        lead = "" if len(paths) == 1 else f"{len(problems)} of the {len(paths)} folders given cannot be compared: "
        said = "; ".join(p.rstrip(".") for p in problems)
        raise TppError(f"{lead}{said}. tpp compare takes the run folders (output_dir) of runs that succeeded "
                       "(status.json 'succeeded', with metrics.json).")
    names = [run.path.name or str(run.path) for run in runs]
    rows = []
    for run, name, given in zip(runs, names, paths):
        row = dict.fromkeys(c.key for c in columns())
        row.update(row_of(run.recipe)(run))
        row.update(run=name if names.count(name) == 1 else str(given), path=str(given), recipe=run.recipe)
        if row["wall_time_s"] is None:
            row["wall_time_s"] = run.metrics.get("wall_time_s", _log_time(run.path))
        rows.append(row)
    return rows


def table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Header and formatted cells: the printed columns some run has a value in (and the ``always`` ones)."""
    cols = [c for c in columns() if c.header and (c.always or any(r.get(c.key) is not None for r in rows))]
    cells = [[MISSING if r.get(c.key) is None else c.fmt(r[c.key], r) for c in cols] for r in rows]
    return [c.header for c in cols], cells


def csv_text(rows: list[dict]) -> str:
    """Every column, raw values (floats at full precision), empty where a run has no value."""
    out, cols = io.StringIO(), columns()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([c.key for c in cols])
    for r in rows:
        writer.writerow(["" if r.get(c.key) is None else r[c.key] for c in cols])
    return out.getvalue()
