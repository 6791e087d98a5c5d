"""Cost of every adapter method against full fine-tuning: trainable parameters, adapter size on disk,
training images/second and peak memory, measured side by side in one run.

    python benchmarks/method_cost.py              # writes benchmarks/results/method_cost.{json,md}
    python benchmarks/method_cost.py --steps 5 --rounds 1 --out runs/method_cost_quick

Each method fine-tunes (encoder + linear head, cross-entropy on BreastMNIST training images) in a fresh
subprocess: load the backbone and images, note the resident set size (RSS) as the baseline, run ``--steps``
optimiser steps after 3 warm-up steps, report images/second and peak RSS minus the baseline, then write the
adapter directory and measure its size. Methods alternate over ``--rounds``; the table gives medians and
ratios to full fine-tuning.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
import report  # noqa: E402


def methods() -> list[str]:
    from tpp.adapters import all_methods

    return [m.name for m in all_methods()]


def worker(method: str, steps: int, batch_size: int, backbone: str, data_root: str) -> dict:
    """Fine-tune ``method`` for ``steps`` steps in this process; return speed, memory and size."""
    import torch
    import torch.nn.functional as F

    from tpp.adapter_dir import dir_size, write_adapter_dir
    from tpp.backbones import load_backbone
    from tpp.builders import tensors
    from tpp.data.arrays import load_medmnist
    from tpp.model import TaskModel, attach_adapter, trainable_parameters
    from tpp.tasks.classification import ClassificationHead

    torch.manual_seed(0)
    encoder, info, _ = load_backbone(backbone)
    spec, _, _ = attach_adapter(encoder, method, {})
    split = load_medmnist("breastmnist", data_root).split("train")
    images, labels = tensors(split.images, info), torch.from_numpy(split.labels).long()
    model = TaskModel(encoder, ClassificationHead(info.hidden_size, 2)).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    baseline = report.current_rss_mib()

    def step(i):
        start = (i * batch_size) % (len(images) - batch_size)
        loss = F.cross_entropy(model(images[start:start + batch_size]), labels[start:start + batch_size])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for i in range(3):
        step(i)
    began = time.perf_counter()
    for i in range(steps):
        step(i + 3)
    seconds = time.perf_counter() - began
    peak = report.peak_rss_mib()
    with tempfile.TemporaryDirectory() as tmp:
        card = {"kind": spec.kind, "format": "benchmark"}
        write_adapter_dir(Path(tmp) / "a", encoder, model.head, card)
        size = dir_size(Path(tmp) / "a")
    return {"method": method, "images_per_s": steps * batch_size / seconds, "peak_minus_baseline_mib": peak - baseline,
            "trainable_parameters": trainable_parameters(model), "adapter_bytes": size,
            "threads": torch.get_num_threads()}


def summarise(results: list[dict]) -> list[dict]:
    rows = []
    for name in dict.fromkeys(r["method"] for r in results):
        runs = [r for r in results if r["method"] == name]
        rows.append({"method": name, "rounds": len(runs), "trainable_parameters": runs[0]["trainable_parameters"],
                     "adapter_bytes": runs[0]["adapter_bytes"],
                     "images_per_s": statistics.median(r["images_per_s"] for r in runs),
                     "peak_minus_baseline_mib": statistics.median(r["peak_minus_baseline_mib"] for r in runs)})
    full = next(r for r in rows if r["method"] == "full")
    for r in rows:
        r["params_vs_full"] = r["trainable_parameters"] / full["trainable_parameters"]
        r["size_vs_full"] = r["adapter_bytes"] / full["adapter_bytes"]
        r["speed_vs_full"] = r["images_per_s"] / full["images_per_s"]
        r["memory_vs_full"] = r["peak_minus_baseline_mib"] / full["peak_minus_baseline_mib"]
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| method | trainable (incl. head) | × full | saved size | × full | images/s | × full | "
             "peak RSS − baseline (MiB) | × full |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['trainable_parameters']:,} | {r['params_vs_full']:.4f} | "
                     f"{r['adapter_bytes'] / 1024:,.0f} KiB | {r['size_vs_full']:.4f} | {r['images_per_s']:.0f} | "
                     f"{r['speed_vs_full']:.2f} | {r['peak_minus_baseline_mib']:.0f} | {r['memory_vs_full']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="alternating repetitions of every method")
    parser.add_argument("--methods", nargs="+", default=None, help="default: every registered method")
    parser.add_argument("--backbone", default="builtin:mae-vit-tiny-med")
    parser.add_argument("--data-root", default=os.environ.get("TPP_DATA_ROOT", str(ROOT.parent / "shared" / "data")))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.steps, args.batch_size, args.backbone, args.data_root)))
        return 0
    names = args.methods or methods()
    if "full" not in names:
        names.append("full")
    results = []
    for round_ in range(args.rounds):
        for name in names:
            results.append(report.run_worker(__file__, ["--worker", name, "--steps", str(args.steps), "--batch-size",
                                                        str(args.batch_size), "--backbone", args.backbone,
                                                        "--data-root", args.data_root]))
            r = results[-1]
            print(f"round {round_ + 1} {name}: {r['images_per_s']:.0f} images/s, "
                  f"+{r['peak_minus_baseline_mib']:.0f} MiB, {r['adapter_bytes'] / 1024:.0f} KiB", flush=True)
    rows = summarise(results)
    machine = dict(report.machine(), torch_threads=results[0]["threads"])
    command = "python benchmarks/method_cost.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report.publish(args.out, "method_cost", machine, command,
                   f"Fine-tuning (encoder + linear head), batch {args.batch_size}, {args.steps} timed steps after 3 "
                   f"warm-up steps, BreastMNIST training images, default options of each method, medians over "
                   f"{args.rounds} alternating rounds.", markdown(rows), {"rows": rows, "runs": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
