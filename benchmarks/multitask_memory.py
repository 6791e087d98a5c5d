"""Memory of one multi-task optimiser step against the number of tasks: the UMedPT cycle vs the naive summed loss.

    python benchmarks/multitask_memory.py                 # writes benchmarks/results/multitask_memory.{json,md}
    python benchmarks/multitask_memory.py --steps 1 --batch-size 32 --out runs/mt_quick
    python benchmarks/multitask_memory.py --release all    # also with malloc_trim alone and with glibc's defaults

Tasks from the shared data, mixed kinds, taken in this order: BloodMNIST classification, BUSI segmentation
(64 px masks), OrganAMNIST MAE (the checkpoint's frozen decoder), DermaMNIST classification, PneumoniaMNIST
DINO, MedNIST classification (its 6 classes span CT, MR and X-ray: modality ``unknown``, see ``TASKS``). Each
configuration (every task alone; the first 2, 4 and 6 tasks under ``cycle`` and under ``summed``) runs in a fresh
subprocess (CPU peak-memory counters never reset), built by the multitask recipe's own code (LoRA r=8 target
parameters on the frozen builtin backbone, one head per task).
The baseline RSS is taken after the backbone, the data, every head and every AdamW state exist (the states
are created up front, as zeros) and the batches are converted; then one warm-up cycle and ``--steps`` timed
cycles run. Reported: peak RSS minus that baseline, and seconds per task batch. Goal (issue 23): the cycle's
peak at most 1.1x the largest single-task peak of its tasks. ``release``: ``on`` is what the recipe does (glibc's
mmap threshold fixed at 1 MiB, ``tpp.multitask.set_mmap_threshold``, and ``malloc_trim`` after each task's
backward), ``trim`` the ``malloc_trim`` alone, ``off`` glibc's defaults; ``--release all`` measures each.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
import report  # noqa: E402

TASKS = [
    {"name": "bloodmnist-cls", "kind": "classification", "data": {"source": "medmnist", "name": "bloodmnist"}},
    {"name": "busi-seg", "kind": "segmentation",
     "data": {"source": "seg_npz", "name": "busi_64", "file": "seg/busi_64.npz", "label_key": "label",
              "class_names_key": "label_names", "group_key": "dup_group", "classes": ["background", "lesion"],
              "modality": "US", "origin": "BUSI"}},
    {"name": "organamnist-mae", "kind": "mae", "data": {"source": "medmnist", "name": "organamnist"}},
    {"name": "dermamnist-cls", "kind": "classification", "data": {"source": "medmnist", "name": "dermamnist_jpeg"}},
    {"name": "pneumoniamnist-dino", "kind": "dino", "data": {"source": "medmnist", "name": "pneumoniamnist"}},
    # MedNIST's classes are CT (AbdomenCT, ChestCT, HeadCT), MR (BreastMRI) and X-ray (CXR, Hand; ../shared/data's
    # SOURCES.md): data.modality is one DICOM code per dataset, so no code fits the 6-class task and it records
    # "unknown" (the tag is not measured; a per-modality subset would be data.classes with its own code)
    {"name": "mednist-cls", "kind": "classification",
     "data": {"source": "npz", "name": "mednist", "file": "mednist/mednist_64_every5th.npz", "modality": "unknown",
              "val_fraction": 0.0, "test_fraction": 0.0}},
]
COUNTS = (2, 4, 6)
RELEASES = ("on", "trim", "off")  # the recipe's (mmap threshold + trim), malloc_trim only, glibc's defaults


def init_adam_state(optimizer) -> None:
    """Create AdamW's state (zeros) for every parameter now, as its first step would."""
    import torch

    for group in optimizer.param_groups:
        for p in group["params"]:
            optimizer.state[p] = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(p),
                                  "exp_avg_sq": torch.zeros_like(p)}


def worker(tasks: list[int], schedule: str, steps: int, batch_size: int, backbone: str, data_root: str,
           release: str = "on") -> dict:
    """Build the tasks with the recipe's code, take the baseline, run the cycles; the measurements."""
    import numpy as np
    import torch

    from tpp.backbones import load_backbone
    from tpp.config import build_config
    from tpp.model import attach_adapter
    from tpp.multitask import Schedule, Unit, set_mmap_threshold, split_parameters
    from tpp.multitask_build import task_name
    from tpp.recipes.multitask import _optimizer, build_module, load_tasks

    if release == "on":
        set_mmap_threshold()  # as the recipe does before loading
    cfg = build_config({"recipe": "multitask", "pool": [TASKS[t] for t in tasks],
                        "data": {"root": data_root, "hflip": False},
                        "adapter": {"method": "lora", "r": 8, "alpha": 16}, "train": {"lr": 1e-4}})
    torch.manual_seed(0)
    encoder, info, decoder = load_backbone(backbone, with_decoder=True)
    attach_adapter(encoder, "lora", cfg.adapter.typed())
    loaded = load_tasks(cfg, info)
    modules = {task_name(e): build_module(e, d, y, encoder, info, decoder, "target", False)[0]
               for e, d, _, y in loaded}
    shared, heads = split_parameters(encoder, modules)
    units = [Unit(name, module, heads[name], _optimizer(heads[name], 1e-4, cfg)) for name, module in modules.items()]
    optimizer = _optimizer(shared, 1e-4, cfg)
    for opt in [optimizer] + [u.optimizer for u in units]:
        init_adam_state(opt)
    run = Schedule(shared, units, optimizer, schedule=schedule, release_memory=release != "off")
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(steps + 1):
        cycle = []
        for _, _, x, y in loaded:
            index = rng.choice(len(x), size=min(batch_size, len(x)), replace=False)
            cycle.append([x[index]] + ([] if y is None else [y[torch.from_numpy(index)]]))
        batches.append(cycle)
    order, weights = list(range(len(units))), [1.0] * len(units)
    for module in modules.values():
        module.train()
    baseline = report.current_rss_mib()
    run.step(order, batches[0], weights)  # warm-up (counted in the peak too: it is a cycle like the others)
    start = time.perf_counter()
    for cycle in batches[1:]:
        run.step(order, cycle, weights)
    seconds = time.perf_counter() - start
    peak = report.peak_rss_mib()
    return {"tasks": [TASKS[t]["name"] for t in tasks], "schedule": schedule, "release": release, "peak_rss_mib": peak,
            "baseline_rss_mib": baseline, "peak_minus_baseline_mib": peak - baseline,
            "s_per_task_batch": seconds / (steps * len(units)), "threads": torch.get_num_threads()}


def configurations(counts=COUNTS, releases=("on",)) -> list[tuple[list[int], str, str]]:
    """For each release setting: every task of the largest count alone, then the first N tasks under each
    schedule for N in ``counts``."""
    return [c for release in releases for c in
            [([t], "cycle", release) for t in range(max(counts))]
            + [(list(range(n)), s, release) for n in counts for s in ("cycle", "summed")]]


def cached(path: Path | None) -> list[dict]:
    """Results of earlier workers (``--cache``, one JSON object a line); [] without."""
    if path is None or not path.is_file():
        return []
    old = {True: "trim", False: "off"}  # caches written before the mmap threshold: a bool
    return [dict(r, release=old.get(r.get("release", False), r.get("release")))
            for r in (json.loads(line) for line in path.read_text().splitlines() if line.strip())]


def rows_of(results: list[dict]) -> list[dict]:
    """One row per release setting, task count and schedule, with the largest single-task peak of its tasks
    (same release setting) and the ratio; a configuration not measured (or one of whose tasks was not measured
    alone) has no row."""
    rows = []
    for release in [m for m in RELEASES if m in {r["release"] for r in results}]:
        runs = [r for r in results if r["release"] == release]
        single = {r["tasks"][0]: r for r in runs if len(r["tasks"]) == 1}
        for n in (1,) + tuple(sorted({len(r["tasks"]) for r in runs} - {1})):
            for schedule in ("cycle", "summed"):
                r = next((r for r in runs if len(r["tasks"]) == n and r["schedule"] == schedule), None)
                if r is None and n == 1 and TASKS[0]["name"] in single:  # one task: both schedules are the same
                    r = dict(single[TASKS[0]["name"]], schedule=schedule)
                if r is None or any(name not in single for name in r["tasks"]):
                    continue
                largest = max(single[name]["peak_minus_baseline_mib"] for name in r["tasks"])
                rows.append({"tasks": n, "schedule": schedule, "release": release,
                             "peak_minus_baseline_mib": r["peak_minus_baseline_mib"], "largest_single_mib": largest,
                             "ratio": r["peak_minus_baseline_mib"] / largest,
                             "s_per_task_batch": r["s_per_task_batch"]})
    return rows


def markdown(rows: list[dict], results: list[dict]) -> str:
    lines = ["| tasks | schedule | heap release | peak RSS − baseline (MiB) | largest single-task peak (MiB) | "
             "× largest | s / task batch |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['tasks']} | {r['schedule']} | {r['release']} | {r['peak_minus_baseline_mib']:.0f} | "
              f"{r['largest_single_mib']:.0f} | {r['ratio']:.2f} | {r['s_per_task_batch']:.2f} |" for r in rows]
    lines += ["", "| single task | heap release | peak RSS − baseline (MiB) | s / batch |", "|---|---|---|---|"]
    lines += [f"| {r['tasks'][0]} | {r['release']} | {r['peak_minus_baseline_mib']:.0f} | "
              f"{r['s_per_task_batch']:.2f} |" for r in results if len(r["tasks"]) == 1]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2, help="timed cycles after one warm-up cycle")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--backbone", default="builtin:mae-vit-tiny-med")
    parser.add_argument("--data-root", default=os.environ.get("TPP_DATA_ROOT", str(ROOT.parent / "shared" / "data")))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--counts", default=",".join(map(str, COUNTS)), help="task counts to measure (2,4,6)")
    parser.add_argument("--cache", type=Path, help="JSON-lines file: each worker's result is appended to it and a "
                        "configuration already in it is not run again (a long run continues where it stopped)")
    parser.add_argument("--release", choices=("on", "trim", "off", "all"), default="on",
                        help="how freed memory goes back to the system: on (the recipe's: a fixed 1 MiB mmap "
                        "threshold and malloc_trim after each task), trim (malloc_trim only), off (glibc's "
                        "defaults), all (every configuration three times)")
    parser.add_argument("--report-only", action="store_true", help="only the table of what --cache holds (a "
                        "run stopped early, or caches of several invocations concatenated)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # "0,1,2:cycle:on"
    args = parser.parse_args(argv)
    common = ["--steps", str(args.steps), "--batch-size", str(args.batch_size), "--backbone", args.backbone,
              "--data-root", args.data_root]
    if args.worker:
        tasks, schedule, release = args.worker.split(":")
        print(json.dumps(worker([int(t) for t in tasks.split(",")], schedule, args.steps, args.batch_size,
                                args.backbone, args.data_root, release)))
        return 0
    results = cached(args.cache)
    releases = {"on": ("on",), "trim": ("trim",), "off": ("off",), "all": ("on", "trim", "off")}[args.release]
    todo = [] if args.report_only else configurations(tuple(int(n) for n in args.counts.split(",")), releases)
    if not results and not todo:
        parser.error("--report-only needs a --cache file with results")
    for tasks, schedule, release in todo:
        names = [TASKS[t]["name"] for t in tasks]
        if any(r["tasks"] == names and r["schedule"] == schedule and r["release"] == release for r in results):
            continue
        results.append(report.run_worker(__file__, ["--worker", f"{','.join(map(str, tasks))}:{schedule}:{release}",
                                                    *common]))
        r = results[-1]
        if args.cache is not None:
            with args.cache.open("a") as f:
                f.write(json.dumps(r) + "\n")
        print(f"{'+'.join(r['tasks'])} {schedule} release {release}: "
              f"+{r['peak_minus_baseline_mib']:.0f} MiB, "
              f"{r['s_per_task_batch']:.2f} s per task batch", flush=True)
    rows = rows_of(results)
    machine = dict(report.machine(), torch_threads=results[0]["threads"])
    command = "python benchmarks/multitask_memory.py " + " ".join(argv if argv is not None else sys.argv[1:])
    counts = "/".join(str(n) for n in sorted({len(r["tasks"]) for r in results}))
    report.publish(args.out, "multitask_memory", machine, command,
                   f"One optimiser step (cycle and summed) over {counts} tasks, batch {args.batch_size} per task, "
                   "LoRA r=8 on the "
                   f"builtin backbone; peak after one warm-up and {args.steps} timed cycles, each configuration in a "
                   "fresh subprocess.", markdown(rows, results), {"rows": rows, "runs": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
