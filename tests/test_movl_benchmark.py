"""benchmarks/movl.py's tables: differences to full fine-tuning are paired by seed, the severity mean is over
every severity of a cell."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import movl  # noqa: E402


def cell(method, seed, auroc, acc, corrupted):
    return {"target": "breastmnist", "fraction": 0.1, "seed": seed, "method": method, "test_auroc": auroc,
            "test_accuracy": acc, "corrupted_auroc": {str(s): v for s, v in enumerate(corrupted, 1)},
            "per_corruption_auroc_s3": {"speckle_noise": corrupted[2]}, "trainable_parameters": 10,
            "saved_bytes": 2048}


def test_differences_to_full_fine_tuning_are_paired_by_seed():
    cells = [cell("full", 0, 0.80, 0.70, [0.8, 0.7, 0.6, 0.5, 0.4]), cell("full", 1, 0.60, 0.60, [0.6] * 5),
             cell("movl", 1, 0.65, 0.62, [0.7] * 5), cell("movl", 0, 0.79, 0.71, [0.9, 0.8, 0.7, 0.6, 0.5])]
    table = movl.tables(cells)
    row = next(line for line in table.splitlines() if line.startswith("| movl |"))
    columns = [c.strip() for c in row.strip("|").split("|")]
    # by seed the AUROC differences are -0.01 and +0.05 (a mismatched pairing would give 0.19 and -0.15)
    assert columns[6] == "0.020 +- 0.042" and columns[7] == "0.015 +- 0.007"
    assert columns[5] == "0.700 +- 0.000"  # mean over severities 1-5 of each seed: 0.7 and 0.7
    assert columns[9] == "0.100 +- 0.000"  # severity means minus full's, per seed: 0.7 - 0.6 and 0.7 - 0.6


def test_an_undefined_auroc_is_left_out_of_means_and_pairs():
    cells = [cell("full", 0, 0.80, 0.70, [0.6] * 5), cell("full", 1, None, 0.60, [None] * 5),
             cell("movl", 0, 0.70, 0.71, [0.7] * 5), cell("movl", 1, 0.65, 0.62, [0.7] * 5)]
    table = movl.tables(cells)
    full = [c.strip() for c in next(r for r in table.splitlines() if r.startswith("| full |")).strip("|").split("|")]
    row = [c.strip() for c in next(r for r in table.splitlines() if r.startswith("| movl |")).strip("|").split("|")]
    assert full[2] == "0.800 +- 0.000"  # seed 1's undefined AUROC is not averaged in
    assert row[6] == "-0.100 +- 0.000" and row[9] == "0.100 +- 0.000"  # only seed 0 pairs
    assert "| full | 0.600 |" in table  # per corruption at s3: seed 1's undefined value left out
