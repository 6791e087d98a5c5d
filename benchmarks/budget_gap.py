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
- ``lora_long``: the suite's LoRA (r 8, alpha 16 on q and v, lr 1e-3) at the long budget: does the cheap path a
  hospital would deploy gain from the budget what full fine-tuning does?

Each arm's cells are keyed by its own protocol id, so adding an arm leaves the others' cells valid. References
from the caches (never re-run here): ``full`` and ``lora`` (200 steps, ``.cache/tpp_gain``) and ``resnet18``
(``.cache/suite_resnet``). Writes ``benchmarks/results/budget_gap.{json,md}``; ``--from-results`` (and that report
itself when it exists) seeds an empty cache with the published cells.
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
                     "scratch_long": {"init": "random (seeded per cell)", "lr": 1e-3, "head_lr_scale": 1.0},
                     "lora_long": {"init": "pre-trained", "lr": 1e-3, "head_lr_scale": 1.0, "adapter": "lora",
                                   "r": 8, "alpha": 16}}}
ARMS = list(PROTOCOL["arms"])
REFERENCES = ["full", "lora", "resnet18"]  # the suite's 200-step fine-tuning and its ResNet-18, from their caches


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


def adapter_overrides(settings: dict) -> list[str]:
    """The adapter of an arm: full fine-tuning, or LoRA with the arm's rank and alpha (the suite's LoRA)."""
    if settings.get("adapter", "full") == "full":
        return ["adapter.method=full"]
    return [f"adapter.method={settings['adapter']}", f"adapter.r={settings['r']}", f"adapter.alpha={settings['alpha']}"]


def run_cell(target: str, arm: str, seed: int, train_images: int, data_root: str) -> dict:
    """Full fine-tuning with the long budget from the arm's initialisation; the cell's numbers."""
    from tpp.recipes import CONFIG_DIR, run_recipe

    settings = PROTOCOL["arms"][arm]
    with tempfile.TemporaryDirectory() as work:
        backbone = BACKBONE if arm == "full_long" else str(random_backbone(Path(work) / "backbone", seed))
        n = steps(train_images)
        metrics, _ = run_recipe("finetune", CONFIG_DIR / tpp_gain.FINETUNE_CONFIG, [
            f"backbone.path={backbone}", f"data.root={data_root}", f"output_dir={Path(work) / 'run'}", f"seed={seed}",
            *adapter_overrides(settings), f"train.lr={settings['lr']}",
            f"train.head_lr_scale={settings['head_lr_scale']}",
            *tpp_gain.source_overrides(target), "data.label_fraction=1.0", "train.select_best=false",
            f"train.max_steps={n}", f"train.batch_size={PROTOCOL['batch_size']}"], overwrite=True)
    return {"target": target, "method": arm, "fraction": 1.0, "seed": seed, "steps": n, **settings,
            "test_auroc": metrics["test"]["auroc"], "test_accuracy": metrics["test"]["accuracy"],
            "val_auroc": metrics["val"]["auroc"], "train_labels": metrics["train_examples"],
            "trainable_parameters": metrics["trainable_parameters"], "finetune_s": metrics["wall_time_s"],
            "tpp_s": None}


class ArmCells:
    """Cells (target, arm, seed), each arm under its own protocol id (the shared budget, the arm's settings, the
    shipped config): an arm added later, or one whose settings change, leaves the other arms' cells valid."""

    def __init__(self, folder: Path):
        from tpp.recipes import CONFIG_DIR
        from tpp.capped_read import file_sha256

        config = file_sha256(CONFIG_DIR / tpp_gain.FINETUNE_CONFIG)
        common = {k: v for k, v in PROTOCOL.items() if k != "arms"}
        self.folder = Path(folder)
        self.arms = {arm: report.CellCache(folder, report.protocol_id({**common, "arm": arm, **settings}, BACKBONE,
                                                                      config=config),
                                           key=lambda c: (c["target"], c["method"], c["seed"]),
                                           name=lambda target, arm, seed: f"{target}_{arm}_s{seed}.json")
                     for arm, settings in PROTOCOL["arms"].items()}

    def cached(self, target: str, arm: str, seed: int) -> dict | None:
        return self.arms[arm].cached(target, arm, seed)

    def store(self, cell: dict) -> None:
        self.arms[cell["method"]].store(cell)

    def adopt(self, published) -> int:
        """The cells of a published report measured under their arm's id (other cells are left out)."""
        return sum(cache.adopt(published) for cache in self.arms.values())


def reference_cells(cache_root: Path, target: str, seeds: int, data_root: str) -> list[dict]:
    """The suite's 200-step ``full`` and ``lora`` and its ``resnet18`` cells of ``target`` at 100% (those measured)."""
    import suite

    vit = tpp_gain.Bench(cache_root / "tpp_gain", tpp_gain.PROTOCOL, BACKBONE, data_root)
    resnet = suite.ResNetBench(cache_root / "suite_resnet", dict(suite.resnet.PROTOCOL, widths=[64, 128, 256, 512]),
                               data_root)
    cells = []
    for seed in range(seeds):
        for method, cell in (("full", vit.cached(target, "full", 1.0, seed)),
                             ("lora", vit.cached(target, "lora", 1.0, seed)),
                             ("resnet18", resnet.cached(target, 1.0, seed))):
            if cell:
                cells.append(dict(cell, method=method, fraction=1.0, tpp_s=None))
    return cells


def write_report(cells: list[dict], out: Path, command: str) -> None:
    rows = report.summarise(cells)
    pairs = [(arm, ref) for arm in ARMS for ref in ("full", "resnet18")]
    pairs += [("scratch_long", "full_long"), ("lora_long", "lora"), ("lora_long", "full_long"), ("lora", "resnet18"),
              ("full", "resnet18")]
    diffs = [d for method, ref in pairs for d in report.paired(cells, method, ref)]
    description = (f"Long-budget fine-tuning (the ResNet-18's {PROTOCOL['epochs']} epochs in batches of "
                   f"{PROTOCOL['batch_size']}): full from the pre-trained backbone (full_long) and from random weights "
                   "(scratch_long), LoRA from the pre-trained backbone (lora_long); against the suite's 200-step full "
                   "fine-tuning (full) and LoRA (lora) and its ResNet-18 (28) from scratch (resnet18), paired by seed "
                   "(same label subset). Test AUROC / accuracy (the ViT rows at the validation-chosen threshold, the "
                   "ResNet's at argmax).")
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
    report.add_from_results_option(parser)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tpp_gain.quiet_libraries()
    from tpp.data.arrays import load_medmnist

    cache = ArmCells(args.cache / "budget_gap")
    report.adopt_all(parser, args.from_results, cache.adopt, cache.folder, own=args.out / "budget_gap.json")
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
