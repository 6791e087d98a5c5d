"""Does the data path stream? Peak memory against the number of images, and throughput against the old path.

    python benchmarks/data_scale.py scale                  # 1k / 10k / 50k PNGs at 224 px: peak RSS flat in N?
    python benchmarks/data_scale.py scale --sizes 50000    # one size at a time: measured sizes are kept in
                                                           # benchmarks/results/data_scale_rows.json
    python benchmarks/data_scale.py scale --sizes 500 2000 --steps 3 --out /tmp/ds      # a quick look
    python benchmarks/data_scale.py scale --depth 1 --out benchmarks/results/data_scale_depth1  # 1-layer ViT:
                                                           # same data path, a ~6x cheaper 50k evaluation pass
    python benchmarks/data_scale.py scale --sizes 50000 --recipes tpp   # one recipe of one size
    python benchmarks/data_scale.py speed --baseline HEAD~1 # 28-px MedMNIST images/s vs a previous commit
    python benchmarks/data_scale.py seg                    # 500 / 2k / 8k seg_folder mask pairs at 128 px: flat in N?
    python benchmarks/data_scale.py seg --baseline b5cd6fe~1  # and a revision (this one held the masks), side by
                                                           # side: rows 'HEAD' and 'baseline (b5cd6fe~1)'

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

``seg``: a ``seg_folder`` of N image + mask PNG pairs (``images/`` + ``masks/``; BUSI's 647 128-px pairs from
``seg/busi_128.npz``, the rest hard links) and a ViT-MAE at 128 px built from config (patch 16, ``--depth``
layers, 1 by default); per N two fresh subprocesses: a segmentation fine-tune (``--steps`` steps, then its val and
test predictions and metrics) and evaluation of that adapter on the test split (``--sizes`` defaults to 500,
2,000, 8,000 here). Same memory measure. The claim: flat in N (``seg_folder`` masks stream since b5cd6fe, and
evaluate scores and writes its predictions batch by batch since data_scale_seg_eval_stream.md); the
table prints next to it what holding the masks would add (uint8 + an int64 target copy: 9 bytes a mask pixel,
arithmetic), and ``--baseline REV`` measures revision REV too, from a temporary git worktree, same folders: rows
'HEAD' (this checkout) and 'baseline (REV)' (b5cd6fe~1 is the last revision that held the masks; rows stored by
the first version, 'streamed' and 'held', are read as 'HEAD' and 'baseline (their revision)').

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
SEG_SIZE = 128  # seg mode: image, mask and backbone input side (BUSI's busi_128.npz is stored at this size)
HELD_BYTES = 9  # bytes a mask pixel the path before b5cd6fe held: uint8 masks + their int64 targets
VIT_224 = dict(image_size=224, patch_size=16, num_channels=3, hidden_size=192, num_hidden_layers=6,
               num_attention_heads=3, intermediate_size=768, decoder_hidden_size=128, decoder_num_hidden_layers=2,
               decoder_num_attention_heads=4, decoder_intermediate_size=512, mask_ratio=0.75)


def make_backbone(path: Path, depth: int = 6, image_size: int = 224) -> Path:
    """A ViT-MAE at ``image_size`` px (patch 16) built from config with ``depth`` encoder layers (random weights:
    memory and speed do not depend on them; the data path's memory does not depend on the depth either,
    activations are per batch)."""
    import torch
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    torch.manual_seed(0)
    config = ViTMAEConfig(**{**VIT_224, "num_hidden_layers": depth, "image_size": image_size})
    ViTMAEForPreTraining(config).save_pretrained(path)
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


def make_seg_folder(path: Path, n: int, data_root: str, size: int = SEG_SIZE) -> Path:
    """A ``seg_folder``: ``images/caseNNNNNN.png`` + ``masks/caseNNNNNN.png`` (0/1 lesion masks), N pairs of BUSI's
    128-px images and masks (resized to ``size``: bicubic images, nearest masks); the 647 distinct pairs are
    files, the rest hard links to them."""
    import numpy as np
    from PIL import Image

    data = np.load(Path(data_root) / "seg" / "busi_128.npz")
    images, masks = data["images"], data["masks"]
    for sub in ("images", "masks"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    distinct = len(images)
    for i in range(n):
        name = f"case{i:06d}.png"
        if i < distinct:
            image, mask = Image.fromarray(images[i]), Image.fromarray((masks[i] > 0).astype(np.uint8))
            if image.size != (size, size):
                image, mask = image.resize((size, size), Image.BICUBIC), mask.resize((size, size), Image.NEAREST)
            image.save(path / "images" / name)
            mask.save(path / "masks" / name)
        else:
            for sub in ("images", "masks"):
                os.link(path / sub / f"case{i % distinct:06d}.png", path / sub / name)
    return path


def seg_config(path: Path, backbone: str, size: int) -> Path:
    """The shipped BUSI segmentation fine-tune config with ``seg_folder`` data (the seg_npz keys dropped), the
    built backbone at ``size`` px and a decoder without the full-resolution pixel skip (its convolutions at 128 px
    were 3/4 of an evaluation's time; the logits are still resized to the 128-px masks for loss and metrics) and no
    overlays, written to ``path``."""
    import yaml

    config = yaml.safe_load((ROOT / "recipes" / "configs" / "breast_us" / "busi_seg_lora_finetune.yaml").read_text())
    config["backbone"] = {"path": backbone, "input_size": size}
    for key in ("label_key", "class_names_key", "group_key", "file", "name"):
        config["data"].pop(key, None)
    config["data"]["source"] = "seg_folder"
    config["segmentation"].update(pixel_skip=False, overlays=0)
    path.write_text(yaml.safe_dump(config))
    return path


def worker(recipe: str, overrides: list[str], backbone: str, config_path: str | None = None) -> dict:
    """One recipe run in this (fresh) process: peak RSS over the RSS once the backbone is loaded."""
    import tpp
    from tpp.backbones import load_backbone
    from tpp.recipes import CONFIG_DIR, run_recipe

    load_backbone(backbone)  # torch, transformers and the weights resident: the baseline
    baseline = report.current_rss_mib()
    config = {"tpp": "breast_us/mae_vit_tiny_lora_tpp.yaml", "finetune": "breast_us/mae_vit_tiny_lora_finetune.yaml",
              "evaluate": "breast_us/mae_vit_tiny_lora_finetune.yaml"}[recipe]
    start = time.perf_counter()
    summary, path = run_recipe(recipe, config_path or CONFIG_DIR / config, overrides, overwrite=True)
    seconds = time.perf_counter() - start
    steps = [json.loads(line) for line in (path / "log.jsonl").read_text().splitlines()]
    step_times = [r["time"] for r in steps if r.get("event") == "step"]
    peak = report.peak_rss_mib()
    return {"recipe": recipe, "seconds": seconds, "baseline_rss_mib": baseline, "peak_rss_mib": peak,
            "peak_minus_baseline_mib": peak - baseline, "step_times": step_times, "tpp": str(Path(tpp.__file__).parent)}


def run(recipe: str, overrides: list[str], backbone: str, env: dict | None = None,
        config: Path | None = None) -> dict:
    """One recipe run in a fresh subprocess (``env``: variables such as PYTHONPATH of a baseline checkout;
    ``config``: a config file instead of the recipe's shipped BreastMNIST one)."""
    sets = [a for o in overrides for a in ("--set", o)]
    extra = ["--config", str(config)] if config else []
    return report.run_worker(__file__, ["--worker", recipe, "--backbone", backbone, *extra, *sets], env=env)


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


def path_label(revision: str | None) -> str:
    """A seg row's ``path``: 'HEAD' for this checkout, 'baseline (REV)' for the revision of ``--baseline REV``."""
    return "HEAD" if revision is None else f"baseline ({revision})"


def read_seg_rows(store: Path) -> list[dict]:
    """The stored seg rows; those of the first version ('streamed' for this checkout, 'held' for any
    ``--baseline``, whatever that revision did with the masks) relabelled by :func:`path_label`."""
    rows = json.loads(store.read_text()) if store.is_file() else []
    old = {"streamed": lambda r: path_label(None), "held": lambda r: path_label(r["revision"])}
    return [{**r, "path": old[r["path"]](r)} if r["path"] in old else r for r in rows]


def seg(args) -> dict:
    """seg_folder fine-tune + evaluate per size of ``--sizes`` not measured yet (rows kept in
    ``OUT/data_scale_seg_rows.json``), with this checkout ('HEAD') and, with ``--baseline REV``, that revision
    ('baseline (REV)'), then the verdict over every stored size (:func:`seg_summary`)."""
    store = args.out / "data_scale_seg_rows.json"
    rows = read_seg_rows(store)
    env = {"MALLOC_MMAP_THRESHOLD_": str(args.malloc_threshold)} if args.malloc_threshold else {}
    size = SEG_SIZE
    paths = {path_label(None): None}
    with tempfile.TemporaryDirectory(prefix="tpp_data_scale_seg_") as tmp:
        tmp = Path(tmp)
        if args.baseline:
            paths[path_label(args.baseline)] = checkout(args.baseline, tmp / "baseline")
        try:
            backbone = str(make_backbone(tmp / f"vit{size}", args.depth, size))
            config = seg_config(tmp / "seg.yaml", backbone, size)
            for n in args.sizes:
                done = {(x["n"], x["path"], x["recipe"]) for x in rows}
                todo = [p for p in paths if any((n, p, r) not in done for r in args.recipes)]
                if not todo:
                    continue
                make_seg_folder(tmp / f"seg{n}", n, args.data_root, size)
                common = [f"data.root={tmp}", f"data.file=seg{n}", f"data.name=seg{n}", f"train.max_steps={args.steps}",
                          "train.select_best=false", f"train.batch_size={args.batch_size}",
                          f"train.eval_batch_size={args.batch_size}", f"data.num_workers={args.num_workers}"]
                for name in todo:  # fine-tune, then evaluate its adapter: both measured, both needed
                    out = tmp / f"runs{n}_{'head' if paths[name] is None else 'baseline'}"
                    overrides = {"finetune": [f"output_dir={out / 'ft'}"],
                                 "evaluate": [f"adapter.path={out / 'ft' / 'adapter'}", "data.split=test",
                                              f"output_dir={out / 'eval'}"]}
                    for recipe in ("finetune", "evaluate"):
                        r = run(recipe, [*common, *overrides[recipe]], backbone, {**env, **(paths[name] or {})},
                                config)
                        if recipe not in args.recipes:
                            continue
                        rows = [x for x in rows if (x["n"], x["path"], x["recipe"]) != (n, name, recipe)]
                        rows.append({"n": n, "path": name,
                                     "revision": "HEAD" if paths[name] is None else args.baseline,
                                     "tpp": r["tpp"], "recipe": recipe,
                                     "peak_minus_baseline_mib": r["peak_minus_baseline_mib"],
                                     "seconds": r["seconds"], "size": size, "malloc_mmap_threshold":
                                     args.malloc_threshold or None, "steps": args.steps, "batch_size": args.batch_size,
                                     "num_workers": args.num_workers, "depth": args.depth})
                        print(f"N={n:>6} {name} {recipe:<9} +{r['peak_minus_baseline_mib']:.0f} MiB  "
                              f"{r['seconds']:.0f} s", flush=True)
                        report.write_atomic(store, json.dumps(rows, indent=1))
                    shutil.rmtree(out)
                shutil.rmtree(tmp / f"seg{n}")
        finally:
            if args.baseline:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tmp / "baseline")],
                               capture_output=True)
    return seg_summary(rows, size)


def seg_summary(rows: list[dict], size: int) -> dict:
    """The verdict over stored seg rows: per path and recipe the largest over the smallest N's memory, each
    baseline minus HEAD at the same N, and what holding the masks would add (arithmetic, whatever a baseline
    did with them)."""
    head = path_label(None)
    rows = sorted(rows, key=lambda r: (r["path"] != head, r["path"], r["n"], r["recipe"]))
    sizes = sorted({r["n"] for r in rows})
    ratio, growth = {}, {}
    for name in dict.fromkeys(r["path"] for r in rows):
        for recipe in ("finetune", "evaluate"):
            mem = {r["n"]: r["peak_minus_baseline_mib"] for r in rows if (r["path"], r["recipe"]) == (name, recipe)}
            if len(mem) > 1:
                lo, hi = min(mem), max(mem)
                ratio[f"{name} {recipe}"] = mem[hi] / mem[lo]
                growth[f"{name} {recipe}"] = mem[hi] - mem[lo]
    held = {}
    if len(sizes) > 1:  # what holding the masks adds from the smallest to the largest N, by arithmetic
        held = {"bytes_per_mask_pixel": HELD_BYTES, "mask_side": size,
                "mib": HELD_BYTES * size * size * (sizes[-1] - sizes[0]) / 2**20}
    at_head = [v for k, v in ratio.items() if k.startswith(f"{head} ")]
    mem = {(r["n"], r["path"], r["recipe"]): r["peak_minus_baseline_mib"] for r in rows}
    # same N, same folder, both paths: what the baseline costs over HEAD, whatever else grows with N in both
    baselines = [p for p in dict.fromkeys(r["path"] for r in rows) if p != head]
    minus_head = [{"baseline": b, "n": n, "recipe": recipe, "mib": mem[n, b, recipe] - mem[n, head, recipe],
                   "held_masks_mib": HELD_BYTES * size * size * n / 2**20}
                  for b in baselines for n in sizes for recipe in ("finetune", "evaluate")
                  if (n, b, recipe) in mem and (n, head, recipe) in mem]
    return {"rows": rows, "sizes": sizes, "largest_over_smallest": ratio, "growth_mib": growth,
            "held_masks_expected_growth": held, "baseline_minus_head": minus_head,
            "flat_within_20pct": bool(at_head) and max(at_head) <= 1.2}


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


def seg_table(data: dict) -> str:
    lines = ["| N pairs | path | recipe | peak RSS - baseline (MiB) | held masks would add (MiB) | wall time (s) |",
             "|---|---|---|---|---|---|"]
    for r in data["rows"]:
        held = HELD_BYTES * r["size"] ** 2 * r["n"] / 2**20
        lines.append(f"| {r['n']:,} | {r['path']} | {r['recipe']} | "
                     f"{r['peak_minus_baseline_mib']:.0f} | {held:.0f} | {r['seconds']:.0f} |")
    if len(data["sizes"]) < 2:
        return "\n".join(lines)
    ratios = ", ".join(f"{k} {v:.2f}x (+{data['growth_mib'][k]:.0f} MiB)"
                       for k, v in data["largest_over_smallest"].items())
    held = data["held_masks_expected_growth"]
    return "\n".join(lines) + (
        f"\n\nLargest over smallest N: {ratios}. Holding the masks ({held['bytes_per_mask_pixel']} bytes a "
        f"{held['mask_side']}-px mask pixel) would add {held['mib']:.0f} MiB from {data['sizes'][0]:,} to "
        f"{data['sizes'][-1]:,} pairs (arithmetic). HEAD flat within 20%: {data['flat_within_20pct']}."
        + "".join(f" Same N, {b} minus HEAD: " + ", ".join(
            f"{d['n']:,} {d['recipe']} {d['mib']:+.0f} MiB (held masks, 9 B/px x N: {d['held_masks_mib']:.0f})"
            for d in data["baseline_minus_head"] if d["baseline"] == b) + "."
            for b in dict.fromkeys(d["baseline"] for d in data["baseline_minus_head"])))


def speed_table(data: dict) -> str:
    m = data["medians"]
    lines = ["| data path | train images/s | run wall time (s) |", "|---|---|---|"]
    lines += [f"| {name} | {m[name]['train_images_per_s']:.0f} | {m[name]['run_seconds']:.1f} |"
              for name in ("baseline", "current")]
    verdict = f"Current / baseline images/s: {data['ratio']:.3f} (at least 0.9: {data['at_least_0_9']})."
    return "\n".join(lines) + "\n\n" + verdict


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", choices=["scale", "speed", "seg"], default="scale")
    parser.add_argument("--sizes", type=int, nargs="+", help="scale: default 1000 10000 50000 images; seg: "
                        "500 2000 8000 image + mask pairs")
    parser.add_argument("--recipes", nargs="+", choices=["tpp", "finetune", "evaluate"],
                        help="scale: the recipes to measure, default all three (evaluate re-runs the fine-tuning of "
                        "its N when that was not measured in this call); seg: finetune and evaluate (always both run)")
    parser.add_argument("--depth", type=int, help="ViT encoder layers of the backbone built from config, default 6 "
                        "(scale) or 1 (seg) (the data path's memory does not depend on it; 1 makes the 50k "
                        "evaluation pass ~6x cheaper)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--malloc-threshold", type=int, default=131072,
                        help="MALLOC_MMAP_THRESHOLD_ for the runs (0: glibc's dynamic default, under which freed "
                             "activation buffers fragment the heap and peak RSS drifts by 100+ MiB run to run)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", help="speed: the git revision of the previous data path (default HEAD); "
                        "seg: a revision measured too, its rows labelled 'baseline (REV)', e.g. b5cd6fe~1 (the last "
                        "that held the masks; default: none)")
    parser.add_argument("--backbone", default="builtin:mae-vit-tiny-med")
    parser.add_argument("--data-root", default=os.environ.get("TPP_DATA_ROOT", str(ROOT.parent / "shared" / "data")))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--worker", choices=["tpp", "finetune", "evaluate"], help=argparse.SUPPRESS)
    parser.add_argument("--set", action="append", default=[], dest="overrides", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.overrides, args.backbone, args.config)))
        return 0
    seg_mode = args.mode == "seg"
    args.sizes = args.sizes or ([500, 2000, 8000] if seg_mode else [1000, 10000, 50000])
    args.recipes = args.recipes or (["finetune", "evaluate"] if seg_mode else ["tpp", "finetune", "evaluate"])
    args.depth = args.depth or (1 if seg_mode else 6)
    if args.mode == "speed":
        args.baseline = args.baseline or "HEAD"
    if seg_mode and "tpp" in args.recipes:
        parser.error("seg measures finetune and evaluate")
    data = {"scale": scale, "speed": speed, "seg": seg}[args.mode](args)
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
    elif seg_mode:
        description = (f"seg_folder folders of N image + mask PNG pairs at {SEG_SIZE} px (BUSI's 647 pairs of "
                       f"busi_128.npz, the rest hard links), ViT-MAE {SEG_SIZE} px built from config (patch 16, "
                       f"{args.depth} encoder layers), the BUSI seg LoRA fine-tune config: {args.steps} steps of "
                       f"batch {args.batch_size}, then val + test predictions; evaluate on the test split; "
                       f"data.num_workers={args.num_workers}, MALLOC_MMAP_THRESHOLD_="
                       f"{args.malloc_threshold or 'glibc default'}; each run a fresh subprocess, memory = peak RSS - "
                       "RSS after loading the backbone; 'held masks would add': 9 bytes x mask pixels x N "
                       "(arithmetic). Sizes measured: " + ", ".join(str(n) for n in data["sizes"]) + ".")
        table = seg_table(data)
    else:
        description = (f"Fine-tuning on BreastMNIST (28 px, shared backbone), {args.steps} steps of batch 64, this "
                       f"checkout vs {args.baseline}, {args.rounds} alternating rounds, medians.")
        table = speed_table(data)
    report.publish(args.out, f"data_scale_{args.mode}", report.machine(), command, description, table, data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
