"""benchmarks/side_by_side.py: old and new cells paired by (target, method, fraction, seed)."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import side_by_side  # noqa: E402


def cell(seed, auroc, accuracy, **extra):
    return {"target": "t", "method": "lora", "fraction": 0.1, "seed": seed, "test_auroc": auroc,
            "test_accuracy": accuracy, **extra}


def test_only_seeds_in_both_reports_are_compared_with_the_largest_per_seed_difference(tmp_path, capsys):
    old = [cell(0, 0.70, 0.60), cell(1, 0.80, 0.70), cell(2, 0.90, 0.80)]  # seed 2 not re-run yet
    new = [cell(0, 0.70, 0.65, val_images=9, selection="last step kept (train.select_best=false; 9 val images)"),
           cell(1, 0.81, 0.70, val_images=9, selection="last step kept (train.select_best=false; 9 val images)"),
           cell(3, 0.50, 0.50, val_images=9)]  # no old partner
    groups = side_by_side.paired_groups(old, new)
    assert [(o["seed"], n["seed"]) for o, n in groups[("t", "lora", 0.1)]] == [(0, 0), (1, 1)]
    text = side_by_side.markdown(groups, "test_auroc", "test_accuracy")
    assert "| t | 10% | lora | 2 | 0.750 ± 0.071 | 0.755 ± 0.078 | +0.005 [-0.059, +0.069] | 0.01 |" in text
    assert "| 9 | last step kept |" in text
    for name, cells in (("old.json", old), ("new.json", new)):
        (tmp_path / name).write_text(json.dumps({"cells": cells}))
    out = tmp_path / "cmp" / "table.md"
    assert side_by_side.main([str(tmp_path / "old.json"), str(tmp_path / "new.json"), "--out", str(out)]) == 0
    assert "| 0.01 |" in capsys.readouterr().out
    written = out.read_text()
    assert written.startswith(f"Old: `{tmp_path / 'old.json'}`") and "| +0.005 [-0.059, +0.069] |" in written
    (tmp_path / "a_file").write_text("")
    bad = tmp_path / "a_file" / "table.md"  # under a file: cannot be written
    assert side_by_side.main([str(tmp_path / "old.json"), str(tmp_path / "new.json"), "--out", str(bad)]) == 2
    assert f"could not write {bad}" in capsys.readouterr().err


def test_a_single_pair_has_no_interval():
    groups = side_by_side.paired_groups([cell(0, 0.70, 0.6)], [cell(0, 0.75, 0.6)])
    assert "| +0.050 (1 pair: no interval) |" in side_by_side.markdown(groups, "test_auroc", "test_accuracy")


def test_an_undefined_metric_is_left_out_of_the_pairs_not_a_nan_or_a_crash():
    old = [cell(0, 0.70, 0.6), cell(1, None, 0.6), cell(2, 0.80, 0.7)]  # seed 1: a one-class split
    new = [cell(0, 0.75, 0.6), cell(1, 0.9, 0.6), cell(2, float("nan"), 0.7)]
    text = side_by_side.markdown(side_by_side.paired_groups(old, new), "test_auroc", "test_accuracy")
    assert "| 3 | 0.750 ± 0.071 | 0.825 ± 0.106 | +0.050 (1 pair: no interval) (2 undefined left out) | 0.05 |" in text
    assert "nan" not in text
    none = side_by_side.paired_groups([cell(0, None, 0.6)], [cell(0, None, 0.6)])
    assert "| undefined | undefined | undefined | – |" in side_by_side.markdown(none, "test_auroc", "test_accuracy")
