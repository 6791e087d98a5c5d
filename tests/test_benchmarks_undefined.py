"""Benchmark reports on cells whose AUROC is undefined (null in metrics.json: a one-class val subsample or test
split): such a cell is reported as undefined, left out of means and pairs, never crashes the report."""
import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import lr_select  # noqa: E402
import report  # noqa: E402

RATES = {"lora": 1e-3}


def cell(method, seed, auroc, fraction=0.1, target="t", val=None):
    return {"target": target, "method": method, "fraction": fraction, "seed": seed, "test_auroc": auroc,
            "test_accuracy": 0.5, "val_auroc": val, "trainable_parameters": 10, "finetune_s": 1.0, "tpp_s": None}


def test_summary_means_skip_undefined_cells_and_say_so():
    rows = report.summarise([cell("a", 0, 0.8), cell("a", 1, None), cell("a", 2, 0.6), cell("b", 0, None),
                             cell("b", 1, float("nan"))])
    a, b = rows
    assert a["n"] == 3 and a["auroc_n"] == 2 and a["auroc_mean"] == pytest.approx(0.7)
    assert a["auroc_std"] == pytest.approx(math.sqrt(0.02))
    assert b["auroc_mean"] is None and b["auroc_n"] == 0
    table = report.markdown_results(rows)
    assert "0.700 ± 0.141 (2 of 3 defined)" in table and "| undefined |" in table
    assert report.mean_std([None, None]) == (None, None) and report.mean_std([0.5, None]) == (0.5, 0.0)


def test_pairs_need_both_values_defined():
    cells = [cell("a", 0, 0.8), cell("a", 1, None), cell("a", 2, 0.7), cell("b", 0, 0.7), cell("b", 1, 0.6),
             cell("b", 2, None)]
    (d,) = report.paired(cells, "a", "b")
    assert d["n"] == 1 and d["diff_mean"] == pytest.approx(0.1)
    assert report.paired([cell("a", 0, None), cell("b", 0, 0.5)], "a", "b") == []
    assert all(math.isnan(v) for v in report.t_interval([None, float("nan")]))


def test_published_json_is_strict(tmp_path):
    (single,) = report.paired([cell("a", 0, 0.8), cell("b", 0, 0.7)], "a", "b")  # one pair: the CI is NaN
    report.publish(tmp_path, "x", {}, "cmd", "d", "table", {"diffs": [single]})

    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")

    data = json.loads((tmp_path / "x.json").read_text(), parse_constant=refuse)
    assert data["diffs"][0]["ci95_low"] is None and data["diffs"][0]["diff_mean"] == pytest.approx(0.1)


def lr_cells(vals, tests, seed=0):
    return [cell(f"lora%{lr:.1g}", seed, t, val=v) for lr, v, t in zip((3e-4, 1e-3, 3e-3), vals, tests)]


def test_lr_choice_never_picks_an_undefined_val_auroc():
    selected, choices = lr_select.select_by_val(lr_cells([None, 0.6, 0.7], [0.9, 0.8, 0.75]), RATES)
    (choice,) = choices
    assert choice["lr"] == pytest.approx(3e-3) and not choice["complete"] and selected == []
    assert choice["val_auroc"]["0.0003"] is None and choice["chosen_test_auroc"] == 0.75
    table = lr_select.markdown_choices(choices)
    assert "0.0003: undefined" in table and "not compared" in table


def test_lr_groups_with_nothing_defined_are_listed_not_compared():
    cells = lr_cells([None] * 3, [0.9, 0.8, 0.7]) + lr_cells([0.5, 0.6, 0.7], [None, 0.8, None], seed=1) + \
        lr_cells([0.5, 0.6, 0.55], [None, 0.8, 0.7], seed=2)
    selected, choices = lr_select.select_by_val(cells, RATES)
    by_seed = {c["seed"]: c for c in choices}
    assert by_seed[0]["lr"] is None and by_seed[0]["chosen_test_auroc"] is None and not by_seed[0]["complete"]
    assert not by_seed[1]["complete"] and by_seed[1]["chosen_test_auroc"] is None  # chosen 3e-3: test undefined
    assert by_seed[2]["complete"] and [c["seed"] for c in selected] == [2]
    (quality,) = lr_select.selection_quality(choices)
    assert quality["groups"] == 1 and quality["chosen_is_test_best"] == 1 and quality["lost_to_test_best"] == 0
    assert quality["gain_over_base_rate"] == pytest.approx(0.0)
    table = lr_select.markdown_choices(choices)
    assert "none (val AUROC undefined)" in table
    assert lr_select.markdown_quality([quality])


def test_progress_lines_name_an_undefined_auroc():
    import suite

    assert report.num(None) == "undefined" and report.num(float("nan")) == "undefined"
    assert report.num(0.25) == "0.250" and report.num(3, ".0f") == "3"

    class Task:
        name = "breastmnist"

    line = suite.describe((Task(), "lora", 0.01, 2), {"test_auroc": None})
    assert line == "breastmnist lora 1% seed 2: AUROC undefined"
    assert suite.describe((Task(), "unet", 0.1, 0), {"test_dice": 0.5}).endswith("Dice 0.500")
