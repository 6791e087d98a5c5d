"""Does the data path stream? Peak memory against the number of images, and throughput against the old path.

    python benchmarks/data_scale.py scale                  # 1k / 10k / 50k PNGs at 224 px: peak RSS flat in N?
    python benchmarks/data_scale.py scale --sizes 50000    # one size at a time: measured sizes are kept in
                                                           # benchmarks/results/data_scale_rows.json
    python benchmarks/data_scale.py scale --sizes 500 2000 --steps 3 --out /tmp/ds      # a quick look
    python benchmarks/data_scale.py scale --depth 1 --out benchmarks/results/data_scale_depth1  # 1-layer ViT:
                                                           # same data path, a ~6x cheaper 50k evaluation pass
    python benchmarks/data_scale.py scale --sizes 50000 --recipes tpp   # one recipe of one size
    python benchmarks/data_scale.py speed --baseline HEAD~1 # 28-px MedMNIST images/s vs a previous commit

``scale``: a folder of N PNG images at 224 px, made by upsampling real BreastMNIST images from the data root
(bicubic; 1,000 distinct files, the rest hard links to them, in a temporary folder that is deleted afterwards,
never committed), and a ViT-MAE backbone built from config at 224 px (patch 16, width 192, 6 layers). Each run
is a fresh subprocess: TPP (``--steps`` steps on all N images), fine-tuning (``--steps`` steps, then its val and
test predictions) and evaluation of that adapter on the train split, so the N images are all predicted once.
Memory is peak RSS minus the RSS after the backbone is loaded (before any image is read). The claim: peak memory
flat in N, within 20% from the smallest to the largest N. The runs fix glibc's mmap threshold
(``MALLOC_MMAP_THRESHOLD_``, ``--malloc-threshold 0`` for glibc's default): with the default, freed activation
buffers fragment the heap and the same prediction loop peaked at 158, 218 and 158 MiB over 160, 800 and 1,600
images (95 MiB for both ends with the threshold fixed), noise that would hide what the data path does.

``speed``: fine-tuning on BreastMNIST (28 px, the shared backbone) with this checkout and with ``--baseline``
(run from a temporary git worktree), alternating, ``--rounds`` times; images/s of the training steps (from the
run logs' step times) and of the whole run. The claim: at least 0.9x the baseline's images/s (medians).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
import report  # noqa: E402

DISTINCT = 1000  # distinct image files; the others are hard links to them
VIT_224 = dict(image_size=224, patch_size=16, num_channels=3, hidden_size=192, num_hidden_layers=6,
               num_attention_heads=3, intermediate_size=768, decoder_hidden_size=128, decoder_num_hidden_layers=2,
               decoder_num_attention_heads=4, decoder_intermediate_size=512, mask_ratio=0.75)


def make_backbone(path: Path, depth: int = 6) -> Path:
    """A ViT-MAE at 224 px built from config with ``depth`` encoder layers (random weights: memory and speed do
    not depend on them; the data path's memory does not depend on the depth either, activations are per batch)."""
    import torch
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    torch.manual_seed(0)
    ViTMAEForPreTraining(ViTMAEConfig(**{**VIT_224, "num_hidden_layers": depth})).save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.25] * 3}))
    return path


def make_folder(path: Path, n: int, data_root: str) -> Path:
    """N PNGs at 224 px in class folders ``malignant/`` and ``benign/`` (labels from BreastMNIST)."""
    import numpy as np
    from PIL import Image

    data = np.load(Path(data_root) / "medmnist" / "breastmnist.npz")
    images, labels = data["train_images"], data["train_labels"].reshape(-1)
    names = ["malignant", "benign"]
    for name in names:
        (path / name).mkdir(parents=True, exist_ok=True)
    distinct = []
    for i in range(n):
        j = i % DISTINCT  # image i repeats image j (same class folder)
        target = path / names[int(labels[j % len(labels)])] / f"img{i:06d}.png"
        if i < DISTINCT:
            Image.fromarray(images[j % len(images)]).resize((224, 224), Image.BICUBIC).save(target)
            distinct.append(target)
        else:
            os.link(distinct[j], target)
    return path


def worker(recipe: str, overrides: list[str], backbone: str) -> dict:
    """One recipe run in this (fresh) process: peak RSS over the RSS once the backbone is loaded."""
    from tpp.backbones import load_backbone
    from tpp.recipes import CONFIG_DIR, run_recipe

    load_backbone(backbone)  # torch, transformers and the weights resident: the baseline
    baseline = report.current_rss_mib()
    config = {"tpp": "breast_us/mae_vit_tiny_lora_tpp.yaml", "finetune": "breast_us/mae_vit_tiny_lora_finetune.yaml",
              "evaluate": "breast_us/mae_vit_tiny_lora_finetune.yaml"}[recipe]
    start = time.perf_counter()
    summary, path = run_recipe(recipe, CONFIG_DIR / config, overrides, overwrite=True)
    seconds = time.perf_counter() - start
    steps = [json.loads(line) for line in (path / "log.jsonl").read_text().splitlines()]
    step_times = [r["time"] for r in steps if r.get("event") == "step"]
    peak = report.peak_rss_mib()
    return {"recipe": recipe, "seconds": seconds, "baseline_rss_mib": baseline, "peak_rss_mib": peak,
            "peak_minus_baseline_mib": peak - baseline, "step_times": step_times}


def run(recipe: str, overrides: list[str], backbone: str, env: dict | None = None) -> dict:
    """One recipe run in a fresh subprocess (``env``: variables such as PYTHONPATH of a baseline checkout)."""
    sets = [a for o in overrides for a in ("--set", o)]
    return report.run_worker(__file__, ["--worker", recipe, "--backbone", backbone, *sets], env=env)


def scale(args) -> dict:
    """Every size of ``--sizes`` not measured yet (rows kept in ``OUT/data_scale_rows.json``, so the sizes can
    be run in separate sessions), then the verdict over every stored size."""
    store = args.out / "data_scale_rows.json"
    rows = json.loads(store.read_text()) if store.is_file() else []
    env = {"MALLOC_MMAP_THRESHOLD_": str(args.malloc_threshold)} if args.malloc_threshold else None
    with tempfile.TemporaryDirectory(prefix="tpp_data_scale_") as tmp:
        tmp = Path(tmp)
        backbone = str(make_backbone(tmp / "vit224", args.depth))
        for n in args.sizes:
            todo = [r for r in args.recipes if (n, r) not in {(x["n"], x["recipe"]) for x in rows}]
            if not todo:
                continue
            folder = make_folder(tmp / f"png{n}", n, args.data_root)
            common = [f"backbone.path={backbone}", "data.source=folder", f"data.root={tmp}", f"data.file=png{n}",
                      "data.modality=US", f"data.name=png{n}", f"train.max_steps={args.steps}",
                      f"train.batch_size={args.batch_size}", f"train.eval_batch_size={args.batch_size}",
                      f"data.num_workers={args.num_workers}"]
            out = tmp / f"runs{n}"
            overrides = {"tpp": ["data.use_eval_splits=true", f"output_dir={out / 'tpp'}"],
                         "finetune": ["train.select_best=false", f"output_dir={out / 'ft'}"],
                         "evaluate": [f"adapter.path={out / 'ft' / 'adapter'}", "data.split=train",
                                      f"output_dir={out / 'eval'}"]}
            if "evaluate" in todo and "finetune" not in todo:  # evaluate needs the fine-tuned adapter of this N
                todo.insert(todo.index("evaluate"), "finetune")
            for recipe in [r for r in ("tpp", "finetune", "evaluate") if r in todo]:
                r = run(recipe, [*common, *overrides[recipe]], backbone, env)
                rows = [x for x in rows if (x["n"], x["recipe"]) != (n, recipe)]
                rows.append({"n": n, "recipe": recipe, "peak_minus_baseline_mib": r["peak_minus_baseline_mib"],
                             "seconds": r["seconds"], "malloc_mmap_threshold": args.malloc_threshold or None,
                             "steps": args.steps, "batch_size": args.batch_size, "num_workers": args.num_workers,
                             "depth": args.depth})
                print(f"N={n:>6} {recipe:<9} +{r['peak_minus_baseline_mib']:.0f} MiB  {r['seconds']:.0f} s", flush=True)
                report.write_atomic(store, json.dumps(rows, indent=1))  # each measured cell kept at once
            shutil.rmtree(folder)
    rows.sort(key=lambda r: (r["n"], r["recipe"]))
    flat = {}
    for recipe in ("tpp", "finetune", "evaluate"):
        mem = [r["peak_minus_baseline_mib"] for r in rows if r["recipe"] == recipe]
        if len(mem) > 1:
            flat[recipe] = max(mem) / min(mem)
    return {"rows": rows, "sizes": sorted({r["n"] for r in rows}), "largest_over_smallest": flat,
            "flat_within_20pct": bool(flat) and all(v <= 1.2 for v in flat.values())}


def checkout(rev: str, where: Path) -> dict:
    """A git worktree of ``rev`` importable as ``tpp`` (its adapters/ and recipes/ linked into tpp/)."""
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(where), rev], check=True,
                   capture_output=True)
    for name in ("adapters", "recipes"):
        (where / "tpp" / name).symlink_to(f"../{name}")
    return {"PYTHONPATH": str(where)}


def speed(args) -> dict:
    common = [f"data.root={args.data_root}", f"train.max_steps={args.steps}", "train.select_best=false"]
    results = {"current": [], "baseline": []}
    with tempfile.TemporaryDirectory(prefix="tpp_speed_") as tmp:
        tmp = Path(tmp)
        env = checkout(args.baseline, tmp / "baseline")
        try:
            for round_ in range(args.rounds):
                for name, environ in (("baseline", env), ("current", None)):
                    r = run("finetune", [*common, f"output_dir={tmp / name / str(round_)}"], args.backbone, env=environ)
                    times = r["step_times"]
                    r["train_images_per_s"] = (len(times) - 1) * 64 / (times[-1] - times[0])
                    results[name].append(r)
                    print(f"round {round_ + 1} {name}: {r['train_images_per_s']:.0f} train images/s, "
                          f"run {r['seconds']:.1f} s", flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tmp / "baseline")],
                           capture_output=True)
    medians = {name: {"train_images_per_s": statistics.median(r["train_images_per_s"] for r in runs),
                      "run_seconds": statistics.median(r["seconds"] for r in runs)} for name, runs in results.items()}
    ratio = medians["current"]["train_images_per_s"] / medians["baseline"]["train_images_per_s"]
    return {"baseline": args.baseline, "medians": medians, "ratio": ratio, "at_least_0_9": ratio >= 0.9,
            "runs": results}


def scale_table(data: dict) -> str:
    lines = ["| N images | recipe | peak RSS - baseline (MiB) | wall time (s) |", "|---|---|---|---|"]
    lines += [f"| {r['n']:,} | {r['recipe']} | {r['peak_minus_baseline_mib']:.0f} | {r['seconds']:.0f} |"
              for r in data["rows"]]
    if len(data["sizes"]) < 2:
        return "\n".join(lines)
    ratios = ", ".join(f"{k} {v:.2f}x" for k, v in data["largest_over_smallest"].items())
    return "\n".join(lines) + f"\n\nLargest over smallest N: {ratios} (flat within 20%: {data['flat_within_20pct']})."


def speed_table(data: dict) -> str:
    m = data["medians"]
    lines = ["| data path | train images/s | run wall time (s) |", "|---|---|---|"]
    lines += [f"| {name} | {m[name]['train_images_per_s']:.0f} | {m[name]['run_seconds']:.1f} |"
              for name in ("baseline", "current")]
    verdict = f"Current / baseline images/s: {data['ratio']:.3f} (at least 0.9: {data['at_least_0_9']})."
    return "\n".join(lines) + "\n\n" + verdict


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", choices=["scale", "speed"], default="scale")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 50000])
    parser.add_argument("--recipes", nargs="+", choices=["tpp", "finetune", "evaluate"],
                        default=["tpp", "finetune", "evaluate"], help="scale: the recipes to measure (evaluate "
                        "re-runs the fine-tuning of its N when that was not measured in this call)")
    parser.add_argument("--depth", type=int, default=6, help="scale: ViT encoder layers of the 224-px backbone "
                        "(the data path's memory does not depend on it; 1 makes the 50k evaluation pass ~6x cheaper)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--malloc-threshold", type=int, default=131072,
                        help="MALLOC_MMAP_THRESHOLD_ for the runs (0: glibc's dynamic default, under which freed "
                             "activation buffers fragment the heap and peak RSS drifts by 100+ MiB run to run)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", default="HEAD", help="speed: the git revision of the previous data path")
    parser.add_argument("--backbone", default="builtin:mae-vit-tiny-med")
    parser.add_argument("--data-root", default=os.environ.get("TPP_DATA_ROOT", str(ROOT.parent / "shared" / "data")))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--worker", choices=["tpp", "finetune", "evaluate"], help=argparse.SUPPRESS)
    parser.add_argument("--set", action="append", default=[], dest="overrides", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.overrides, args.backbone)))
        return 0
    data = scale(args) if args.mode == "scale" else speed(args)
    command = "python benchmarks/data_scale.py " + " ".join(argv or sys.argv[1:])
    print(json.dumps({k: v for k, v in data.items() if k not in ("runs", "rows")}, indent=1))
    if args.mode == "scale":
        description = (f"Folders of N PNGs at 224 px (BreastMNIST upsampled), ViT-MAE 224 px built from config "
                       f"({args.depth} encoder layers), "
                       f"{args.steps} steps of batch {args.batch_size}, data.num_workers={args.num_workers}, "
                       f"MALLOC_MMAP_THRESHOLD_={args.malloc_threshold or 'glibc default'}; each run a fresh "
                       "subprocess, memory = peak RSS - RSS after loading the backbone. Sizes measured: "
                       f"{', '.join(str(n) for n in data['sizes'])}.")
        table = scale_table(data)
    else:
        description = (f"Fine-tuning on BreastMNIST (28 px, shared backbone), {args.steps} steps of batch 64, this "
                       f"checkout vs {args.baseline}, {args.rounds} alternating rounds, medians.")
        table = speed_table(data)
    report.publish(args.out, f"data_scale_{args.mode}", report.machine(), command, description, table, data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
