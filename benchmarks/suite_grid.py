"""The suite's declared grid (``benchmarks/suite.yaml``), read and validated like a config.

Tasks are names (a MedMNIST set, ``busi_64`` / ``busi_128``, a ``seg/NAME.npz`` under the data root) or a
segmentation folder of images and masks (``data.source=seg_folder``) given as a mapping
``{name: NAME, folder: DIR, size: 64, group_key: COLUMN}`` (``kind: segmentation`` may be written; ``size`` and
``group_key`` are optional).

Every mistake is one ``GridError`` naming the file and the key, with close names suggested: unknown keys,
unknown tasks or approaches, one task name given two definitions (the caches keep cells by task name), an
approach a block names for a task of a kind it does not apply to (e.g. ``movl`` on a segmentation task),
fractions a protocol has no budget for, seeds that are not positive integers.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tpp.config.parse import safe_load_unique

# approach -> (family, task kinds it applies to)
APPROACHES = {
    "resnet18": ("task-specific", {"classification"}),
    "unet": ("task-specific", {"segmentation"}),
    "linear_probe": ("generalist", {"classification"}),
    "lora": ("generalist", {"classification", "segmentation"}),
    "lora+tpp_mae": ("generalist", {"classification", "segmentation"}),
    "lora+tpp_dino": ("generalist", {"classification"}),
    "lora+tpp_multitask": ("generalist", {"classification"}),  # tpp_gain_multitask.py (issue 23)
    "lora@mask_res": ("generalist", {"segmentation"}),
    "bottleneck": ("generalist", {"segmentation"}),
    "full": ("generalist", {"classification", "segmentation"}),
    # in-context prediction (benchmarks/suite_incontext.py): the cell's label subset is the context set
    "prototype": ("generalist", {"classification", "segmentation"}),
    "knn": ("generalist", {"classification", "segmentation"}),
    "incontext_learned": ("generalist", {"classification", "segmentation"}),
    # input-side adaptation (issue 24): cells of benchmarks/movl.py (suite_movl.py)
    "movl": ("generalist", {"classification"}),
    "movl+tpp": ("generalist", {"classification"}),
}
SEGMENTATION = {"busi_64": "seg/busi_64.npz", "busi_128": "seg/busi_128.npz"}
TOP_KEYS = {"backbone", "approaches", "seeds", "grid", "protocols", "published", "incontext_models"}
BLOCK_KEYS = {"tasks", "fractions", "approaches", "seeds"}
PROTOCOL_KEYS = {"classification", "segmentation", "resnet18", "incontext"}
FOLDER_KEYS = {"name", "kind", "folder", "size", "group_key"}
FOLDER_SIZE = 64  # a folder task's default mask side (busi_64's)
MODEL_KINDS = ("classification", "segmentation")  # keys of incontext_models


class GridError(ValueError):
    """A bad grid file: the message names the file and the key and says what to write instead."""


@dataclass(frozen=True)
class SegFolder:
    """How a segmentation folder task is read (``data.source=seg_folder``): images and masks resized to ``size``
    px for the cells at the masks' own resolution (``unet``, ``lora@mask_res``, the in-context cells; the other
    ViT cells read it at their input size, and score their masks there), groups from ``metadata.csv``'s
    ``group_key`` column (None: no groups)."""
    size: int = FOLDER_SIZE
    group_key: str | None = None


@dataclass(frozen=True)
class Task:
    name: str  # the cells' target: a MedMNIST name, the .npz file's stem, or a folder task's own name
    kind: str  # classification | segmentation
    file: str | None = None  # segmentation: the .npz, or the folder (images/ + masks/), relative to the data root
    folder: SegFolder | None = field(default=None, repr=False)  # set for a seg_folder task (repr: the claim key
    # of a cell, unchanged for the other tasks)


@dataclass
class Grid:
    path: Path
    backbone: str = "builtin:mae-vit-tiny-med"
    cells: list = field(default_factory=list)  # (Task, approach, fraction, seed)
    protocols: dict = field(default_factory=dict)  # overrides of the benches' protocols
    published: list = field(default_factory=list)  # report JSONs whose cells seed the caches
    incontext_models: dict = field(default_factory=dict)  # {kind: model folder of `tpp run incontext`}

    @property
    def tasks(self) -> list[Task]:
        return list(dict.fromkeys(c[0] for c in self.cells))


def _suggest(word: str, known) -> str:
    close = difflib.get_close_matches(str(word), [str(k) for k in known], n=3, cutoff=0.5)
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def _unknown_keys(data: dict, known: set, path: Path, where: str) -> None:
    for key in data:
        if key not in known:
            raise GridError(f"{path}: unknown key '{where}{key}'.{_suggest(key, known)} "
                            f"Known keys: {', '.join(sorted(known))}.")


def task_of(name, path: Path, where: str) -> Task:
    """A MedMNIST dataset by name, a known segmentation set (busi_64, busi_128), any ``seg/*.npz``, or a
    segmentation folder given as a mapping (:func:`folder_task`)."""
    from tpp.data.arrays import MEDMNIST

    if isinstance(name, dict):
        return folder_task(name, path, where)
    name = str(name)
    if name.endswith(".npz"):
        return Task(Path(name).stem, "segmentation", name)
    if name in SEGMENTATION:
        return Task(name, "segmentation", SEGMENTATION[name])
    if name in MEDMNIST:
        return Task(name, "classification")
    known = sorted(MEDMNIST) + sorted(SEGMENTATION)
    raise GridError(f"{path}: unknown task '{name}' in '{where}'.{_suggest(name, known)} Known: {', '.join(known)}, "
                    "a segmentation file 'seg/NAME.npz' under the data root, or a segmentation folder "
                    "{name: NAME, folder: DIR}.")


def folder_task(value: dict, path: Path, where: str) -> Task:
    """``{name, folder[, kind: segmentation][, size][, group_key]}``: a ``seg_folder`` task (``folder``: the
    folder holding images/ and masks/, relative to the data root or absolute; checked when the suite starts)."""
    from tpp.data.arrays import MEDMNIST

    where = f"{where}[{value.get('name', '?')}]" if isinstance(value.get("name"), str) else where
    _unknown_keys(value, FOLDER_KEYS, path, f"{where}.")
    for key in ("name", "folder"):
        if not isinstance(value.get(key), str) or not value[key].strip():
            raise GridError(f"{path}: '{where}' needs '{key}' (a non-empty string): a folder task is "
                            "{name: NAME, folder: DIR} (DIR holding images/ and masks/).")
    name = value["name"]
    if "/" in name or "\\" in name or name in (".", "..") or name.endswith(".npz"):
        raise GridError(f"{path}: '{where}.name' must be a plain name (the cells' folder), not {name!r}.")
    if name in MEDMNIST or name in SEGMENTATION:
        raise GridError(f"{path}: '{where}.name' {name!r} is the name of a shipped task (its cells would share "
                        "a cache folder); give the folder task a name of its own.")
    if value.get("kind", "segmentation") != "segmentation":
        raise GridError(f"{path}: '{where}.kind' must be 'segmentation' (a folder task is a seg_folder), "
                        f"not {value['kind']!r}.")
    size = value.get("size", FOLDER_SIZE)
    if not (isinstance(size, int) and not isinstance(size, bool) and size >= 8):
        raise GridError(f"{path}: '{where}.size' must be a mask side in pixels (an integer >= 8), not {size!r}.")
    group_key = value.get("group_key")
    if group_key is not None and not (isinstance(group_key, str) and group_key):
        raise GridError(f"{path}: '{where}.group_key' must be a metadata.csv column name, not {group_key!r}.")
    return Task(name, "segmentation", value["folder"], SegFolder(size, group_key))


def _one_definition(cells: list, path: Path) -> None:
    """A task name stands for one task: the caches keep cells by name, so two definitions would share them."""
    seen = {}
    for task in dict.fromkeys(c[0] for c in cells):
        if seen.setdefault(task.name, task) != task:
            first = seen[task.name]
            raise GridError(f"{path}: task '{task.name}' is given two definitions ({first.file!r} {first.folder} "
                            f"and {task.file!r} {task.folder}); give each its own name.")


def _approaches(value, path: Path, where: str) -> list[str]:
    if not isinstance(value, list) or not value:
        raise GridError(f"{path}: '{where}' must be a non-empty list of approaches "
                        f"({', '.join(APPROACHES)}).")
    for a in value:
        if a not in APPROACHES:
            raise GridError(f"{path}: unknown approach '{a}' in '{where}'.{_suggest(a, APPROACHES)} "
                            f"Known: {', '.join(APPROACHES)}.")
    return list(value)


def _fits(approaches: list[str], tasks: list[Task], path: Path, where: str) -> None:
    """A block's own approaches apply to each of its tasks (the top-level list is a default for every kind of
    task, so there an approach is only left out where it does not apply)."""
    for a in approaches:
        for task in tasks:
            if task.kind not in APPROACHES[a][1]:
                raise GridError(f"{path}: approach '{a}' in '{where}' does not apply to {task.kind} task "
                                f"'{task.name}' ({a} takes {' and '.join(sorted(APPROACHES[a][1]))} tasks); "
                                "give it a block of its own tasks.")


def _seeds(value, path: Path, where: str) -> dict[float, int]:
    """``{fraction: seeds}`` from a mapping, or one integer for every fraction (key -1)."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return {-1.0: value}
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            try:
                frac = float(k)
            except (TypeError, ValueError):
                raise GridError(f"{path}: '{where}' key '{k}' is no label fraction (write e.g. 0.1: 5).") from None
            if not (isinstance(v, int) and not isinstance(v, bool) and v > 0):
                raise GridError(f"{path}: '{where}.{k}' must be a positive number of seeds, not {v!r}.")
            out[frac] = v
        return out
    raise GridError(f"{path}: '{where}' must be a positive integer or a mapping fraction: seeds, not {value!r}.")


def _fractions(value, path: Path, where: str) -> list[float]:
    if not isinstance(value, list) or not value or not all(
            isinstance(f, (int, float)) and not isinstance(f, bool) and 0 < f <= 1 for f in value):
        raise GridError(f"{path}: '{where}' must be a list of label fractions in (0, 1], e.g. [0.01, 0.1, 1.0].")
    return [float(f) for f in value]


def _seed_count(seeds: dict, fraction: float, path: Path, where: str) -> int:
    if fraction in seeds:
        return seeds[fraction]
    if -1.0 in seeds:
        return seeds[-1.0]
    raise GridError(f"{path}: '{where}' gives no seed count for label fraction {fraction:g} "
                    f"(add '{fraction:g}: N').")


def load_grid(path) -> Grid:
    """Read and validate ``path`` (every label fraction works for every task: seg_gain's budget scales with
    the number of masks, 10 epochs with at least 150 steps)."""
    path = Path(path)
    try:
        data = safe_load_unique(path.read_text())  # a task or approach given twice is an error
    except OSError as exc:
        raise GridError(f"{path}: cannot read the grid file ({exc.strerror or exc}).") from None
    except yaml.YAMLError as exc:
        raise GridError(f"{path}: not valid YAML ({str(exc).splitlines()[0]}).") from None
    if not isinstance(data, dict):
        raise GridError(f"{path}: the grid must be a mapping with keys {', '.join(sorted(TOP_KEYS))}.")
    _unknown_keys(data, TOP_KEYS, path, "")
    if "grid" not in data or not isinstance(data["grid"], list) or not data["grid"]:
        raise GridError(f"{path}: 'grid' must be a non-empty list of blocks with keys tasks, fractions "
                        "(and optionally approaches, seeds).")
    approaches = _approaches(data.get("approaches"), path, "approaches")
    seeds = _seeds(data.get("seeds", 1), path, "seeds")
    protocols = data.get("protocols") or {}
    if not isinstance(protocols, dict):
        raise GridError(f"{path}: 'protocols' must be a mapping ({', '.join(sorted(PROTOCOL_KEYS))}).")
    _unknown_keys(protocols, PROTOCOL_KEYS, path, "protocols.")
    published = data.get("published") or []
    if not isinstance(published, list) or not all(isinstance(p, str) for p in published):
        raise GridError(f"{path}: 'published' must be a list of report JSON paths.")
    cells = []
    for i, block in enumerate(data["grid"]):
        where = f"grid[{i}]"
        if not isinstance(block, dict):
            raise GridError(f"{path}: '{where}' must be a mapping with keys tasks, fractions.")
        _unknown_keys(block, BLOCK_KEYS, path, f"{where}.")
        for key in ("tasks", "fractions"):
            if key not in block:
                raise GridError(f"{path}: '{where}' has no '{key}'.")
        if not isinstance(block["tasks"], list) or not block["tasks"]:
            raise GridError(f"{path}: '{where}.tasks' must be a non-empty list of task names (or folder tasks "
                            "{name: NAME, folder: DIR}).")
        tasks = [task_of(t, path, f"{where}.tasks") for t in block["tasks"]]
        fractions = _fractions(block["fractions"], path, f"{where}.fractions")
        block_approaches = approaches
        if "approaches" in block:
            block_approaches = _approaches(block["approaches"], path, f"{where}.approaches")
            _fits(block_approaches, tasks, path, f"{where}.approaches")
        block_seeds = _seeds(block["seeds"], path, f"{where}.seeds") if "seeds" in block else seeds
        for task in tasks:
            for f in fractions:
                n = _seed_count(block_seeds, f, path, f"{where}.seeds" if "seeds" in block else "seeds")
                cells += [(task, a, f, s) for s in range(n) for a in block_approaches
                          if task.kind in APPROACHES[a][1]]
    cells = list(dict.fromkeys(cells))
    _one_definition(cells, path)
    models = _incontext_models(data.get("incontext_models"), path, {c[0].kind for c in cells
                                                                    if c[1] == "incontext_learned"})
    return Grid(path, str(data.get("backbone", Grid.backbone)), cells, protocols, published, models)


def _incontext_models(value, path: Path, needed: set) -> dict:
    """``incontext_models: {classification: DIR, segmentation: DIR}`` (relative to the repository root, as
    ``published``): each kind the grid's ``incontext_learned`` cells need must be there, a folder holding a model."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise GridError(f"{path}: 'incontext_models' must be a mapping {{classification: DIR, segmentation: DIR}} "
                        "of `tpp run incontext` model folders.")
    _unknown_keys(value, set(MODEL_KINDS), path, "incontext_models.")
    for kind in sorted(needed - set(value)):
        raise GridError(f"{path}: approach 'incontext_learned' on {kind} tasks needs 'incontext_models.{kind}': "
                        f"the model/ folder of a `tpp run incontext` run with incontext.kind={kind} (or drop "
                        f"incontext_learned from the {kind} blocks).")
    out = {}
    for kind, folder in value.items():
        if not isinstance(folder, str) or not folder:
            raise GridError(f"{path}: 'incontext_models.{kind}' must be a folder path, not {folder!r}.")
        where = Path(folder) if Path(folder).is_absolute() else Path(__file__).resolve().parents[1] / folder
        if not ((where / "icl_card.json").is_file() or (where / "model" / "icl_card.json").is_file()):
            raise GridError(f"{path}: 'incontext_models.{kind}': {where} holds no in-context model (no "
                            "icl_card.json there or in its model/ folder); give the model/ folder of a "
                            "`tpp run incontext` run.")
        out[kind] = str(where)
    return out
