"""Recipes: one readable file each, ``run(cfg, run_dir) -> summary``. Installed as ``tpp.recipes``."""
from __future__ import annotations

import importlib
from pathlib import Path

RECIPES = {
    "finetune": "train a site adapter + classification head on labelled images",
    "evaluate": "evaluate a saved adapter directory on one split",
    "pretrain_backbone": "pre-train a small ViT-MAE backbone from scratch on a pool (MAE + per-dataset heads)",
    "tpp": "target parameter pre-training: train only the adapter on unlabeled images (MAE or DINO pretext)",
}
CONFIG_DIR = Path(__file__).parent / "configs"


def get_recipe(name: str):
    from tpp.errors import TppError

    if name not in RECIPES:
        raise TppError(f"unknown recipe '{name}'. Recipes: {', '.join(RECIPES)} (`tpp ls`).")
    return importlib.import_module(f"tpp.recipes.{name}")


def run_recipe(name: str, config_path, overrides: list[str] = (), overwrite: bool = False) -> tuple[dict, Path]:
    """Load and check the config, run recipe ``name`` in its run directory, record the status.

    Returns (summary, run directory). What ``tpp run`` does, callable from Python (benchmarks).
    """
    from tpp.config import load_config
    from tpp.rundir import RunDir

    recipe = get_recipe(name)
    cfg = load_config(config_path, list(overrides))
    run = RunDir(cfg.output_dir, overwrite=overwrite)
    run.write_config(dict(cfg.to_dict(), recipe=name))
    try:
        summary = recipe.run(cfg, run)
    except BaseException as exc:
        run.status("failed", error=f"{type(exc).__name__}: {exc}")
        run.log(event="failed", error=f"{type(exc).__name__}: {exc}")
        raise
    run.status("succeeded")
    return summary, run.path


def shipped_configs() -> list[Path]:
    return sorted(CONFIG_DIR.rglob("*.yaml"))
