"""Recipes: one readable file each, ``run(cfg, run_dir) -> summary``. Installed as ``tpp.recipes``."""
from __future__ import annotations

import importlib
from pathlib import Path

RECIPES = {
    "finetune": "train a site adapter + classification head on labelled images",
    "evaluate": "evaluate a saved adapter directory on one split",
    "tpp": "target parameter pre-training: train only the adapter on unlabeled images (MAE pretext)",
}
CONFIG_DIR = Path(__file__).parent / "configs"


def get_recipe(name: str):
    from tpp.errors import TppError

    if name not in RECIPES:
        raise TppError(f"unknown recipe '{name}'. Recipes: {', '.join(RECIPES)} (`tpp ls`).")
    return importlib.import_module(f"tpp.recipes.{name}")


def shipped_configs() -> list[Path]:
    return sorted(CONFIG_DIR.rglob("*.yaml"))
