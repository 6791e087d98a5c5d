"""Scaling out and precision on this machine: 2-process vs 1-process wall time per epoch, bf16 vs fp32 step time.

    python benchmarks/scaling.py                  # writes benchmarks/results/scaling.{json,md}

Every configuration is a real ``tpp run finetune`` (LoRA, shared backbone, BreastMNIST, all labels, one
epoch at a global batch of 64: 1 process x 64, or 2 processes x 32 through ``--num-processes 2``) in a
fresh subprocess; the time per epoch is read from the run's ``log.jsonl`` (last step's time minus the first
step's, scaled to the epoch), so start-up and evaluation do not count. Configurations alternate over
``--rounds``; medians. GPU numbers are not measured here (no GPU).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
import report  # noqa: E402

CONFIGS = {  # name -> (processes, per-process batch, mixed precision)
    "1 process, fp32": (1, 64, "no"),
    "2 processes, fp32": (2, 32, "no"),
    "1 process, bf16": (1, 64, "bf16"),
}


def run_config(name: str, args, work: Path) -> dict:
    processes, batch, precision = CONFIGS[name]
    out = work / name.replace(" ", "_").replace(",", "")
    cmd = [sys.executable, "-m", "tpp.cli", "run", "finetune", "--config", "breast_us/mae_vit_tiny_lora_finetune.yaml",
           "--overwrite", "--num-processes", str(processes), f"backbone.path={args.backbone}",
           f"data.root={args.data_root}", f"output_dir={out}", "train.epochs=1", f"train.batch_size={batch}",
           f"train.mixed_precision={precision}", "train.select_best=false"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-2000:]}")
    steps = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if '"event": "step"' in line]
    per_step = (steps[-1]["time"] - steps[0]["time"]) / max(1, len(steps) - 1)
    return {"config": name, "processes": processes, "batch_per_process": batch, "precision": precision,
            "steps_per_epoch": len(steps), "epoch_s": per_step * len(steps), "step_s": per_step}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--backbone", default="builtin:mae-vit-tiny-med")
    parser.add_argument("--data-root", default=os.environ.get("TPP_DATA_ROOT", str(ROOT.parent / "shared" / "data")))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for name in CONFIGS:
                results.append(run_config(name, args, Path(tmp)))
                print(f"round {round_ + 1} {name}: {results[-1]['epoch_s']:.1f} s/epoch", flush=True)
    median = {n: statistics.median(r["epoch_s"] for r in results if r["config"] == n) for n in CONFIGS}
    step = {n: statistics.median(r["step_s"] for r in results if r["config"] == n) for n in CONFIGS}
    base = median["1 process, fp32"]
    lines = ["| configuration | s / epoch | × 1 process fp32 | s / step |", "|---|---|---|---|"]
    lines += [f"| {n} | {median[n]:.1f} | {median[n] / base:.2f} | {step[n]:.3f} |" for n in CONFIGS]
    machine = report.machine()
    command = "python benchmarks/scaling.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report.publish(args.out, "scaling", machine, command,
                   "LoRA fine-tuning, BreastMNIST (546 images), global batch 64, one epoch, "
                   f"medians over {args.rounds} alternating rounds.", "\n".join(lines),
                   {"runs": results, "median_epoch_s": median, "median_step_s": step})
    return 0


if __name__ == "__main__":
    sys.exit(main())
