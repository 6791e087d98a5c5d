"""Fine-tuning on the same K examples the in-context methods get (``incontext.py --finetune lora linear_probe``).

For each dataset, K and seed the context draw of :mod:`incontext` (``class_context`` / ``seg_context``, the
functions the in-context methods use) becomes a temporary training set, fine-tuned through tpp's own recipe
(``run_recipe("finetune", ...)``, as ``tpp run finetune`` and ``tpp_gain.py`` / ``seg_gain.py``) and tested on
the same queries:

- classification (BreastMNIST, PneumoniaMNIST): a MedMNIST-layout ``.npz`` (``data.source=npz``) with
  train = the 2K context images, test = the whole official test split, val = the context set again (a
  few-label site has no other labels). No step selection (the last step is kept) and a fixed decision
  threshold of 0.5 on p(class 1), the argmax the in-context accuracy uses; AUROC does not depend on it.
  Methods ``lora`` (r 8, alpha 16 on q/v) and ``linear_probe``, the shipped BreastMNIST config's settings.
- segmentation (BUSI): ``lora`` with the shipped BUSI segmentation config (32 px encoder input, its
  decoder); train = the K context pairs, val = the same pairs, test = the held-out queries. ``seg_npz`` has no
  file-own splits, so the temporary file puts the three parts in three ``dup_group``s numbered so that tpp's
  seeded grouped split (``stratified_split``, asked here where each group lands) gives exactly that split;
  the cell checks the split sizes the run reports. Per-image Dice of the lesion class from the run's
  ``predictions.csv`` (2|P∩T| / (|P| + |T|), 1 when both are empty: the benchmark's ``dice``), on the
  64-px masks.

Budget (one rule for every K): steps = max(min_steps, epochs x ceil(training images / 16)), batch 16:
classification 30 epochs (the shipped config's) with at least 100 steps; segmentation the shipped config's
10 epochs with at least 150 steps. Every file and run folder lives in a temporary folder removed after the
cell; the numbers are cached as JSON per cell under ``benchmarks/.cache/incontext_ft/``, reused only under the
same protocol, backbone weights and query set (:func:`report.protocol_id`), so a long grid resumes.
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import incontext as ic  # noqa: E402
import report  # noqa: E402
import seg_gain  # noqa: E402
import tpp_gain  # noqa: E402

from tpp.capped_read import file_sha256  # noqa: E402

METHODS = ("lora", "linear_probe")
SEG_METHODS = ("lora",)  # segmentation needs the adapter: a decoder alone on frozen tokens is no baseline here
PREFIX = "finetune:"
PROTOCOL = {
    "classification": {"config": tpp_gain.FINETUNE_CONFIG, "epochs": 30, "min_steps": 100, "batch_size": 16,
                       "threshold": 0.5, "lr": {"lora": 1e-3, "linear_probe": 1e-3}},
    "segmentation": {"config": seg_gain.FINETUNE_CONFIG, "epochs": 10, "min_steps": 150, "batch_size": 16},
    "lora": {"r": 8, "alpha": 16}, "full_head_lr_scale": 10.0,
    "selection": "last step; val = the context set itself",
    "draw": {"pool_per_class": ic.POOL, "pool_seed": 1234, "busi_split": "30% of dup_groups, seed 0"},
}
SEG_NAME, SEG_SPLIT_SEED, THIRD = "busi", 0, 1 / 3


class FinetuneBench:
    """Fine-tuning cells (dataset, method, K, seed) through the finetune recipe, cached as JSON per cell."""

    def __init__(self, root: Path, backbone: str, cache: Path, protocol: dict = PROTOCOL,
                 busi_queries: int | None = None):
        self.root, self.backbone, self.protocol = Path(root), backbone, protocol
        self.cache = report.backbone_cache(cache, backbone)  # cells of this backbone only
        self.busi_queries = busi_queries
        self.files = {name: self.root / file for name, file in [*ic.CLASSIFICATION.items(), ("busi", ic.BUSI)]}
        self._ids: dict = {}
        self._draws: dict = {}  # (dataset, K, seed) -> indices: a lookup does not re-read the data file

    def protocol_id(self, dataset: str) -> str:
        """The cell id: protocol, backbone weights, the data file's content (sha256) and the query set."""
        if dataset not in self._ids:
            self._ids[dataset] = report.protocol_id(self.protocol, self.backbone, dataset=dataset,
                                                    data_sha256=file_sha256(self.files[dataset]),
                                                    queries=self.busi_queries if dataset == "busi" else None)
        return self._ids[dataset]

    def draw(self, dataset: str, k: int, seed: int) -> np.ndarray:
        """The (K, seed) context draw of the in-context path: indices into the training split (classification)
        or into the BUSI file."""
        key = (dataset, k, seed)
        if key not in self._draws:
            data = np.load(self.files[dataset])
            if dataset == "busi":
                self._draws[key] = ic.seg_context(ic.busi_split(data)[0], k, seed)
            else:
                labels = data["train_labels"][:, 0]
                keep = ic.class_pool(labels)
                self._draws[key] = keep[ic.class_context(labels[keep], k, seed)]
        return self._draws[key]

    def cell_path(self, dataset: str, method: str, k: int, seed: int) -> Path:
        """BUSI cells on the first N queries only (``busi_queries``) have a folder of their own (busi_qN)."""
        folder = f"{dataset}_q{self.busi_queries}" if dataset == "busi" and self.busi_queries else dataset
        return self.cache / folder / method / f"k{k}_s{seed}.json"

    def cached(self, dataset: str, method: str, k: int, seed: int) -> dict | None:
        """The cell's result if it was run under this protocol, backbone, data file and query set, on the context
        examples the in-context path draws now."""
        path = self.cell_path(dataset, method, k, seed)
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        if data.get("protocol_id") != self.protocol_id(dataset):
            return None
        return data if data.get("context") == self.draw(dataset, k, seed).tolist() else None

    def run_cell(self, dataset: str, method: str, k: int, seed: int) -> dict:
        with tempfile.TemporaryDirectory(prefix="incontext_ft_") as tmp:
            if dataset == "busi":
                cell = self.segmentation_cell(Path(tmp), method, k, seed)
            else:
                cell = self.classification_cell(Path(tmp), dataset, method, k, seed)
        cell = {"dataset": dataset, "method": PREFIX + method, "k": k, "seed": seed, **cell,
                "protocol_id": self.protocol_id(dataset)}
        report.store_cell(self.cell_path(dataset, method, k, seed), cell)
        return cell

    def common(self, out: Path, seed: int, part: dict) -> list[str]:
        """Settings of every cell: the temporary folder ``out.parent`` is the data root (it holds the file)."""
        return [f"backbone.path={self.backbone}", f"data.root={out.parent}", f"output_dir={out}", f"seed={seed}",
                "train.select_best=false",
                f"train.epochs={part['epochs']}", f"train.min_steps={part['min_steps']}",
                f"train.batch_size={part['batch_size']}"]

    def classification_cell(self, tmp: Path, dataset: str, method: str, k: int, seed: int) -> dict:
        """Train on the 2K context images of (K, seed), test on the whole test split."""
        from tpp.data.arrays import MEDMNIST
        from tpp.recipes import CONFIG_DIR, run_recipe

        part = self.protocol["classification"]
        data = np.load(self.files[dataset])
        context = self.draw(dataset, k, seed)  # indices into the training split
        file = kshot_npz(tmp / "kshot.npz", data, context, MEDMNIST[dataset][1])
        overrides = tpp_gain.method_overrides(method, dict(self.protocol, lr=part["lr"]))
        overrides += self.common(tmp / "run", seed, part) + [
            "data.source=npz", f"data.file={file.name}", f"data.name={dataset}",
            f"data.modality={MEDMNIST[dataset][0]}",
            f"classification.threshold={part['threshold']}", "classification.bootstrap_resamples=0"]
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries the benchmark's tables only
            metrics, run = run_recipe("finetune", CONFIG_DIR / part["config"], overrides, overwrite=True)
        expect(metrics, train=2 * k, test=len(data["test_labels"]))
        return {"accuracy": metrics["test"]["accuracy"], "auroc": metrics["test"]["auroc"],
                **timing(metrics, run), "context": context.tolist(), "queries": metrics["test"]["n"]}

    def segmentation_cell(self, tmp: Path, method: str, k: int, seed: int) -> dict:
        """Train on the K context pairs of (K, seed), per-image Dice on the held-out queries."""
        from tpp.recipes import CONFIG_DIR, run_recipe

        part = self.protocol["segmentation"]
        data = np.load(self.files["busi"])
        query = ic.busi_split(data)[1][:self.busi_queries]
        context = self.draw("busi", k, seed)
        file = split_seg_npz(tmp / "kshot.npz", data["images"], data["masks"], context, query)
        overrides = [f"adapter.r={self.protocol['lora']['r']}", f"adapter.alpha={self.protocol['lora']['alpha']}",
                     *self.common(tmp / "run", seed, part), f"data.file={file.name}", f"data.name={SEG_NAME}",
                     f"data.split_seed={SEG_SPLIT_SEED}", f"data.val_fraction={THIRD!r}",
                     f"data.test_fraction={THIRD!r}", "segmentation.overlays=0"]
        with contextlib.redirect_stdout(sys.stderr):
            metrics, run = run_recipe("finetune", CONFIG_DIR / part["config"], overrides, overwrite=True)
        expect(metrics, train=k, test=len(query))
        scores = query_dice(run / "predictions.csv")
        return {"dice": float(np.mean(scores)), **timing(metrics, run), "context": context.tolist(),
                "queries": len(scores)}


def kshot_npz(path: Path, data, context: np.ndarray, class_names: list) -> Path:
    """A MedMNIST-layout file: train = val = the context images (``context``: indices into ``data``'s training
    split), test = ``data``'s test split; labels (N, 1) as MedMNIST stores them."""
    train_x, train_y = data["train_images"][context], data["train_labels"][context]
    np.savez(path, train_images=train_x, train_labels=train_y, val_images=train_x, val_labels=train_y,
             test_images=data["test_images"], test_labels=data["test_labels"], class_names=np.array(class_names))
    return path


def split_seg_npz(path: Path, images: np.ndarray, masks: np.ndarray, context: np.ndarray,
                  query: np.ndarray) -> Path:
    """A ``seg_npz`` file (images (N, H, W), masks (N, H, W)) of the context pairs, the context pairs again and
    the queries, in three ``dup_group``s numbered so that tpp's seeded grouped split (name :data:`SEG_NAME`,
    split seed :data:`SEG_SPLIT_SEED`, val and test fractions 1/3) puts them in train, val and test."""
    from tpp.data.subsets import stratified_split

    lands = stratified_split(np.zeros(3, dtype=np.int64), THIRD, THIRD, SEG_NAME, SEG_SPLIT_SEED, np.arange(3))
    group = {part: int(lands[part][0]) for part in ("train", "val", "test")}
    order = np.concatenate([context, context, query])
    groups = np.repeat([group["train"], group["val"], group["test"]], [len(context), len(context), len(query)])
    np.savez(path, images=images[order], masks=masks[order], dup_group=groups)
    return path


def expect(metrics: dict, train: int, test: int) -> None:
    """The run trained on ``train`` images and tested ``test``: else the temporary split went wrong."""
    if metrics["train_examples"] != train or metrics["test"]["n"] != test:
        raise RuntimeError(f"the fine-tuning run trained on {metrics['train_examples']} images and tested "
                           f"{metrics['test']['n']}; the cell needs {train} and {test}")


def timing(metrics: dict, run: Path) -> dict:
    """``train_s``: the optimiser steps (from the log's 'selection' record, written just before training, to the
    last step); ``run_s``: the whole run (backbone and data loading, training, evaluation, writing)."""
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    start = next(r["time"] for r in records if r.get("event") == "selection")
    end = max(r["time"] for r in records if r.get("event") == "step")
    return {"train_s": round(end - start, 3), "run_s": metrics["wall_time_s"], "steps": metrics["steps"],
            "trainable_parameters": metrics["trainable_parameters"]}


def query_dice(predictions: Path) -> list[float]:
    """Per-image Dice of the test rows of a segmentation run's ``predictions.csv`` (binary task: one
    ``dice_<class>`` column, empty where both masks are empty, which counts 1)."""
    with open(predictions, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "test"]
    column = next(c for c in rows[0] if c.startswith("dice_"))
    return [1.0 if r[column] == "" else float(r[column]) for r in rows]


def finetune_cells(bench: FinetuneBench, dataset: str, methods, ks, seeds: int) -> tuple[list[dict], list[str]]:
    """Every (method, K, seed) cell of ``dataset``, run or from the cache (progress on stderr). Returns the cells
    and one line per failed cell."""
    allowed = SEG_METHODS if dataset == "busi" else METHODS
    cells = [(dataset, m, k, seed) for k in ks for seed in range(seeds) for m in methods if m in allowed]
    metric = "dice" if dataset == "busi" else "auroc"
    with contextlib.redirect_stdout(sys.stderr):
        _, _, errors = report.fill(bench.run_cell, bench.cached, cells, math.inf, kind=lambda c: (c[0], c[1]),
                                   describe=lambda c, r: f"{c[0]} finetune:{c[1]} K={c[2]} seed {c[3]}: "
                                                         f"{metric} {r[metric]:.3f}, trained {r['train_s']:.1f} s",
                                   first_estimate_s=60.0)
    return [r for r in (bench.cached(*c) for c in cells) if r], errors


def crossover(by_method: dict) -> dict:
    """Where fine-tuning overtakes in-context prediction. ``by_method``: :func:`incontext.summary`'s
    ``{method: {k: (mean, std, n)}}``; methods named ``finetune:...`` are fine-tuned, the others in context.
    Returns ``{"k": the smallest K at which the best fine-tuned mean beats the best in-context mean (None:
    nowhere), "up_to": the largest K both sides have, "at": {k: (best in-context (method, mean), best
    fine-tuned (method, mean))}}``."""
    tuned = {m: v for m, v in by_method.items() if m.startswith(PREFIX)}
    context = {m: v for m, v in by_method.items() if not m.startswith(PREFIX)}
    ks = sorted({k for v in tuned.values() for k in v} & {k for v in context.values() for k in v})
    at = {k: tuple(max(((m, v[k][0]) for m, v in side.items() if k in v), key=lambda p: p[1])
                   for side in (context, tuned)) for k in ks}
    over = [k for k in ks if at[k][1][1] > at[k][0][1]]
    n = {k: min(v[k][2] for v in by_method.values() if k in v) for k in ks}
    return {"k": over[0] if over else None, "up_to": ks[-1] if ks else None, "at": at, "n": n}


def crossover_line(dataset: str, metric: str, found: dict) -> str:
    """One results line: the cross-over K of ``dataset`` on ``metric`` (from :func:`crossover`)."""
    if found["up_to"] is None:
        return f"- {dataset} ({metric}): no K with both in-context and fine-tuned cells."
    if found["k"] is None:
        return f"- {dataset} ({metric}): cross-over: none up to K={found['up_to']} (in-context ahead or level)."
    (cm, cv), (tm, tv) = found["at"][found["k"]]
    n = found.get("n", {}).get(found["k"])
    ahead = [k for k, ((_, c), (_, t)) in found["at"].items() if t > c]
    first = " (already at the smallest K compared)" if found["k"] == min(found["at"]) else ""
    return (f"- {dataset} ({metric}): cross-over at K={found['k']}{first}: {tm} {tv:.3f} > {cm} {cv:.3f} (the best "
            f"of each side, means over the same {n} context draws); fine-tuned ahead at K = "
            f"{', '.join(map(str, ahead))} of {', '.join(map(str, found['at']))}.")


def crossover_lines(results: dict) -> list[str]:
    """One line per dataset and metric of ``results`` (``{dataset: (cells, metrics)}``) with fine-tuned cells."""
    lines = []
    for dataset, (cells, metrics) in results.items():
        for metric in metrics:
            by_method = ic.summary(paired_seeds(cells, metric), metric)
            if any(m.startswith(PREFIX) for m in by_method):
                lines.append(crossover_line(dataset, metric, crossover(by_method)))
    return lines


def paired_seeds(cells: list[dict], metric: str) -> list[dict]:
    """The cells of the seeds every method has (with ``metric`` defined) at their K: the cross-over compares
    means over the same context draws, never a fine-tuned mean over fewer seeds (a failed cell) with a full one."""
    methods = {c["method"] for c in cells}
    have: dict = {}
    for c in cells:
        if c.get(metric) is not None and not (isinstance(c[metric], float) and math.isnan(c[metric])):
            have.setdefault((c["k"], c["seed"]), set()).add(c["method"])
    return [c for c in cells if have.get((c["k"], c["seed"])) == methods]


def paired_gaps(results: dict) -> list[dict]:
    """Per dataset, metric and K: the best fine-tuned method minus the best in-context method (each side's best
    by mean over the shared context draws, as :func:`crossover` picks them), paired by draw, with the mean and
    95% t-interval of the per-draw differences and a verdict (ahead only when the interval excludes 0)."""
    rows = []
    for dataset, (cells, metrics) in results.items():
        for metric in metrics:
            shared = paired_seeds(cells, metric)
            by_method = ic.summary(shared, metric)
            if not any(m.startswith(PREFIX) for m in by_method):
                continue
            value = {(c["method"], c["k"], c["seed"]): c[metric] for c in shared}
            for k, ((context, _), (tuned, _)) in crossover(by_method)["at"].items():
                seeds = sorted(s for (m, kk, s) in value if m == tuned and kk == k and (context, k, s) in value)
                diffs = [value[(tuned, k, s)] - value[(context, k, s)] for s in seeds]
                mean, low, high = report.t_interval(diffs)
                verdict = ("fine-tuned ahead" if low > 0 else "in context ahead" if high < 0
                           else "level (interval spans 0)") if len(diffs) > 1 else "one draw: no interval"
                rows.append({"dataset": dataset, "metric": metric, "k": k, "finetuned": tuned, "in_context": context,
                             "n": len(diffs), "diff_mean": mean, "ci95_low": low, "ci95_high": high,
                             "verdict": verdict})
    return rows


def _table(header: list[str], lines: list[str]) -> str:
    """A Markdown table: the header cells, then the given row lines."""
    return "\n".join(["| " + " | ".join(header) + " |", "|---" * len(header) + "|", *lines])


def gaps_table(rows: list[dict]) -> str:
    return _table(["dataset", "metric", "K", "best fine-tuned", "best in context",
                   "fine-tuned - in context (paired, 95% CI)", "draws", "verdict"],
                  [f"| {r['dataset']} | {r['metric']} | {r['k']} | {r['finetuned']} | {r['in_context']} | "
                   f"{r['diff_mean']:+.3f} [{r['ci95_low']:+.3f}, {r['ci95_high']:+.3f}] | {r['n']} | {r['verdict']} |"
                   for r in rows])


def latency_rows(results: dict, timing_rows: list[dict], k: int = 16) -> list[dict]:
    """In-context time per query at K (``prepare`` of the set + one query, the fastest in-context method of
    :func:`incontext.latency`) beside the fine-tuning it replaces (median over seeds of the K cells)."""
    rows = []
    for dataset, (cells, _) in results.items():
        timed = [r for r in timing_rows if r["set"].startswith(dataset) and r["k"] == (2 * k if dataset != "busi"
                                                                                      else k)]
        if not timed:
            continue
        best = min(timed, key=lambda r: r["prepare_s"] + r["query_ms_median"] / 1000)
        for method in sorted({c["method"] for c in cells if c["method"].startswith(PREFIX)}):
            done = [c for c in cells if c["method"] == method and c["k"] == k]
            if done:
                rows.append({"dataset": dataset, "k": k, "in_context": best["method"],
                             "in_context_s": best["prepare_s"] + best["query_ms_median"] / 1000, "finetune": method,
                             "train_s": float(np.median([c["train_s"] for c in done])),
                             "run_s": float(np.median([c["run_s"] for c in done])), "seeds": len(done)})
    return rows


def latency_table(rows: list[dict]) -> str:
    return _table(["dataset", "K", "in context: method", "prepare + one query (s)", "fine-tuned",
                   "training (s, median)", "whole run (s, median)", "seeds", "run / in context"],
                  [f"| {r['dataset']} | {r['k']} | {r['in_context']} | {r['in_context_s']:.2f} | {r['finetune']} | "
                   f"{r['train_s']:.1f} | {r['run_s']:.1f} | {r['seeds']} | {r['run_s'] / r['in_context_s']:.0f}x |"
                   for r in rows])


def add_finetune(results: dict, methods, ks, seeds: int, bench: FinetuneBench) -> list[str]:
    """Append the fine-tuned cells of every dataset of ``results`` (``{dataset: (cells, metrics)}``) to its
    cells, as methods ``finetune:<method>``. Returns one line per failed cell."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tpp_gain.quiet_libraries()
    errors = []
    for dataset, (cells, _) in results.items():
        done, failed = finetune_cells(bench, dataset, methods, ks, seeds)
        cells.extend(done)
        errors += failed
    return errors


def finetune_section(results: dict, timing_rows: list[dict], errors: list[str]) -> tuple[str, dict]:
    """The Markdown after the in-context tables (cross-over lines, the K = 16 time comparison, failures) and
    its JSON part."""
    crossings = crossover_lines(results)
    gaps = paired_gaps(results)
    rows = latency_rows(results, timing_rows)
    text = ("\n\nCross-over (the smallest K at which the best fine-tuned mean beats the best in-context mean):\n\n"
            + "\n".join(crossings)
            + "\n\nThe same comparison paired by context draw (each side's best method chosen by its mean, so an "
              "interval just clear of 0 is optimistic for the chosen side):\n\n" + gaps_table(gaps)
            + "\n\nIn context at K = 16 (per class for classification) against the fine-tuning it replaces:\n\n"
            + (latency_table(rows) if rows else "(no fine-tuned cells at K = 16)")
            + ("\n\nFailed cells:\n\n" + "\n".join(f"- {e}" for e in errors) if errors else ""))
    return text, {"crossover": crossings, "paired_gaps": gaps, "finetune_vs_incontext_time": rows,
                  "finetune_errors": errors}


def describe(protocol: dict) -> str:
    """The sentence the report states about the fine-tuned cells."""
    c, s = protocol["classification"], protocol["segmentation"]
    return (f"Fine-tuned (finetune:*): tpp's finetune recipe on exactly the same context examples, tested on the "
            f"same queries; val = the context set, last step kept; budget max(min_steps, epochs x ceil(n / "
            f"{c['batch_size']})) steps: classification {c['epochs']} epochs, at least {c['min_steps']} steps "
            f"({c['config']}, threshold {c['threshold']}); BUSI {s['epochs']} epochs, at least {s['min_steps']} "
            f"steps ({s['config']} as shipped: its encoder input size and decoder). ")
