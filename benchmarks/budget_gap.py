"""Why the generalist trails the ResNet-18 at 100% labels: the training budget, the architecture, or the pre-training?

    python benchmarks/budget_gap.py --budget-min 90      # fill the cells (cached, resumable), then the report
    python benchmarks/budget_gap.py --report-only       # the report from the cache

The suite's generalist cells fine-tune a fixed 200 steps of 32 images: at 100% of BreastMNIST's labels that is 6,400
images seen (about 12 epochs), while its ResNet-18 (28) from scratch trains MedMNIST v2's 100 epochs (54,600). This
bench gives the ViT the ResNet's budget, ``epochs`` x ceil(training images / 32) steps of 32 (1,800 on
BreastMNIST), and separates the causes, paired by seed (the same label subset) with the suite's cells:

- ``full_long``: full fine-tuning of the shipped pre-trained backbone, the suite's ``full`` protocol (lr 1e-4, head
  x10, the recipe's AdamW with warm-up and cosine decay, last step kept) at the long budget: does budget close
  the gap?
- ``scratch_long``: the same ViT (same config) from random initialisation (drawn per seed), lr 1e-3 on every
  weight (the ResNet's Adam rate), the same budget: what is the pre-training worth, and can this ViT at 28 px
  learn the task from these labels at all?

References from the caches (never re-run here): ``full`` (200 steps, ``.cache/tpp_gain``) and ``resnet18``
(``.cache/suite_resnet``). Writes ``benchmarks/results/budget_gap.{json,md}``.
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
import report  # noqa: E402
import tpp_gain  # noqa: E402

BACKBONE = "builtin:mae-vit-tiny-med"
PROTOCOL = {"epochs": 100, "batch_size": 32, "selection": "last step",
            "arms": {"full_long": {"init": "pre-trained", "lr": 1e-4, "head_lr_scale": 10.0},
                     "scratch_long": {"init": "random (seeded per cell)", "lr": 1e-3, "head_lr_scale": 1.0}}}
ARMS = list(PROTOCOL["arms"])
REFERENCES = ["full", "resnet18"]  # the suite's 200-step full fine-tuning and its ResNet-18, from their caches


def steps(train_images: int) -> int:
    """The ResNet's epochs in the ViT's batches: ``epochs`` x ceil(train_images / batch_size)."""
    return PROTOCOL["epochs"] * math.ceil(train_images / PROTOCOL["batch_size"])


def random_backbone(folder: Path, seed: int) -> Path:
    """The shipped backbone's architecture and preprocessing with freshly drawn weights (``torch.manual_seed(seed)``,
    transformers' own initialisation), saved as a transformers folder."""
    import torch
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    from tpp.backbones import resolve_backbone

    source = Path(resolve_backbone(BACKBONE))
    torch.manual_seed(seed)
    ViTMAEForPreTraining(ViTMAEConfig.from_pretrained(source)).save_pretrained(folder, safe_serialization=True)
    shutil.copy(source / "preprocessor_config.json", folder / "preprocessor_config.json")
    return folder


def run_cell(target: str, arm: str, seed: int, train_images: int, data_root: str) -> dict:
    """Full fine-tuning with the long budget from the arm's initialisation; the cell's numbers."""
    from tpp.recipes import CONFIG_DIR, run_recipe

    settings = PROTOCOL["arms"][arm]
    with tempfile.TemporaryDirectory() as work:
        backbone = BACKBONE if arm == "full_long" else str(random_backbone(Path(work) / "backbone", seed))
        n = steps(train_images)
        metrics, _ = run_recipe("finetune", CONFIG_DIR / tpp_gain.FINETUNE_CONFIG, [
            f"backbone.path={backbone}", f"data.root={data_root}", f"output_dir={Path(work) / 'run'}", f"seed={seed}",
            "adapter.method=full", f"train.lr={settings['lr']}", f"train.head_lr_scale={settings['head_lr_scale']}",
            *tpp_gain.source_overrides(target), "data.label_fraction=1.0", "train.select_best=false",
            f"train.max_steps={n}", f"train.batch_size={PROTOCOL['batch_size']}"], overwrite=True)
    return {"target": target, "method": arm, "fraction": 1.0, "seed": seed, "steps": n, **settings,
            "test_auroc": metrics["test"]["auroc"], "test_accuracy": metrics["test"]["accuracy"],
            "val_auroc": metrics["val"]["auroc"], "train_labels": metrics["train_examples"],
            "trainable_parameters": metrics["trainable_parameters"], "finetune_s": metrics["wall_time_s"],
            "tpp_s": None}


def cell_cache(folder: Path) -> report.CellCache:
    """Cells (target, arm, seed) under ``folder/<protocol id>/`` (the id covers the protocol and the shipped config)."""
    from tpp.recipes import CONFIG_DIR
    from tpp.rundir import file_sha256

    return report.CellCache(folder, report.protocol_id(PROTOCOL, BACKBONE,
                                                       config=file_sha256(CONFIG_DIR / tpp_gain.FINETUNE_CONFIG)),
                            key=lambda c: (c["target"], c["method"], c["seed"]),
                            name=lambda target, arm, seed: f"{target}_{arm}_s{seed}.json")


def reference_cells(cache_root: Path, target: str, seeds: int, data_root: str) -> list[dict]:
    """The suite's 200-step ``full`` and ``resnet18`` cells of ``target`` at 100% (those measured)."""
    import suite

    full = tpp_gain.Bench(cache_root / "tpp_gain", tpp_gain.PROTOCOL, BACKBONE, data_root)
    resnet = suite.ResNetBench(cache_root / "suite_resnet", dict(suite.resnet.PROTOCOL, widths=[64, 128, 256, 512]),
                               data_root)
    cells = []
    for seed in range(seeds):
        for method, cell in (("full", full.cached(target, "full", 1.0, seed)),
                             ("resnet18", resnet.cached(target, 1.0, seed))):
            if cell:
                cells.append(dict(cell, method=method, fraction=1.0, tpp_s=None))
    return cells


def write_report(cells: list[dict], out: Path, command: str) -> None:
    rows = report.summarise(cells)
    diffs = [d for arm in ARMS for ref in ("full", "resnet18") for d in report.paired(cells, arm, ref)]
    diffs += report.paired(cells, "scratch_long", "full_long") + report.paired(cells, "full", "resnet18")
    description = (f"Long-budget full fine-tuning (the ResNet-18's {PROTOCOL['epochs']} epochs in batches of "
                   f"{PROTOCOL['batch_size']}) from the pre-trained backbone (full_long) and from random weights "
                   "(scratch_long), against the suite's 200-step full fine-tuning (full) and ResNet-18 (28) from "
                   "scratch (resnet18), paired by seed (same label subset). Test AUROC / accuracy (the ViT rows at "
                   "the validation-chosen threshold, the ResNet's at argmax).")
    table = report.markdown_results(rows) + "\n\n" + report.markdown_paired(diffs)
    report.publish(out, "budget_gap", report.machine(), command, description, table,
                   {"protocol": PROTOCOL, "cells": cells, "rows": rows, "paired": diffs})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", nargs="+", default=["breastmnist"])
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (the suite has 3 at 100%%)")
    parser.add_argument("--arms", nargs="+", default=ARMS, choices=ARMS)
    parser.add_argument("--budget-min", type=float, default=math.inf)
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--data-root", default=os.environ.get("TPP_DATA_ROOT", str(ROOT.parent / "shared" / "data")))
    parser.add_argument("--cache", type=Path, default=ROOT / "benchmarks" / ".cache")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tpp_gain.quiet_libraries()
    from tpp.data.arrays import load_medmnist

    cache = cell_cache(args.cache / "budget_gap")
    cells = [(t, arm, seed) for t in args.targets for seed in range(args.seeds) for arm in args.arms]
    missing, errors = [], []
    if not args.report_only:
        sizes = {t: len(load_medmnist(t, args.data_root).split("train")) for t in args.targets}

        def run(target, arm, seed):
            cell = run_cell(target, arm, seed, sizes[target], args.data_root)
            cache.store(cell)
            return cell

        _, missing, errors = report.fill(
            run, cache.cached, cells, args.budget_min * 60, kind=lambda c: c[1], first_estimate_s=900.0,
            describe=lambda c, r: f"{c[0]} {c[1]} seed {c[2]}: AUROC {report.num(r['test_auroc'])} "
                                  f"({r['steps']} steps)", claims=report.CellClaims(cache.folder / "claims"))
    measured = [c for c in map(lambda cell: cache.cached(*cell), cells) if c]
    references = [c for t in args.targets for c in reference_cells(args.cache, t, args.seeds, args.data_root)]
    write_report(measured + references, args.out, "python benchmarks/budget_gap.py " + " ".join(argv or sys.argv[1:]))
    return report.finish(missing, errors)


if __name__ == "__main__":
    sys.exit(main())
