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

    def __init__(self, cache: Path, protocol: dict, backbone: str, data_root: str, file: str,
                 name: str | None = None, folder=None):
        """``file``: a ``seg_npz`` file relative to ``data_root``, or with ``folder`` (``suite_grid.SegFolder``:
        ``size``, ``group_key``) a ``seg_folder`` (images/ + masks/) named ``name``."""
        self.protocol, self.backbone, self.data_root, self.file = protocol, backbone, data_root, file
        self.folder = folder
        self.cache = report.backbone_cache(cache, backbone)  # cells and TPP adapters of this backbone only
        self.target = name or Path(file).stem
        if folder is None:
            self.protocol_id = report.protocol_id(protocol, backbone, file=file)
        else:  # the folder's content, not its path: a copy elsewhere keeps its cells, a changed mask does not
            self.protocol_id = report.protocol_id(protocol, backbone, **folder_identity(folder, self.path(),
                                                                                         self.target))
        self._mask_side = None
        self._shape = None

    def path(self) -> Path:
        """The data file or folder."""
        return Path(self.file) if Path(self.file).is_absolute() else Path(self.data_root) / self.file

    def split_seed(self, seed: int) -> int:
        """The split of a cell: fixed, or the seed's own with ``--resample-split``."""
        return seed if self.protocol["split"] == "per seed" else 0

    def mask_side(self) -> int:
        """Side of the stored masks (the input size of ``lora@mask_res``); a folder's: the size it is read at."""
        if self.folder is not None:
            return self.folder.size
        if self._mask_side is None:
            import numpy as np

            with np.load(self.path()) as npz:
                self._mask_side = int(npz["masks"].shape[-1])
        return self._mask_side

    def shape(self) -> tuple[int, int]:
        """(image channels, mask classes) of the task's data (the cost models' input and output)."""
        if self._shape is None:
            if self.folder is None:
                import numpy as np

                with np.load(self.path()) as npz:
                    self._shape = (1 if npz["images"].ndim == 3 else 3), max(2, int(npz["masks"].max()) + 1)
            else:
                dataset = self.load(0)[0]
                self._shape = (3 if dataset.split("train").images.ndim == 4 else 1), dataset.num_classes
        return self._shape

    def data_overrides(self, seed: int) -> list[str]:
        """The finetune / TPP configs' data settings of this task at ``seed``: the BUSI ``seg_npz`` config's,
        or for a folder (``data.source: seg_folder`` from :func:`task_config`) its own origin and no licence,
        not BUSI's, and groups from ``metadata.csv``'s ``group_key`` column, if any."""
        return data_overrides(self.data_root, self.file, self.target, self.split_seed(seed), self.folder)

    def load(self, seed: int):
        """(dataset, config) of the task as the finetune recipe reads it at ``seed``'s split: a folder at its
        ``size``, arrays at their own."""
        from tpp.config import load_config
        from tpp.data.build import load_data
        from tpp.recipes import CONFIG_DIR

        cfg = load_config(task_config(CONFIG_DIR / FINETUNE_CONFIG, self.folder), self.data_overrides(seed),
                          recipe="finetune")
        return load_data(cfg.data, seed, 0 if self.folder is None else self.folder.size), cfg

    def cell_path(self, method: str, fraction: float, seed: int) -> Path:
        return self.cache / "cells" / self.target / method / f"f{fraction:g}_s{seed}.json"

    def cached(self, method: str, fraction: float, seed: int) -> dict | None:
        path = self.cell_path(method, fraction, seed)
        if path.is_file():
            data = json.loads(path.read_text())
            return data if data.get("protocol_id") == self.protocol_id else None
        return None

    def common(self, out: Path, seed: int, input_size: int | None = None) -> list[str]:
        return [f"backbone.path={self.backbone}", f"output_dir={out}", f"seed={seed}", *self.data_overrides(seed),
                f"backbone.input_size={input_size or self.protocol['input_size']}"]

    def tpp_adapter(self, seed: int) -> tuple[Path, float]:
        """LoRA TPP (MAE) on the training images of this seed's split; trained once per seed."""
        from tpp.recipes import CONFIG_DIR, run_recipe

        out = self.cache / "tpp" / f"{self.target}_lora_mae_s{seed}"
        stamp = out / "bench_protocol.txt"
        if not (stamp.is_file() and stamp.read_text() == self.protocol_id):
            p = self.protocol
            run_recipe("tpp", task_config(CONFIG_DIR / TPP_CONFIG, self.folder), self.common(out, seed) + [
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
            config = task_config(CONFIG_DIR / FINETUNE_CONFIG, self.folder)
            metrics, _ = run_recipe("finetune", config, common + overrides + [
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

        from tpp.data.subsets import label_fraction_index

        dataset, cfg = self.load(seed)
        p = self.protocol
        steps = self.budget_steps(len(label_fraction_index(dataset.split("train").labels, fraction, dataset.name,
                                                           seed)))
        metrics = train_unet(dataset, fraction, seed, steps, p["batch_size"], p["lr"]["unet"], p["dice_weight"],
                             tuple(cfg.task_options.augment_scale))
        return dict(metrics, steps=steps)


def data_overrides(data_root: str, file: str, name: str, split_seed: int, folder=None) -> list[str]:
    """Data settings of the BUSI configs (FINETUNE_CONFIG, TPP_CONFIG) for a ``seg_npz`` ``file``, or with
    ``folder`` (``suite_grid.SegFolder``) for a ``seg_folder``: its own origin (its files) and no licence, not
    BUSI's; groups from ``metadata.csv``'s ``folder.group_key`` column, if any (switching the source drops the
    npz's keys: ``dup_group``, the label arrays)."""
    common = [f"data.root={data_root}", f"data.file={file}", f"data.name={name}", f"data.split_seed={split_seed}"]
    if folder is None:
        return common
    group = [f"data.group_key={folder.group_key}"] if folder.group_key else []
    return [*common, "data.origin=null", "data.license=null", *group]


def task_config(config: Path, folder=None):
    """The BUSI config file ``config`` as a ``seg_npz`` task reads it (the path), or for a folder task (``folder``:
    ``suite_grid.SegFolder``) its contents with ``data.source: seg_folder`` and none of the npz's source options
    (``label_key``, ``group_key: dup_group`` ...): a ``data.source`` override would be refused for leaving them
    behind. :func:`data_overrides` gives the folder's own ``file`` / ``group_key``."""
    if folder is None:
        return config
    import dataclasses

    import yaml

    from tpp.config.schema import DataConfig

    raw = yaml.safe_load(Path(config).read_text())
    common = {f.name for f in dataclasses.fields(DataConfig)} - {"options"}
    raw["data"] = {k: v for k, v in raw["data"].items() if k in common} | {"source": "seg_folder"}
    return raw


def folder_identity(folder, path: Path, name: str) -> dict:
    """What names a folder task's cells besides the protocol: the folder's content (:func:`folder_sha256`), the
    task's name (it seeds the split), the size it is read at and its groups; never its path."""
    return {"source": "seg_folder", "name": name, "folder_sha256": folder_sha256(path), "size": folder.size,
            "group_key": folder.group_key}


def folder_sha256(folder: Path) -> str:
    """sha256 (16 hex) over what a ``seg_folder`` reads: each file under ``images/`` and ``masks/`` and a
    ``metadata.csv``, as its path relative to ``folder`` and the sha256 of its bytes, sorted by path. A folder
    without images/ and masks/ is a TppError naming it."""
    import hashlib

    from tpp.errors import TppError
    from tpp.capped_read import file_sha256

    folder = Path(folder)
    for sub in ("images", "masks"):
        if not (folder / sub).is_dir():
            raise TppError(f"segmentation folder '{folder}' needs images/ and masks/ sub-folders "
                           f"('{folder / sub}' is missing).")
    files = [p for sub in ("images", "masks") for p in (folder / sub).rglob("*") if p.is_file()]
    files += [folder / "metadata.csv"] if (folder / "metadata.csv").is_file() else []
    digest = hashlib.sha256()
    for rel, path in sorted((p.relative_to(folder).as_posix(), p) for p in files):
        digest.update(f"{rel}\0{file_sha256(path)}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:16]


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
