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
    of them (evaluate runs from the finetune config of the run it evaluates). ``ignores``: dotted keys of
    those sections it never reads; setting one to anything but its default is an error naming the recipe."""
    summary: str
    sections: tuple[str, ...]
    reads: tuple[str, ...] = ()
    ignores: tuple[str, ...] = ()


COMMON = ("recipe", "seed", "output_dir", "device", "train")
RECIPES = {
    "finetune": Recipe("train a site adapter + a task head (task: classification, segmentation ...)",
                       COMMON + ("task", "site", "backbone", "adapter", "data"),
                       ignores=("adapter.path", "data.split", "data.use_eval_splits")),
    "evaluate": Recipe("evaluate a saved adapter directory on one split",
                       COMMON + ("backbone", "adapter", "data", "evaluate"), reads=("finetune",),
                       ignores=("adapter.init_from", "data.use_eval_splits", "data.label_fraction",
                                "data.val_label_fraction", "train.select_best", "train.max_steps", "train.lr",
                                "train.eval_every", "train.head_lr_scale", "train.epochs", "train.batch_size",
                                "train.checkpoint_every", "train.warmup_ratio", "train.weight_decay",
                                "train.grad_accum_steps", "train.log_with", "train.adam_beta2", "data.hflip")),
    "pretrain_backbone": Recipe("pre-train a small ViT-MAE backbone from scratch on a pool (MAE + per-dataset heads)",
                                COMMON + ("data", "pretext", "model", "pool", "supervised_weight"),
                                ignores=("data.split", "data.label_fraction", "data.val_label_fraction",
                                         "data.use_eval_splits", "train.select_best", "train.head_lr_scale",
                                         "train.eval_every")),
    "tpp": Recipe("target parameter pre-training: train only the adapter on unlabeled images (MAE or DINO pretext)",
                  COMMON + ("site", "backbone", "adapter", "data", "pretext"),
                  ignores=("adapter.path", "adapter.init_from", "data.split", "data.label_fraction",
                           "data.val_label_fraction", "train.select_best", "train.head_lr_scale", "train.eval_every")),
    "multitask": Recipe("multi-task pre-training (UMedPT-style): classification, segmentation and MAE/DINO tasks "
                        "over a pool, memory flat in the tasks; target parameters or the whole backbone",
                        COMMON + ("site", "backbone", "adapter", "data", "pool", "multitask"),
                        ignores=("adapter.path", "adapter.init_from", "data.split", "data.label_fraction",
                                 "data.val_label_fraction", "data.use_eval_splits", "train.select_best",
                                 "train.head_lr_scale", "train.eval_every")),
    "incontext": Recipe("train a learned in-context model (Neuralizer / UniverSeg style) on episodes of many tasks, "
                        "leaving held-out datasets out: classification on frozen features, or 64 px segmentation",
                        COMMON + ("backbone", "data", "incontext"),
                        ignores=tuple(f"data.{k}" for k in (
                            "name", "source", "origin", "modality", "label_fraction", "val_label_fraction",
                            "split", "val_fraction", "test_fraction", "hflip", "use_eval_splits",
                            "license", "num_workers")) + (
                            "train.epochs", "train.min_steps", "train.grad_accum_steps", "train.eval_every",
                            "train.eval_batch_size", "train.head_lr_scale", "train.select_best", "backbone.mean",
                            "backbone.std", "backbone.input_size")),
}
