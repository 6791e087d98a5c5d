"""MoVL in the standardised suite (benchmarks/suite_movl.py): the grid takes ``movl`` for classification only, a
suite cell of ``movl`` IS a benchmarks/movl.py cell (one cache, both ways), a published movl.json seeds it, its other
methods never pose as the suite's approaches, and the cost spec is the prompted 36-px model; tiny in-code data and
a tiny backbone, the training monkeypatched."""
import json
import sys
from pathlib import Path

import pytest
from conftest import make_medmnist

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import cost  # noqa: E402
import movl  # noqa: E402
import suite  # noqa: E402
import suite_report  # noqa: E402
from suite_grid import GridError, Task, load_grid  # noqa: E402
from suite_models import build  # noqa: E402

BREAST = Task("breastmnist", "classification")


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    return path


def grid_text(backbone="builtin:mae-vit-tiny-med", approaches="[linear_probe]", published=()) -> str:
    return (f"backbone: {backbone}\napproaches: {approaches}\nseeds: 1\ngrid:\n  - tasks: [breastmnist]\n"
            "    fractions: [0.1, 1.0]\n  - tasks: [breastmnist]\n    fractions: [0.1, 1.0]\n    approaches: [movl]\n"
            f"published: {json.dumps([str(p) for p in published])}\n")


def movl_cell(method="movl", seed=0, fraction=0.1, auroc=0.7, **extra) -> dict:
    """A cell as movl.run_cell returns it (cells measured before finetune_s was recorded have only wall_s)."""
    return {"target": "breastmnist", "fraction": fraction, "seed": seed, "method": method, "test_auroc": auroc,
            "test_accuracy": 0.6, "corrupted_auroc": {str(s): 0.6 for s in range(1, 6)},
            "corrupted_accuracy": {str(s): 0.5 for s in range(1, 6)}, "per_corruption_auroc_s3": {"speckle": 0.6},
            "trainable_parameters": 3954, "saved_bytes": 20480, "wall_s": 321.0, **extra}


def test_the_grid_takes_movl_for_classification_and_refuses_it_on_a_segmentation_task(tmp_path):
    grid = load_grid(write(tmp_path, grid_text()))
    assert sorted((t.name, a, f) for t, a, f, _s in grid.cells if a == "movl") == [
        ("breastmnist", "movl", 0.1), ("breastmnist", "movl", 1.0)]
    block = "  - tasks: [breastmnist]\n    fractions: [0.1, 1.0]\n    approaches"
    path = write(tmp_path, grid_text().replace(block, "  - tasks: [breastmnist, busi_64]\n    fractions: [0.1]\n"
                                                      "    approaches"))
    with pytest.raises(GridError) as err:
        load_grid(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and "approach 'movl' in 'grid[1].approaches'" in message
    assert "segmentation task 'busi_64'" in message
    top = write(tmp_path, grid_text(approaches="[movl, lora]").replace("[breastmnist]", "[breastmnist, busi_64]", 1))
    assert {(t.name, a) for t, a, _f, _s in load_grid(top).cells if t.name == "busi_64"} == {("busi_64", "lora")}


@pytest.fixture()
def suite_of(tmp_path, monkeypatch):
    """A Suite over a grid file (the backbone's content stands in for itself: no weights are read)."""
    import report

    monkeypatch.setattr(report, "backbone_fingerprint", lambda backbone: backbone)

    def make(text: str) -> suite.Suite:
        return suite.Suite(load_grid(write(tmp_path, text)), tmp_path / "cache", str(tmp_path / "data"))
    return make


def test_a_cell_stored_by_movl_py_is_a_suite_cell_and_the_reverse(tmp_path, suite_of, monkeypatch):
    s = suite_of(grid_text())
    mine = movl.Cache(tmp_path / "cache" / "movl", "builtin:mae-vit-tiny-med")  # movl.py --cache <root>/movl
    assert s.cached(BREAST, "movl", 0.1, 0) is None
    mine.store(movl_cell())
    cell = s.cached(BREAST, "movl", 0.1, 0)
    assert cell["test_auroc"] == 0.7 and cell["protocol_id"] == mine.id
    assert (cell["finetune_s"], cell["tpp_s"], cell["train_s_is_wall_s"]) == (321.0, None, True)  # only wall_s known
    calls = []

    def fake_run_cell(target, fraction, seed, method, data_root, backbone, work):
        calls.append((target, fraction, seed, method, data_root, backbone))
        return movl_cell(method, seed, fraction, auroc=0.8, finetune_s=50.0, tpp_s=None)

    monkeypatch.setattr(movl, "run_cell", fake_run_cell)
    ran = s.run_cell(BREAST, "movl", 1.0, 0)
    assert calls == [("breastmnist", 1.0, 0, "movl", str(tmp_path / "data"), "builtin:mae-vit-tiny-med")]
    stored = mine.cached("breastmnist", 1.0, 0, "movl")
    assert stored["test_auroc"] == 0.8 and "train_s_is_wall_s" not in stored  # movl.py's cell, as run_cell gave it
    assert ran["finetune_s"] == 50.0 and s.cached(BREAST, "movl", 1.0, 0)["finetune_s"] == 50.0
    assert "| movl | 1 | 0.700" in movl.tables(mine.cells())  # movl.py's own report still reads them


def test_a_published_movl_json_seeds_the_suite_and_its_other_methods_stay_out(tiny_mae, tmp_path):
    source = movl.Cache(tmp_path / "elsewhere", str(tiny_mae))
    source.store(movl_cell())
    source.store(movl_cell("full", auroc=0.9))  # movl.py's full fine-tuning: not a cell of the suite's `full`
    earlier = movl_cell(fraction=1.0, auroc=0.65, protocol_id="000000000000")  # another movl protocol
    published = tmp_path / "movl.json"
    published.write_text(json.dumps({"protocol": movl.PROTOCOL, "cells": source.cells() + [earlier]}))
    root = make_medmnist(tmp_path / "data")
    grid = write(tmp_path, grid_text(str(tiny_mae), "[linear_probe, full]", [published]))
    args = ["--grid", str(grid), "--cache", str(tmp_path / "cache"), "--data-root", str(root), "--out",
            str(tmp_path / "out"), "--report-only", "--no-memory"]
    assert suite.main(args) == 0
    assert movl.Cache(tmp_path / "cache" / "movl", str(tiny_mae)).cached("breastmnist", 0.1, 0, "movl")
    payload = json.loads((tmp_path / "out" / "suite.json").read_text())
    (row,) = payload["rows"]
    assert (row["approach"], row["fraction"], row["primary"]["mean"], row["train_s"]) == ("movl", 0.1, 0.7, 321.0)
    assert row["bytes_per_site"] == 4 * 3954 and row["family"] == "generalist"
    (old,) = payload["earlier_rows"]  # the other protocol's cell, flagged, converted like the current ones
    assert (old["approach"], old["fraction"], old["train_s"]) == ("movl", 1.0, 321.0)
    assert {(m["approach"], m["fraction"]) for m in payload["missing"]} == {
        ("linear_probe", 0.1), ("linear_probe", 1.0), ("full", 0.1), ("full", 1.0), ("movl", 1.0)}
    assert payload["protocols"]["movl"] == movl.PROTOCOL
    assert "train s of breastmnist movl 10%; breastmnist movl 100% is the whole cell's wall time" in (
        tmp_path / "out" / "suite.md").read_text()


def test_the_cost_spec_is_the_prompted_36px_model(tiny_mae, tmp_path, suite_of):
    make_medmnist(tmp_path / "data")
    s = suite_of(grid_text(str(tiny_mae)))
    spec, probe_spec = suite_report.spec_of(s, BREAST, "movl"), suite_report.spec_of(s, BREAST, "linear_probe")
    assert (spec["size"], probe_spec["size"]) == (36, 28)
    model, example = build(spec)
    probe, probe_example = build(probe_spec)
    assert tuple(example.shape[-2:]) == (36, 36) and tuple(probe_example.shape[-2:]) == (28, 28)
    (prompt,) = [p for n, p in model.named_parameters() if n.endswith("tpp_visual_prompt")]
    assert tuple(prompt.shape[-2:]) == (36, 36)  # the padding prompt, served with the frozen backbone and the head
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("tpp_visual_prompt" in n or "head" in n for n in trainable)
    flops, probe_flops = cost.flops_per_image(model, example), cost.flops_per_image(probe, probe_example)
    assert flops > probe_flops * 81 / 49 * 0.9  # 81 tokens (9 x 9 patches of 4 px) instead of 49 (7 x 7)
