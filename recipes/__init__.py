"""Recipes: one readable file each, ``check(cfg)`` (what the recipe needs of the config alone) and
``run(cfg, run_dir) -> summary``. Installed as ``tpp.recipes``."""
from __future__ import annotations

import importlib
import os
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path

from tpp.recipes.registry import RECIPES

CONFIG_DIR = Path(__file__).parent / "configs"


class RunFinished(Exception):
    """``train.resume=auto`` on a run that already succeeded: nothing to do. ``str()`` is the one line to
    print; ``path`` is the run directory, ``summary`` its ``metrics.json`` (None if unreadable)."""

    def __init__(self, message: str, path: Path, summary: dict | None):
        super().__init__(message)
        self.path, self.summary = path, summary


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
    from tpp.errors import TppError

    path = Path(name)
    if path.is_file():
        return path
    name = str(name)
    stripped = name.split("recipes/configs/", 1)[-1]
    for candidate in (CONFIG_DIR / name, CONFIG_DIR / f"{name}.yaml", CONFIG_DIR / stripped):
        if candidate.is_file():
            return candidate
    raise TppError(f"config '{name}' is neither a file nor a shipped config. `tpp ls` lists the shipped ones.")


def run_recipe(name: str, config_path, overrides: list[str] = (), overwrite: bool = False,
               started: float | None = None) -> tuple[dict, Path]:
    """Load and check the config, run recipe ``name`` in its run directory, record the status.

    ``config_path``: a YAML file, or a mapping of the same contents (``{"train": {"max_steps": 20}, ...}``),
    checked and scoped to the recipe exactly as a file is; its relative paths are the current folder's.
    Returns (summary, run directory). What ``tpp run`` does, callable from Python (benchmarks, ``tpp.finetune``).
    Everything ``tpp validate`` checks is checked before the run directory is created. ``train.resume=auto``
    on a run that already succeeded (same config) raises :class:`RunFinished` and touches nothing; with a
    larger ``train.max_steps`` it extends that run. ``started`` (``time.time()``, default now): when the
    command began; ``wall_time_s`` in the summary and ``metrics.json`` counts from there.
    """
    import time

    from tpp.config import load_config
    from tpp.rundir import RunDir

    started = time.time() if started is None else started
    get_recipe(name)
    cfg = load_config(config_path, list(overrides), recipe=name)
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


def check_resume(path: Path, cfg) -> None:
    """What ``train.resume`` may continue, checked before anything is touched: the same config as the run in
    ``path`` except ``train.resume`` and a ``train.max_steps`` that extends it (not below the checkpoint's
    step, nor below the run's own total). A run that succeeded raises :class:`RunFinished` unless extended (also
    when ``train.resume`` names one of its own checkpoints: that re-ran its last steps and rewrote its adapter)."""
    from tpp.errors import TppError
    from tpp.run_folder import earlier_run

    if cfg.train.resume != "auto" and not (Path(cfg.train.resume) / "state.pt").is_file():
        raise TppError(f"train.resume '{cfg.train.resume}' is not a complete checkpoint folder (no state.pt); name "
                       "a checkpoints/step-N folder of the run, or use train.resume=auto.")
    origin = _run_of_checkpoint(path, cfg.train.resume)
    if origin.resolve() != path.resolve():
        refuse_run_in_the_way(path, cfg.train.resume, origin)
    step = _checkpoint_step(path, cfg.train.resume)
    if step is not None and (origin / "status.json").is_file() and not (origin / "config.yaml").is_file():
        raise TppError(f"train.resume: '{origin / 'config.yaml'}', the config of the run whose checkpoint would be "
                       "continued, is missing, so tpp cannot check that the resumed run uses the same settings (its "
                       "optimiser and schedule come from the checkpoint). Restore the file, or drop train.resume "
                       "and start over (--overwrite, or another output_dir=...).")
    check_same_config(origin, cfg.to_dict(), may_change=("train.max_steps",), defaults=_defaults(cfg))
    old = _saved_train(origin).get("max_steps")
    new = cfg.train.max_steps
    if old is not None and (new is None or new < old):
        raise TppError(f"train.max_steps: the {earlier_run(origin)} in '{origin}' was planned for {old} steps; "
                       f"resuming may extend it (train.max_steps={old} or more), not shorten it. Start a new "
                       "output_dir=... for a shorter run.")
    if new is not None and step is not None and new < step:
        raise TppError(f"train.max_steps={new} is below step {step} of the checkpoint train.resume continues from; "
                       f"set train.max_steps={step} or more.")
    if cfg.train.resume == "auto":
        refuse_finished(path, new, step)
    elif origin.resolve() == path.resolve():  # a checkpoint of the run in output_dir, named
        refuse_finished(path, new, step, resume=cfg.train.resume)


def refuse_run_in_the_way(path: Path, resume: str, origin: Path) -> None:
    """``train.resume`` names a checkpoint of the run in ``origin``, continued in ``output_dir`` ``path``: a run of
    that folder's own (finished, or with checkpoints to continue) is never written over by it (it re-ran
    ``origin``'s last steps there and replaced the finished run's adapter and metrics)."""
    from tpp.errors import TppError
    from tpp.run_folder import run_state

    state = run_state(path) if path.is_dir() else {"status": None, "checkpoints": []}
    if state["status"] == "succeeded":
        what = "a finished run"
        own = " (train.resume=auto and a larger train.max_steps extend that one)" if state["checkpoints"] else ""
    elif state["checkpoints"]:
        what = f"an interrupted run (newest checkpoint: {state['checkpoints'][-1]})"
        own = " (train.resume=auto continues that one)"
    else:
        return
    raise TppError(f"train.resume '{resume}' is a checkpoint of the run in '{origin}', but output_dir '{path}' holds "
                   f"{what} of its own, which continuing there would write over; nothing was trained. Continue "
                   f"'{origin}' into another output_dir=...{own}.")


def _run_of_checkpoint(path: Path, resume: str) -> Path:
    """The run folder whose checkpoint ``train.resume`` continues: ``path`` for auto, else the folder holding
    ``checkpoints/step-N`` (a checkpoint of another run is checked against that run's config)."""
    if resume == "auto":
        return path
    checkpoint = Path(os.path.abspath(resume))  # not resolved: OUT/checkpoints may link to a scratch disk
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else path


def _saved_train(path: Path) -> dict:
    """The ``train`` section of the run's ``config.yaml`` ({} when there is none)."""
    import yaml

    try:
        saved = yaml.safe_load((path / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return {}
    train = saved.get("train") if isinstance(saved, dict) else None
    return train if isinstance(train, dict) else {}


def _checkpoint_step(path: Path, resume: str) -> int | None:
    """The step of the checkpoint ``train.resume`` continues from (auto: the newest in ``path``), from its
    folder name ``step-N``; None when there is none."""
    import re

    folders = [Path(resume)] if resume != "auto" else (
        list((path / "checkpoints").iterdir()) if (path / "checkpoints").is_dir() else [])
    steps = [int(m.group(1)) for p in folders if (m := re.fullmatch(r"step-(\d+)", p.name))]
    return max(steps) if steps else None


def refuse_finished(path: Path, max_steps: int | None = None, step: int | None = None, resume: str = "auto") -> None:
    """Raise :class:`RunFinished` when the run in ``path`` succeeded (``status.json`` and ``metrics.json``):
    resuming it would re-run its last steps and rewrite its adapter. With ``max_steps`` beyond the steps it
    ran, it is extended instead, from its final checkpoint ``step`` (a TppError when that is not its last step),
    or from the checkpoint ``resume`` names (a path: the user's choice)."""
    import json

    from tpp.errors import TppError

    try:
        status = json.loads((path / "status.json").read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return  # no run there yet, or one that never recorded a status: resume as usual
    if status != "succeeded" or not (path / "metrics.json").is_file():
        return
    try:
        summary = json.loads((path / "metrics.json").read_text())
    except (OSError, ValueError):
        summary = None
    ran = summary.get("steps") if isinstance(summary, dict) else None
    if max_steps is not None and isinstance(ran, int) and max_steps > ran:
        if step != ran and resume == "auto":
            raise TppError(f"run '{path}' finished at step {ran} but has no checkpoint of that step "
                           f"({f'newest: step-{step}' if step else 'none'}), so it cannot be extended to "
                           f"train.max_steps={max_steps}. Start over with --overwrite (or another output_dir=...) "
                           "and train.checkpoint_every=N: a run with checkpoints also saves its last step.")
        return  # extended from its last step
    than = f" than {ran}" if isinstance(ran, int) else ""
    raise RunFinished(f"run '{path}' already finished (status.json: succeeded); train.resume={resume} has nothing to "
                      f"do (to extend it, add a larger train.max_steps{than}; to train it again, drop train.resume and "
                      "pass --overwrite, or choose another output_dir=...).", path, summary)


def _defaults(cfg) -> dict:
    """The default config of ``cfg``'s recipe and task (what a key added to tpp later meant before)."""
    from tpp.config import build_config

    from tpp.recipes.registry import RECIPES

    sections = RECIPES[cfg.recipe].sections
    chosen = {"task": cfg.task, "adapter": {"method": cfg.adapter.method}, "pretext": {"name": cfg.pretext.name},
              "data": {"source": cfg.data.source}}  # the plugins whose defaults count
    return build_config({"recipe": cfg.recipe, **{k: v for k, v in chosen.items() if k in sections}}).to_dict()


def check_same_config(path: Path, config: dict, may_change: tuple[str, ...] = (), defaults: dict | None = None) -> None:
    """A resumed run must use the interrupted run's config (``train.resume`` itself may differ, and the dotted
    keys in ``may_change``). Only the sections of ``config`` (those its recipe reads) are compared: a
    ``config.yaml`` written before configs were scoped to their recipe holds every section. A key the saved
    config lacks (added to tpp since: ``device``, ``classification.threshold`` ...) counts as its value in
    ``defaults`` (the run ran as that default does)."""
    from tpp.config import drop_other_pretexts_defaults
    from tpp.config.parse import load_yaml
    from tpp.config.paths import resolve_paths
    from tpp.errors import TppError
    from tpp.run_folder import earlier_run

    saved_file = path / "config.yaml"
    if not saved_file.is_file():
        return
    run = earlier_run(path)  # "finished run" or "interrupted run"
    try:
        saved = load_yaml(saved_file, empty_ok=True)  # read once
        if not saved:
            raise TppError(f"config file '{saved_file}' is empty (or holds only comments).")
    except OSError as exc:
        raise TppError(f"train.resume: '{saved_file}', the {run}'s config, cannot be read "
                       f"({exc.strerror or exc}). Start over with --overwrite, or restore the file.") from None
    except TppError as exc:
        raise TppError(f"train.resume: the {run}'s config is damaged: {str(exc).rstrip('.')}. Start "
                       "over with --overwrite, or restore the file.") from None
    saved = {k: v for k, v in saved.items() if k in config}
    _unrecorded_pool_data(saved, config)
    if isinstance(saved.get("pretext"), dict):  # saved before pretext options were per pretext
        drop_other_pretexts_defaults(saved["pretext"], saved["pretext"].get("name", "mae"))
    resolve_paths(saved, os.getcwd())  # saved before paths were recorded absolute: they were the current folder's

    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    old, new = flat(saved), flat(config)
    old.update(_before_split_seed(saved))
    for key, value in flat(defaults or {}).items():
        if key in new:  # (another method's, pretext's or source's options are no keys of this run)
            old.setdefault(key, value)
    skip = {"train.resume", "output_dir", *may_change}  # the run continues where its folder now is (moved, copied)
    differing = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in skip)
    if differing:
        changes = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in differing[:6])
        extend = " (only a larger train.max_steps may change)" if may_change else ""
        here = Path(str(config.get("output_dir"))).resolve() == path.resolve()  # not another run's checkpoint
        if run == "finished run" and here:  # nothing to continue: it is extended with its own config, or trained anew
            raise TppError(f"train.resume: the config differs from the finished run in '{path}' ({changes}); nothing "
                           f"was trained. A finished run is extended only with its own config{extend}; to train this "
                           "config, choose another output_dir=..., or drop train.resume and pass --overwrite to "
                           "replace the finished run.")
        raise TppError(f"train.resume: the config differs from the {run} in '{path}' ({changes}); resume "
                       f"with the same config{extend}, or start a new output_dir=... (or --overwrite without "
                       "train.resume).")


def _unrecorded_pool_data(saved: dict, config: dict) -> None:
    """A multitask run saved before its pool entries left out the data keys the recipe never reads recorded them
    (``split: test`` ...): those are dropped from the saved entries (in place), whatever their value (the run
    trained on each whole training split, so it resumes as it ran)."""
    from tpp.config.schema import MULTITASK_UNREAD_DATA_KEYS

    if config.get("recipe") != "multitask" or not isinstance(saved.get("pool"), list):
        return
    for entry in saved["pool"]:
        data = entry.get("data") if isinstance(entry, dict) else None
        for key in MULTITASK_UNREAD_DATA_KEYS if isinstance(data, dict) else ():
            data.pop(key, None)


def _before_split_seed(saved: dict) -> dict:
    """What a run saved before ``data.split_seed`` ran with: its split drawn by ``seed`` and, with fewer labels,
    validation on the whole val split (``val_label_fraction`` null meant 1 then; it means the label fraction now).
    Resuming it under today's defaults would change its split or its validation set, so these count as its
    values and the resume asks for them explicitly."""
    data = saved.get("data")
    if not isinstance(data, dict) or "split_seed" in data:
        return {}
    old = {"data.split_seed": saved.get("seed", 0)}
    fraction = data.get("label_fraction")
    if data.get("val_label_fraction") is None and isinstance(fraction, (int, float)) and fraction < 1:
        old["data.val_label_fraction"] = 1.0
    return old


def shipped_configs() -> list[Path]:
    return sorted(CONFIG_DIR.rglob("*.yaml"))
