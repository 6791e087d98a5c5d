"""Cost of the TPP stage against full-parameter MAE adaptation of the same backbone on the same data.

    python benchmarks/tpp_cost.py                 # writes benchmarks/results/tpp_cost.{json,md}
    python benchmarks/tpp_cost.py --steps 10 --rounds 1 --out runs/cost_quick

Each configuration runs in a fresh subprocess (CPU peak-memory counters never reset): load the
backbone and BreastMNIST's training images, note the resident set size (RSS) as the baseline, run
``--steps`` optimiser steps after 3 warm-up steps, and report images/second and peak RSS minus the
baseline (``ru_maxrss`` minus ``VmRSS`` after loading). Configurations alternate over ``--rounds``
so that machine noise hits them alike; the table gives medians and ratios to full MAE adaptation.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
import report  # noqa: E402
CONFIGS = {
    "tpp_lora_mae": "LoRA r=8 (q, v) target parameters only, MAE with the frozen checkpoint decoder",
    "tpp_lora_dino": "LoRA r=8 (q, v) target parameters only, DINO with a fresh projection head",
    "full_mae": "full-parameter MAE adaptation: every encoder and decoder weight trains",
}


def worker(name: str, steps: int, batch_size: int, backbone: str, data_root: str) -> dict:
    """Run one configuration in this process and return its measurements."""
    import torch

    from tpp.backbones import load_backbone
    from tpp.builders import tensors
    from tpp.data.arrays import load_medmnist
    from tpp.model import attach_adapter, trainable_parameters
    from tpp.pretext import build_pretext

    torch.manual_seed(0)
    encoder, info, decoder = load_backbone(backbone, with_decoder=True)
    if name == "full_mae":
        attach_adapter(encoder, "full", {})
    else:
        attach_adapter(encoder, "lora", {"r": 8, "alpha": 16})
    pretext = build_pretext("dino" if name.endswith("dino") else "mae", encoder, decoder)
    if name == "full_mae":
        pretext.decoder.requires_grad_(True)
    images = tensors(load_medmnist("breastmnist", data_root).split("train").images, info)
    optimizer = torch.optim.AdamW([p for p in pretext.parameters() if p.requires_grad], lr=1e-4)
    baseline = report.current_rss_mib()
    pretext.train()

    def step(i):
        batch = images[(i * batch_size) % (len(images) - batch_size):][:batch_size]
        loss = pretext(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for i in range(3):
        step(i)
    start = time.perf_counter()
    for i in range(steps):
        step(i + 3)
    seconds = time.perf_counter() - start
    peak = report.peak_rss_mib()
    return {"config": name, "images_per_s": steps * batch_size / seconds, "peak_rss_mib": peak,
            "baseline_rss_mib": baseline, "peak_minus_baseline_mib": peak - baseline,
            "trainable_parameters": trainable_parameters(pretext), "threads": torch.get_num_threads()}


def run_subprocess(name: str, args) -> dict:
    return report.run_worker(__file__, ["--worker", name, "--steps", str(args.steps),
                                        "--batch-size", str(args.batch_size),
                                        "--backbone", args.backbone, "--data-root", args.data_root])


def summarise(results: list[dict]) -> list[dict]:
    rows = []
    for name in CONFIGS:
        runs = [r for r in results if r["config"] == name]
        rows.append({"config": name, "what": CONFIGS[name], "rounds": len(runs),
                     "images_per_s": statistics.median(r["images_per_s"] for r in runs),
                     "peak_minus_baseline_mib": statistics.median(r["peak_minus_baseline_mib"] for r in runs),
                     "trainable_parameters": runs[0]["trainable_parameters"]})
    full = next(r for r in rows if r["config"] == "full_mae")
    for r in rows:
        r["speed_vs_full"] = r["images_per_s"] / full["images_per_s"]
        r["memory_vs_full"] = r["peak_minus_baseline_mib"] / full["peak_minus_baseline_mib"]
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| configuration | trainable | images/s | × full | peak RSS − baseline (MiB) | × full |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['config']}: {r['what']} | {r['trainable_parameters']:,} | {r['images_per_s']:.0f} | "
                     f"{r['speed_vs_full']:.2f} | {r['peak_minus_baseline_mib']:.0f} | {r['memory_vs_full']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="alternating repetitions of every configuration")
    parser.add_argument("--backbone", default="builtin:mae-vit-tiny-med")
    parser.add_argument("--data-root", default=os.environ.get("TPP_DATA_ROOT", str(ROOT.parent / "shared" / "data")))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--worker", choices=list(CONFIGS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.steps, args.batch_size, args.backbone, args.data_root)))
        return 0
    results = []
    for round_ in range(args.rounds):
        for name in CONFIGS:
            results.append(run_subprocess(name, args))
            print(f"round {round_ + 1} {name}: {results[-1]['images_per_s']:.0f} images/s, "
                  f"+{results[-1]['peak_minus_baseline_mib']:.0f} MiB", flush=True)
    rows = summarise(results)
    machine = dict(report.machine(), torch_threads=results[0]["threads"])  # the workers' threads
    command = "python benchmarks/tpp_cost.py " + " ".join(a for a in (argv or sys.argv[1:]))
    report.publish(args.out, "tpp_cost", machine, command,
                   f"Batch {args.batch_size}, {args.steps} timed steps after 3 warm-up steps, BreastMNIST training "
                   f"images, medians over {args.rounds} alternating rounds.", markdown(rows),
                   {"rows": rows, "runs": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
