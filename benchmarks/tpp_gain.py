"""Does target parameter pre-training (TPP) beat a random adapter initialisation with few labels?

    python benchmarks/tpp_gain.py --quick              # < 5 min: one seed, 10% labels, BreastMNIST
    python benchmarks/tpp_gain.py --budget-min 45      # fills the cell cache; repeat until the grid is complete
    python benchmarks/tpp_gain.py --report-only        # tables, JSON and plot from what the cache holds
    python benchmarks/tpp_gain.py --lr-grid --methods bottleneck bottleneck+tpp_mae --fractions 0.1 0.01 --no-modality
        # adapter methods with the learning rate chosen per seed on a few-label validation subsample
    python benchmarks/tpp_gain.py --lr-grid --methods dora houlsby+tpp_mae vpt_deep --fractions 0.1 --no-modality
        # option variants of a method (METHOD_VARIANTS) on the same axis

``lora+tpp_multitask``: LoRA from multi-task TPP (tpp_gain_multitask.py), paired with LoRA and both TPP pretexts.

Grid: targets x label fractions (1%, 10%, 100%; nested, stratified subsets shared by all methods)
x seeds (5, 5, 3) x methods (linear probe, LoRA, LoRA + TPP with the MAE and the DINO pretext, full
fine-tuning), plus the modality grid on PneumoniaMNIST (TPP on other sources with the same steps).
Every cell uses the same fixed step budget and keeps the last step (no validation-based selection: a
real few-label site has no big validation set). The seed fixes the label subset, the head and adapter
initialisation, the shuffling and the TPP run, so TPP and random init are paired per seed.

Cells are cached as JSON under ``--cache`` and TPP adapters per (source, pretext, seed), so a long grid
is completed over several invocations; a cached cell is reused only under the same protocol
and the same backbone weights (hashed by content: moving or linking the backbone folder keeps the cache).
Invocations with any method lists may share one cache. ``--from-results`` copies a published report's cells
into an empty cache (the cache is not in git; the reports are), so a fresh clone continues a grid.
Needs the ``bench`` extra (matplotlib, scipy).
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
import tpp_gain_multitask as multitask  # noqa: E402
from stamped import STAMP, move_into_place, stamped, train_once  # noqa: E402,F401  (tests use them from here)
from tpp.adapters.ssf import NORMS, SsfOptions  # noqa: E402
from tpp.errors import TppError  # noqa: E402
from lr_select import (base_rate, lr_grid, markdown_choices, markdown_quality, select_by_val,  # noqa: E402
                       selection_quality, split_lr)

PROTOCOL = {
    "finetune_steps": 200, "finetune_batch_size": 32, "selection": "last step of a fixed budget",
    "lr": {"linear_probe": 1e-3, "lora": 1e-3, "full": 1e-4}, "full_head_lr_scale": 10.0,
    "lora": {"r": 8, "alpha": 16, "target_modules": "q_proj, v_proj of every encoder layer"},
    "tpp_steps": 400, "tpp_batch_size": 64, "tpp_lr": 1e-3,
}
QUICK_PROTOCOL = dict(PROTOCOL, finetune_steps=60, tpp_steps=60)
FRACTION_SEEDS = {0.1: 5, 0.01: 5, 1.0: 3}
TARGETS = ["breastmnist", "pneumoniamnist"]
METHOD_GROUPS = [["lora", "lora+tpp_mae"], ["linear_probe", "full"], ["lora+tpp_dino"]]
MODALITY_TARGET, MODALITY_FRACTIONS = "pneumoniamnist", [0.1, 0.01]
MODALITY_SOURCES = ["mednist_cxr", "mednist_hand", "breastmnist"]
MEDNIST = ["data.source=npz", "data.file=mednist/mednist_64_every5th.npz", "data.modality=DX"]
SOURCES = {  # TPP image sources other than a MedMNIST dataset of the same name
    "mednist_cxr": MEDNIST + ["data.name=mednist_cxr", "data.classes=[CXR]"],
    "mednist_hand": MEDNIST + ["data.name=mednist_hand", "data.classes=[Hand]"],
}
# How cells without learning-rate selection validate: since issue 28 the val split is subsampled by the label
# fraction (tpp's default; under 10 val images no step selection, which the protocol never does anyway). Cells cached
# before kept the whole val split: same test AUROC (last step), other threshold, accuracy and val numbers. This key
# names fine-tuning cells and their cache folder only: TPP adapters (no validation) and learning-rate grid cells
# (always validated on the subsample) keep the protocol's own id, so their caches and reports stay valid.
VALIDATION = "val split subsampled by the label fraction"
CELLS, OLD_CELLS = "cells_valsub", "cells"  # cache folders of cells with and without the key
FINETUNE_CONFIG, TPP_CONFIG = "breast_us/mae_vit_tiny_lora_finetune.yaml", "breast_us/mae_vit_tiny_lora_tpp.yaml"


def source_overrides(source: str) -> list[str]:
    return SOURCES.get(source, ["data.source=medmnist", f"data.name={source}"])


# TPP variants for the investigation, named in a method as 'lora+tpp_mae~<variant>': extra overrides
# of the TPP run only (fine-tuning stays the same, so variants pair with the same random-init cells); appended to
# the protocol's settings, they replace those of the same key (run_recipe(..., later_wins=True))
VARIANTS = {
    "lr1e-4": ["train.lr=1e-4"],
    "steps1600": ["train.max_steps=1600"],
    "normpix": ["pretext.norm_pix_loss=true"],
    "mask50": ["pretext.mask_ratio=0.5"],
    "steps100": ["train.max_steps=100"],
}


# option variants of a method, named on the method axis like methods ('dora', 'houlsby+tpp_mae', 'vpt_deep%3e-3');
# a cached cell or TPP adapter is reused only with the same options
METHOD_VARIANTS = {
    "dora": ("lora", {"use_dora": True}),
    "rslora": ("lora", {"use_rslora": True}),
    "houlsby": ("bottleneck", {"style": "sequential", "target_modules": ["attention", "mlp"]}),
    "vpt_deep": ("vpt", {"deep": True}),
    "ssf_norms": ("ssf", {"target_modules": [*SsfOptions().target_modules, NORMS]}),  # the default Linears + norms
}


def adapter_section(base: str, protocol: dict) -> dict:
    """The adapter config of a method name: 'dora' -> {method: lora, use_dora: true, r: 8, alpha: 16}
    (LoRA-family cells take the protocol's rank and alpha), 'bottleneck' -> {method: bottleneck}."""
    method, options = METHOD_VARIANTS.get(base, (base, {}))
    section = {"method": method, **options}
    if method == "lora":
        section |= {"r": protocol["lora"]["r"], "alpha": protocol["lora"]["alpha"]}
    return section


def method_options(base: str) -> dict | None:
    """The options an option variant sets ('dora' -> {'use_dora': True}); None for a plain method."""
    return METHOD_VARIANTS[base][1] if base in METHOD_VARIANTS else None


def parse_method(method: str, target: str) -> tuple[str, str | None, str | None, str | None]:
    """'lora+tpp_mae~lr1e-4@mednist_cxr' -> ('lora', 'mae', 'lr1e-4', 'mednist_cxr'); the TPP source
    defaults to the target, the variant to None."""
    base, _, tpp = method.partition("+tpp_")
    if not tpp:
        return base, None, None, None
    tpp, _, source = tpp.partition("@")
    pretext, _, variant = tpp.partition("~")
    if variant and variant not in VARIANTS:
        raise ValueError(f"unknown TPP variant '{variant}' in '{method}'; known: {', '.join(VARIANTS)}")
    return base, pretext, variant or None, source or target


def check_methods(methods: list[str], protocol: dict) -> None:
    """Every method name gives a valid fine-tuning config, and with '+tpp_<pretext>' a valid TPP config
    (the recipes' own checks: a registered method with valid options, a registered pretext, a method with
    target parameters): a typo fails at once, not after hours of other cells."""
    from tpp.config import load_config
    from tpp.recipes import CONFIG_DIR, get_recipe

    for method in methods:
        base, pretext, variant, source = parse_method(split_lr(method)[0], "")
        try:
            get_recipe("finetune").check(load_config(CONFIG_DIR / FINETUNE_CONFIG, method_overrides(base, protocol),
                                                     recipe="finetune"))
            if pretext == multitask.PRETEXT:
                multitask.check(adapter_section(base, protocol), bool(variant or source))
            elif pretext:
                cfg = load_config(CONFIG_DIR / TPP_CONFIG, [f"pretext.name={pretext}", *tpp_method(base, protocol)],
                                  recipe="tpp")
                get_recipe("tpp").check(cfg)
        except TppError as exc:
            raise TppError(f"'{method}': {exc}") from None


def method_overrides(base: str, protocol: dict, lr: float | None = None) -> list[str]:
    """Adapter section and learning rate of a fine-tuning cell; ``lr`` (from a 'METHOD%LR' name) replaces
    the protocol's rate (other adapter methods default to LoRA's)."""
    lr = lr if lr is not None else base_rate(base, protocol["lr"])
    extra = [f"train.head_lr_scale={protocol['full_head_lr_scale']}"] if base == "full" else []
    return ["adapter=" + json.dumps(adapter_section(base, protocol)), f"train.lr={lr}"] + extra


def tpp_method(method: str, protocol: dict) -> list[str]:
    """The adapter section of a TPP run: the same as the fine-tuning cells' (LoRA with the protocol's rank)."""
    return ["adapter=" + json.dumps(adapter_section(method, protocol))]


def grid(targets, fractions, seeds_cap, methods, modality: bool) -> list[tuple]:
    """Cells (target, method, fraction, seed), ordered so that the main claim appears first: LoRA vs
    LoRA + TPP, then the modality grid, then the baselines, then the second pretext."""
    def block(group, fracs, group_targets):
        return [(t, m, f, seed) for f in fracs if f in fractions for seed in range(min(FRACTION_SEEDS[f], seeds_cap))
                for t in group_targets for m in group if m in methods or "@" in m]

    cells = block(METHOD_GROUPS[0], FRACTION_SEEDS, targets)
    grouped = {m for g in METHOD_GROUPS for m in g}
    cells += block([m for m in methods if m not in grouped], FRACTION_SEEDS, targets)  # e.g. TPP variants
    if modality and MODALITY_TARGET in targets and "lora+tpp_mae" in methods:
        cells += block([f"lora+tpp_mae@{s}" for s in MODALITY_SOURCES], MODALITY_FRACTIONS, [MODALITY_TARGET])
    for group in METHOD_GROUPS[1:]:
        cells += block(group, FRACTION_SEEDS, targets)
    return cells


class Bench:
    """Runs cells through the real recipes, with a JSON cache per cell and per TPP adapter."""

    def __init__(self, cache: Path, protocol: dict, backbone: str, data_root: str, multitask_protocol=None):
        self.protocol, self.backbone, self.data_root = protocol, backbone, data_root
        self.cache = report.backbone_cache(cache, backbone)  # cells and TPP adapters of this backbone only
        self.multitask = multitask_protocol or multitask.MULTITASK_PROTOCOL  # budget of '+tpp_multitask' adapters
        self.tpp_id = report.protocol_id(protocol, backbone)  # TPP adapters and learning-rate grid cells
        self.protocol_id = report.protocol_id(protocol, backbone, validation=VALIDATION)  # other fine-tuning cells

    def cell_id(self, method: str) -> str:
        """The protocol id a cell of ``method`` is cached under ('METHOD%LR' cells keep the TPP adapters' id)."""
        return self.tpp_id if split_lr(method)[1] is not None else self.protocol_id

    def cell_path(self, target, method, fraction, seed) -> Path:
        folder = method.replace("@", "_at_").replace("%", "_lr")
        cells = OLD_CELLS if self.cell_id(method) == self.tpp_id else CELLS  # cells of the old key stay put
        return self.cache / cells / target / folder / f"f{fraction:g}_s{seed}.json"

    def cached(self, *cell) -> dict | None:
        """The cell's result if it was run under this protocol (and, for a TPP variant, these overrides)."""
        path = self.cell_path(*cell)
        if path.is_file():
            data = json.loads(path.read_text())
            base, pretext, variant, source = parse_method(split_lr(cell[1])[0], cell[0])
            if (data.get("protocol_id") == self.cell_id(cell[1]) and data.get("tpp_variant") == VARIANTS.get(variant)
                    and data.get("method_options") == method_options(base) and multitask.same_protocol(
                        data.get("tpp_protocol"),
                        multitask.cell_config(self.multitask, pretext, source, adapter_section(base, self.protocol)))):
                return data
        return None

    def common(self, out: Path, seed: int) -> list[str]:
        return [f"backbone.path={self.backbone}", f"data.root={self.data_root}", f"output_dir={out}", f"seed={seed}"]

    def tpp_adapter(self, source: str, method: str, pretext: str, variant: str | None, seed: int) -> tuple[Path, float]:
        """A TPP adapter for (source, method, pretext, variant, seed), trained once and reused by every
        label fraction. It is trained in a folder of this process and moved into place with its stamp, so
        invocations sharing the cache never see, or write into, each other's half-trained adapter."""
        from tpp.recipes import CONFIG_DIR, run_recipe

        if pretext == multitask.PRETEXT:
            name, stamp_text, train = multitask.adapter_job(self, source, method,
                                                            adapter_section(method, self.protocol), seed)
        else:
            name = f"{source}_{method}_{pretext}" + (f"~{variant}" if variant else "") + f"_s{seed}"
            options, p = method_options(method), self.protocol
            stamp_text = (self.tpp_id + (json.dumps(VARIANTS[variant]) if variant else "")
                          + (json.dumps(options) if options else ""))

            def train(partial: Path) -> None:
                run_recipe("tpp", CONFIG_DIR / TPP_CONFIG, self.common(partial, seed) + source_overrides(source) + [
                    f"pretext.name={pretext}", f"train.max_steps={p['tpp_steps']}",
                    f"train.batch_size={p['tpp_batch_size']}", f"train.lr={p['tpp_lr']}", *tpp_method(method, p),
                    *VARIANTS.get(variant, [])], overwrite=True, later_wins=True)  # a variant's settings win
        out = self.cache / "tpp" / name
        train_once(out, stamp_text, train)
        return out / "adapter", json.loads((out / "metrics.json").read_text())["wall_time_s"]

    def run_cell(self, target: str, method: str, fraction: float, seed: int) -> dict:
        from tpp.recipes import CONFIG_DIR, run_recipe

        name, lr = split_lr(method)
        base, pretext, variant, source = parse_method(name, target)
        overrides = method_overrides(base, self.protocol, lr)
        tpp_s = None
        if pretext:
            adapter, tpp_s = self.tpp_adapter(source, base, pretext, variant, seed)
            overrides.append(f"adapter.init_from={adapter}")
        work = self.cache / "work" / f"finetune_{os.getpid()}"  # several invocations may share a cache
        try:
            metrics, _ = run_recipe("finetune", CONFIG_DIR / FINETUNE_CONFIG, self.common(work, seed) + overrides + [
                *source_overrides(target), f"data.label_fraction={fraction}", "train.select_best=false",
                f"train.max_steps={self.protocol['finetune_steps']}",
                f"train.batch_size={self.protocol['finetune_batch_size']}"],
                overwrite=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)  # full fine-tuning writes whole models: keep only the numbers
        cell = {"target": target, "method": method, "fraction": fraction, "seed": seed,
                "test_auroc": metrics["test"]["auroc"], "test_accuracy": metrics["test"]["accuracy"],
                "val_auroc": metrics["val"]["auroc"],  # for choosing settings without looking at test
                "val_images": metrics["val"]["n"], "selection": metrics.get("selection"),
                "threshold": metrics["test"].get("threshold"),  # the decision threshold, chosen on val
                "train_labels": metrics["train_examples"],
                "trainable_parameters": metrics["trainable_parameters"], "finetune_s": metrics["wall_time_s"],
                "tpp_s": tpp_s, "protocol_id": self.cell_id(method), "tpp_variant": VARIANTS.get(variant),
                "method_options": method_options(base), "tpp_protocol": multitask.cell_config(
                    self.multitask, pretext, source, adapter_section(base, self.protocol))}
        self.store(cell)
        return cell

    def store(self, cell: dict) -> None:
        report.store_cell(self.cell_path(cell["target"], cell["method"], cell["fraction"], cell["seed"]), cell)

    def adopt(self, published: Path) -> int:
        """Copy into the cache the cells of a published ``tpp_gain.json`` (see ``report.adopt``) measured under
        the id their method has now (cells from before :data:`VALIDATION` was keyed are not adopted)."""
        def args(c):
            return c["target"], c["method"], c["fraction"], c["seed"]

        def cached_or_other_key(pid):  # a cell of another key counts as present: never stored
            return lambda *cell: self.cached(*cell) or (self.cell_id(cell[1]) != pid)
        return sum(report.adopt(published, pid, args, cached_or_other_key(pid), self.store)
                   for pid in (self.tpp_id, self.protocol_id))


def quiet_libraries() -> None:
    """One line per cell: no weight-loading bars or library deprecation notices."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*pre-trained on modality.*")  # the modality grid does this on purpose


def fill(bench: Bench, cells: list[tuple], budget_s: float) -> tuple[list[dict], list[tuple], list[str]]:
    """Run missing cells until the budget would be exceeded. Returns (done, missing, errors)."""
    return report.fill(bench.run_cell, bench.cached, cells, budget_s, kind=lambda cell: cell[1],
                       describe=lambda cell, r: f"{cell[0]} {cell[1]} {cell[2]:.0%} seed {cell[3]}: "
                                                f"AUROC {report.num(r['test_auroc'])}", first_estimate_s=90.0,
                       claims=report.CellClaims(bench.cache / "claims"))


def comparisons_for(methods: list[str]) -> list[tuple[str, str]]:
    """Paired comparisons: every TPP method against random init of its base method, TPP variants and
    other TPP sources also against the default TPP; LoRA against the linear probe, full against LoRA."""
    pairs = [("lora", "linear_probe"), ("full", "lora")]
    for m in methods:
        selected = m.endswith("*")  # learning rate chosen on validation: compare like with like
        base, pretext, variant, _ = parse_method(m.rstrip("*"), "")
        if pretext:
            pairs.append((m, base + ("*" if selected else "")))
            if variant or "@" in m:
                pairs.append((m, f"{base}+tpp_{pretext}"))
            if pretext == multitask.PRETEXT:  # multi-task vs each single-pretext TPP (like with like)
                pairs += [(m, f"{base}+tpp_{other}" + ("*" if selected else "")) for other in ("mae", "dino")]
        elif selected and base != "lora":
            pairs.append((m, "lora*"))
    return [(a, b) for a, b in pairs if a in methods and b in methods]


def write_report(bench: Bench, cells: list[tuple], out: Path, missing: list, quick: bool) -> dict:
    raw = [r for r in (bench.cached(*c) for c in cells) if r]
    if not raw:
        print("no finished cells yet")
        return {}
    selected, choices = select_by_val(raw, bench.protocol["lr"])  # 'METHOD%LR' cells -> 'METHOD*' chosen on val
    quality = selection_quality(choices)
    results = [r for r in raw if split_lr(r["method"])[1] is None] + selected
    rows = report.summarise(results)
    comparisons = comparisons_for(sorted({r["method"] for r in results}))
    diffs = [d for a, b in comparisons for d in report.paired(results, a, b)]
    command = "python benchmarks/tpp_gain.py " + " ".join(sys.argv[1:])
    mt = bench.multitask if any(r.get("tpp_protocol") for r in raw) else None  # budget of '+tpp_multitask' cells
    text = (f"Machine: {json.dumps(report.machine())}\nCommand: `{command}`\nProtocol: `{json.dumps(bench.protocol)}`\n"
            + (f"Multi-task TPP: `{json.dumps(mt)}` (pool: each cell's `tpp_protocol`).\n" if mt else "")
            + f"Validation: {VALIDATION}.\n"
            f"Cells: {len(raw)} of {len(cells)} finished{' (quick mode)' if quick else ''}.\n\n"
            f"{report.markdown_results(rows)}\n\nPaired differences (same seed, same label subset):\n\n"
            f"{report.markdown_paired(diffs)}\n"
            + ("\nHow good the learning rate chosen on the validation subsample is ('METHOD*' rows):\n\n"
               f"{markdown_quality(quality)}\n\nThe choices:\n\n{markdown_choices(choices)}\n"
               if choices else ""))
    payload = {"machine": report.machine(), "command": command, "protocol": bench.protocol,
               "protocol_id": bench.protocol_id, "tpp_protocol_id": bench.tpp_id, "validation": VALIDATION,
               "multitask_protocol": mt,
               "complete": not missing and len(raw) == len(cells),
               "rows": rows, "paired": diffs, "lr_choices": choices, "lr_selection_quality": quality, "cells": raw}
    report.write_atomic(out / "tpp_gain.json", json.dumps(payload, indent=1))
    report.write_atomic(out / "tpp_gain.md", text)
    report.plot(rows, out / "tpp_gain.png")
    print("\n" + text + f"\nwrote {out}/tpp_gain.{{json,md,png}}")
    return payload


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one seed at 10%% labels on BreastMNIST, short budgets")
    parser.add_argument("--targets", nargs="+", default=None, help="MedMNIST dataset names (default: %(default)s)")
    parser.add_argument("--fractions", nargs="+", type=float, default=None, help="subset of 0.01 0.1 1.0")
    parser.add_argument("--methods", nargs="+", default=None,
                        help="registered adapter methods or option variants (" + ", ".join(METHOD_VARIANTS)
                             + "), each optionally with +tpp_<pretext>")
    parser.add_argument("--max-seeds", type=int, default=5, help="cap on seeds per fraction")
    parser.add_argument("--lr-grid", action="store_true",
                        help="run every method at 1/3, 1 and 3x its rate ('METHOD%%LR' cells, validated on a "
                             "label-fraction val subsample) and report the val-chosen rate as 'METHOD*'")
    parser.add_argument("--no-modality", action="store_true", help="skip the modality grid")
    parser.add_argument("--budget-min", type=float, default=45.0, help="stop starting cells after this many minutes")
    parser.add_argument("--report-only", action="store_true", help="no training: report the cached cells")
    parser.add_argument("--backbone", default="builtin:mae-vit-tiny-med")
    parser.add_argument("--data-root", default=os.environ.get("TPP_DATA_ROOT", str(ROOT.parent / "shared" / "data")))
    parser.add_argument("--cache", type=Path, default=None,
                        help="cell cache (default benchmarks/.cache/tpp_gain[_quick])")
    report.add_from_results_option(parser)
    parser.add_argument("--out", type=Path, default=None,
                        help="report folder (default benchmarks/results, quick: runs/bench_quick)")
    args = parser.parse_args(argv)
    report.check_grid_args(parser, args.targets or (), args.fractions or (), args.max_seeds, args.budget_min,
                           allowed_fractions=list(FRACTION_SEEDS), seeds_flag="--max-seeds")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    quiet_libraries()
    methods = args.methods or [m for g in METHOD_GROUPS for m in g]
    if args.quick:
        targets, fractions, seeds, modality = args.targets or ["breastmnist"], args.fractions or [0.1], 1, False
        methods = args.methods or ["linear_probe", "lora", "lora+tpp_mae"]
    else:
        targets, fractions, seeds, modality = args.targets or TARGETS, args.fractions or list(FRACTION_SEEDS), \
            args.max_seeds, not args.no_modality
    suffix = "_quick" if args.quick else ""
    cache = args.cache or ROOT / "benchmarks" / ".cache" / f"tpp_gain{suffix}"
    out = args.out or (ROOT / "runs" / "bench_quick" if args.quick else ROOT / "benchmarks" / "results")
    bench = Bench(cache, QUICK_PROTOCOL if args.quick else PROTOCOL, args.backbone, args.data_root,
                  multitask.QUICK_MULTITASK_PROTOCOL if args.quick else multitask.MULTITASK_PROTOCOL)
    if args.lr_grid:
        methods = [variant for m in methods for variant in lr_grid(m, bench.protocol["lr"])]
    try:
        check_methods(methods, bench.protocol)
    except (TppError, ValueError) as exc:
        parser.error(f"--methods: {exc}")
    report.adopt_all(parser, args.from_results, bench.adopt, cache, own=out / "tpp_gain.json")
    cells = grid(targets, fractions, seeds, methods, modality)
    missing, errors = [], []
    if not args.report_only:
        _, missing, errors = fill(bench, cells, args.budget_min * 60)
    write_report(bench, cells, out, missing, args.quick)
    return report.finish(missing, errors)


if __name__ == "__main__":
    sys.exit(main())
