"""Benchmark plumbing: paired statistics, grid order, the per-cell cache, the report files."""
import json
import math
import sys
from pathlib import Path

import pytest
from conftest import make_medmnist

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import report  # noqa: E402
import tpp_gain  # noqa: E402


def cell(method, seed, auroc, fraction=0.1, target="t"):
    return {"target": target, "method": method, "fraction": fraction, "seed": seed, "test_auroc": auroc,
            "test_accuracy": auroc, "trainable_parameters": 10, "finetune_s": 1.0, "tpp_s": None}


def test_paired_difference_uses_same_seed_pairs_and_a_t_interval():
    cells = [cell("a", s, v) for s, v in enumerate([0.80, 0.70, 0.75])] + \
            [cell("b", s, v) for s, v in enumerate([0.78, 0.71, 0.70, 0.99])]  # seed 3 has no partner
    (d,) = report.paired(cells, "a", "b")
    diffs = [0.02, -0.01, 0.05]
    mean, sd = sum(diffs) / 3, math.sqrt(sum((x - sum(diffs) / 3) ** 2 for x in diffs) / 2)
    assert d["n"] == 3 and d["diff_mean"] == pytest.approx(mean)
    assert d["ci95_high"] - mean == pytest.approx(4.302653 * sd / math.sqrt(3), rel=1e-5)
    (single,) = report.paired([cell("a", 0, 0.8), cell("b", 0, 0.7)], "a", "b")
    assert math.isnan(single["ci95_low"]) and "n/a" in report.markdown_paired([single])


def test_summary_rows_and_published_baseline():
    rows = report.summarise([cell("a", 0, 0.8, 1.0, "breastmnist"), cell("a", 1, 0.6, 1.0, "breastmnist")])
    assert rows[0]["n"] == 2 and rows[0]["auroc_mean"] == pytest.approx(0.7)
    assert rows[0]["auroc_std"] == pytest.approx(math.sqrt(0.02))
    assert "0.901" in report.markdown_results(rows)


def test_grid_puts_the_main_comparison_first_and_has_the_seed_counts():
    cells = tpp_gain.grid(tpp_gain.TARGETS, [0.01, 0.1, 1.0], 5, ["lora", "lora+tpp_mae", "full"], True)
    assert {c[1] for c in cells[:52]} == {"lora", "lora+tpp_mae"}
    lora = [c for c in cells if c[1] == "lora" and c[0] == "breastmnist"]
    assert sorted(sum(1 for c in lora if c[2] == f) for f in (0.01, 0.1, 1.0)) == [3, 5, 5]
    assert any("@mednist_hand" in c[1] for c in cells)
    assert tpp_gain.parse_method("lora+tpp_mae@mednist_cxr", "x") == ("lora", "mae", None, "mednist_cxr")
    assert tpp_gain.parse_method("lora+tpp_dino~lr1e-4", "x") == ("lora", "dino", "lr1e-4", "x")
    with pytest.raises(ValueError, match="unknown TPP variant"):
        tpp_gain.parse_method("lora+tpp_mae~nope", "x")


def test_cells_run_through_the_recipes_and_are_cached(tiny_mae, tmp_path):
    root = make_medmnist(tmp_path / "data")
    protocol = dict(tpp_gain.QUICK_PROTOCOL, finetune_steps=3, tpp_steps=2, finetune_batch_size=16)
    bench = tpp_gain.Bench(tmp_path / "cache", protocol, str(tiny_mae), str(root))
    cells = [("breastmnist", m, 0.5, 0) for m in ("lora", "lora+tpp_mae", "linear_probe", "lora+tpp_mae~lr1e-4")]
    done, missing, errors = tpp_gain.fill(bench, cells, budget_s=600)
    assert not errors and not missing and len(done) == 4
    by_method = {c["method"]: c for c in done}
    assert by_method["lora+tpp_mae"]["tpp_s"] > 0 and by_method["linear_probe"]["trainable_parameters"] == 66
    assert by_method["lora"]["train_labels"] == 30  # half of the 60 training labels
    variant_card = json.loads((tmp_path / "cache" / "tpp" / "breastmnist_lora_mae~lr1e-4_s0" / "adapter" /
                               "tpp_card.json").read_text())
    assert variant_card["pretext"]["lr"] == 1e-4 and by_method["lora+tpp_mae~lr1e-4"]["tpp_variant"] == ["train.lr=1e-4"]
    assert not list((tmp_path / "cache" / "work").iterdir())  # fine-tuning outputs are not kept
    again, _, _ = tpp_gain.fill(bench, cells, budget_s=600)
    assert again == []  # everything came from the cache
    other = tpp_gain.Bench(tmp_path / "cache", dict(protocol, finetune_steps=4), str(tiny_mae), str(root))
    assert other.cached(*cells[0]) is None  # another protocol does not reuse cells
    payload = tpp_gain.write_report(bench, cells, tmp_path / "out", [], quick=True)
    assert payload["complete"] and {p.name for p in (tmp_path / "out").iterdir()} == {
        "tpp_gain.json", "tpp_gain.md", "tpp_gain.png"}
    paired = json.loads((tmp_path / "out" / "tpp_gain.json").read_text())["paired"]
    assert {(d["method"], d["reference"]) for d in paired} == {
        ("lora", "linear_probe"), ("lora+tpp_mae", "lora"), ("lora+tpp_mae~lr1e-4", "lora"),
        ("lora+tpp_mae~lr1e-4", "lora+tpp_mae")}
