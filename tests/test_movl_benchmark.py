"""benchmarks/movl.py: differences to full fine-tuning are paired by seed with a 95% interval, the severity mean
is over every severity of a cell; the cell cache is keyed by protocol and an empty grid never replaces a report."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import movl  # noqa: E402
import report  # noqa: E402


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
    mean, low, high = report.t_interval([-0.01, 0.05])
    assert columns[6] == f"+0.020 [{low:+.3f}, {high:+.3f}] (n=2)" and mean == pytest.approx(0.02)
    assert columns[7].startswith("+0.015 [") and columns[7].endswith("(n=2)")
    assert columns[5] == "0.700 +- 0.000"  # mean over severities 1-5 of each seed: 0.7 and 0.7
    assert columns[9].startswith("+0.100 [+0.100, +0.100]")  # severity means minus full's: 0.7 - 0.6 per seed


def test_an_undefined_auroc_is_left_out_of_means_and_pairs():
    cells = [cell("full", 0, 0.80, 0.70, [0.6] * 5), cell("full", 1, None, 0.60, [None] * 5),
             cell("movl", 0, 0.70, 0.71, [0.7] * 5), cell("movl", 1, 0.65, 0.62, [0.7] * 5)]
    table = movl.tables(cells)
    full = [c.strip() for c in next(r for r in table.splitlines() if r.startswith("| full |")).strip("|").split("|")]
    row = [c.strip() for c in next(r for r in table.splitlines() if r.startswith("| movl |")).strip("|").split("|")]
    assert full[2] == "0.800 (1 seed)"  # seed 1's undefined AUROC is not averaged in
    assert row[6] == "-0.100 (n=1)" and row[9] == "+0.100 (n=1)"  # only seed 0 pairs: no interval from one pair
    assert "| full | 0.600 |" in table  # per corruption at s3: seed 1's undefined value left out


def test_the_cache_counts_only_cells_of_its_protocol_and_backbone(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "backbone_fingerprint", lambda backbone: backbone)
    cache = movl.Cache(tmp_path, "backbone-a")
    cache.store(cell("movl", 0, 0.7, 0.7, [0.6] * 5))
    assert cache.cached("breastmnist", 0.1, 0, "movl")["test_auroc"] == 0.7
    assert movl.Cache(tmp_path, "backbone-b").cached("breastmnist", 0.1, 0, "movl") is None
    monkeypatch.setitem(movl.PROTOCOL, "finetune_steps", 7)  # e.g. a --steps smoke run
    assert movl.Cache(tmp_path, "backbone-a").cached("breastmnist", 0.1, 0, "movl") is None
    path = movl.cell_path(cache.folder, "breastmnist", 0.1, 1, "movl")
    path.write_text(json.dumps(cell("movl", 1, 0.7, 0.7, [0.6] * 5)))  # a cell from before the key: not reused
    assert cache.cached("breastmnist", 0.1, 1, "movl") is None
    assert [c["seed"] for c in cache.cells()] == [0]


def test_a_smoke_run_never_replaces_the_cells_or_the_report_of_the_real_protocol(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "backbone_fingerprint", lambda backbone: backbone)
    real = movl.Cache(tmp_path, "b")
    real.store(cell("movl", 0, 0.7, 0.7, [0.6] * 5))
    monkeypatch.setitem(movl.PROTOCOL, "finetune_steps", 2)
    smoke = movl.Cache(tmp_path, "b")
    smoke.store(cell("movl", 0, 0.5, 0.5, [0.5] * 5))
    monkeypatch.setitem(movl.PROTOCOL, "finetune_steps", 200)
    assert real.cached("breastmnist", 0.1, 0, "movl")["test_auroc"] == 0.7  # not overwritten by the smoke cell
    with pytest.raises(SystemExit):  # --steps without its own --out would publish smoke numbers
        movl.main(["--steps", "2", "--report-only", "--cache", str(tmp_path)])


def test_published_cells_of_the_same_protocol_seed_an_empty_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "backbone_fingerprint", lambda backbone: backbone)
    source = movl.Cache(tmp_path / "a", "b")
    source.store(cell("movl", 0, 0.7, 0.7, [0.6] * 5))
    old = cell("full", 0, 0.8, 0.8, [0.7] * 5)  # a cell without protocol id (from before the key): left out
    published = tmp_path / "movl.json"
    published.write_text(json.dumps({"cells": source.cells() + [old]}))
    target = movl.Cache(tmp_path / "b", "b")
    assert target.adopt(published) == 1 and target.adopt(published) == 0
    assert target.cached("breastmnist", 0.1, 0, "movl")["test_auroc"] == 0.7


def test_the_grid_finishes_every_method_of_a_seed_before_the_next_seed():
    cells = movl.grid(["breastmnist"], [0.1], 2, ["full", "movl"])
    assert cells == [("breastmnist", 0.1, 0, "movl"), ("breastmnist", 0.1, 0, "full"),
                     ("breastmnist", 0.1, 1, "movl"), ("breastmnist", 0.1, 1, "full")]


def test_a_report_of_an_empty_cache_never_replaces_the_published_one(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "backbone_fingerprint", lambda backbone: backbone)
    out = tmp_path / "results"
    out.mkdir()
    (out / "movl.md").write_text("published")
    assert movl.main(["--report-only", "--cache", str(tmp_path / "cache"), "--out", str(out)]) == 0
    assert (out / "movl.md").read_text() == "published"
    cache = movl.Cache(tmp_path / "cache", "builtin:mae-vit-tiny-med")
    cache.store(cell("movl", 0, 0.7, 0.7, [0.6] * 5) | {"wall_s": 1.0})
    assert movl.main(["--report-only", "--cache", str(tmp_path / "cache"), "--out", str(out),
                      "--targets", "breastmnist", "--fractions", "0.1", "--seeds", "1"]) == 0
    assert "| movl | 1 | 0.700" in (out / "movl.md").read_text() and (out / "movl.png").is_file()


def test_one_seed_shows_no_spread_rather_than_zero():
    assert movl._ms([0.9]) == "0.900 (1 seed)" and movl._ms([0.9, 0.8]) == "0.850 +- 0.071"
    assert movl._ms([None]) == "-"


def test_a_run_on_a_fresh_cache_keeps_the_cells_of_the_report_it_replaces(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "backbone_fingerprint", lambda backbone: backbone)
    out, old_cache = tmp_path / "results", movl.Cache(tmp_path / "old", "builtin:mae-vit-tiny-med")
    old_cache.store(cell("movl", 0, 0.7, 0.7, [0.6] * 5) | {"wall_s": 1.0})
    out.mkdir()
    (out / "movl.json").write_text(json.dumps({"cells": old_cache.cells()}))
    fresh = tmp_path / "fresh"  # a new clone: no cache, the published report in git
    new = movl.Cache(fresh, "builtin:mae-vit-tiny-med")
    new.store(cell("movl", 1, 0.8, 0.8, [0.6] * 5) | {"wall_s": 1.0})
    assert movl.main(["--report-only", "--cache", str(fresh), "--out", str(out)]) == 0
    seeds = sorted(c["seed"] for c in json.loads((out / "movl.json").read_text())["cells"])
    assert seeds == [0, 1]


def test_the_severity_plot_starts_at_the_clean_auroc_and_averages_over_seeds(tmp_path):
    cells = [cell("movl", 0, 0.80, 0.7, [0.7, 0.6, 0.5, 0.4, 0.3]),
             cell("movl", 1, 0.90, 0.7, [0.7, 0.6, 0.5, None, 0.1]), cell("full", 0, 0.85, 0.7, [0.8] * 5)]
    points = movl.severity_points([c for c in cells if c["method"] == "movl"])
    assert [p[0] for p in points] == [0, 1, 2, 3, 4, 5]
    assert points[0][1] == pytest.approx(0.85) and points[0][2] > 0  # clean: two seeds, an interval
    assert points[4][1:] == pytest.approx((0.4, 0.0))  # severity 4: seed 1 undefined, one value, no interval
    assert points[5][1] == pytest.approx(0.2)
    movl.severity_plot(cells, tmp_path / "movl.png")
    assert (tmp_path / "movl.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["movl.png"]  # no temporary file left


def test_tpp_methods_are_paired_with_their_random_init_twin_by_seed():
    rows = [cell("visual_prompt", 0, 0.60, 0.6, [0.5] * 5), cell("visual_prompt", 1, 0.70, 0.6, [0.6] * 5),
            cell("visual_prompt+tpp", 1, 0.75, 0.6, [0.7] * 5), cell("visual_prompt+tpp", 0, 0.62, 0.6, [0.5] * 5),
            cell("movl+tpp", 0, 0.9, 0.6, [0.5] * 5)]  # no movl twin: no line
    lines = movl.tpp_lines(rows)
    pair = [line for line in lines if line.startswith("| visual_prompt+tpp - visual_prompt |")]
    assert len(pair) == 1 and not any(line.startswith("| movl+tpp") for line in lines)
    mean, low, high = report.t_interval([0.02, 0.05])  # by seed; mismatched pairs would give -0.08 and +0.15
    assert f"{mean:+.3f} [{low:+.3f}, {high:+.3f}] (n=2)" in pair[0] and "+0.050" in pair[0].split("|")[3]
    assert movl.tpp_lines(rows[:2]) == []


@pytest.mark.parametrize("script, args, said", [
    ("movl", ["--steps", "0"], "--steps must be at least 1, got 0"),  # 0 ran the real protocol into the report
    ("movl", ["--targets", "breastmnst"], "--targets: 'breastmnst' is no MedMNIST dataset (did you mean breastmnist?)"),
    ("movl", ["--fractions", "7"], "--fractions: 7.0 is no label fraction of this grid"),
    ("movl", ["--seeds", "0"], "--seeds must be at least 1, got 0"),
    ("tpp_gain", ["--fractions", "0.5"], "--fractions: 0.5 is no label fraction of this grid (one of 0.1, 0.01, 1.0)"),
    ("tpp_gain", ["--max-seeds", "-3"], "--max-seeds must be at least 1, got -3"),
    ("tpp_gain", ["--budget-min", "-1"], "--budget-min must be 0 or more minutes, got -1.0"),
])
def test_grid_arguments_that_could_only_fail_later_are_refused_at_once(tmp_path, capsys, script, args, said):
    import tpp_gain

    main = {"movl": movl.main, "tpp_gain": tpp_gain.main}[script]
    with pytest.raises(SystemExit) as exited:
        main([*args, "--report-only", "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache")])
    assert exited.value.code == 2 and said in capsys.readouterr().err and not (tmp_path / "out").exists()
