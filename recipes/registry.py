"""The recipe registry: one line per recipe, with what ``tpp ls`` says of it and the config sections it reads.
Kept apart from ``tpp.recipes`` so that ``tpp.config`` can scope configs without importing the recipes."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Recipe:
    """One registration per recipe: what ``tpp ls`` says of it, and the config sections it reads (the
    top-level keys of its YAML; ``task`` brings the section named after the chosen task). A config for
    the recipe that sets any other section is an error naming the recipe; its ``config.yaml`` holds these
    sections only. ``reads``: other recipes whose configs it also runs from, using only its own sections
    of them (evaluate runs from the finetune config of the run it evaluates)."""
    summary: str
    sections: tuple[str, ...]
    reads: tuple[str, ...] = ()


COMMON = ("recipe", "seed", "output_dir", "train")
RECIPES = {
    "finetune": Recipe("train a site adapter + a task head (task: classification, segmentation ...)",
                       COMMON + ("task", "site", "backbone", "adapter", "data")),
    "evaluate": Recipe("evaluate a saved adapter directory on one split",
                       COMMON + ("backbone", "adapter", "data"), reads=("finetune",)),
    "pretrain_backbone": Recipe("pre-train a small ViT-MAE backbone from scratch on a pool (MAE + per-dataset heads)",
                                COMMON + ("data", "pretext", "model", "pool", "supervised_weight")),
    "tpp": Recipe("target parameter pre-training: train only the adapter on unlabeled images (MAE or DINO pretext)",
                  COMMON + ("site", "backbone", "adapter", "data", "pretext")),
}
