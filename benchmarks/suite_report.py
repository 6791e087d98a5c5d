"""The suite's report: per-cell statistics next to measured cost, "who wins where", plots, Markdown, JSON, HTML.

Every table is built once as (header, rows) and rendered to Markdown and HTML; every file is written through a
temporary file renamed into place (``report.write_atomic``), the HTML page embeds the PNGs as base64.
"""
from __future__ import annotations

import base64
import hashlib
import html
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

import cost
import report
import resnet
from suite_grid import APPROACHES
from suite_models import adapter_of

PRIMARY = {"classification": ("test_auroc", "AUROC"), "segmentation": ("test_dice", "Dice")}
SECONDARY = {"classification": [("test_accuracy", "accuracy")],
             "segmentation": [("test_iou", "IoU"), ("test_hd95", "HD95 px")]}


# ---------------------------------------------------------------- cost per (task, approach)

def spec_of(suite, task, approach: str) -> dict:
    """The model spec (suite_models.build) of an approach on a task, at the input size its cells use."""
    import numpy as np

    from tpp.backbones import backbone_config

    import suite_incontext
    import suite_movl

    if approach in suite_incontext.APPROACHES:
        return suite_incontext.spec(suite, task, approach)
    if task.kind == "classification":
        from tpp.data.arrays import MEDMNIST

        with np.load(_medmnist_path(suite.data_root, task.name)) as npz:
            channels = 1 if npz["test_images"].ndim == 3 else 3
        classes = len(MEDMNIST[task.name][1])
        size = 28 if approach == "resnet18" else backbone_config(suite.grid.backbone).image_size
        if approach in suite_movl.APPROACHES:  # the 28-px image inside the prompt's frame, as movl.py's cells
            size = suite_movl.movl.PROTOCOL["prompt"]["input_size"]
        return {"approach": approach, "kind": task.kind, "channels": channels, "classes": classes, "size": size,
                "backbone": suite.grid.backbone, "resnet_widths": suite.resnet.protocol["widths"]}
    bench = suite.seg(task)
    channels, classes = bench.shape()  # a .npz's arrays, or a seg_folder read as its cells read it
    side = bench.mask_side()
    size = side if approach in ("unet", "lora@mask_res") else bench.protocol["input_size"]
    return {"approach": approach, "kind": task.kind, "channels": channels, "classes": classes, "size": size,
            "backbone": suite.grid.backbone, "decoder": bench.protocol["decoder"]}


def _medmnist_path(root: str, name: str) -> Path:
    base = Path(root)
    return next((p for p in (base / f"{name}.npz", base / "medmnist" / f"{name}.npz") if p.is_file()),
                base / f"{name}.npz")


def measure_costs(suite, memory: bool, pairs) -> dict:
    """``{(task name, approach): cost}`` for the (Task, approach) ``pairs`` (those with finished cells);
    approaches with one architecture (LoRA with or without TPP) share one measurement, cached under the cache
    root's ``suite_cost/`` (delete it to measure again). Parameters and FLOPs are exact;
    latency is the median of 3 runs at ``cost.THREADS`` thread on this machine as loaded (load recorded)."""
    from suite_models import build

    out, done = {}, {}
    for task, approach in pairs:
        spec = spec_of(suite, task, approach)
        key = json.dumps(dict(spec, approach=adapter_of(approach)[0] if approach not in ("resnet18", "unet")
                              else approach, cost=cost.KEY), sort_keys=True)  # in-context: the approach's own name
        if key not in done:
            done[key] = suite.cost_cache.get(key, memory)
        if done[key] is None:
            model, example = build(spec)
            measured = cost.measure(model, example)
            if memory:
                measured |= cost.peak_memory_mib(spec)
            done[key] = dict(measured, input_size=spec["size"], input_channels=example.shape[1])
            suite.cost_cache.put(key, done[key])
            print(f"cost {task.name} {approach}: {done[key]['flops_per_image'] / 1e6:.1f} MFLOPs/image, "
                  f"{done[key]['total_parameters']:,} parameters", flush=True)
        out[(task.name, approach)] = done[key]
    return out


# ---------------------------------------------------------------- statistics

def interval(values: list) -> dict:
    """Mean and 95% t-interval over the defined values (None and NaN, an undefined metric, left out); the mean
    None when none is defined, the bounds None with fewer than two."""
    values = report.defined(values)
    if not values:
        return {"mean": None, "low": None, "high": None}
    mean, low, high = report.t_interval(values)
    return {"mean": mean, "low": None if math.isnan(low) else low, "high": None if math.isnan(high) else high}


def one_context(group: list[dict]) -> bool:
    """Whether every seed of an in-context row used the same context set (a label subset that fits the cap
    whole): its seeds then repeat one measurement, and its interval is zero wide, not precise."""
    if any(not cell.get("context_sha256") and cell.get("context_index") is None for cell in group):
        return False  # a cell that records no context: nothing to compare
    prints = {cell.get("context_sha256") or context_sha256(cell["context_index"]) for cell in group}
    return len(group) > 1 and len(prints) == 1


def rows_of(cells: list[tuple], costs: dict) -> list[dict]:
    """One row per (task, approach, fraction): metrics with 95% t-intervals over seeds, next to the cost."""
    groups = defaultdict(list)
    for task, approach, fraction, _seed, cell in cells:
        groups[(task, approach, fraction)].append(cell)
    rows = []
    for (task, approach, fraction), group in groups.items():
        primary = PRIMARY[task.kind][0]
        c = costs.get((task.name, approach), {})
        trainable = group[0]["trainable_parameters"]
        train_s = [g["finetune_s"] + (g.get("tpp_s") or 0.0) for g in group]
        rows.append({"task": task.name, "kind": task.kind, "approach": approach, "family": APPROACHES[approach][0],
                     "fraction": fraction, "seeds": len(group), "metric": PRIMARY[task.kind][1],
                     "primary": interval([g[primary] for g in group]),
                     **{key: interval([g.get(key) for g in group]) for key, _ in SECONDARY[task.kind]},
                     "trainable_parameters": trainable,  # fp32 tensors, or an in-context cell's context set:
                     "bytes_per_site": float(np.mean([g.get("bytes_per_site", 4 * trainable) for g in group])),
                     **({"context_examples": float(np.mean([g["context_examples"] for g in group])),
                         "subset_examples": float(np.mean([g["subset_examples"] for g in group])),
                         "context_cap": group[0]["context_cap"], "one_context": one_context(group)}
                        if "context_examples" in group[0] else {}),
                     "total_parameters": c.get("total_parameters"), "flops_per_image": c.get("flops_per_image"),
                     "latency_ms_b1": c.get("latency_ms_b1"), "latency_ms_b32": c.get("latency_ms_b32"),
                     "inference_mib": c.get("inference_mib"), "train_s": float(np.mean(train_s)),
                     "protocol_id": group[0]["protocol_id"],
                     "accuracy_rule": "val threshold" if any(g.get("threshold") is not None for g in group)
                     else "argmax"})  # a fine-tuned binary cell's accuracy is at its Youden threshold on val
    order = list(APPROACHES)
    return sorted(rows, key=lambda r: (r["kind"], r["task"], r["fraction"], order.index(r["approach"])))


def who_wins(rows: list[dict], cells: list[tuple]) -> list[dict]:
    """Per (task, fraction): the best generalist and the best task-specific approach (by mean primary metric, among
    the approaches of that family with the most seeds whose primary metric is defined there: a one-seed mean never
    outranks a five-seed one; a row with none defined is no candidate) and the paired difference (same seeds, so
    the same label subset) with its 95% t-interval."""
    out = []
    for task, fraction in dict.fromkeys((r["task"], r["fraction"]) for r in rows):
        here = [r for r in rows if (r["task"], r["fraction"]) == (task, fraction)]
        metric = PRIMARY[here[0]["kind"]][0]
        measured = defaultdict(int)  # approach -> seeds with the primary metric defined
        for t, a, f, _s, cell in cells:
            if t.name == task and f == fraction and report.defined([cell.get(metric)]):
                measured[a] += 1
        best = {fam: max((r for r in here if r["family"] == fam and r["primary"]["mean"] is not None),
                         key=lambda r: (measured[r["approach"]], r["primary"]["mean"]), default=None)
                for fam in ("generalist", "task-specific")}
        gen, spec = best["generalist"], best["task-specific"]
        entry = {"task": task, "fraction": fraction, "metric": here[0]["metric"],
                 "generalist": gen and gen["approach"], "generalist_mean": gen and gen["primary"]["mean"],
                 "task_specific": spec and spec["approach"], "task_specific_mean": spec and spec["primary"]["mean"],
                 "diff_mean": None, "ci95_low": None, "ci95_high": None, "pairs": 0, "winner": None,
                 "published_task_specific": report.MEDMNIST_V2_RESNET18_28.get(task, (None,))[0]
                 if fraction == 1.0 and here[0]["kind"] == "classification" else None}
        if gen and spec:
            flat = [dict(cell, target=t.name, method=a) for t, a, f, _s, cell in cells
                    if t.name == task and f == fraction]
            (d,) = report.paired(flat, gen["approach"], spec["approach"], metric) or [None]
            if d:
                entry |= {"diff_mean": d["diff_mean"], "pairs": d["n"], "ci95_low": None if math.isnan(d["ci95_low"])
                          else d["ci95_low"], "ci95_high": None if math.isnan(d["ci95_high"]) else d["ci95_high"]}
            else:  # no common seeds: the difference of the means, no interval
                entry["diff_mean"] = gen["primary"]["mean"] - spec["primary"]["mean"]
            entry["winner"] = verdict(entry)
        out.append(entry)
    return out


def verdict(entry: dict) -> str:
    """A side wins only when the paired 95% interval excludes zero; otherwise say why there is no winner."""
    if entry["ci95_low"] is None:
        return f"undecided ({entry['pairs']} paired seed{'s' * (entry['pairs'] != 1)}, no interval)"
    if entry["ci95_low"] > 0:
        return "generalist"
    if entry["ci95_high"] < 0:
        return "task-specific"
    return "neither (interval includes 0)"


# ---------------------------------------------------------------- tables

def _num(v, fmt="{:.3f}") -> str:
    return "–" if v is None else fmt.format(v)


def _ci(iv: dict) -> str:
    if iv["mean"] is None:
        return "–"
    return f"{iv['mean']:.3f}" + ("" if iv["low"] is None else f" [{iv['low']:.3f}, {iv['high']:.3f}]")


RULE = "accuracy_rule"  # at argmax, or at the decision threshold the recipe chose on the validation split


def results_table(rows: list[dict]) -> tuple[list, list]:
    header = ["task", "labels", "approach", "family", "seeds", "metric (95% CI)", "2nd metrics", "trainable",
              "KiB / site", "total params", "MFLOPs / image", "ms / image b1", "ms / image b32", "inference MiB",
              "train s / cell"]
    body = []
    for r in rows:
        second = "; ".join(f"{label}{f' ({r[RULE]})' if key == 'test_accuracy' and RULE in r else ''} {_ci(r[key])}"
                           for key, label in SECONDARY[r["kind"]])
        seeds = f"{r['seeds']} (one context: one measurement)" if r.get("one_context") else str(r["seeds"])
        body.append([r["task"], f"{r['fraction']:.0%}", r["approach"], r["family"], seeds,
                     f"{r['metric']} {_ci(r['primary'])}", second, f"{r['trainable_parameters']:,}",
                     f"{r['bytes_per_site'] / 1024:,.0f}", _num(r["total_parameters"], "{:,}"),
                     _num(r["flops_per_image"] and r["flops_per_image"] / 1e6, "{:.1f}"),
                     _num(r["latency_ms_b1"], "{:.2f}"), _num(r["latency_ms_b32"], "{:.3f}"),
                     _num(r["inference_mib"], "{:.0f}"), f"{r['train_s']:.0f}"])
    return header, body


def wins_table(wins: list[dict]) -> tuple[list, list]:
    header = ["task", "labels", "metric", "best generalist", "best task-specific", "difference (95% CI, paired)",
              "winner", "published ResNet-18 (28), MedMNIST v2: best generalist minus it"]
    body = []
    for w in wins:
        gen = "–" if w["generalist"] is None else f"{w['generalist']} {w['generalist_mean']:.3f}"
        spec = "–" if w["task_specific"] is None else f"{w['task_specific']} {w['task_specific_mean']:.3f}"
        if w["diff_mean"] is None:
            diff = "– (one side not measured)"
        elif w["ci95_low"] is None:
            diff = f"{w['diff_mean']:+.3f} ({w['pairs']} pair{'s' * (w['pairs'] != 1)}, no interval)"
        else:
            diff = f"{w['diff_mean']:+.3f} [{w['ci95_low']:+.3f}, {w['ci95_high']:+.3f}] ({w['pairs']} pairs)"
        pub = w.get("published_task_specific")
        published = "–" if pub is None else (f"{pub:.3f}" + ("" if w["generalist_mean"] is None
                                                              else f": {w['generalist_mean'] - pub:+.3f}"))
        body.append([w["task"], f"{w['fraction']:.0%}", w["metric"], gen, spec, diff, w["winner"] or "–", published])
    return header, body


def missing_table(missing: list[dict]) -> tuple[list, list]:
    header = ["task", "approach", "labels", "seeds missing", "estimated CPU s per cell", "estimated CPU h"]
    body = [[m["task"], m["approach"], f"{m['fraction']:.0%}", str(m["seeds"]), f"{m['estimate_s']:.0f}",
             f"{m['estimate_s'] * m['seeds'] / 3600:.2f}"] for m in missing]
    return header, body


def markdown(table: tuple[list, list]) -> str:
    header, body = table
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body])


def html_table(table: tuple[list, list]) -> str:
    header, body = table
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


# ---------------------------------------------------------------- collecting and writing

def collect(suite) -> tuple[list[tuple], list[tuple]]:
    """(finished cells as (Task, approach, fraction, seed, cell), grid cells not finished yet). Cells of the
    ``published`` reports measured under an earlier protocol join, flagged by their protocol id, where the current
    protocol has none for that (task, approach, fraction); a cell joins only an approach of the bench that measured
    it (suite_movl.published_as)."""
    import suite_movl

    done, todo = [], []
    for task, approach, fraction, seed in suite.grid.cells:
        cell = suite.cached(task, approach, fraction, seed)
        (done if cell else todo).append((task, approach, fraction, seed) + ((cell,) if cell else ()))
    have = {(t.name, a, f) for t, a, f, _s, _c in done}
    wanted = {(t.name, a, f): t for t, a, f, _s in suite.grid.cells}
    seen = set()
    for published in suite.grid.published:
        path = Path(published) if Path(published).is_absolute() else Path(__file__).resolve().parents[1] / published
        if not path.is_file():
            continue
        for cell in json.loads(path.read_text()).get("cells", []):
            key = (cell.get("target"), cell.get("method"), cell.get("fraction"))
            ident = key + (cell.get("seed"), cell.get("protocol_id"))
            mine = suite_movl.published_as(key[1], cell) if key in wanted else None
            if mine and key not in have and ident not in seen:  # a cell once, whichever report has it
                seen.add(ident)
                done.append((wanted[key], key[1], key[2], cell["seed"], dict(mine, earlier_protocol=True)))
    return done, todo


def estimate_missing(suite, todo: list[tuple], done: list[tuple]) -> list[dict]:
    """Per (task, approach, fraction) of unfinished cells: how many seeds and the estimated seconds per cell
    (from-scratch ResNet: :func:`resnet_estimate_s`, less the epochs a paused cell has done; other cells:
    :func:`cell_seconds`). A TPP adapter (one per task, approach and seed, shared by that seed's label fractions)
    is counted once: not for a cell whose adapter a finished cell, or an earlier missing one, of the same seed
    trains."""
    adapters = {(task.name, approach, seed) for task, approach, _fraction, seed, _cell in done}
    groups = defaultdict(list)  # (task, approach, fraction) -> estimated seconds of each missing cell
    for task, approach, fraction, seed in todo:
        if approach == "resnet18":  # less the epochs a paused cell has done
            state = suite.resnet.state_path(task.name, fraction, seed)
            left = min(max(1 - resnet.epochs_done(state) / suite.resnet.protocol["epochs"], 0.0), 1.0)
            seconds = resnet_estimate_s(suite, task, fraction, done) * left
        else:
            finetune_s, tpp_s = cell_seconds(approach, task.kind, done)
            seconds = finetune_s + (0.0 if (task.name, approach, seed) in adapters else tpp_s)
            adapters.add((task.name, approach, seed))
        groups[(task, approach, fraction)].append(seconds)
    return [{"task": task.name, "approach": approach, "fraction": fraction, "seeds": len(seconds),
             "estimate_s": float(np.mean(seconds))} for (task, approach, fraction), seconds in groups.items()]


def cell_seconds(approach: str, kind: str, done: list[tuple]) -> tuple[float, float]:
    """(fine-tuning, TPP) seconds of one cell of ``approach`` on a task of ``kind``: the means over its finished
    cells (TPP 0 for an approach without it); without any, 90 s (classification) / 300 s (segmentation)."""
    finished = [cell for task, a, _fraction, _seed, cell in done if a == approach and task.kind == kind]
    if not finished:
        return (90.0 if kind == "classification" else 300.0), 0.0
    tpp = [cell["tpp_s"] for cell in finished if cell.get("tpp_s")]
    return float(np.mean([cell["finetune_s"] for cell in finished])), float(np.mean(tpp)) if tpp else 0.0


def resnet_estimate_s(suite, task, fraction: float, done: list[tuple]) -> float:
    """Seconds of a ResNet-18 cell from the finished ones (any task): the median seconds per training image per
    epoch of those trained on 1/4x to 4x this cell's images (else of the nearest size), x its images x epochs.
    The median, since cells ran beside other jobs. Without a finished cell, the a-priori timing of one step
    (``suite.resnet_estimate_s``; it ran 2-2.4x above the cells measured since)."""
    finished = [c[4] for c in done if c[1] == "resnet18" and c[4].get("epoch_s") and c[4].get("train_labels")]
    if not finished:
        return suite.resnet_estimate_s(task, fraction)
    images = suite.resnet_images(task, fraction)
    near = [c for c in finished if images / 4 <= c["train_labels"] <= images * 4]
    if not near:
        nearest = min(finished, key=lambda c: abs(np.log(c["train_labels"] / images)))["train_labels"]
        near = [c for c in finished if c["train_labels"] == nearest]
    rate = float(np.median([c["epoch_s"] / c["train_labels"] for c in near]))
    return rate * images * suite.resnet.protocol["epochs"]


def context_sha256(index) -> str:
    """sha256 (hex) of an in-context cell's context positions as compact JSON text, e.g. of ``[3,17,42]``."""
    return hashlib.sha256(json.dumps([int(i) for i in index], separators=(",", ":")).encode()).hexdigest()


def published_cell(cell: dict) -> dict:
    """A cell as suite.json publishes it. An in-context cell's ``context_index`` (its context's training-split
    positions: thousands of integers per cell, derived from task, fraction, seed and protocol by
    ``suite_incontext.InContextBench.context_index``) stays in the cache and is published as its
    ``context_sha256``; its size is ``context_examples``. A cell without the list (adopted from a report that
    published the fingerprint) is published as it is. Nothing reads the list back from a report: adopting a
    cell copies the fingerprint into the cache and needs no more."""
    if "context_index" not in cell:
        return cell
    return {**{k: v for k, v in cell.items() if k != "context_index"},
            "context_sha256": context_sha256(cell["context_index"])}


def write(suite, out: Path, command: str, memory: bool = True, run_s: float = 0.0) -> dict:
    """Measure the costs, summarise every cell the caches hold and write suite.{md,json,html} and the PNGs."""
    import suite_movl
    import suite_plots

    done, todo = collect(suite)
    costs = measure_costs(suite, memory, dict.fromkeys((c[0], c[1]) for c in done))
    current = [c for c in done if not c[4].get("earlier_protocol")]
    rows = rows_of(current, costs)
    earlier = rows_of([c for c in done if c[4].get("earlier_protocol")], costs)
    for r in earlier:
        r["approach_note"] = f"earlier protocol {r['protocol_id']}"
    wins = who_wins(rows, current)
    missing = estimate_missing(suite, todo, done)
    machine = report.machine()
    out.mkdir(parents=True, exist_ok=True)
    flagged = [dict(r, task=f"{r['task']} (earlier protocol)") for r in earlier]
    plots = suite_plots.write_all(rows + flagged, out) if rows or earlier else []
    hours = sum(m["estimate_s"] * m["seeds"] for m in missing) / 3600
    continue_cmd = "python benchmarks/suite.py --budget-min 60" + (
        "" if suite.grid.path.resolve() == (Path(__file__).parent / "suite.yaml").resolve()
        else f" --grid {suite.grid.path}")
    intro = (f"Machine: {json.dumps(machine)}\nCommand: `{command}`\nGrid: `{suite.grid.path.name}`; "
             f"{len(current)} of {len(suite.grid.cells)} cells finished; {len(todo)} missing "
             f"(about {hours:.1f} CPU hours on this machine; continue with `{continue_cmd}`).\n"
             "FLOPs are 2 x multiply-accumulates as torch.utils.flop_counter counts them, forward pass per image at "
             "the approach's input size; KiB / site: the trainable tensors in fp32; latency: median of 3 forward "
             "passes at one torch thread divided by the batch (threads and load average per cost in the JSON); "
             "inference MiB: peak RSS of a batch-32 forward pass in a fresh process "
             "minus the RSS after building the model; train s: wall time per cell (TPP included). Accuracy is at "
             "argmax, or for fine-tuned binary cells at the decision threshold the recipe chose on the validation "
             "split (Youden's J; said per row): compare AUROC across rows, accuracy only within one rule. "
             "'Who wins' picks each side's best approach by its mean test score and tests the difference on the "
             "same test scores, which flatters the picked side (winner's curse); intervals are not adjusted for "
             "the several comparisons."
             + incontext_note(rows, suite.incontext.protocol) + folder_note(suite) + suite_movl.report_note(done))
    sections = [("Who wins where (paired over seeds: same label subset)", wins_table(wins)),
                ("Every cell", results_table(rows))]
    if earlier:
        sections.append(("Published cells under an earlier protocol (not in 'who wins'; rerun to replace)",
                         results_table(earlier)))
    if missing:
        sections.append(("Missing cells", missing_table(missing)))
    text = intro + "".join(f"\n\n## {title}\n\n{markdown(table)}" for title, table in sections) + "\n"
    cells_json = [published_cell(dict(c[4], suite_task=c[0].name, suite_kind=c[0].kind)) for c in done]
    payload = {"machine": machine, "command": command, "grid": str(suite.grid.path), "complete": not todo,
               "protocols": {"classification": suite.classification.protocol, "segmentation": suite.seg_protocol,
                             "resnet18": suite.resnet.protocol, "incontext": suite.incontext.protocol,
                             "movl": suite.movl.protocol},
               "rows": rows, "earlier_rows": earlier, "who_wins": wins, "missing": missing,
               "costs": {f"{t}/{a}": c for (t, a), c in costs.items()}, "cells": cells_json}
    report.write_atomic(out / "suite.json", json.dumps(payload, indent=1))
    report.write_atomic(out / "suite.md", text + "".join(f"\n![{p.stem}]({p.name})\n" for p in plots))
    report.write_atomic(out / "suite.html", page(intro, sections, plots))
    print("\n" + text + f"\nwrote {out}/suite.{{md,json,html}} and {len(plots)} plots")
    return payload


def incontext_note(rows: list[dict], protocol: dict) -> str:
    """What the cost columns of in-context rows mean, and the context caps applied (empty without such rows)."""
    rows = [r for r in rows if "context_examples" in r]
    if not rows:
        return ""
    capped = [f"{r['task']} {r['approach']} {r['fraction']:.0%}: {r['context_examples']:.0f} of "
              f"{r['subset_examples']:.0f}" for r in rows if r["context_examples"] < r["subset_examples"]]
    return ("\nIn-context rows (prototype, knn, incontext_learned): the context set is the cell's labelled "
            "training subset (the fine-tuning approaches' images at that fraction and seed); trainable = 0, or the "
            "learned in-context model's parameters (trained once on other datasets and shared by every site, not "
            "per site); KiB / site = the context set as `tpp context publish` stores it (PNG images and masks); "
            "train s = preparing the set (its backbone features and the temperature); FLOPs and latency = the "
            "frozen backbone per query (+ the learned model with 16 context examples per class / support pairs; "
            "the learned segmenter reads pixels only); accuracy at argmax. Contexts capped at "
            f"{protocol['max_context_per_class']} examples per class (classification) / "
            f"{protocol['max_context_masks']} image-mask pairs (segmentation), a seeded draw from the subset"
            + (f": {'; '.join(capped)}." if capped else ": no cell was capped."))


def folder_note(suite) -> str:
    """At which size the cells of segmentation folder tasks are scored (empty without such tasks): a
    ``seg_folder`` reads masks at the size it reads images, so the ViT cells at the protocol's input size score
    masks of another size than the cells at the task's own size."""
    tasks = [t for t in suite.grid.tasks if t.folder is not None]
    if not tasks:
        return ""
    each = "; ".join(f"{t.name} ({t.file}, {t.folder.size} px, groups: {t.folder.group_key or 'none'})"
                     for t in tasks)
    return (f"\nSegmentation folder tasks (data.source=seg_folder): {each}. unet, lora@mask_res and the in-context "
            "cells read images and masks at the task's size and are scored there; the other ViT cells read both at "
            f"their input size ({suite.seg_protocol['input_size']} px) and score masks at that size (a .npz task "
            "scores every cell at its stored mask size), so their HD95 px is in other pixels. Cells are keyed by "
            "the folder's content (sha256 of its images/, masks/ and metadata.csv), not its path.")


def page(intro: str, sections: list, plots: list[Path]) -> str:
    """One self-contained HTML page: the tables, the plots as base64 data URIs."""
    images = "".join(f'<h2>{html.escape(p.stem)}</h2><img alt="{html.escape(p.stem)}" '
                     f'src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">' for p in plots)
    body = "".join(f"<h2>{html.escape(title)}</h2>{html_table(table)}" for title, table in sections)
    style = ("body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;font-size:12px}"
             "td,th{border:1px solid #bbb;padding:2px 6px}img{max-width:100%}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>tpp benchmark suite</title><style>{style}"
            f"</style></head><body><h1>tpp benchmark suite</h1><pre>{html.escape(intro)}</pre>{body}{images}"
            "</body></html>\n")
