"""Wall time of a TPP run with the DINO pretext against the MAE pretext, side by side in one invocation.

    python benchmarks/pretext_time.py                          # 40 steps, batch 64, 3 rounds, 1 and 2 threads
    python benchmarks/pretext_time.py --steps 10 --rounds 1 --threads 1 --out runs/pretext_time_quick

Each run is the real ``tpp`` recipe (the shipped BreastMNIST LoRA TPP config, as ``tpp run`` runs it) in a
fresh subprocess with ``OMP_NUM_THREADS`` and torch's thread count set to the thread setting. MAE and DINO
runs alternate (MAE, DINO, MAE, DINO, ...) with the same steps, batch, data and seed, so load from other
processes hits both alike; the table gives medians over the rounds. Every run is split, from its own
``log.jsonl``, into a fixed part (process start, imports, backbone and data loading, writing the adapter)
and the training loop (seconds per optimiser step), so the ratio can be stated for any step count:
``fixed + steps x per-step``. The load average of the machine is recorded before and after.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

STARTED = time.time()  # a worker's process start, before torch is imported: imports count as fixed cost

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
import report  # noqa: E402

PRETEXTS = ("mae", "dino")
TPP_CONFIG = "breast_us/mae_vit_tiny_lora_tpp.yaml"  # LoRA r=8 on q/v, BreastMNIST training images
GRID_STEPS = 400  # the tpp_gain protocol's TPP steps: the ratio is also projected there


def split_log(log_path: Path, steps: int) -> tuple[float, float]:
    """(seconds before the first optimiser step, seconds per step) from a run's ``log.jsonl``: the per-step
    time is the mean step-to-step interval after the first step (which carries one-off allocation)."""
    times = [r["time"] for r in map(json.loads, log_path.read_text().splitlines()) if r.get("event") == "step"]
    if len(times) != steps or steps < 3:
        raise RuntimeError(f"{log_path}: expected {steps} step events (at least 3), found {len(times)}")
    per_step = (times[-1] - times[1]) / (len(times) - 2)
    return times[0] - per_step, per_step


def worker(pretext: str, threads: int, steps: int, batch_size: int, backbone: str, data_root: str) -> dict:
    """One TPP run in this process; returns its fixed and per-step seconds and the recipe's wall time."""
    import torch

    from tpp.recipes import CONFIG_DIR, run_recipe
    from tpp_gain import quiet_libraries

    torch.set_num_threads(threads)
    quiet_libraries()
    with tempfile.TemporaryDirectory() as tmp:
        summary, run_dir = run_recipe("tpp", CONFIG_DIR / TPP_CONFIG, [
            f"backbone.path={backbone}", f"data.root={data_root}", f"output_dir={tmp}/run", "seed=0",
            f"pretext.name={pretext}", f"train.max_steps={steps}", f"train.batch_size={batch_size}"],
            overwrite=True, started=STARTED)
        before_loop, per_step = split_log(run_dir / "log.jsonl", steps)
    wall = time.time() - STARTED
    from tpp.backbones import resolve_backbone

    size = json.loads((Path(resolve_backbone(backbone)) / "config.json").read_text()).get("image_size")
    return {"image_size": size, "pretext": pretext, "threads": torch.get_num_threads(), "steps": steps,
            "batch_size": batch_size,
            "images": summary["images"], "wall_s": wall, "recipe_wall_time_s": summary["wall_time_s"],
            "per_step_s": per_step, "fixed_s": wall - steps * per_step, "before_first_step_s": before_loop}


def summarise(results: list[dict], steps_at: int) -> list[dict]:
    """Medians per (threads, pretext) and the DINO / MAE ratios: measured wall time, per step, and the wall time
    projected to ``steps_at`` steps (fixed + steps_at x per-step)."""
    rows = []
    for threads in sorted({r["threads"] for r in results}):
        med = {}
        for pretext in PRETEXTS:
            runs = [r for r in results if r["threads"] == threads and r["pretext"] == pretext]
            med[pretext] = {k: statistics.median(r[k] for r in runs) for k in ("wall_s", "per_step_s", "fixed_s")}
            med[pretext]["runs"] = len(runs)
        projected = {p: med[p]["fixed_s"] + steps_at * med[p]["per_step_s"] for p in PRETEXTS}
        rows.append({"threads": threads, **{f"{p}_{k}": v for p in PRETEXTS for k, v in med[p].items()},
                     "ratio_wall": med["dino"]["wall_s"] / med["mae"]["wall_s"],
                     "ratio_per_step": med["dino"]["per_step_s"] / med["mae"]["per_step_s"],
                     "projected_steps": steps_at, "ratio_projected": projected["dino"] / projected["mae"]})
    return rows


def markdown(rows: list[dict], steps: int) -> str:
    lines = [f"| threads | MAE run s | DINO run s | × ({steps} steps) | MAE s/step | DINO s/step | × per step "
             f"| MAE fixed s | DINO fixed s | × at {rows[0]['projected_steps']} steps |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['threads']} | {r['mae_wall_s']:.1f} | {r['dino_wall_s']:.1f} | {r['ratio_wall']:.1f} | "
                     f"{r['mae_per_step_s']:.3f} | {r['dino_per_step_s']:.3f} | {r['ratio_per_step']:.1f} | "
                     f"{r['mae_fixed_s']:.1f} | {r['dino_fixed_s']:.1f} | {r['ratio_projected']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40, help="optimiser steps per run (at least 3)")
    parser.add_argument("--batch-size", type=int, default=64, help="the tpp_gain protocol's TPP batch")
    parser.add_argument("--rounds", type=int, default=3, help="alternating MAE / DINO pairs per thread setting")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--backbone", default="builtin:mae-vit-tiny-med")
    parser.add_argument("--data-root", default=os.environ.get("TPP_DATA_ROOT", str(ROOT.parent / "shared" / "data")))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--worker", choices=PRETEXTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 3:
        parser.error("--steps must be at least 3 (the per-step time skips the first step)")
    if args.worker:
        print(json.dumps(worker(args.worker, args.threads[0], args.steps, args.batch_size, args.backbone,
                                args.data_root)))
        return 0
    load_before, results = os.getloadavg(), []
    for threads in args.threads:
        for round_ in range(args.rounds):
            for pretext in PRETEXTS:
                results.append(report.run_worker(__file__, [
                    "--worker", pretext, "--threads", str(threads), "--steps", str(args.steps),
                    "--batch-size", str(args.batch_size), "--backbone", args.backbone, "--data-root", args.data_root],
                    env={"OMP_NUM_THREADS": str(threads)}))
                r = results[-1]
                print(f"{threads} thread(s), round {round_ + 1}, {pretext}: {r['wall_s']:.1f} s "
                      f"({r['per_step_s']:.3f} s/step, fixed {r['fixed_s']:.1f} s)", flush=True)
    load_after = os.getloadavg()
    rows = summarise(results, GRID_STEPS)
    command = "python benchmarks/pretext_time.py " + " ".join(argv if argv is not None else sys.argv[1:])
    conditions = {"load_average_before": load_before, "load_average_after": load_after,
                  "image_size": results[0]["image_size"], "data": "BreastMNIST training split", "steps": args.steps,
                  "batch_size": args.batch_size, "rounds": args.rounds}
    machine = dict(report.machine(), torch_threads="the table's threads column (OMP_NUM_THREADS and torch)")
    report.publish(args.out, "pretext_time", machine, command,
                   f"TPP wall time, DINO vs MAE: LoRA r=8 (q, v), batch {args.batch_size}, {args.steps} steps, "
                   f"BreastMNIST training images at {results[0]['image_size']} px, medians of {args.rounds} "
                   f"alternating runs per pretext; "
                   f"load average (1/5/15 min) before {load_before[0]:.1f}/{load_before[1]:.1f}/{load_before[2]:.1f}"
                   f", after {load_after[0]:.1f}/{load_after[1]:.1f}/{load_after[2]:.1f}.",
                   markdown(rows, args.steps), {"conditions": conditions, "rows": rows, "runs": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
