"""Segmentation: does TPP help LoRA with few masks, and how close do adapters get to full fine-tuning?

    python benchmarks/seg_gain.py --quick               # ~10 min: LoRA vs LoRA + TPP, 10% masks, one seed
    python benchmarks/seg_gain.py --budget-min 60       # fills the cell cache; repeat until the grid is complete
    python benchmarks/seg_gain.py --report-only         # tables and JSON from what the cache holds

BUSI lesion segmentation (``seg/busi_64.npz``; ``--file seg/busi_128.npz`` for 128 px masks) on one fixed
split (``data.split_seed`` 0) grouped by ``dup_group`` (no near-duplicate group spans train and test), so the
spread over seeds is training noise on one test set; ``--resample-split`` draws the split from each seed
instead (split-resampling spread, cached apart). 32 px input on the 28-px shared backbone (interpolated
position embeddings). Grid: fractions of the training masks (10%, 25%, 100%; nested, stratified by benign /
malignant) x 3 seeds x methods: LoRA, LoRA at the masks' own resolution (``lora@mask_res``: input size =
mask side, 64 px for busi_64), LoRA + TPP (MAE on BUSI's own training images of the same split, never
BreastMNIST, which is made from BUSI), the bottleneck adapter, full fine-tuning, and a small U-Net from
scratch. Every ViT method uses the same decoder; its parameters are reported apart from the adapter's. The
step budget scales with the labelled masks as in the shipped configs: max(150, 10 epochs) steps (150 / 150 /
300 steps at 10% / 25% / 100% of busi_64), and every cell keeps its last step (no validation-based selection;
the val split is subsampled by the mask fraction, tpp's default, which changes no test number).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
import report  # noqa: E402
from tpp_gain import quiet_libraries  # noqa: E402

PROTOCOL = {
    "budget": {"epochs": 10, "min_steps": 150}, "batch_size": 16, "selection": "last step of a fixed budget",
    "lr": {"lora": 1e-3, "bottleneck": 1e-3, "full": 1e-4, "unet": 1e-3}, "full_head_lr_scale": 10.0,
    "decoder": {"channels": [64, 32], "pixel_skip": True}, "dice_weight": 1.0, "input_size": 32,
    "lora": {"r": 8, "alpha": 16}, "tpp_steps": 300, "tpp_batch_size": 32, "tpp_lr": 1e-3,
    "split": "fixed: data.split_seed 0",  # cells from before data.split_seed (split drawn by seed) never match
}  # cells from before the budget scaled with the masks (fixed 150 / 200 / 300 steps per fraction) never match either
QUICK_PROTOCOL = dict(PROTOCOL, budget={"epochs": 2, "min_steps": 100}, tpp_steps=100)
FRACTIONS, SEEDS = [0.1, 0.25, 1.0], 3
METHODS = ["lora", "lora@mask_res", "lora+tpp_mae", "bottleneck", "full", "unet"]
MASK_RES = "@mask_res"  # method suffix: the encoder input at the masks' own resolution
FINETUNE_CONFIG, TPP_CONFIG = "breast_us/busi_seg_lora_finetune.yaml", "breast_us/busi_seg_lora_tpp.yaml"


class SegBench:
    """Cells through the real recipes (the U-Net through benchmarks/unet.py), cached as JSON per cell."""

    def __init__(self, cache: Path, protocol: dict, backbone: str, data_root: str, file: str):
        self.protocol, self.backbone, self.data_root, self.file = protocol, backbone, data_root, file
        self.cache = report.backbone_cache(cache, backbone)  # cells and TPP adapters of this backbone only
        self.protocol_id = report.protocol_id(protocol, backbone, file=file)
        self.target = Path(file).stem
        self._mask_side = None

    def split_seed(self, seed: int) -> int:
        """The split of a cell: fixed, or the seed's own with ``--resample-split``."""
        return seed if self.protocol["split"] == "per seed" else 0

    def mask_side(self) -> int:
        """Side of the stored masks (the input size of ``lora@mask_res``)."""
        if self._mask_side is None:
            import numpy as np

            path = Path(self.file) if Path(self.file).is_absolute() else Path(self.data_root) / self.file
            with np.load(path) as npz:
                self._mask_side = int(npz["masks"].shape[-1])
        return self._mask_side

    def cell_path(self, method: str, fraction: float, seed: int) -> Path:
        return self.cache / "cells" / self.target / method / f"f{fraction:g}_s{seed}.json"

    def cached(self, method: str, fraction: float, seed: int) -> dict | None:
        path = self.cell_path(method, fraction, seed)
        if path.is_file():
            data = json.loads(path.read_text())
            return data if data.get("protocol_id") == self.protocol_id else None
        return None

    def common(self, out: Path, seed: int, input_size: int | None = None) -> list[str]:
        return [f"backbone.path={self.backbone}", f"data.root={self.data_root}", f"output_dir={out}", f"seed={seed}",
                f"data.file={self.file}", f"data.name={self.target}", f"data.split_seed={self.split_seed(seed)}",
                f"backbone.input_size={input_size or self.protocol['input_size']}"]

    def tpp_adapter(self, seed: int) -> tuple[Path, float]:
        """LoRA TPP (MAE) on the training images of this seed's split; trained once per seed."""
        from tpp.recipes import CONFIG_DIR, run_recipe

        out = self.cache / "tpp" / f"{self.target}_lora_mae_s{seed}"
        stamp = out / "bench_protocol.txt"
        if not (stamp.is_file() and stamp.read_text() == self.protocol_id):
            p = self.protocol
            run_recipe("tpp", CONFIG_DIR / TPP_CONFIG, self.common(out, seed) + [
                f"train.max_steps={p['tpp_steps']}", f"train.batch_size={p['tpp_batch_size']}",
                f"train.lr={p['tpp_lr']}", f"adapter.r={p['lora']['r']}", f"adapter.alpha={p['lora']['alpha']}"],
                overwrite=True)
            stamp.write_text(self.protocol_id)
        return out / "adapter", json.loads((out / "metrics.json").read_text())["wall_time_s"]

    def budget_steps(self, masks: int) -> int:
        """Optimiser steps for ``masks`` training masks: max(min_steps, epochs x ceil(masks / batch_size)), the
        rule tpp applies to ``train.epochs`` / ``train.min_steps`` (used for the U-Net, outside the recipes)."""
        b = self.protocol["budget"]
        return max(b["min_steps"], b["epochs"] * -(-masks // self.protocol["batch_size"]))

    def method_overrides(self, method: str) -> list[str]:
        p = self.protocol
        base = method.split("+")[0].removesuffix(MASK_RES)
        if base == "lora":
            out = [f"adapter.r={p['lora']['r']}", f"adapter.alpha={p['lora']['alpha']}"]
        elif base == "full":
            out = ["adapter={method: full}", f"train.head_lr_scale={p['full_head_lr_scale']}"]
        else:
            out = [f"adapter={{method: {base}}}"]
        return out + [f"train.lr={p['lr'][base]}"]

    def run_cell(self, method: str, fraction: float, seed: int) -> dict:
        p = self.protocol
        tpp_s, size = None, None
        if method == "unet":
            metrics = self.run_unet(fraction, seed)
        else:
            from tpp.recipes import CONFIG_DIR, run_recipe

            overrides = self.method_overrides(method)
            if method.endswith("+tpp_mae"):
                adapter, tpp_s = self.tpp_adapter(seed)
                overrides.append(f"adapter.init_from={adapter}")
            work = self.cache / "work" / f"seg_{os.getpid()}"
            size = self.mask_side() if method.endswith(MASK_RES) else None
            common = self.common(work, seed, size)
            metrics, _ = run_recipe("finetune", CONFIG_DIR / FINETUNE_CONFIG, common + overrides + [
                f"data.label_fraction={fraction}", "train.select_best=false",
                f"train.epochs={p['budget']['epochs']}", f"train.min_steps={p['budget']['min_steps']}",
                f"train.batch_size={p['batch_size']}", f"segmentation.dice_weight={p['dice_weight']}",
                f"segmentation.decoder_channels={p['decoder']['channels']}", "segmentation.overlays=0",
                f"segmentation.pixel_skip={str(p['decoder']['pixel_skip']).lower()}"], overwrite=True)
            shutil.rmtree(work)
        t = metrics["test"]
        cell = {"target": self.target, "method": method, "fraction": fraction, "seed": seed,
                "test_dice": t["dice"] or 0.0, "test_iou": t["iou"] or 0.0, "test_hd95": t["hd95"],
                "empty_predictions": t["empty_predictions"], "n_test": t["n"], "train_masks": metrics["train_examples"],
                "trainable_parameters": metrics["trainable_parameters"],
                "adapter_parameters": metrics["adapter_parameters"],
                "decoder_parameters": metrics["decoder_parameters"],
                "decoder_bytes": metrics["head_bytes"], "steps": metrics["steps"], "finetune_s": metrics["wall_time_s"],
                "input_size": None if method == "unet" else (size or p["input_size"]),
                "tpp_s": tpp_s, "protocol_id": self.protocol_id}
        self.store(cell)
        return cell

    def store(self, cell: dict) -> None:
        report.store_cell(self.cell_path(cell["method"], cell["fraction"], cell["seed"]), cell)

    def adopt(self, published: Path) -> int:
        """Copy into the cache the cells of a published ``seg_gain*.json`` (see ``report.adopt``)."""
        return report.adopt(published, self.protocol_id, lambda c: (c["method"], c["fraction"], c["seed"]),
                            self.cached, self.store)

    def run_unet(self, fraction: float, seed: int) -> dict:
        from unet import train_unet

        from tpp.config import load_config
        from tpp.data.build import load_data
        from tpp.data.subsets import label_fraction_index
        from tpp.recipes import CONFIG_DIR

        cfg = load_config(CONFIG_DIR / FINETUNE_CONFIG, [f"data.root={self.data_root}", f"data.file={self.file}",
                                                         f"data.name={self.target}",
                                                         f"data.split_seed={self.split_seed(seed)}"], recipe="finetune")
        dataset = load_data(cfg.data, seed, 0)
        p = self.protocol
        steps = self.budget_steps(len(label_fraction_index(dataset.split("train").labels, fraction, dataset.name,
                                                           seed)))
        metrics = train_unet(dataset, fraction, seed, steps, p["batch_size"], p["lr"]["unet"], p["dice_weight"],
                             tuple(cfg.task_options.augment_scale))
        return dict(metrics, steps=steps)


def fill(bench: SegBench, cells: list[tuple], budget_s: float) -> tuple[list, list]:
    """Run missing cells until the budget would be exceeded. Returns (missing, errors)."""
    _, missing, errors = report.fill(
        bench.run_cell, bench.cached, cells, budget_s, kind=lambda cell: cell[0],
        describe=lambda cell, r: f"{cell[0]} {cell[1]:.0%} seed {cell[2]}: Dice {r['test_dice']:.3f}",
        first_estimate_s=300.0, claims=report.CellClaims(bench.cache / "claims"))
    return missing, errors


def summarise(results: list[dict]) -> list[dict]:
    groups = {}
    for c in results:
        groups.setdefault((c["method"], c["fraction"]), []).append(c)
    rows = []
    for (method, fraction), group in sorted(groups.items(), key=lambda kv: (kv[0][1], METHODS.index(kv[0][0])
                                                                          if kv[0][0] in METHODS else 99)):
        dice, iou = report.mean_std([c["test_dice"] for c in group]), report.mean_std([c["test_iou"] for c in group])
        hd = [c["test_hd95"] for c in group if c["test_hd95"] is not None]
        rows.append({"method": method, "fraction": fraction, "n": len(group), "dice_mean": dice[0], "dice_std": dice[1],
                     "iou_mean": iou[0], "iou_std": iou[1], "hd95_mean": sum(hd) / len(hd) if hd else None,
                     "empty_predictions": sum(c["empty_predictions"] for c in group) / len(group),
                     "adapter_parameters": group[0]["adapter_parameters"],
                     "decoder_parameters": group[0]["decoder_parameters"], "decoder_bytes": group[0]["decoder_bytes"],
                     "finetune_s": sum(c["finetune_s"] for c in group) / len(group)})
    return rows


def markdown(rows: list[dict], diffs: list[dict]) -> str:
    def pm(m, s, n):
        return f"{m:.3f} ± {s:.3f}" if n > 1 else f"{m:.3f}"

    lines = ["| masks | method | seeds | test Dice | test IoU | HD95 px | empty pred. | trained params (w/o decoder) "
             "| their KiB (fp32) | decoder params | decoder KiB | s/cell |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        hd = "–" if r["hd95_mean"] is None else f"{r['hd95_mean']:.1f}"
        lines.append(f"| {r['fraction']:.0%} | {r['method']} | {r['n']} | "
                     f"{pm(r['dice_mean'], r['dice_std'], r['n'])} | {pm(r['iou_mean'], r['iou_std'], r['n'])} | "
                     f"{hd} | {r['empty_predictions']:.1f} | "
                     f"{r['adapter_parameters']:,} | {r['adapter_parameters'] * 4 / 1024:,.0f} | "
                     f"{r['decoder_parameters']:,} | {r['decoder_bytes'] / 1024:.0f} | {r['finetune_s']:.0f} |")
    lines += ["", "Paired Dice differences (same seed, same masks):", "",
              "| masks | comparison | pairs | Dice difference | 95% CI |", "|---|---|---|---|---|"]
    for d in diffs:
        ci = "n/a (1 pair)" if d["n"] < 2 else f"[{d['ci95_low']:+.3f}, {d['ci95_high']:+.3f}]"
        lines.append(f"| {d['fraction']:.0%} | {d['method']} − {d['reference']} | {d['n']} | "
                     f"{d['diff_mean']:+.3f} | {ci} |")
    return "\n".join(lines)


PEFT = ("lora", "lora+tpp_mae", "bottleneck")


def goals(rows: list[dict], diffs: list[dict], results: list[dict]) -> list[str]:
    """The issue's two goals, stated from the paired 95% intervals (a point estimate alone decides nothing)."""
    lines = []
    for d in diffs:
        if (d["method"], d["reference"]) == ("lora+tpp_mae", "lora") and d["fraction"] in (0.1, 0.25):
            if d["n"] < 2:
                verdict = "undetermined (1 pair)"
            elif d["ci95_low"] > 0 or d["ci95_high"] < 0:
                verdict = "ahead (95% CI excludes 0)" if d["ci95_low"] > 0 else "behind (95% CI excludes 0)"
            else:
                verdict = "no difference detected (95% CI includes 0)"
            lines.append(f"- TPP vs random-init LoRA at {d['fraction']:.0%} masks: {verdict}, "
                         f"{d['diff_mean']:+.3f} Dice over {d['n']} paired seeds.")
    by = {(r["method"], r["fraction"]): r for r in rows}
    for fraction in sorted({r["fraction"] for r in rows}):
        peft = [by[(m, fraction)] for m in PEFT if (m, fraction) in by]
        if peft and ("full", fraction) in by:
            best, full = max(peft, key=lambda r: r["dice_mean"]), by[("full", fraction)]
            lines.append(f"- {fraction:.0%} masks: best PEFT ({best['method']}, {best['dice_mean']:.3f}; picked on "
                         f"test) vs full fine-tuning ({full['dice_mean']:.3f}): "
                         + within_two_points(results, best["method"], fraction))
    return lines


def within_two_points(results: list[dict], method: str, fraction: float) -> str:
    """Whether full fine-tuning's lead over ``method`` is at most 0.02 Dice: yes when the paired 95% interval of
    (full - method) lies below 0.02, no when it lies above, else undetermined."""
    pairs = [d for d in report.paired(results, "full", method, metric="test_dice") if d["fraction"] == fraction]
    if not pairs or pairs[0]["n"] < 2:
        return "within 2 points: undetermined (fewer than 2 paired seeds)."
    d = pairs[0]
    verdict = "yes" if d["ci95_high"] <= 0.02 else ("no" if d["ci95_low"] > 0.02 else "undetermined")
    return (f"full - PEFT {d['diff_mean']:+.3f} [{d['ci95_low']:+.3f}, {d['ci95_high']:+.3f}] Dice over {d['n']} "
            f"paired seeds; within 2 points: {verdict}.")


def report_stem(bench) -> str:
    """The report's file name without suffix: one per BUSI file and split protocol."""
    stem = "seg_gain" if bench.target == "busi_64" else f"seg_gain_{bench.target}"
    return stem + ("_resampled_split" if bench.protocol["split"] == "per seed" else "")


def write_report(bench: SegBench, cells: list[tuple], out: Path, quick: bool) -> dict:
    results = [r for r in (bench.cached(*c) for c in cells) if r]
    if not results:
        print("no finished cells yet")
        return {}
    rows = summarise(results)
    comparisons = [("lora+tpp_mae", "lora"), ("full", "lora"), ("bottleneck", "lora"), ("full", "bottleneck"),
                   ("unet", "full")]
    diffs = [d for a, b in comparisons for d in report.paired(results, a, b, metric="test_dice")]
    command = "python benchmarks/seg_gain.py " + " ".join(sys.argv[1:])
    verdicts = goals(rows, diffs, results)
    table = (f"Cells: {len(results)} of {len(cells)} finished{' (quick mode)' if quick else ''}. "
             f"Protocol: `{json.dumps(bench.protocol)}`\n\n{markdown(rows, diffs)}\n\nGoals:\n\n" + "\n".join(verdicts))
    payload = {"protocol": bench.protocol, "protocol_id": bench.protocol_id, "complete": len(results) == len(cells),
               "rows": rows, "paired": diffs, "goals": verdicts, "cells": results}
    report.publish(out, report_stem(bench), report.machine(), command, f"BUSI lesion segmentation ({bench.file})",
                   table, payload)
    return payload


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="LoRA vs LoRA + TPP, 10%% masks, one seed, short budgets")
    parser.add_argument("--fractions", nargs="+", type=float, default=None, help="subset of 0.1 0.25 1.0")
    parser.add_argument("--methods", nargs="+", default=None, help=f"subset of {' '.join(METHODS)}")
    parser.add_argument("--seeds", type=int, default=SEEDS)
    parser.add_argument("--resample-split", action="store_true",
                        help="draw the split from each seed (data.split_seed=seed): the spread then mixes test-set "
                             "changes with training noise; default: one fixed split (data.split_seed 0)")
    parser.add_argument("--file", default="seg/busi_64.npz", help="BUSI file relative to the data root")
    parser.add_argument("--budget-min", type=float, default=60.0, help="stop starting cells after this many minutes")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--backbone", default="builtin:mae-vit-tiny-med")
    parser.add_argument("--data-root", default=os.environ.get("TPP_DATA_ROOT", str(ROOT.parent / "shared" / "data")))
    parser.add_argument("--cache", type=Path, default=None, help="default benchmarks/.cache/seg_gain[_quick]")
    parser.add_argument("--out", type=Path, default=None, help="default benchmarks/results (quick: runs/bench_quick)")
    report.add_from_results_option(parser)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    quiet_libraries()
    if args.quick:
        methods, fractions, seeds = args.methods or ["lora", "lora+tpp_mae"], args.fractions or [0.1], 1
    else:
        methods, fractions, seeds = args.methods or METHODS, args.fractions or FRACTIONS, args.seeds
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {METHODS}")
    suffix = "_quick" if args.quick else ""
    cache = args.cache or ROOT / "benchmarks" / ".cache" / f"seg_gain{suffix}"
    out = args.out or (ROOT / "runs" / "bench_quick" if args.quick else ROOT / "benchmarks" / "results")
    protocol = QUICK_PROTOCOL if args.quick else PROTOCOL
    if args.resample_split:
        protocol = dict(protocol, split="per seed")
        cache = cache.with_name(cache.name + "_resampled")
    bench = SegBench(cache, protocol, args.backbone, args.data_root, args.file)
    report.adopt_all(parser, args.from_results, bench.adopt, cache, own=Path(out) / f"{report_stem(bench)}.json")
    cells = [(m, f, s) for f in fractions for s in range(seeds) for m in methods]
    missing, errors = [], []
    if not args.report_only:
        missing, errors = fill(bench, cells, args.budget_min * 60)
    write_report(bench, cells, out, args.quick)
    return report.finish(missing, errors)


if __name__ == "__main__":
    sys.exit(main())
