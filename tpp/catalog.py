"""What ``tpp ls`` prints of the plug-in registries, without importing them: they import torch (~2 s).

:data:`LISTED` holds each registry's built-in entries (name, summary) and the modules of its folder. ``tpp ls``
prints them when torch is not loaded yet and the folder holds no other module; otherwise (a plug-in file dropped
into the folder, or tpp called in-process with torch already loaded) it asks the registry itself, so nothing
registered is ever left out. ``tests/test_cli.py`` checks that this table equals the registries (it prints the
table to paste when they differ), so the two cannot drift.
"""
from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import pkgutil
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Listed:
    """One registry as ``tpp ls`` shows it: ``lister`` is the function of ``package`` returning its entries
    (objects with ``name`` and ``summary``, sorted by name); ``modules`` the module names of the package's folder
    when ``entries`` were written down."""
    title: str
    package: str
    lister: str
    modules: tuple[str, ...]
    entries: tuple[tuple[str, str], ...]


LISTED = (
    Listed("adapter methods", "tpp.adapters", "all_methods",
           ("baselines", "bitfit", "bottleneck", "compose", "ia3", "ln_tuning", "lora", "lycoris", "ssf",
            "visual_prompt", "vpt", "wrapping"), (
               ("bitfit", "bias terms only, as a per-adapter overlay (the backbone's biases are never written)"),
               ("bottleneck", "bottleneck adapter on each MLP (and/or attention), parallel (AdaptFormer) or "
                              "sequential (Houlsby)"),
               ("full", "baseline: full fine-tuning of every encoder weight (saved as kind full_model, not an "
                        "adapter)"),
               ("ia3", "learned rescaling of key / value outputs and MLP inputs (peft IA3)"),
               ("linear_probe", "baseline: frozen backbone, only the task head trains"),
               ("ln_tuning", "LayerNorm weights and biases of every layer (peft LN tuning: copies, the backbone is "
                             "untouched)"),
               ("loha", "low-rank Hadamard-product updates of attention projections (peft LoHa)"),
               ("lokr", "low-rank Kronecker-product updates of attention projections (peft LoKr)"),
               ("lora", "low-rank updates of attention projections (peft LoRA; DoRA / rsLoRA options)"),
               ("movl", "MoVL: visual prompt + linear probe (the task head) + discrepancy between prompted and "
                        "plain features"),
               ("ssf", "scale and shift of the outputs of attention and MLP Linear layers and/or LayerNorms (SSF)"),
               ("visual_prompt", "visual prompt: a learnable frame around the image (pad) or pattern on it (full); "
                                 "backbone untouched"),
               ("vpt", "visual prompt tuning: learned prompt tokens, shallow (input), deep (every layer) or chosen "
                       "layers"))),
    Listed("pretexts (pretext.name)", "tpp.pretext", "all_pretexts", ("dino", "mae"), (
        ("dino", "Self-distillation in the spirit of DINO, for the target parameters only."),
        ("mae", "Masked image modeling (MAE) pretext for the target parameters."))),
    Listed("data sources (data.source)", "tpp.data.sources", "all_sources",
           ("csv", "folder", "medmnist", "npz", "seg_folder", "seg_npz", "unlabeled_folder"), (
               ("csv", "Images listed in a CSV (path,label[,patient_id][,split]; paths relative to the CSV); "
                       "data.modality is required."),
               ("folder", "A labelled image folder: DIR/<class>/*, DIR/{train,val,test}/<class>/* or metadata.csv; "
                          "data.modality is required."),
               ("medmnist", "An official MedMNIST 2D file, <root>/<data.name>.npz (or <root>/medmnist/), with its "
                            "own splits and labels."),
               ("npz", "A generic .npz file: train_/val_/test_ split keys, or one image and one label array split "
                       "here by seed."),
               ("seg_folder", "An images/ + masks/ folder pair (same file stems) for segmentation, split here by "
                              "seed; data.modality is required."),
               ("seg_npz", "A .npz file of images and segmentation masks (optional per-image labels and groups), "
                           "split here by seed."),
               ("unlabeled_folder", "Every image below a folder, unlabeled, as one train split (for pre-training); "
                                    "data.modality is required."))),
    Listed("tasks (task; options in the section named after the task)", "tpp.tasks", "all_tasks",
           ("classification", "segmentation"), (
               ("classification", "one label per image: linear head on the mean patch token, AUROC, a validated "
                                  "decision threshold"),
               ("segmentation", "a class-index mask per image: progressive-upsampling decoder, Dice / IoU / HD95"))),
)


def registered(listed: Listed) -> list[tuple[str, str]]:
    """The registry's own entries (imports it, and torch with it)."""
    return [(e.name, e.summary) for e in getattr(importlib.import_module(listed.package), listed.lister)()]


def entries(listed: Listed) -> list[tuple[str, str]]:
    """What ``tpp ls`` prints of a registry: the written-down entries while they are known to be complete (torch
    not loaded, no other module in the folder), else the registry's own."""
    if "torch" in sys.modules or module_names(listed.package) != listed.modules:
        return registered(listed)
    return list(listed.entries)


def module_names(package: str) -> tuple[str, ...]:
    """The sorted module names in the folders of ``package``, found without importing it (nor the packages
    between ``tpp`` and it: ``tpp.data`` imports numpy)."""
    module = sys.modules.get(package)
    if module is not None:
        folders = list(module.__path__)
    else:
        first, *rest = package.split(".")[1:]
        spec = importlib.util.find_spec(f"tpp.{first}")  # imports tpp only
        for part in rest:
            spec = importlib.machinery.PathFinder.find_spec(f"{spec.name}.{part}", spec.submodule_search_locations)
        folders = list(spec.submodule_search_locations)
    return tuple(sorted(m.name for m in pkgutil.iter_modules(folders)))
