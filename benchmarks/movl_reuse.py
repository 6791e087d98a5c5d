"""MoVL fine-tuning: the discrepancy term re-using the task pass's prompted features vs a second prompted pass.

    TPP_DATA_ROOT=../shared/data OMP_NUM_THREADS=1 python benchmarks/movl_reuse.py --rounds 3 --steps 60

The same `tpp run finetune` (BreastMNIST, 10% labels, MoVL with the movl.py benchmark's settings: 36-px input,
4-px frame, discrepancy 0.1, lr 1e-2) runs alternately with the recipe as shipped (``reuse``: the prompted
features come from the task's own forward pass, :func:`tpp.adapters.visual_prompt.encoder_output`) and with the
capture switched off (``twice``: the term runs the prompted images through the backbone again, as before
2026-11-30). Prints and writes (``--out``, JSON) the wall time of each run (data loading, training and evaluation)
and the test AUROC / accuracy, which must be equal; the speed-up is the ratio of the medians.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import tpp.api as api
import tpp.recipes.finetune as finetune

CONFIG = "breast_us/mae_vit_tiny_lora_finetune.yaml"
MOVL = ["adapter.method=movl", "adapter.input_size=36", "adapter.mode=pad", "adapter.pad=4",
        "adapter.discrepancy_weight=0.1", "backbone.input_size=36", "train.lr=0.01", "data.label_fraction=0.1",
        "data.val_label_fraction=0.1"]


def one_run(mode: str, steps: int, seed: int, work: Path) -> dict:
    """One fine-tuning run with the prompted features re-used (``reuse``) or recomputed (``twice``)."""
    real = finetune.encoder_output
    if mode == "twice":
        finetune.encoder_output = lambda model: contextlib.nullcontext({})
    try:
        start = time.perf_counter()
        api.run("finetune", CONFIG, MOVL + [f"train.max_steps={steps}", f"seed={seed}"],
                output_dir=work / mode, overwrite=True)
        seconds = time.perf_counter() - start
    finally:
        finetune.encoder_output = real
    test = json.loads((work / mode / "metrics.json").read_text())["test"]
    return {"mode": mode, "s": round(seconds, 2), "auroc": test["auroc"], "accuracy": test["accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="runs of each mode, alternating")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--work", default="runs/movl_reuse", help="the runs' output folders")
    parser.add_argument("--out", default="benchmarks/results/movl_reuse.json")
    args = parser.parse_args()
    runs = [one_run(mode, args.steps, args.seed, Path(args.work))
            for _ in range(args.rounds) for mode in ("twice", "reuse")]
    median = {mode: statistics.median(r["s"] for r in runs if r["mode"] == mode) for mode in ("twice", "reuse")}
    same = len({(r["auroc"], r["accuracy"]) for r in runs}) == 1
    result = {"runs": runs, "median_s": median, "speedup": round(median["twice"] / median["reuse"], 2),
              "same_metrics": same, "steps": args.steps, "seed": args.seed,
              "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"median wall time: twice {median['twice']:.1f} s, reuse {median['reuse']:.1f} s -> "
          f"{result['speedup']}x; test metrics identical: {same}  ({args.out})")


if __name__ == "__main__":
    main()
