"""benchmarks/incontext_finetune.py: fine-tuning on the in-context methods' own context draws, its cache, the
cross-over."""
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_medmnist

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import incontext as ic  # noqa: E402
import incontext_finetune as ft  # noqa: E402

TINY_BUDGET = dict(ft.PROTOCOL, classification=dict(ft.PROTOCOL["classification"], epochs=1, min_steps=2),
                   segmentation=dict(ft.PROTOCOL["segmentation"], epochs=1, min_steps=2))


class FlatFeatures:
    """A stand-in extractor for the in-context path: the first 16 pixels of each image as its features."""

    def rule(self, *args):
        return None

    def features(self, images, rule):
        return torch.as_tensor(np.stack(images).reshape(len(images), -1)[:, :16], dtype=torch.float32)


def spy(monkeypatch, module, name: str, seen: list):
    """Record what ``module.name`` returns, unchanged."""
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
        seen.append(original(*args, **kwargs))
        return seen[-1]
    monkeypatch.setattr(module, name, wrapper)


def test_a_classification_cell_trains_on_the_in_context_draw_and_is_cached(tiny_mae, tmp_path, monkeypatch):
    import tpp.data.sources.npz as npz_source

    root = tmp_path / "data"
    make_medmnist(root / "medmnist", "breastmnist", n=(40, 10, 12))
    drawn, loaded = [], []
    spy(monkeypatch, ic, "class_context", drawn)
    ic.classification_cells(FlatFeatures(), root / ic.CLASSIFICATION["breastmnist"], [2], 1)  # K=2, seed 0
    spy(monkeypatch, npz_source, "load_npz", loaded)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the cell's temporary folder goes
    bench = ft.FinetuneBench(root, str(tiny_mae), tmp_path / "cache", protocol=TINY_BUDGET)
    cell = bench.run_cell("breastmnist", "linear_probe", 2, 0)

    data = np.load(root / ic.CLASSIFICATION["breastmnist"])
    context = ic.class_pool(data["train_labels"][:, 0])[drawn[0]]  # what the in-context methods got
    assert cell["context"] == context.tolist() and len(context) == 4
    train, val, test = (loaded[0].split(s) for s in ("train", "val", "test"))
    assert np.array_equal(train.images, data["train_images"][context])  # the recipe trained on exactly these
    assert np.array_equal(train.labels, data["train_labels"][context, 0])
    assert np.array_equal(val.images, train.images) and np.array_equal(test.images, data["test_images"])
    assert cell["method"] == "finetune:linear_probe" and cell["queries"] == 12 and cell["steps"] == 2
    assert 0 <= cell["accuracy"] <= 1 and 0 <= cell["auroc"] <= 1 and 0 <= cell["train_s"] <= cell["run_s"]
    assert str(scratch) in loaded[0].source and not list(scratch.iterdir())  # a temporary file, removed after
    assert sorted(p.name for p in (root / "medmnist").iterdir()) == ["breastmnist.npz"]  # the data root untouched

    def no_training(*cell):
        raise AssertionError(f"trained {cell} again")
    monkeypatch.setattr(bench, "run_cell", no_training)
    cells, errors = ft.finetune_cells(bench, "breastmnist", ["linear_probe"], [2], 1)
    assert cells == [cell] and errors == []  # from the cache, nothing trained
    other = ft.FinetuneBench(root, str(tiny_mae), tmp_path / "cache", protocol=ft.PROTOCOL)
    assert other.cached("breastmnist", "linear_probe", 2, 0) is None  # another budget: not reused

    stored = bench.cell_path("breastmnist", "linear_probe", 2, 0)
    text = stored.read_text()
    import json

    stored.write_text(json.dumps(dict(json.loads(text), context=cell["context"][::-1])))
    assert bench.cached("breastmnist", "linear_probe", 2, 0) is None  # not the examples drawn now: not reused
    stored.write_text(text)
    make_medmnist(root / "medmnist", "breastmnist", n=(40, 10, 13))  # the data file changed
    fresh = ft.FinetuneBench(root, str(tiny_mae), tmp_path / "cache", protocol=TINY_BUDGET)
    assert fresh.cached("breastmnist", "linear_probe", 2, 0) is None


def test_a_segmentation_cell_trains_on_the_context_pairs_and_tests_the_queries(tiny_mae, tmp_path, monkeypatch):
    import tpp.data.sources.seg_npz as seg_source

    rng = np.random.default_rng(0)
    masks = np.zeros((30, 16, 16), np.uint8)
    for i in range(30):
        masks[i, 3:6 + i % 6, 4:10] = 1
    (tmp_path / "data" / "seg").mkdir(parents=True)
    np.savez(tmp_path / "data" / ic.BUSI, images=rng.integers(0, 255, (30, 16, 16), dtype=np.uint8), masks=masks,
             dup_group=np.arange(30) // 2)
    loaded = []
    spy(monkeypatch, seg_source, "load_seg_npz", loaded)
    bench = ft.FinetuneBench(tmp_path / "data", str(tiny_mae), tmp_path / "cache", protocol=TINY_BUDGET,
                             busi_queries=5)
    cell = bench.run_cell("busi", "lora", 3, 1)

    pool, query = ic.busi_split(np.load(tmp_path / "data" / ic.BUSI))
    context = ic.seg_context(pool, 3, 1)  # the in-context methods' draw of K=3, seed 1
    assert cell["context"] == context.tolist() and cell["queries"] == 5
    train, val, test = (loaded[0].split(s) for s in ("train", "val", "test"))
    assert np.array_equal(train.masks, masks[context]) and np.array_equal(val.masks, masks[context])
    assert np.array_equal(test.masks, masks[query[:5]])
    assert 0 <= cell["dice"] <= 1 and cell["method"] == "finetune:lora"
    assert bench.cached("busi", "lora", 3, 1) == cell
    all_queries = ft.FinetuneBench(tmp_path / "data", str(tiny_mae), tmp_path / "cache", protocol=TINY_BUDGET)
    assert all_queries.cached("busi", "lora", 3, 1) is None  # another query set: not reused


def test_query_dice_counts_empty_against_empty_as_one(tmp_path):
    path = tmp_path / "predictions.csv"
    path.write_text("split,index,dice_lesion\nval,0,0.1\ntest,0,0.5\ntest,1,\ntest,2,0.25\n")
    assert ft.query_dice(path) == [0.5, 1.0, 0.25]


def summary(incontext: dict, tuned: dict) -> dict:
    """{method: {k: (mean, std, n)}} from {method: {k: mean}}."""
    return {m: {k: (v, 0.0, 5) for k, v in by_k.items()} for m, by_k in {**incontext, **tuned}.items()}


def test_crossover_is_the_smallest_k_where_the_best_fine_tuned_mean_beats_the_best_in_context_mean():
    found = ft.crossover(summary({"prototype": {1: 0.6, 4: 0.7, 8: 0.72, 16: 0.74}, "knn": {1: 0.55, 4: 0.71, 8: 0.7}},
                                 {"finetune:lora": {1: 0.5, 4: 0.71, 8: 0.73, 16: 0.8},
                                  "finetune:linear_probe": {1: 0.58, 4: 0.65, 8: 0.7, 16: 0.7}}))
    assert found["k"] == 8 and found["up_to"] == 16  # K=4 is a tie (0.71 each): not overtaken
    assert found["at"][8] == (("prototype", 0.72), ("finetune:lora", 0.73))
    line = ft.crossover_line("breastmnist", "auroc", found)
    assert "cross-over at K=8: finetune:lora 0.730 > prototype 0.720" in line
    assert "fine-tuned ahead at K = 8, 16 of 1, 4, 8, 16" in line
    none = ft.crossover(summary({"prototype": {1: 0.6, 32: 0.8}}, {"finetune:lora": {1: 0.5, 2: 0.9, 32: 0.79}}))
    assert none["k"] is None and none["up_to"] == 32  # K=2 has no in-context cell: not compared
    assert "none up to K=32" in ft.crossover_line("busi", "dice", none)


def test_the_crossover_compares_only_context_draws_every_method_has():
    def cell(method, k, seed, auroc):
        return {"method": method, "k": k, "seed": seed, "auroc": auroc}

    cells = [cell("prototype", 4, s, v) for s, v in enumerate([0.70, 0.70, 0.70, 0.70, 0.40])]
    cells += [cell("finetune:lora", 4, s, 0.65) for s in range(4)]  # seed 4's fine-tuning failed
    cells += [cell("finetune:lora", 8, 0, None), cell("prototype", 8, 0, 0.6)]  # undefined: no pair at K=8
    (line,) = ft.crossover_lines({"breastmnist": (cells, ["auroc"])})
    assert "none up to K=4" in line  # unpaired, lora's 0.65 over 4 seeds would beat prototype's 0.64 over 5
    paired = ft.paired_seeds(cells, "auroc")
    assert sorted({c["seed"] for c in paired}) == [0, 1, 2, 3] and {c["k"] for c in paired} == {4}


def test_paired_gaps_pair_the_best_of_each_side_by_draw_and_call_ahead_only_outside_the_interval():
    def cell(method, k, seed, dice):
        return {"method": method, "k": k, "seed": seed, "dice": dice}

    cells = [cell("prototype", 1, s, 0.10 + 0.01 * s) for s in range(4)]
    cells += [cell("knn", 1, s, 0.05) for s in range(4)]
    cells += [cell("finetune:lora", 1, s, 0.30 + 0.01 * s + (0.002 if s % 2 else 0.0)) for s in range(4)]
    cells += [cell("prototype", 2, s, v) for s, v in enumerate([0.2, 0.1, 0.3, 0.2])]
    cells += [cell("knn", 2, s, 0.0) for s in range(4)]
    cells += [cell("finetune:lora", 2, s, v) for s, v in enumerate([0.3, 0.0, 0.3, 0.2])]
    one, two = ft.paired_gaps({"busi": (cells, ["dice"])})
    assert (one["finetuned"], one["in_context"], one["n"]) == ("finetune:lora", "prototype", 4)
    assert one["diff_mean"] == pytest.approx(0.201) and one["verdict"] == "fine-tuned ahead"
    assert two["diff_mean"] == pytest.approx(0.0) and two["verdict"] == "level (interval spans 0)"
    assert "| busi | dice | 1 | finetune:lora | prototype | +0.201 [" in ft.gaps_table([one, two])


def test_a_published_report_renders_again_with_the_paired_gaps(tmp_path, monkeypatch):
    import json

    cells = [{"method": m, "k": 1, "seed": s, "dice": v + 0.01 * s} for s in range(3)
             for m, v in (("prototype", 0.1), ("finetune:lora", 0.3))]
    payload = {"machine": {"cpu": "x"}, "command": "python benchmarks/incontext.py ...", "ks": [1], "seeds": 3,
               "cells": {"busi": cells}, "latency": [], "finetune_errors": []}
    (tmp_path / "old.json").write_text(json.dumps(payload))
    (tmp_path / "old.md").write_text("Machine: x\nCommand: y\nWhat was measured.\n")
    monkeypatch.setattr(sys, "argv", ["incontext.py", "--from-json", str(tmp_path / "old.json"), "--out",
                                      str(tmp_path / "new"), "--name", "again"])
    assert ic.main() == 0
    text = (tmp_path / "new" / "again.md").read_text()
    assert "What was measured." in text and "| busi | dice | 1 | finetune:lora | prototype | +0.200 [" in text
    again = json.loads((tmp_path / "new" / "again.json").read_text())
    assert again["paired_gaps"][0]["verdict"] == "fine-tuned ahead" and again["cells"] == payload["cells"]


def test_the_time_comparison_takes_the_fastest_in_context_method_and_the_median_fine_tuning():
    cells = [{"method": "finetune:lora", "k": 16, "seed": s, "train_s": t, "run_s": t + 5}
             for s, t in enumerate([10.0, 30.0, 20.0])] + [{"method": "knn", "k": 16, "seed": 0}]
    timing = [{"set": "breastmnist (28 px)", "k": 32, "method": "prototype", "prepare_s": 1.0, "query_ms_median": 50},
              {"set": "breastmnist (28 px)", "k": 32, "method": "knn", "prepare_s": 0.5, "query_ms_median": 100}]
    rows = ft.latency_rows({"breastmnist": (cells, ["auroc"]), "pneumoniamnist": (cells, ["auroc"])}, timing)
    assert rows == [{"dataset": "breastmnist", "k": 16, "in_context": "knn", "in_context_s": pytest.approx(0.6),
                     "finetune": "finetune:lora", "train_s": 20.0, "run_s": 25.0, "seeds": 3}]
    assert "| breastmnist | 16 | knn | 0.60 | finetune:lora | 20.0 | 25.0 | 3 | 42x |" in ft.latency_table(rows)
