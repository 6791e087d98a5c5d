"""Recipes: one readable file each, ``check(cfg)`` (what the recipe needs of the config alone) and
``run(cfg, run_dir) -> summary``. Installed as ``tpp.recipes``."""
from __future__ import annotations

import importlib
import os
from pathlib import Path

from tpp.recipes.registry import RECIPES

CONFIG_DIR = Path(__file__).parent / "configs"


class RunFinished(Exception):
    """``train.resume=auto`` on a run that already succeeded: nothing to do. ``str()`` is the one line to
    print; ``path`` is the run directory, ``summary`` its ``metrics.json`` (None if unreadable)."""

    def __init__(self, message: str, path: Path, summary: dict | None):
        super().__init__(message)
        self.path, self.summary = path, summary


def preflight(cfg) -> list[str]:
    """What ``tpp validate`` checks beyond the config itself, before a run would start: the backbone resolves
    (local directory or hub id; offline: in the local cache), each data section's root and file exist and its
    modality is set where the source needs it, and the adapter directories it names exist. Returns every
    problem found (empty: ready to run)."""
    from tpp.adapter_dir import read_card
    from tpp.backbones import backbone_config
    from tpp.data.build import preflight as data_preflight
    from tpp.errors import TppError

    from tpp.recipes.registry import RECIPES

    recipe = RECIPES[cfg.recipe]  # what it reads decides what is checked

    def reads(dotted: str) -> bool:
        return dotted.split(".")[0] in recipe.sections and dotted not in recipe.ignores

    pool = "pool" in recipe.sections
    problems = [p for data in ([e.data for e in cfg.pool] if pool else [cfg.data])
                for p in data_preflight(data, cfg.data.root)]
    checks = [lambda: backbone_config(cfg.backbone.path)] if "backbone" in recipe.sections else []
    if reads("adapter.path") and cfg.adapter.path:
        checks.append(lambda: read_card(cfg.adapter.path, kinds=("adapter", "full_model")))
    if reads("adapter.init_from") and cfg.adapter.init_from:
        checks.append(lambda: read_card(cfg.adapter.init_from))
    for check in checks:
        try:
            check()
        except TppError as exc:
            problems.append(str(exc))
    return problems


def get_recipe(name: str):
    from tpp.errors import TppError

    if name not in RECIPES:
        raise TppError(f"unknown recipe '{name}'. Recipes: {', '.join(RECIPES)} (`tpp ls`).")
    return importlib.import_module(f"tpp.recipes.{name}")


def run_recipe(name: str, config_path, overrides: list[str] = (), overwrite: bool = False) -> tuple[dict, Path]:
    """Load and check the config, run recipe ``name`` in its run directory, record the status.

    Returns (summary, run directory). What ``tpp run`` does, callable from Python (benchmarks).
    ``train.resume=auto`` on a run that already succeeded (same config) raises :class:`RunFinished`
    and touches nothing.
    """
    from tpp.config import load_config
    from tpp.rundir import RunDir

    recipe = get_recipe(name)
    cfg = load_config(config_path, list(overrides), recipe=name)
    recipe.check(cfg)  # before the run directory exists
    resuming = bool(cfg.train.resume)
    if resuming:
        check_same_config(Path(cfg.output_dir), cfg.to_dict())
        if cfg.train.resume == "auto":
            refuse_finished(Path(cfg.output_dir))
    main = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 writes the run directory
    run = RunDir(cfg.output_dir, overwrite=overwrite and not resuming, resume=resuming, main=main)
    try:
        run.write_config(cfg.to_dict())  # the sections the recipe reads, defaults filled in
        summary = recipe.run(cfg, run)
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}"
        try:  # a full disk may refuse these too: the original error is the one to report
            run.status("failed", error=error)
            run.log(event="failed", error=error)
        except Exception:
            pass
        raise
    run.status("succeeded")
    return summary, run.path


def refuse_finished(path: Path) -> None:
    """Raise :class:`RunFinished` when the run in ``path`` succeeded (``status.json`` and ``metrics.json``):
    resuming it would re-run its last steps and rewrite its adapter."""
    import json

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
    raise RunFinished(f"run '{path}' already finished (status.json: succeeded); train.resume=auto has nothing to do "
                      "(to train it again, drop train.resume and pass --overwrite).", path, summary)


def check_same_config(path: Path, config: dict) -> None:
    """A resumed run must use the interrupted run's config (``train.resume`` itself may differ). Only the
    sections of ``config`` (those its recipe reads) are compared: a ``config.yaml`` written before configs
    were scoped to their recipe holds every section."""
    import yaml

    from tpp.config import drop_other_pretexts_defaults
    from tpp.errors import TppError

    saved_file = path / "config.yaml"
    if not saved_file.is_file():
        return
    saved = yaml.safe_load(saved_file.read_text())
    saved = {k: v for k, v in saved.items() if k in config} if isinstance(saved, dict) else {}
    if isinstance(saved.get("pretext"), dict):  # saved before pretext options were per pretext
        drop_other_pretexts_defaults(saved["pretext"], saved["pretext"].get("name", "mae"))

    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    old, new = flat(saved), flat(config)
    differing = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k != "train.resume")
    if differing:
        raise TppError(f"train.resume: the config differs from the interrupted run in '{path}' "
                       f"({', '.join(differing[:6])}); resume with the same config, or start a new output_dir.")


def shipped_configs() -> list[Path]:
    return sorted(CONFIG_DIR.rglob("*.yaml"))
