"""Input-side adaptation (MoVL) against the usual methods, in distribution and under MedMNIST-C corruptions.

    python benchmarks/movl.py --targets breastmnist --fractions 0.1 --seeds 2      # the cheapest slice
    python benchmarks/movl.py --budget-min 60                                    # the whole grid, an hour at a time
    python benchmarks/movl.py --report-only                                      # tables from the cache

Grid: targets (BreastMNIST, PneumoniaMNIST) x label fractions (10%, 100%) x seeds (5) x methods: linear probe,
visual prompt alone (+ head), MoVL (prompt + linear probe + discrepancy), LoRA, visual prompt + LoRA (one composed
adapter), full fine-tuning, and each prompt method again with its parameters pre-trained by TPP first (``+tpp``: MAE
pretext on the target's training images; for the composed adapter, prompt and LoRA together). Each cell
fine-tunes with a fixed step budget and keeps the last step, then evaluates the test split clean and under every
MedMNIST-C corruption of the target at severities 1..5 (``evaluate.corruption=all``).
Prompt methods see a 36-px input (``backbone.input_size=36``, ``pad=4``: the 28-px image inside a 4-px frame).
Cells are cached as JSON under ``--cache`` (one file per cell, keyed by the protocol and the backbone's content:
a cell of another protocol or backbone is never reused), so a long grid is completed over several runs; a failing
cell is reported and skipped. Writes ``benchmarks/results/movl.{json,md}`` for the requested grid's cached cells:
per method and cell mean +- std over seeds of test AUROC / accuracy, the corrupted AUROC (mean over corruptions per
severity; per corruption at severity 3), paired differences to full fine-tuning and of each ``+tpp`` method to its
random-init twin by seed (mean and 95% t-interval), trainable parameters and saved size; ``movl.png`` plots
test AUROC against severity (0 = clean) per method.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
import report  # noqa: E402

PROTOCOL = {"finetune_steps": 200, "batch_size": 32, "selection": "last step of a fixed budget",
            "lr": {"full": 1e-4, "default": 1e-3}, "prompt_lr": 1e-2, "tpp_steps": 200, "tpp_lr": 1e-2,
            "prompt": {"mode": "pad", "pad": 4, "input_size": 36}, "lora": {"r": 8}, "movl_discrepancy": 0.1}
METHODS = ["linear_probe", "visual_prompt", "visual_prompt+tpp", "movl", "movl+tpp", "lora", "visual_prompt+lora",
           "visual_prompt+lora+tpp", "full"]  # METHOD+tpp: METHOD with its parameters pre-trained by MAE-TPP first
TARGETS, FRACTIONS, SEEDS = ["breastmnist", "pneumoniamnist"], [0.1, 1.0], 5
FINETUNE_CONFIG, TPP_CONFIG = "breast_us/mae_vit_tiny_lora_finetune.yaml", "breast_us/mae_vit_tiny_lora_tpp.yaml"


def adapter_overrides(method: str) -> dict:
    """The adapter / backbone keys of a method (prompt methods: 36-px input, pad 4)."""
    prompt = {"adapter.input_size": 36, "adapter.mode": "pad", "adapter.pad": 4}
    if method == "visual_prompt":
        return {"adapter.method": "visual_prompt", **prompt, "backbone.input_size": 36,
                "train.lr": PROTOCOL["prompt_lr"]}
    if method.startswith("movl"):
        return {"adapter.method": "movl", **prompt, "adapter.discrepancy_weight": PROTOCOL["movl_discrepancy"],
                "backbone.input_size": 36, "train.lr": PROTOCOL["prompt_lr"]}
    if method == "visual_prompt+lora":
        return {"adapter": {"method": ["visual_prompt", "lora"], "visual_prompt": PROTOCOL["prompt"],
                            "lora": PROTOCOL["lora"]}, "backbone.input_size": 36}
    if method == "lora":
        return {"adapter.method": "lora", "adapter.r": PROTOCOL["lora"]["r"]}
    return {"adapter.method": method, "train.lr": PROTOCOL["lr"].get(method, PROTOCOL["lr"]["default"]),
            **({"train.head_lr_scale": 10.0} if method == "full" else {})}


def run_cell(target: str, fraction: float, seed: int, method: str, data_root: str, backbone: str, work: Path) -> dict:
    """Fine-tune (after TPP for ``METHOD+tpp``), evaluate clean and corrupted; the cell's numbers."""
    import tpp

    base = {"backbone.path": backbone, "data.root": data_root, "data.name": target, "seed": seed,
            "train.batch_size": PROTOCOL["batch_size"]}
    adapter = adapter_overrides(method.removesuffix("+tpp"))
    overrides = {**base, **adapter, "data.label_fraction": fraction,
                 "train.max_steps": PROTOCOL["finetune_steps"], "train.select_best": False}
    overrides.setdefault("train.lr", PROTOCOL["lr"]["default"])
    began, tpp_s = time.time(), None
    if method.endswith("+tpp"):
        parent = tpp.pretrain_target_parameters(
            TPP_CONFIG, {**base, **adapter, "train.max_steps": PROTOCOL["tpp_steps"],
                         "train.lr": PROTOCOL["tpp_lr"]}, output_dir=work / "tpp", overwrite=True)
        overrides["adapter.init_from"], tpp_s = str(parent.adapter), parent.metrics.get("wall_time_s")
    ft = tpp.finetune(FINETUNE_CONFIG, overrides, output_dir=work / "ft", overwrite=True)
    ev = tpp.evaluate(FINETUNE_CONFIG, {k: v for k, v in base.items() if not k.startswith("train.")}
                      | {"evaluate.corruption": "all", "data.split": "test",
                         **({"backbone.input_size": 36} if "prompt" in method or "movl" in method else {})},
                      adapter=ft.adapter, output_dir=work / "ev", overwrite=True)
    shift = ev.metrics["corruption"]
    return {"target": target, "fraction": fraction, "seed": seed, "method": method,
            "test_auroc": ev.metrics["test"]["auroc"], "test_accuracy": ev.metrics["test"]["accuracy"],
            "corrupted_auroc": {s: m["auroc"] for s, m in shift["mean"].items()},
            "corrupted_accuracy": {s: m["accuracy"] for s, m in shift["mean"].items()},
            "per_corruption_auroc_s3": {c: v["3"]["auroc"] for c, v in shift["per_corruption"].items()},
            "trainable_parameters": ft.metrics["trainable_parameters"], "saved_bytes": ft.metrics["adapter_bytes"],
            "finetune_s": ft.metrics.get("wall_time_s"), "tpp_s": tpp_s,  # the recipes' own (the suite's train s)
            "wall_s": round(time.time() - began, 1)}


def cell_path(cache: Path, target, fraction, seed, method) -> Path:
    return cache / f"{target}_{fraction}_{seed}_{method.replace('+', '-')}.json"


class Cache(report.CellCache):
    """Cells (target, fraction, seed, method) under ``folder/<id>/``, the id naming the protocol, the shipped
    configs' content and the backbone's content: cells of another protocol (a ``--steps`` smoke run, an edited
    config) live in another folder and never replace or count as these."""

    def __init__(self, folder: Path, backbone: str):
        from tpp.recipes import CONFIG_DIR
        from tpp.capped_read import file_sha256

        configs = {name: file_sha256(CONFIG_DIR / name) for name in (FINETUNE_CONFIG, TPP_CONFIG)}
        super().__init__(folder, report.protocol_id(PROTOCOL, backbone, configs=configs),
                         key=lambda c: (c["target"], c["fraction"], c["seed"], c["method"]),
                         name=lambda *key: cell_path(Path(), *key).name)


def _ms(values: list) -> str:
    """Mean +- sample std of the defined values; the mean alone from one value (its spread is unknown, not 0);
    "-" when none is defined."""
    mean, sd = report.mean_std(values)
    if mean is None:
        return "-"
    return f"{mean:.3f} +- {sd:.3f}" if len(report.defined(values)) > 1 else f"{mean:.3f} (1 seed)"


def severity_mean(cell: dict) -> float | None:
    """A cell's corrupted AUROC averaged over corruptions and the severities it holds (1-5); None if undefined."""
    return report.mean_std(list(cell["corrupted_auroc"].values()))[0]


def _ci(values: list) -> str:
    """Mean and 95% t-interval of paired differences, with the number of pairs ("-" when none)."""
    n = len(report.defined(values))
    if not n:
        return "-"
    mean, low, high = report.t_interval(values)
    interval = "" if math.isnan(low) else f" [{low:+.3f}, {high:+.3f}]"
    return f"{mean:+.3f}{interval} (n={n})"


def _minus(a: float | None, b: float | None) -> float | None:
    """a - b, undefined (None) when either is."""
    return None if a is None or b is None else a - b


def tables(cells: list[dict]) -> str:
    """Markdown: one table per (target, fraction)."""
    out = []
    groups = sorted({(c["target"], c["fraction"]) for c in cells})
    for target, fraction in groups:
        rows = [c for c in cells if c["target"] == target and c["fraction"] == fraction]
        full = {c["seed"]: c for c in rows if c["method"] == "full"}
        out += [f"### {target}, {fraction:.0%} labels", "",
                "| method | seeds | test AUROC | test acc | corrupted AUROC s1 / s3 / s5 | corrupted AUROC mean s1-5 | "
                "AUROC - full (paired, 95% CI) | acc - full (paired) | corrupted s3 - full (paired) | "
                "corrupted mean - full (paired) | trainable | saved KiB |", "|---" * 12 + "|"]
        for method in METHODS:
            mine = [c for c in rows if c["method"] == method]
            if not mine:
                continue
            corrupt = " / ".join(_ms([c["corrupted_auroc"][s] for c in mine]).split(" +-")[0] for s in ("1", "3", "5"))
            paired = [_minus(c["test_auroc"], full[c["seed"]]["test_auroc"]) for c in mine if c["seed"] in full]
            paired_s3 = [_minus(c["corrupted_auroc"]["3"], full[c["seed"]]["corrupted_auroc"]["3"])
                         for c in mine if c["seed"] in full]
            paired_acc = [c["test_accuracy"] - full[c["seed"]]["test_accuracy"] for c in mine if c["seed"] in full]
            paired_mean = [_minus(severity_mean(c), severity_mean(full[c["seed"]])) for c in mine if c["seed"] in full]
            vs_full = [_ci(v) if method != "full" else "-" for v in (paired, paired_acc, paired_s3, paired_mean)]
            out.append(f"| {method} | {len(mine)} | {_ms([c['test_auroc'] for c in mine])} | "
                       f"{_ms([c['test_accuracy'] for c in mine])} | {corrupt} | "
                       f"{_ms([severity_mean(c) for c in mine])} | {' | '.join(vs_full)} | "
                       f"{mine[0]['trainable_parameters']:,} | {mine[0]['saved_bytes'] / 1024:.0f} |")
        names = sorted({k for c in rows for k in c["per_corruption_auroc_s3"]})
        out += ["", "Per corruption at severity 3 (test AUROC, mean over seeds):", "",
                "| method | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for method in METHODS:
            mine = [c for c in rows if c["method"] == method]
            if mine:
                means = [report.mean_std([c["per_corruption_auroc_s3"][n] for c in mine])[0] for n in names]
                out.append(f"| {method} | " + " | ".join(report.num(m) for m in means) + " |")
        out += tpp_lines(rows) + [""]
    return "\n".join(out)


def tpp_lines(rows: list[dict]) -> list[str]:
    """Markdown lines: each ``METHOD+tpp`` against ``METHOD`` (random init) on the same seeds, clean and corrupted
    (paired differences, 95% t-intervals); none when no such pair is cached."""
    lines = []
    for method in (m for m in METHODS if m.endswith("+tpp")):
        twin = {c["seed"]: c for c in rows if c["method"] == method.removesuffix("+tpp")}
        mine = [c for c in rows if c["method"] == method and c["seed"] in twin]
        if mine:
            diffs = [[_minus(f(c), f(twin[c["seed"]])) for c in mine] for f in (
                lambda c: c["test_auroc"], lambda c: c["corrupted_auroc"]["3"], severity_mean)]
            lines.append(f"| {method} - {method.removesuffix('+tpp')} | " + " | ".join(map(_ci, diffs)) + " |")
    head = ["", "TPP against random initialisation of the same method (paired by seed, 95% CI):", "",
            "| pair | test AUROC | corrupted AUROC s3 | corrupted mean s1-5 |", "|---|---|---|---|"]
    return head + lines if lines else []


def severity_points(cells: list[dict]) -> list[tuple[int, float, float]]:
    """(severity, mean AUROC over seeds, 95% t half-width or 0) for severities 0 (the clean test split) to 5
    (mean over corruptions), from ``cells`` of one method; undefined AUROCs are left out."""
    points = []
    for severity in range(6):
        values = report.defined([c["test_auroc"] if severity == 0 else c["corrupted_auroc"].get(str(severity))
                                 for c in cells])
        if values:
            mean, low, high = report.t_interval(values)
            points.append((severity, mean, 0.0 if math.isnan(low) else (high - low) / 2))
    return points


def severity_plot(cells: list[dict], path: Path) -> None:
    """``path`` (PNG): test AUROC against corruption severity (0 = clean), one panel per (target, fraction),
    one line per method, mean over seeds with its 95% t-interval; written through a temporary file."""
    import suite_plots

    panels = sorted({(c["target"], c["fraction"]) for c in cells})
    fig, axes = suite_plots._panels([f"{t}, {f:.0%} labels" for t, f in panels])
    for (target, fraction), ax in zip(panels, axes.values()):
        for i, method in enumerate(METHODS):
            mine = [c for c in cells if (c["target"], c["fraction"], c["method"]) == (target, fraction, method)]
            points = severity_points(mine)
            if points:
                x, y, e = zip(*points)
                dodge = (i - (len(METHODS) - 1) / 2) * 0.05  # side by side, so the intervals stay readable
                ax.errorbar([v + dodge for v in x], y, yerr=e, marker="o", capsize=3, color=suite_plots._color(method),
                            label=f"{method} ({len(mine)} seeds)")
        ax.set(xlabel="MedMNIST-C severity (0: clean; mean over corruptions)", ylabel="test AUROC",
               title=f"{target}, {fraction:.0%} labels", xticks=range(6))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    suite_plots._save(fig, path)


def grid(targets, fractions, seeds: int, methods) -> list[tuple]:
    """Cells (target, fraction, seed, method), seed-major so that every method of a seed finishes before the next
    seed starts (paired statistics grow one complete seed at a time)."""
    return [(t, f, s, m) for t in targets for f in fractions for s in range(seeds) for m in METHODS if m in methods]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--targets", nargs="+", default=TARGETS)
    parser.add_argument("--fractions", nargs="+", type=float, default=FRACTIONS)
    parser.add_argument("--seeds", type=int, default=SEEDS)
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--cache", default=str(ROOT / "benchmarks" / ".cache" / "movl"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--data-root", default=os.environ.get("TPP_DATA_ROOT", "/work/shared/data") + "/medmnist")
    parser.add_argument("--backbone", default="builtin:mae-vit-tiny-med")
    parser.add_argument("--budget-min", type=float, default=math.inf,
                        help="stop starting cells after this many minutes (default: run the whole grid)")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--steps", type=int, help="fine-tuning and TPP steps (a smoke run: another protocol id, "
                                                  "so its cells never mix with the real ones)")
    report.add_from_results_option(parser)
    args = parser.parse_args(argv)
    report.check_grid_args(parser, args.targets, args.fractions, args.seeds, args.budget_min)
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}")
    if args.steps:
        if args.out == parser.get_default("out"):
            parser.error("--steps is a smoke run: give it its own --out (the published report stays)")
        PROTOCOL.update(finetune_steps=args.steps, tpp_steps=args.steps)
    cache = Cache(Path(args.cache), args.backbone)
    report.adopt_all(parser, args.from_results, cache.adopt, args.cache, own=Path(args.out) / "movl.json")
    cells = grid(args.targets, args.fractions, args.seeds, args.methods)
    missing, errors = [], []
    if not args.report_only:
        def run(target, fraction, seed, method):
            with tempfile.TemporaryDirectory() as work:
                cell = run_cell(target, fraction, seed, method, args.data_root, args.backbone, Path(work))
            cache.store(cell)
            return cell

        _, missing, errors = report.fill(
            run, cache.cached, cells, args.budget_min * 60, kind=lambda c: c[3], first_estimate_s=600.0,
            describe=lambda c, r: f"{c[0]} {c[1]:.0%} seed {c[2]} {c[3]}: AUROC {report.num(r['test_auroc'])}, "
                                  f"corrupted s3 {report.num(r['corrupted_auroc']['3'])}",
            claims=report.CellClaims(cache.folder / "claims"))
    in_grid = sum(1 for cell in cells if cache.cached(*cell))
    done = cache.cells()
    print(f"{in_grid} of {len(cells)} cells of the grid cached; {len(done)} cells under protocol {cache.id} "
          f"({cache.folder}) reported")
    if not done:  # never replace a published report with an empty one
        print("nothing to report: no cell is cached under this protocol (--from-results benchmarks/results/movl.json "
              "copies the published ones)")
        return report.finish(missing, errors)
    report.publish(args.out, "movl", report.machine(), " ".join(["python benchmarks/movl.py", *(argv or sys.argv[1:])]),
                   __doc__.split("\n")[0], tables(done), {"protocol": PROTOCOL, "protocol_id": cache.id,
                                                            "cells": done})
    severity_plot(done, Path(args.out) / "movl.png")
    return report.finish(missing, errors)


if __name__ == "__main__":
    sys.exit(main())
