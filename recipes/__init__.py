"""Recipes: one readable file each, ``check(cfg)`` (what the recipe needs of the config alone) and
``run(cfg, run_dir) -> summary``. Installed as ``tpp.recipes``. This package module runs them (:func:`run_recipe`)
and checks a config before a run (:func:`preflight`); what ``train.resume`` may continue is checked in
:mod:`tpp.recipes.resume`."""
from __future__ import annotations

import importlib
import os
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path

from tpp.recipes.registry import RECIPES
from tpp.recipes.resume import check_resume

CONFIG_DIR = Path(__file__).parent / "configs"


def preflight(cfg, load_adapter: bool = False) -> list[str]:
    """What ``tpp validate`` checks beyond the config itself, before a run would start: the backbone resolves
    (local directory or hub id; offline: in the local cache), each data section's root and file exist and its
    modality is set where the source needs it, the adapter directories it names exist, and the method attaches
    to the backbone (:func:`attachable`); with ``load_adapter`` (``tpp validate``; a run loads it anyway) an
    evaluated adapter is loaded whole (the recipe's ``check_adapter``). Returns every problem found (empty: ready
    to run)."""
    from tpp.backbones import backbone_config
    from tpp.data.build import preflight as data_preflight
    from tpp.errors import TppError

    from tpp.recipes.registry import RECIPES

    recipe = RECIPES[cfg.recipe]  # what it reads decides what is checked

    def reads(dotted: str) -> bool:
        return dotted.split(".")[0] in recipe.sections and dotted not in recipe.ignores

    pool = "pool" in recipe.sections
    sections = [(f"pool[{i}]: ", e.data) for i, e in enumerate(cfg.pool)] if pool else [("", cfg.data)]
    problems = [where + p for where, data in sections for p in data_preflight(data, cfg.data.root)]

    def record(check) -> bool:
        try:
            check()
            return True
        except TppError as exc:
            problems.append(str(exc))
            return False

    backbone_ok = "backbone" not in recipe.sections or record(lambda: backbone_config(cfg.backbone.path))
    if backbone_ok and "backbone" in recipe.sections:
        backbone_ok = record(lambda: input_size_fits(cfg.backbone.input_size, cfg.backbone.path))
    if reads("adapter.path") and cfg.adapter.path:
        record(lambda: get_recipe(cfg.recipe).check_adapter(cfg, load=backbone_ok and load_adapter))
    elif "adapter" in recipe.sections:  # the method the run attaches (evaluate's: its card's)
        record(lambda: attachable(cfg, on_backbone=backbone_ok, inherits=reads("adapter.init_from")))
    return problems


def input_size_fits(size: int | None, backbone: str) -> None:
    """``backbone.input_size`` is a positive multiple of the backbone's patch size (what loading it checks), and
    the input (that size, else the checkpoint's) gives at most :data:`MAX_PATCH_TOKENS` patch tokens (an adapter
    trained at more could never be loaded)."""
    from tpp.backbones import MAX_PATCH_TOKENS, backbone_config
    from tpp.errors import TppError

    config = backbone_config(backbone)
    patch = getattr(config, "patch_size", None)
    patch = patch[0] if isinstance(patch, (list, tuple)) else patch
    what = f"backbone.input_size={size}"
    if size is None:
        native = getattr(config, "image_size", None)
        what = f"backbone '{backbone}' (image size {native}, backbone.input_size unset)"
        size = native[0] if isinstance(native, (list, tuple)) else native
        if not isinstance(size, int):
            return
    elif isinstance(patch, int) and (size < patch or size % patch):
        raise TppError(f"backbone.input_size={size} must be a positive multiple of the patch size ({patch}) of "
                       f"backbone '{backbone}'.")
    if isinstance(patch, int) and (size // patch) ** 2 > MAX_PATCH_TOKENS:
        raise TppError(f"{what} gives {(size // patch) ** 2:,} patch tokens per image (patch "
                       f"{patch}), more than the {MAX_PATCH_TOKENS:,} tpp trains, evaluates or serves at; use at most "
                       f"{int(MAX_PATCH_TOKENS ** 0.5) * patch} px.")


def attachable(cfg, on_backbone: bool = True, inherits: bool = True) -> None:
    """The configured method (with ``adapter.init_from``: the parent's card read, options merged by
    :func:`tpp.builders.inherit`) attached to the backbone's skeleton (:func:`tpp.backbones.skeleton`, meta
    device; not when ``on_backbone`` is False: the backbone does not load): a ``target_modules`` name that
    matches no layer, options the method refuses, or a parent's weights file that does not read, are found before
    the run directory exists. Only tpp's own
    errors count: anything else the run itself reports."""
    from tpp.backbones import skeleton
    from tpp.builders import effective_adapter
    from tpp.errors import TppError
    from tpp.model import attach_adapter

    method, options = effective_adapter(cfg, inherits)
    if inherits and cfg.adapter.init_from:  # the parent's tensors read and checked (a truncated file said now)
        from tpp.adapter_read import read_weights
        from tpp.builders import parent_read

        card, files, _ = parent_read(cfg)  # the bytes the run's hand-off loads
        read_weights(cfg.adapter.init_from, card, files)
    if not on_backbone:
        return
    encoder = skeleton(cfg.backbone.path)
    try:
        attach_adapter(encoder, method, options)
    except TppError:
        raise
    except Exception:  # noqa: BLE001 (a library refusing meta tensors is no problem of the config)
        pass


def get_recipe(name: str):
    from tpp.errors import TppError

    if name not in RECIPES:
        raise TppError(f"unknown recipe '{name}'. Recipes: {', '.join(RECIPES)} (`tpp ls`).")
    return importlib.import_module(f"tpp.recipes.{name}")


def refuse_problems(cfg, label: str, load_adapter: bool = False) -> None:
    """Raise one TppError listing every problem ``tpp validate`` finds (the recipe's own check of the config,
    then :func:`preflight`), ``label`` naming the config; nothing is written."""
    from tpp.errors import TppError

    get_recipe(cfg.recipe).check(cfg)
    problems = preflight(cfg, load_adapter)
    if problems:
        raise TppError(f"{label} would not run:\n" + "\n".join(f"  - {p}" for p in problems))


def check_loaded_data(cfg) -> tuple[str | None, list[str]]:
    """What ``tpp validate`` checks of the data itself for a recipe that declares ``check_data(cfg, dataset)``
    (finetune, evaluate, tpp): the data section is loaded as the run loads it (labels included unless the recipe
    says ``DATA_LABELS = False``, at the run's input size; a folder's images stay on disk) and checked as the run
    checks it right after loading, before any training: the task's needs, the positive class among the classes,
    the splits the run uses not empty, an adapter's classes and split, a parent adapter's leakage and modality.
    Nothing is downloaded: a MedMNIST file the run would fetch is reported as not loaded. Returns (what was loaded
    and what the run uses of it, or None; the problems found, loading problems included); (None, []) for other
    recipes."""
    from tpp.data.build import load_data
    from tpp.errors import TppError

    recipe = get_recipe(cfg.recipe)
    if hasattr(recipe, "check_pool_data"):
        return _checked_pool(cfg, recipe)
    if not hasattr(recipe, "check_data"):
        return None, []
    try:
        absent = medmnist_to_download(cfg.data)
        if absent:
            return f"{cfg.data.name}: not loaded ({absent} is absent; the run downloads it)", []
        dataset = load_data(cfg.data, cfg.seed, run_input_size(cfg), labels=getattr(recipe, "DATA_LABELS", True))
        used = recipe.check_data(cfg, dataset)
    except TppError as exc:
        return None, getattr(exc, "problems", [str(exc)])
    except Exception as exc:  # noqa: BLE001 (hostile files: one line, never a traceback)
        return None, [f"checking the data failed: {type(exc).__name__}: {exc}"]
    for file, reason in dataset.skipped:
        warnings.warn(f"dataset '{dataset.name}': '{file}' would be left out ({reason}; data.on_bad_file=skip)")
    classes = f", classes {list(dataset.class_names)}" if dataset.class_names else ""
    return f"{dataset.name}: " + " / ".join(f"{n} {split}" for split, n in used.items()) + f" images used{classes}", []


def _checked_pool(cfg, recipe) -> tuple[str | None, list[str]]:
    """:func:`check_loaded_data` for a recipe of a pool (multitask): every entry's data loaded and checked by the
    recipe's ``check_pool_data``; nothing downloaded (a MedMNIST file a run would fetch: not loaded)."""
    import dataclasses

    from tpp.errors import TppError

    absent = [a for e in cfg.pool if (a := medmnist_to_download(dataclasses.replace(e.data, root=e.data.root
                                                                                       or cfg.data.root)))]
    if absent:
        return f"pool: not loaded ({', '.join(absent)} absent; the run downloads them)", []
    try:
        used = recipe.check_pool_data(cfg)
    except TppError as exc:
        return None, getattr(exc, "problems", [str(exc)])
    except Exception as exc:  # noqa: BLE001 (hostile files: one line, never a traceback)
        return None, [f"checking the data failed: {type(exc).__name__}: {exc}"]
    return "pool: " + ", ".join(f"{name} {n}" for name, n in used.items()) + " training images", []


def run_input_size(cfg) -> int:
    """The side the run loads its data at (folders of mixed sizes are decoded to it, and their split hashes
    depend on it): the recipe's own ``input_size(cfg)`` where it declares one (evaluate: the adapter card's),
    else ``backbone.input_size``, else the backbone's."""
    from tpp.backbones import backbone_config

    declared = getattr(get_recipe(cfg.recipe), "input_size", None)
    return (declared and declared(cfg)) or cfg.backbone.input_size or backbone_config(cfg.backbone.path).image_size


def medmnist_to_download(data) -> str | None:
    """The MedMNIST file a run of this data section would download (absent from its root), else None."""
    from tpp.data.arrays import medmnist_candidates, resolve_root

    if data.source != "medmnist":
        return None
    candidates = medmnist_candidates(data.name, resolve_root(data.root, medmnist=True))
    return None if any(p.is_file() for p in candidates) else f"'{candidates[0]}'"


def find_config(name: str | os.PathLike) -> Path:
    """A config file as given, else a shipped config by its name under ``recipes/configs/``
    (``breast_us/mae_vit_tiny_lora_tpp.yaml``, with or without ``.yaml`` or a leading ``recipes/configs/``)."""
    from tpp.data.file_kinds import irregular
    from tpp.errors import TppError

    path = Path(name)
    if path.is_file() or irregular(path) not in (None, "folder"):  # a fifo: load_yaml names it, unopened
        return path
    name = str(name)
    stripped = name.split("recipes/configs/", 1)[-1]
    for candidate in (CONFIG_DIR / name, CONFIG_DIR / f"{name}.yaml", CONFIG_DIR / stripped):
        if candidate.is_file():
            return candidate
    raise TppError(f"config '{name}' is neither a file nor a shipped config. `tpp ls` lists the shipped ones.")


def run_recipe(name: str, config_path, overrides: list[str] = (), overwrite: bool = False,
               started: float | None = None, *, later_wins: bool = False) -> tuple[dict, Path]:
    """Load and check the config, run recipe ``name`` in its run directory, record the status.

    ``config_path``: a YAML file, or a mapping of the same contents (``{"train": {"max_steps": 20}, ...}``),
    checked and scoped to the recipe exactly as a file is; its relative paths are the current folder's.
    Returns (summary, run directory). What ``tpp run`` does, callable from Python (benchmarks, ``tpp.finetune``).
    Everything ``tpp validate`` checks is checked before the run directory is created. ``train.resume=auto``
    on a run that already succeeded (same config) raises :class:`~tpp.recipes.resume.RunFinished` and touches
    nothing; with a larger ``train.max_steps`` it extends that run. ``started`` (``time.time()``, default now): when
    the command began; ``wall_time_s`` in the summary and ``metrics.json`` counts from there. A key two overrides
    set is refused (``later_wins=True``: the later one wins; :func:`tpp.config.load_config`).
    """
    import time

    from tpp.config import load_config
    from tpp.rundir import RunDir

    started = time.time() if started is None else started
    get_recipe(name)
    cfg = load_config(config_path, list(overrides), recipe=name, later_wins=later_wins)
    refuse_overwrite_with_resume(cfg, overwrite)
    label = "the config dict" if isinstance(config_path, Mapping) else str(config_path)
    from tpp.rundir import refuse_if_in_use

    if int(os.environ.get("RANK", "0")) == 0:  # (the other processes of a launch never write it)
        refuse_if_in_use(Path(cfg.output_dir))  # a run still going there: said first, not after the data checks
    refuse_problems(cfg, label)  # before the run directory exists
    resuming = bool(cfg.train.resume)
    if resuming:
        check_resume(Path(cfg.output_dir), cfg)
    main = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 writes the run directory
    run = RunDir(cfg.output_dir, overwrite=overwrite and not resuming, resume=resuming, main=main, started=started)
    try:
        return _run_in(run, cfg, name)
    finally:
        run.release()  # the folder's lock, whatever happened


def refuse_overwrite_with_resume(cfg, overwrite: bool) -> None:
    """``--overwrite`` deletes the run in ``output_dir``, ``train.resume`` continues it: given together, one of
    them was ignored without a word (--overwrite); a TppError naming both."""
    from tpp.errors import TppError

    if overwrite and cfg.train.resume:
        raise TppError(f"train.resume={cfg.train.resume} with --overwrite: train.resume continues the run in "
                       f"'{cfg.output_dir}', starting over with --overwrite deletes it; give one of them.")


def _run_in(run, cfg, name: str) -> tuple[dict, Path]:
    """:func:`run_recipe`'s run in its locked folder: failed, with what ``--overwrite`` set aside or a finished
    run's status put back, on any error; succeeded otherwise."""
    from tpp.errors import TppError

    try:
        run.write_config(cfg.to_dict())  # the sections the recipe reads, defaults filled in
        summary = stamp_wall_time(run, get_recipe(name).run(cfg, run))
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}"
        try:  # a full disk may refuse these too: the original error is the one to report
            run.status("failed", error=error)
            run.log(event="failed", error=error)
        except Exception:
            pass
        try:
            note = run.restore_overwritten() or run.restore_finished()  # --overwrite deletes the previous run
        except (OSError, TppError) as restore_error:  # only once this one succeeds; a refused extension of a
            note = f"the previous contents could not be put back ({restore_error})"  # finished run leaves it so
        if note:
            print(f"[tpp] {note}", file=sys.stderr, flush=True)
        raise
    run.succeeded()
    return summary, run.path


def stamp_wall_time(run, summary: dict) -> dict:
    """``summary`` with ``wall_time_s``: seconds since the command began (config, backbone and data loading
    included), also written into the run's ``metrics.json``: what a recipe measured itself is replaced."""
    import json

    summary = dict(summary, wall_time_s=round(run.elapsed(), 3))
    metrics = run.path / "metrics.json"
    if run.main and metrics.is_file():
        run.publish_json("metrics.json", dict(json.loads(metrics.read_text()), wall_time_s=summary["wall_time_s"]))
    return summary


def shipped_configs() -> list[Path]:
    return sorted(CONFIG_DIR.rglob("*.yaml"))
