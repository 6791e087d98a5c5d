"""The multitask recipe under `tpp run --num-processes 2` (two CPU processes in a gloo group): a mixed
classification + segmentation + MAE + DINO pool trains, checkpoints and resumes, and rank 0 alone writes."""
import json

from conftest import make_medmnist
from helpers import run_cli_subprocess, toy_segmentation_npz


def test_two_process_multitask_trains_resumes_and_writes_once(tiny_mae, tmp_path):
    root = make_medmnist(tmp_path / "data", name="bloodmnist", classes=3, n=(24, 4, 4))
    make_medmnist(root, name="pneumoniamnist", n=(24, 4, 4), seed=1)
    toy_segmentation_npz(root / "toyseg.npz", n=24)
    out = tmp_path / "mt"
    pool = ("pool=[{kind: classification, data: {source: medmnist, name: bloodmnist}}, "
            "{kind: segmentation, data: {source: seg_npz, name: toyseg, file: toyseg.npz, "
            "classes: [background, lesion], modality: US, label_key: label, class_names_key: label_names}}, "
            "{kind: mae, head: {mask_ratio: 0.5}, data: {source: medmnist, name: pneumoniamnist}}, "
            "{kind: dino, head: {dino_out_dim: 16}, data: {source: medmnist, name: bloodmnist}}]")
    args = ["run", "multitask", "--config", "multitask/tpp_pool.yaml", f"backbone.path={tiny_mae}",
            f"data.root={root}", f"output_dir={out}", pool, "multitask.eval_targets=[breastmnist]",
            "train.batch_size=8", "adapter.r=2", "train.checkpoint_every=2", "--num-processes", "2"]
    first = run_cli_subprocess(*args, "train.max_steps=2")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "process rank 0 of world size 2 (MULTI_CPU)" in first.stderr  # rank 1's output: a file (tpp.launch)
    resumed = run_cli_subprocess(*args, "train.max_steps=3", "train.resume=auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.count("multi-task (target, cycle)") == 1  # only rank 0 reports and writes
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert any(e.get("event") == "resumed" and e["step"] == 2 for e in log)
    assert {"event": "processes", "world_size": 2}.items() <= next(e for e in log if e["event"] == "processes").items()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == metrics["shared_steps"] == 3 and set(metrics["head_steps"].values()) == {3}
    card = json.loads((out / "adapter" / "tpp_card.json").read_text())
    assert [t["kind"] for t in card["multitask"]["tasks"]] == ["classification", "segmentation", "mae", "dino"]
    heads = json.loads((out / "heads" / "heads.json").read_text())
    assert {h["file"] for h in heads["tasks"]} <= {p.name for p in (out / "heads").iterdir()}
