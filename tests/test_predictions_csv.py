"""Clinical outputs end to end on tiny runs through the CLI: the fine-tune chooses and records the
threshold, writes predictions.csv whose decisions are the metrics' decisions; evaluate, ``tpp plot`` and
``tpp predict`` use the card's threshold; an older card decides at 0.5 and says so."""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from conftest import make_medmnist
from helpers import FAST, evaluate, finetune, png_bytes, recipe_args, run_cli, toy_segmentation_npz

NAMES = ["malignant", "normal, benign"]


def rows_of(path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def decided(rows, threshold) -> list[str]:
    return [NAMES[float(r[f"prob_{NAMES[1]}"]) >= threshold] for r in rows]


@pytest.fixture(scope="module")
def run(tiny_mae, tmp_path_factory):
    """One tiny fine-tune (default rule: Youden's J) with 50 bootstrap draws: (backbone, data root, run dir)."""
    base = tmp_path_factory.mktemp("clinical")
    root = make_medmnist(base / "data")
    out = base / "ft"
    assert finetune(tiny_mae, root, out, "classification.bootstrap_resamples=50") == 0
    return tiny_mae, root, out


def test_finetune_chooses_records_and_applies_the_threshold(run, capsys):
    _, root, out = run
    card = json.loads((out / "adapter" / "tpp_card.json").read_text())
    decision = card["task"]["decision"]
    val_labels = np.load(root / "breastmnist.npz")["val_labels"].ravel()
    assert decision["rule"] == "youden" and decision["positive_label"] == NAMES[1]
    assert (decision["val_positives"], decision["val_negatives"]) == (int((val_labels == 1).sum()),
                                                                      int((val_labels == 0).sum()))
    metrics = json.loads((out / "metrics.json").read_text())
    rows = rows_of(out / "predictions.csv")
    assert [r["split"] for r in rows] == ["val"] * 20 + ["test"] * 20
    assert [int(r["index"]) for r in rows if r["split"] == "test"] == list(range(20))
    test_labels = np.load(root / "breastmnist.npz")["test_labels"].ravel()
    assert [r["label"] for r in rows[20:]] == [NAMES[y] for y in test_labels]
    threshold = decision["threshold"]
    assert [r["prediction"] for r in rows] == decided(rows, threshold)
    for split, part in (("val", rows[:20]), ("test", rows[20:])):
        m = metrics[split]
        assert m["threshold"] == threshold and m["bootstrap_resamples"] == 50
        hits = [r["prediction"] == r["label"] for r in part]
        assert m["accuracy"] == pytest.approx(np.mean(hits))
        positives = [r["prediction"] == NAMES[1] for r in part if r["label"] == NAMES[1]]
        assert m["sensitivity"] == pytest.approx(np.mean(positives))
    assert metrics["val"]["sensitivity"] == pytest.approx(decision["val_sensitivity"])
    assert card["task"]["bootstrap_resamples"] == 50
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert any(r.get("event") == "decision" and r["threshold"] == threshold for r in log)


def test_evaluate_and_plot_use_the_cards_threshold(run, tmp_path, capsys):
    backbone, root, out = run
    ev = tmp_path / "eval"
    assert run_cli("run", "evaluate", "--config", out / "config.yaml", f"adapter.path={out / 'adapter'}",
                   "data.split=test", f"output_dir={ev}") == 0  # from the run's own config, classification: in it
    printed = capsys.readouterr().out
    threshold = json.loads((out / "adapter" / "tpp_card.json").read_text())["task"]["decision"]["threshold"]
    metrics = json.loads((ev / "metrics.json").read_text())
    assert metrics["test"]["threshold"] == threshold and metrics["test"]["bootstrap_resamples"] == 50
    assert metrics["wall_time_s"] >= 0 and f"threshold {threshold:.4f} (youden" in printed
    rows = rows_of(ev / "predictions.csv")
    assert rows == rows_of(out / "predictions.csv")[20:]  # the same images, probabilities and decisions
    assert run_cli("plot", ev) == 0
    assert "no training curves" in capsys.readouterr().out
    for name in ("roc.png", "calibration.png"):
        assert (ev / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (ev / "curves.png").exists()
    assert run_cli("plot", out) == 0
    assert all((out / n).stat().st_size > 5000 for n in ("curves.png", "roc.png", "calibration.png"))
    bad = tmp_path / "bad"
    shutil.copytree(ev, bad)
    (bad / "predictions.csv").write_text("split,index,label,prob_a,prob_b,prediction\ntest,0,a,x,0.5,a\n")
    assert run_cli("plot", bad) == 2 and "line 2: a probability is not a number" in capsys.readouterr().err


def test_an_older_card_evaluates_at_one_half_and_says_so(run, tmp_path, capsys):
    backbone, root, out = run
    old = tmp_path / "old_adapter"
    shutil.copytree(out / "adapter", old)
    card = json.loads((old / "tpp_card.json").read_text())
    del card["task"]["decision"], card["task"]["bootstrap_resamples"]
    (old / "tpp_card.json").write_text(json.dumps(card))
    assert evaluate(backbone, root, old, tmp_path / "ev") == 0
    assert "records no decision threshold" in capsys.readouterr().out
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())["test"]
    assert m["threshold"] == 0.5 and m["bootstrap_resamples"] == 200
    assert [r["prediction"] for r in rows_of(tmp_path / "ev" / "predictions.csv")] == \
        decided(rows_of(tmp_path / "ev" / "predictions.csv"), 0.5)


def test_predict_decides_with_the_published_cards_threshold(run, tmp_path):
    from tpp.serve import store

    backbone, root, out = run
    images = np.load(root / "breastmnist.npz")["test_images"][:6]
    folder = tmp_path / "scans"
    folder.mkdir()
    for i, image in enumerate(images):
        (folder / f"{i}.png").write_bytes(png_bytes(image))
    offline = rows_of(out / "predictions.csv")[20:26]
    p1 = sorted(float(r[f"prob_{NAMES[1]}"]) for r in offline)
    adapter = tmp_path / "adapter"  # the card's threshold moved between the images' scores: both labels occur
    shutil.copytree(out / "adapter", adapter)
    card = json.loads((adapter / "tpp_card.json").read_text())
    card["task"]["decision"]["threshold"] = threshold = (p1[2] + p1[3]) / 2
    (adapter / "tpp_card.json").write_text(json.dumps(card))
    store.publish(adapter, tmp_path / "store", "north")
    csv_out = tmp_path / "preds.csv"
    assert run_cli("predict", "--backbone", backbone, "--store", tmp_path / "store", "--site", "north", folder,
                   "--out", csv_out) == 0
    rows = rows_of(csv_out)
    assert [r["label"] for r in rows] == decided(rows, threshold) and len({r["label"] for r in rows}) == 2
    assert all(float(r["threshold"]) == pytest.approx(threshold) and "youden" in r["threshold_source"]
               for r in rows)


def test_few_validation_images_of_a_class_keep_one_half(tiny_mae, tmp_path, capsys):
    root = make_medmnist(tmp_path / "data", n=(60, 8, 20))  # 4 validation images of each class
    out = tmp_path / "ft"
    assert run_cli(*recipe_args("finetune", "breast_us/mae_vit_tiny_lora_finetune.yaml", tiny_mae, root, out,
                                "train.max_steps=2", *FAST, "classification.threshold=sensitivity:0.9")) == 0
    assert "threshold 0.5000 (default 0.5: the validation split has 4 positive and 4 negative" in \
        capsys.readouterr().out
    decision = json.loads((out / "adapter" / "tpp_card.json").read_text())["task"]["decision"]
    assert decision["threshold"] == 0.5 and decision["rule"] == "sensitivity:0.9"
    assert json.loads((out / "metrics.json").read_text())["test"]["threshold"] == 0.5


def test_segmentation_writes_a_dice_row_per_image_and_no_roc(tiny_mae, tmp_path, capsys):
    out = tmp_path / "seg"
    assert run_cli(*recipe_args("finetune", "breast_us/busi_seg_lora_finetune.yaml", tiny_mae, tmp_path, out,
                                "train.max_steps=2", *FAST, "train.batch_size=8", "data.name=toy",
                                f"data.file={toy_segmentation_npz(tmp_path / 'toy.npz')}", "data.group_key=group",
                                "backbone.input_size=16", "segmentation.overlays=0")) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    rows = rows_of(out / "predictions.csv")
    test = [r for r in rows if r["split"] == "test"]
    assert len(test) == metrics["test"]["n"] and len(rows) == metrics["val"]["n"] + metrics["test"]["n"]
    dice = [float(r["dice_lesion"]) for r in test if r["dice_lesion"] != ""]
    assert np.mean(dice) == pytest.approx(metrics["test"]["per_class"]["lesion"]["dice"], abs=1e-5)
    assert all(int(r["foreground_truth"]) > 0 for r in test)  # every toy mask has a box
    capsys.readouterr()
    assert run_cli("plot", out) == 0
    assert "no ROC or calibration plot" in capsys.readouterr().out and not (out / "roc.png").exists()


def test_malignant_as_the_positive_class(tiny_mae, tmp_path, capsys):
    root = make_medmnist(tmp_path / "data")
    out = tmp_path / "ft"
    assert finetune(tiny_mae, root, out, "classification.positive_class=malignant",
                    "classification.threshold=sensitivity:0.8") == 0
    assert "positive class 'malignant'" in capsys.readouterr().out
    task = json.loads((out / "adapter" / "tpp_card.json").read_text())["task"]
    assert task["positive_class"] == task["decision"]["positive_label"] == "malignant"
    threshold = task["decision"]["threshold"]
    rows = rows_of(out / "predictions.csv")
    assert [r["prediction"] for r in rows] == [NAMES[0] if float(r["prob_malignant"]) >= threshold else NAMES[1]
                                               for r in rows]
    val = [r for r in rows if r["split"] == "val" and r["label"] == "malignant"]
    assert np.mean([r["prediction"] == "malignant" for r in val]) >= 0.8  # the rule's target, on validation
    m = json.loads((out / "metrics.json").read_text())["val"]
    assert m["positive_class_index"] == 0 and m["sensitivity"] == pytest.approx(task["decision"]["val_sensitivity"])
    assert run_cli("plot", out) == 0
