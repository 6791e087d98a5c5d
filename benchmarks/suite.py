"""One standardised benchmark: generalist vs task-specific, with accuracy, parameters, FLOPs, memory and latency.

    python benchmarks/suite.py --budget-min 60            # fill cells of benchmarks/suite.yaml; repeat to continue
    python benchmarks/suite.py --report-only              # cost measurements + report from what the caches hold
    python benchmarks/suite.py --grid my_grid.yaml --out runs/suite
    python benchmarks/suite.py --no-published --cache /tmp/empty --out runs/suite  # measure every cell again

The grid (tasks x approaches x label fractions x seeds) is declared in a YAML file (see suite_grid.py and
benchmarks/README.md). Cells run through the existing benches and share their caches: classification cells of the
generalist approaches ARE ``benchmarks/tpp_gain.py`` cells (same protocol, same cache
``benchmarks/.cache/tpp_gain``), segmentation cells are ``benchmarks/seg_gain.py`` cells (``.cache/seg_gain``,
the U-Net included); the ResNet-18 (28) cells (benchmarks/resnet.py) have their own cache
``.cache/suite_resnet``; the in-context approaches (prototype, knn, incontext_learned: suite_incontext.py, the
cell's label subset as the context set) ``.cache/suite_incontext``; MoVL (movl, movl+tpp: suite_movl.py) cells ARE
``benchmarks/movl.py`` cells of that method (its protocol, 36-px prompted input, cache ``.cache/movl``, seeded from
``results/movl.json``). The report files ``published`` in the grid seed empty caches (a fresh clone continues).
Per (task, approach) the cost is measured once per invocation (benchmarks/cost.py): parameters, FLOPs per image,
latency per image at batch 1 and 32, peak memory in a fresh subprocess. Needs the ``bench`` extra.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
import report  # noqa: E402
import resnet  # noqa: E402
import seg_gain  # noqa: E402
import suite_incontext  # noqa: E402
import suite_movl  # noqa: E402
import tpp_gain  # noqa: E402
from suite_grid import GridError, Task, load_grid  # noqa: E402
from tpp.errors import TppError  # noqa: E402

DEFAULT_GRID = Path(__file__).parent / "suite.yaml"


def merged(defaults: dict, overrides: dict, path, where: str) -> dict:
    """A protocol with the grid's overrides; an unknown key is a GridError naming the file and key."""
    for key in overrides:
        if key not in defaults:
            raise GridError(f"{path}: unknown key 'protocols.{where}.{key}'. Known: {', '.join(defaults)}.")
    return dict(defaults, **overrides)


class ResNetBench:
    """ResNet-18 (28) cells, cached as JSON per (target, fraction, seed) under this protocol."""

    def __init__(self, cache: Path, protocol: dict, data_root: str):
        self.cache, self.protocol, self.data_root = cache, protocol, data_root
        self.deadline: float | None = None  # time.time() at which a cell saves its state and pauses
        key = json.dumps({"resnet18": protocol}, sort_keys=True)
        self.protocol_id = hashlib.sha256(key.encode()).hexdigest()[:12]

    def cell_path(self, target: str, fraction: float, seed: int) -> Path:
        return self.cache / "cells" / target / f"f{fraction:g}_s{seed}.json"

    def state_path(self, target: str, fraction: float, seed: int) -> Path:
        """Where an unfinished cell's training state waits (resnet.TrainingState; its protocol inside)."""
        return self.cache / "partial" / self.protocol_id / target / f"f{fraction:g}_s{seed}.pt"

    def cached(self, target: str, fraction: float, seed: int) -> dict | None:
        path = self.cell_path(target, fraction, seed)
        if path.is_file():
            data = json.loads(path.read_text())
            return data if data.get("protocol_id") == self.protocol_id else None
        return None

    def run_cell(self, target: str, fraction: float, seed: int) -> dict:
        from tpp.data.arrays import load_medmnist

        p = self.protocol
        metrics = resnet.train_resnet(load_medmnist(target, self.data_root), fraction, seed,
                                      {k: p[k] for k in resnet.PROTOCOL}, tuple(p["widths"]),
                                      checkpoint=self.state_path(target, fraction, seed), deadline=self.deadline)
        cell = {"target": target, "method": "resnet18", "fraction": fraction, "seed": seed,
                "test_auroc": metrics["test"]["auroc"], "test_accuracy": metrics["test"]["accuracy"],
                "train_labels": metrics["train_examples"], "trainable_parameters": metrics["trainable_parameters"],
                "finetune_s": metrics["wall_time_s"], "epoch_s": metrics["epoch_s"], "tpp_s": None,
                "device": metrics["device"], "protocol_id": self.protocol_id}
        report.store_cell(self.cell_path(target, fraction, seed), cell)
        return cell

    def adopt(self, published: Path) -> int:
        return report.adopt(published, self.protocol_id, lambda c: (c["target"], c["fraction"], c["seed"]),
                            self.cached, lambda c: report.store_cell(self.cell_path(c["target"], c["fraction"],
                                                                                     c["seed"]), c))


class CostCache:
    """Measured costs as JSON per measurement key (a model spec) under ``folder``: reports render again without
    measuring again. A measurement without peak memory does not answer a request with it."""

    def __init__(self, folder: Path):
        self.folder = folder

    def path(self, key: str) -> Path:
        return self.folder / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"

    def get(self, key: str, memory: bool = False) -> dict | None:
        path = self.path(key)
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        return data if data.get("key") == key and (not memory or "inference_mib" in data) else None

    def put(self, key: str, value: dict) -> None:
        report.write_atomic(self.path(key), json.dumps(dict(value, key=key), indent=1))


class Suite:
    """Dispatches suite cells (Task, approach, fraction, seed) to the bench that owns them."""

    def __init__(self, grid, cache_root: Path, data_root: str):
        self.grid, self.data_root = grid, data_root
        prot = grid.protocols
        self.classification = tpp_gain.Bench(cache_root / "tpp_gain", merged(
            tpp_gain.PROTOCOL, prot.get("classification", {}), grid.path, "classification"), grid.backbone, data_root)
        self.seg_protocol = merged(seg_gain.PROTOCOL, prot.get("segmentation", {}), grid.path, "segmentation")
        self.seg_cache = cache_root / "seg_gain"
        self.resnet = ResNetBench(cache_root / "suite_resnet", merged(
            dict(resnet.PROTOCOL, widths=[64, 128, 256, 512]), prot.get("resnet18", {}), grid.path, "resnet18"),
            data_root)
        self.incontext = suite_incontext.InContextBench(cache_root / "suite_incontext", merged(
            suite_incontext.PROTOCOL, prot.get("incontext", {}), grid.path, "incontext"), grid.backbone, data_root,
            grid.incontext_models)
        self.movl = suite_movl.MovlBench(cache_root / "movl", grid.backbone, data_root)
        self._seg = {}
        self.cost_cache = CostCache(cache_root / "suite_cost")
        self.claims = report.CellClaims(cache_root / "claims" / "suite")  # two invocations split the grid

    def seg(self, task: Task) -> seg_gain.SegBench:
        if task.name not in self._seg:
            self._seg[task.name] = seg_gain.SegBench(self.seg_cache, self.seg_protocol, self.grid.backbone,
                                                     self.data_root, task.file, task.name, task.folder)
        return self._seg[task.name]

    def cached(self, task: Task, approach: str, fraction: float, seed: int) -> dict | None:
        if approach in suite_incontext.APPROACHES:
            return self.incontext.cached(task, approach, fraction, seed)
        if approach in suite_movl.APPROACHES:
            return self.movl.cached(task, approach, fraction, seed)
        if approach == "resnet18":
            return self.resnet.cached(task.name, fraction, seed)
        if task.kind == "segmentation":
            return self.seg(task).cached(approach, fraction, seed)
        return self.classification.cached(task.name, approach, fraction, seed)

    def run_cell(self, task: Task, approach: str, fraction: float, seed: int) -> dict:
        if approach in suite_incontext.APPROACHES:
            return self.incontext.run_cell(task, approach, fraction, seed)
        if approach in suite_movl.APPROACHES:
            return self.movl.run_cell(task, approach, fraction, seed)
        if approach == "resnet18":
            return self.resnet.run_cell(task.name, fraction, seed)
        if task.kind == "segmentation":
            return self.seg(task).run_cell(approach, fraction, seed)
        return self.classification.run_cell(task.name, approach, fraction, seed)

    def resnet_estimate_s(self, task: Task, fraction: float) -> float:
        """A-priori seconds of a ResNet-18 cell: one measured training step's seconds per image (batch 16, one
        thread, this machine as loaded now) x the label subset's images x epochs; evaluation is not counted."""
        import cost
        from cost import train_s_per_image
        from suite_models import build
        from suite_report import spec_of


        spec = spec_of(self, task, "resnet18")
        key = json.dumps({"train_s_per_image": spec, "cost": cost.KEY}, sort_keys=True)
        if self.cost_cache.get(key) is None:
            model, example = build(spec)
            with cost.fixed_threads():  # the threads it is timed at, with the load, recorded beside it
                self.cost_cache.put(key, {"train_s_per_image": train_s_per_image(model, example, spec["classes"]),
                                          **cost.conditions()})
        return self.cost_cache.get(key)["train_s_per_image"] * self.resnet_images(task, fraction) \
            * self.resnet.protocol["epochs"]

    def resnet_images(self, task: Task, fraction: float) -> int:
        """Training images of a ResNet-18 cell of ``task`` at ``fraction`` (seed 0's subset; seeds differ by one
        or two images at most)."""
        import numpy as np

        from tpp.data.subsets import label_fraction_index

        labels = np.load(suite_report_path(self.data_root, task.name))["train_labels"].reshape(-1)
        return len(label_fraction_index(labels, fraction, task.name, 0))

    def adopt(self, published: Path) -> int:
        """Cells of a published tpp_gain / seg_gain / movl / suite report measured under the current protocols."""
        count = self.classification.adopt(published) + self.resnet.adopt(published) + self.movl.adopt(published)
        for task in {c[0] for c in self.grid.cells if c[0].kind == "segmentation"}:
            count += self.seg(task).adopt(published)
        for task, approach in {c[:2] for c in self.grid.cells if c[1] in suite_incontext.APPROACHES}:
            count += self.incontext.adopt(published, task, approach)
        return count


def label(cell) -> str:
    """A cell as the progress lines name it: ``dermamnist_jpeg resnet18 10% seed 4``."""
    task, approach, fraction, seed = cell
    return f"{task.name} {approach} {fraction:.0%} seed {seed}"


def describe(cell, result: dict) -> str:
    key = "test_dice" if "test_dice" in result else "test_auroc"
    metric = f"{'Dice' if key == 'test_dice' else 'AUROC'} {report.num(result[key])}"
    return f"{label(cell)}: {metric}"


def suite_report_path(root: str, name: str) -> Path:
    from suite_report import _medmnist_path

    return _medmnist_path(root, name)


def fill(suite: Suite, budget_s: float) -> tuple[list, list]:
    """Run missing cells in grid order until the budget would be exceeded, the ResNet-18 cells last: one starts
    while any budget is left, at the budget's end saves its training state and pauses (resnet.train_resnet), and
    the next invocation continues it, so a cell longer than any one budget finishes over several without holding
    up the short cells. Returns (missing, errors)."""
    suite.resnet.deadline = time.time() + budget_s
    _, missing, errors = report.fill(suite.run_cell, suite.cached, suite.grid.cells, budget_s,
                                     kind=lambda cell: (cell[0].name, cell[1], cell[2]), describe=describe,
                                     first_estimate_s=90.0, pausable=lambda cell: cell[1] == "resnet18",
                                     claims=suite.claims, label=label)
    return missing, errors


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", type=Path, default=DEFAULT_GRID, help="the declared grid (default %(default)s)")
    parser.add_argument("--budget-min", type=float, default=60.0, help="stop starting cells after this many minutes")
    parser.add_argument("--report-only", action="store_true", help="no training: measure costs, report the caches")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--no-published", action="store_true",
                        help="adopt none of the grid's published reports: with an empty --cache every cell is "
                             "measured again (what reproduces the report from nothing)")
    parser.add_argument("--data-root", default=os.environ.get("TPP_DATA_ROOT", str(ROOT.parent / "shared" / "data")))
    parser.add_argument("--cache", type=Path, default=ROOT / "benchmarks" / ".cache",
                        help="cache root holding tpp_gain/, seg_gain/, suite_resnet/, movl/ (default %(default)s)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "suite",
                        help="report folder (default %(default)s)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tpp_gain.quiet_libraries()
    try:
        grid = load_grid(args.grid)
        suite = Suite(grid, args.cache, args.data_root)
        tpp_gain.check_methods(sorted({c[1] for c in grid.cells if c[0].kind == "classification"
                                       and c[1] != "resnet18" and c[1] not in suite_incontext.APPROACHES
                                       and c[1] not in suite_movl.APPROACHES}),
                               suite.classification.protocol)
        for kind in sorted({c[0].kind for c in grid.cells if c[1] == "incontext_learned"}):
            suite.incontext.learned(kind)  # a bad model folder stops here, before any cell runs
        for task in grid.tasks:
            if task.folder is not None:
                suite.seg(task)  # a folder task's folder is read (hashed) here: a missing one stops before any cell
    except (GridError, ValueError) as exc:
        parser.error(str(exc))
    except TppError as exc:
        parser.error(f"{args.grid}: {exc}")
    for published in [] if args.no_published else grid.published:
        path = Path(published) if Path(published).is_absolute() else ROOT / published
        if not path.is_file():
            print(f"{published}: not there yet (nothing to adopt)")
            continue
        try:
            print(f"{published}: {suite.adopt(path)} cells copied into {args.cache}")
        except ValueError as exc:
            parser.error(f"{args.grid}: 'published': {exc}")
    missing, errors = [], []
    start = time.time()
    if not args.report_only:
        missing, errors = fill(suite, args.budget_min * 60)
    import suite_report

    command = "python benchmarks/suite.py " + " ".join(sys.argv[1:] if argv is None else argv)
    suite_report.write(suite, args.out, command, memory=not args.no_memory, run_s=time.time() - start)
    return report.finish(missing, errors)


if __name__ == "__main__":
    sys.exit(main())
