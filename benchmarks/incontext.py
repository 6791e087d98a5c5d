"""In-context prediction without training: accuracy / AUROC and Dice against the context size K.

    nice python benchmarks/incontext.py                 # the full grid (~10 min on 2 loaded CPU cores)
    nice python benchmarks/incontext.py --quick         # K in {1, 4, 16}, 2 seeds
    nice python benchmarks/incontext.py --finetune lora linear_probe   # + fine-tuning on the same K examples

Training-free baselines of :mod:`tpp.incontext` on the frozen default backbone (``builtin:mae-vit-tiny-med``,
pre-trained on BloodMNIST, OrganAMNIST, DermaMNIST and MedNIST: it never saw these three sets):

- classification (BreastMNIST, PneumoniaMNIST; official splits): K examples *per class* drawn from a fixed
  random pool of (at most) 500 training images per class, queries = the whole test split; prototype and kNN
  with the leave-one-out temperature; accuracy and AUROC.
- segmentation (BUSI, ``seg/busi_64.npz``): one split by ``dup_group`` (30% of the groups held out as queries,
  seed 0), K image-mask pairs drawn from the rest; per-patch prototypes (and token kNN) at 64 px input
  (a 16 x 16 patch grid); mean per-image Dice at 64 px.

The learned in-context models (``tpp run incontext``, trained with BreastMNIST, PneumoniaMNIST and BUSI held
out) join as method ``learned`` with ``--learned-classification DIR`` / ``--learned-segmentation DIR`` (their
``model/`` folders): the classifier on the same frozen features, the CrossConv segmenter on the 64 px BUSI images
with the K context pairs as its support set.

5 seeds of context draws per K (the spread is over which K examples were drawn). Every number goes through
the same functions as ``tpp predict --context`` (features once per image, then :func:`tpp.incontext.methods.
classify` / ``segment``). Latency: ``tpp.incontext.predict.prepare`` of a K = 16 set and one query at a time,
end to end from uint8 images (median of repeats).

``--finetune lora linear_probe`` (default: none) adds methods ``finetune:lora`` / ``finetune:linear_probe``:
tpp's finetune recipe trained on exactly the same context examples (the same draw functions,
:func:`class_context` / :func:`seg_context`) and tested on the same queries (BUSI: ``lora`` only), a
cross-over line per dataset and metric (the smallest K at which the best fine-tuned mean beats the best
in-context mean) and the in-context time at K = 16 (prepare + one query) against the fine-tuning it replaces.
Protocol and budget: :mod:`incontext_finetune`. Its cells are cached per (dataset, method, K, seed) under
``benchmarks/.cache/incontext_ft/`` (``--finetune-cache``), so an interrupted grid resumes.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT))
import report  # noqa: E402

KS, SEEDS, METHODS = [1, 2, 4, 8, 16, 32], 5, ["prototype", "knn"]
CLASSIFICATION = {"breastmnist": "medmnist/breastmnist.npz", "pneumoniamnist": "medmnist/pneumoniamnist.npz"}
BUSI = "seg/busi_64.npz"
SEG_SIZE, QUERY_CHUNK, POOL = 64, 16, 500


def class_pool(labels: np.ndarray) -> np.ndarray:
    """Sorted indices (into the training split, labels (N,)) of the fixed pool the context sets are drawn from:
    at most POOL random training images per class (seed 1234)."""
    rng = np.random.default_rng(1234)
    return np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:POOL] for c in (0, 1)]))


def class_context(pool_y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """The context draw of (K, seed): 2K indices into the pool (labels ``pool_y``), K per class, class 0 first;
    every method (in context or fine-tuned) gets these examples."""
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.choice(np.flatnonzero(pool_y == c), k, replace=False) for c in (0, 1)])


def seg_context(pool: np.ndarray, k: int, seed: int) -> np.ndarray:
    """The context draw of (K, seed) on BUSI: K image indices from ``pool`` (see :func:`busi_split`)."""
    return np.random.default_rng(seed).choice(pool, k, replace=False)


def classification_cells(extractor, path: Path, ks, seeds, learned=None) -> list[dict]:
    """Accuracy / AUROC of each method, K and seed on one MedMNIST file (``learned``: a loaded in-context
    classifier, ``(model, card)``)."""
    from tpp.incontext import learned as icl
    from tpp.incontext.methods import classify
    from tpp.metrics import quick_metrics

    data = np.load(path)
    rule = extractor.rule(1)
    labels = data["train_labels"][:, 0]
    keep = class_pool(labels)
    pool, pool_y = extractor.features(list(data["train_images"][keep]), rule), labels[keep]
    test, test_y = extractor.features(list(data["test_images"]), rule), torch.as_tensor(data["test_labels"][:, 0])
    cells = []
    for k in ks:
        for seed in range(seeds):
            index = class_context(pool_y, k, seed)
            for method in METHODS:
                probs, t = classify(pool[index], torch.as_tensor(pool_y[index]).long(), 2, test, method)
                cells.append({"k": k, "seed": seed, "method": method, "temperature": t,
                              **quick_metrics(probs, test_y.long())})
            if learned is not None:
                probs = icl.classify(learned[0], pool[index], torch.as_tensor(pool_y[index]).long(), 2, test)
                cells.append({"k": k, "seed": seed, "method": "learned", **quick_metrics(probs, test_y.long())})
    return cells


def busi_split(data) -> tuple[np.ndarray, np.ndarray]:
    """(pool, query) indices: 30% of the dup_groups held out (seed 0), so no near-duplicate spans both."""
    groups = np.unique(data["dup_group"])
    held = set(np.random.default_rng(0).choice(groups, int(round(0.3 * len(groups))), replace=False).tolist())
    query = np.array([g in held for g in data["dup_group"]])
    return np.flatnonzero(~query), np.flatnonzero(query)


def dice(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Dice of two binary masks (H, W); 1 when both are empty."""
    inter, total = float((pred & target).sum()), float(pred.sum() + target.sum())
    return 1.0 if total == 0 else 2 * inter / total


def segmentation_cells(extractor, path: Path, ks, seeds, learned=None, max_queries: int | None = None) -> list[dict]:
    """Mean Dice of each method, K and seed on BUSI (``learned``: a loaded in-context segmenter; ``max_queries``:
    the first that many query images only)."""
    from tpp.incontext import learned as icl
    from tpp.incontext.methods import segment, upsample
    from tpp.incontext.predict import gray

    data = np.load(path)
    images, masks = data["images"], data["masks"]
    rule = extractor.rule(1, SEG_SIZE)
    grid = extractor.grid(rule)
    tokens = extractor.tokens(list(images), rule)  # (N, 256, D)
    pool, query = busi_split(data)
    query = query[:max_queries]
    target = torch.as_tensor(masks[query]).bool()
    pixels = gray(list(images), SEG_SIZE)  # (N, 64, 64) in [0, 1]: the learned segmenter's input
    cells = []
    for k in ks:
        for seed in range(seeds):
            ctx = seg_context(pool, k, seed)
            ctx_masks = torch.as_tensor(masks[ctx]).float()
            for method in METHODS:
                scores, t = [], None
                for start in range(0, len(query), QUERY_CHUNK):
                    rows = query[start:start + QUERY_CHUNK]
                    fg, t = segment(tokens[ctx], ctx_masks, tokens[rows], grid, method, t=t)  # calibrated once
                    for p, truth in zip(fg, target[start:start + QUERY_CHUNK]):
                        scores.append(dice(upsample(p, truth.shape) >= 0.5, truth))
                cells.append({"k": k, "seed": seed, "method": method, "temperature": t,
                              "dice": float(np.mean(scores)), "queries": len(scores)})
            if learned is not None:
                fg = icl.segment(learned[0], pixels[ctx], torch.as_tensor(masks[ctx]).float(), pixels[query])
                scores = [dice(p >= 0.5, truth) for p, truth in zip(fg, target)]
                cells.append({"k": k, "seed": seed, "method": "learned", "dice": float(np.mean(scores)),
                              "queries": len(scores)})
    return cells


def latency_sets(root: Path, repeats: int) -> dict:
    """The K = 16 sets the latency is measured on: {kind: (name, checked ContextSet, ``repeats`` query images)}
    (BreastMNIST: the first 16 training images per class; BUSI: the first 16 pairs)."""
    from tpp.incontext.context import CLASSIFICATION as CLS
    from tpp.incontext.context import SEGMENTATION, ContextSet, check

    breast, busi = np.load(root / CLASSIFICATION["breastmnist"]), np.load(root / BUSI)
    y = breast["train_labels"][:, 0]
    index = np.concatenate([np.flatnonzero(y == c)[:16] for c in (0, 1)])
    return {"classification": ("breastmnist (28 px)",
                               check(ContextSet(CLS, list(breast["train_images"][index]), [str(v) for v in y[index]],
                                                names=[""] * 32)), list(breast["test_images"][:repeats])),
            "segmentation": ("busi (64 px)", check(ContextSet(SEGMENTATION, list(busi["images"][:16]),
                                                              masks=list(busi["masks"][:16]), names=[""] * 16)),
                             list(busi["images"][-repeats:]))}


def time_method(extractor, name: str, ctx, queries: list, method: str, model=None) -> dict:
    """One latency row: seconds to ``prepare`` the set and the median ms of one query at a time, end to end
    from uint8 images (``model``: a learned model, ``(model, card)`` from ``learned.load``, for method ``learned``)."""
    from tpp.incontext.predict import prepare

    start = time.perf_counter()
    prepared = prepare(ctx, extractor, method, model=model)
    prep_s = time.perf_counter() - start
    times = []
    for q in queries:
        start = time.perf_counter()
        prepared.predict([q])
        times.append(time.perf_counter() - start)
    return {"set": name, "k": ctx.k, "method": method, "prepare_s": prep_s,
            "query_ms_median": 1000 * statistics.median(times)}


def latency(extractor, root: Path, models: dict, repeats: int = 20) -> list[dict]:
    """Latency rows of every method on the K = 16 sets (``models``: ``{"classification": (model, card), ...}``,
    the learned models given)."""
    rows = []
    for kind, (name, ctx, queries) in latency_sets(root, repeats).items():
        rows += [time_method(extractor, name, ctx, queries, method) for method in METHODS]
        if kind in models:
            rows.append(time_method(extractor, name, ctx, queries, "learned", model=models[kind]))
    return rows


def summary(cells: list[dict], metric: str) -> dict:
    """{method: {k: (mean, std, n)}}."""
    out: dict = {}
    for cell in cells:
        out.setdefault(cell["method"], {}).setdefault(cell["k"], []).append(cell[metric])
    return {m: {k: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, len(v))
                for k, v in ks.items()} for m, ks in out.items()}


def table(results: dict, ks) -> str:
    lines = ["| dataset | metric | method | " + " | ".join(f"K={k}" for k in ks) + " |",
             "|---|---|---|" + "---|" * len(ks)]
    for dataset, (cells, metrics) in results.items():
        for metric in metrics:
            for method, by_k in summary(cells, metric).items():
                values = [f"{by_k[k][0]:.3f} ± {by_k[k][1]:.3f}" if k in by_k else "-" for k in ks]
                lines.append(f"| {dataset} | {metric} | {method} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", default=os.environ.get("TPP_DATA_ROOT", str(ROOT.parent / "shared" / "data")))
    parser.add_argument("--backbone", default="builtin:mae-vit-tiny-med")
    parser.add_argument("--quick", action="store_true", help="K in {1, 4, 16}, 2 seeds")
    parser.add_argument("--ks", type=int, nargs="+", help="context sizes (default 1 2 4 8 16 32)")
    parser.add_argument("--seeds", type=int, help="seeds of context draws (default 5)")
    parser.add_argument("--busi-queries", type=int, help="BUSI: the first N held-out query images only (default all)")
    parser.add_argument("--learned-classification", metavar="DIR",
                        help="model/ folder of `tpp run incontext` (kind classification): adds method learned")
    parser.add_argument("--learned-segmentation", metavar="DIR",
                        help="model/ folder of `tpp run incontext` (kind segmentation): adds method learned")
    parser.add_argument("--finetune", nargs="+", default=[], choices=["lora", "linear_probe"],
                        help="also fine-tune on the same K examples (incontext_finetune.py; BUSI: lora only)")
    parser.add_argument("--finetune-cache", default=str(Path(__file__).parent / ".cache" / "incontext_ft"),
                        help="cell cache of --finetune (a rerun reuses finished cells)")
    parser.add_argument("--name", default=None, help="result file stem (default incontext[_quick])")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--from-json", metavar="JSON", help="render the report again from a published JSON "
                                                             "(no prediction, no training) and exit")
    args = parser.parse_args()
    if args.from_json:
        return rerender(Path(args.from_json), args.out, args.name)
    torch.set_num_threads(args.threads)
    from tpp.incontext.features import load_extractor

    from tpp.incontext import learned

    ks, seeds = ([1, 4, 16], 2) if args.quick else (KS, SEEDS)
    ks, seeds = args.ks or ks, args.seeds or seeds
    root = Path(args.data_root)
    extractor = load_extractor(args.backbone)
    models = {kind: learned.load(path) for kind, path in (("classification", args.learned_classification),
                                                           ("segmentation", args.learned_segmentation)) if path}
    for kind, (_, card) in models.items():
        learned.check_kind(card, kind, f"--learned-{kind}", extractor.info.hash)
    results, started = {}, time.time()
    for name, file in CLASSIFICATION.items():
        results[name] = (classification_cells(extractor, root / file, ks, seeds, models.get("classification")),
                         ["accuracy", "auroc"])
        print(f"{name}: {time.time() - started:.0f} s", file=sys.stderr)
    results["busi"] = (segmentation_cells(extractor, root / BUSI, ks, seeds, models.get("segmentation"),
                                          args.busi_queries), ["dice"])
    print(f"busi: {time.time() - started:.0f} s", file=sys.stderr)
    timing = latency(extractor, root, models)
    extra_text, extra, ft = "", {}, ""
    if args.finetune:
        import incontext_finetune as ftb

        bench = ftb.FinetuneBench(root, args.backbone, Path(args.finetune_cache), busi_queries=args.busi_queries)
        errors = ftb.add_finetune(results, args.finetune, ks, seeds, bench)
        extra_text, extra = ftb.finetune_section(results, timing, errors)
        extra["finetune_protocol"], ft = bench.protocol, ftb.describe(bench.protocol)
    description = (f"In-context prediction on the frozen backbone {args.backbone}: mean ± std over {seeds} seeds of "
                   "context draws. Classification: K examples per class (from a fixed pool of 500 training images "
                   "per class), all test images. BUSI: K "
                   "image-mask pairs, 30% of dup_groups held out as queries"
                   + (f" (the first {args.busi_queries})" if args.busi_queries else "") + ". "
                   + "".join(f"Learned {kind}: {_describe(card)}. " for kind, (_, card) in models.items()) + ft
                   + f"Total {time.time() - started:.0f} s.")
    command = "nice python " + " ".join(["benchmarks/incontext.py", *sys.argv[1:]])
    stem = args.name or "incontext" + ("_quick" if args.quick else "")
    report.publish(args.out, stem, report.machine(), command, description,
                   table(results, ks) + latency_text(timing) + extra_text,
                   {"ks": ks, "seeds": seeds, "backbone": args.backbone, "description": description,
                    "learned": {kind: {k: card.get(k) for k in ("holdout", "train", "summary", "task_distribution")}
                                for kind, (_, card) in models.items()},
                    "cells": {n: c for n, (c, _) in results.items()}, "latency": timing, **extra})
    return 1 if extra.get("finetune_errors") else 0  # failed cells are listed in the report and on stderr


def latency_text(timing: list[dict]) -> str:
    return "\n\nLatency (end to end from uint8 images, one query at a time):\n\n" + "\n".join(
        ["| set | K | method | prepare the set (s) | per query (ms, median) |", "|---|---|---|---|---|"]
        + [f"| {r['set']} | {r['k']} | {r['method']} | {r['prepare_s']:.2f} | {r['query_ms_median']:.1f} |"
           for r in timing])


def rerender(published: Path, out: str, name: str | None) -> int:
    """``--from-json``: the report again from a published JSON (its cells and timings; nothing predicted or
    trained), e.g. after the report gains a table."""
    import incontext_finetune as ftb

    payload = json.loads(published.read_text())
    results = {n: (cells, ["dice"] if n == "busi" else ["accuracy", "auroc"]) for n, cells in payload["cells"].items()}
    extra_text, extra = "", {}
    if any(c["method"].startswith(ftb.PREFIX) for cells, _ in results.values() for c in cells):
        extra_text, extra = ftb.finetune_section(results, payload["latency"], payload.get("finetune_errors") or [])
    description = payload.get("description")
    if description is None:  # reports from before the JSON kept it: the Markdown's third line
        description = published.with_suffix(".md").read_text().splitlines()[2]
    data = {k: v for k, v in payload.items() if k not in ("machine", "command")} | extra | {"description": description}
    report.publish(out, name or published.stem, payload["machine"], payload["command"], description,
                   table(results, payload["ks"]) + latency_text(payload["latency"]) + extra_text, data)
    return 0


def _describe(card: dict) -> str:
    summary = card.get("summary", {})
    return (f"{summary.get('parameters', 0):,} parameters, {summary.get('steps')} steps of "
            f"{summary.get('episodes_per_step')} episodes, {summary.get('cpu_hours')} CPU-hours, held out "
            f"{', '.join(card.get('holdout', []))}")


if __name__ == "__main__":
    sys.exit(main())
