"""benchmarks/budget_gap.py: the ViT at the ResNet's budget, from the pre-trained backbone and from random weights."""
import json
import sys
from pathlib import Path

import torch
from conftest import make_medmnist
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import budget_gap  # noqa: E402

from tpp.backbones import load_backbone, resolve_backbone  # noqa: E402


def test_the_budget_is_the_resnets_epochs_in_batches_of_32():
    assert budget_gap.steps(546) == 100 * 18 and budget_gap.steps(32) == 100 and budget_gap.steps(33) == 200


def test_a_random_backbone_has_the_shipped_architecture_and_new_weights_per_seed(tmp_path):
    shipped = load_file(Path(resolve_backbone(budget_gap.BACKBONE)) / "model.safetensors")
    drawn = [load_file(budget_gap.random_backbone(tmp_path / f"s{s}", s) / "model.safetensors") for s in (0, 0, 1)]
    assert drawn[0].keys() == shipped.keys() and all(drawn[0][k].shape == shipped[k].shape for k in shipped)
    key = "vit.encoder.layer.0.attention.attention.query.weight"
    assert torch.equal(drawn[0][key], drawn[1][key]) and not torch.equal(drawn[0][key], drawn[2][key])
    assert not torch.equal(drawn[0][key], shipped[key])
    encoder, info, _ = load_backbone(str(tmp_path / "s1"))
    assert info.mean == load_backbone(budget_gap.BACKBONE)[1].mean  # the same preprocessing


def test_every_arm_runs_and_pairs_with_the_references_in_the_report(tmp_path, monkeypatch):
    root = make_medmnist(tmp_path / "data", n=(40, 10, 20))
    monkeypatch.setattr(budget_gap, "PROTOCOL", dict(budget_gap.PROTOCOL, epochs=1))  # 2 steps of 32
    reference = {"test_auroc": 0.6, "test_accuracy": 0.6, "trainable_parameters": 1, "finetune_s": 1.0}
    monkeypatch.setattr(budget_gap, "reference_cells", lambda cache, target, seeds, root: [
        dict(reference, target=target, method=m, fraction=1.0, seed=0, tpp_s=None) for m in budget_gap.REFERENCES])
    args = ["--seeds", "1", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out"),
            "--data-root", str(root)]
    assert budget_gap.main(args) == 0
    result = json.loads((tmp_path / "out" / "budget_gap.json").read_text())
    cells = {c["method"]: c for c in result["cells"]}
    assert set(cells) == {"full_long", "scratch_long", "lora_long", "full", "lora", "resnet18"}
    assert cells["full_long"]["steps"] == cells["scratch_long"]["steps"] == cells["lora_long"]["steps"] == 2
    assert cells["lora_long"]["trainable_parameters"] < cells["full_long"]["trainable_parameters"] / 10
    assert cells["full_long"]["init"] == "pre-trained" and cells["scratch_long"]["init"].startswith("random")
    assert (cells["full_long"]["lr"], cells["scratch_long"]["lr"]) == (1e-4, 1e-3)
    pairs = {(d["method"], d["reference"]) for d in result["paired"]}
    assert {("full_long", "resnet18"), ("scratch_long", "full_long"), ("full", "resnet18"), ("lora_long", "lora"),
            ("lora_long", "full_long")} <= pairs
    report_only = args[:-1] + [str(tmp_path / "no-data"), "--report-only"]  # from the cache: no data read
    assert budget_gap.main(report_only) == 0
    assert {c["method"] for c in json.loads((tmp_path / "out" / "budget_gap.json").read_text())["cells"]} == set(cells)


def test_a_cell_file_of_another_protocol_is_no_cell(tmp_path):
    cache = budget_gap.ArmCells(tmp_path)
    cell = {"target": "breastmnist", "method": "full_long", "seed": 0, "test_auroc": 0.8}
    cache.store(cell)
    assert cache.cached("breastmnist", "full_long", 0)["test_auroc"] == 0.8
    assert cache.cached("breastmnist", "lora_long", 0) is None
    path = cache.arms["full_long"].path("breastmnist", "full_long", 0)
    path.write_text(json.dumps(dict(cell, protocol_id="another")))
    assert cache.cached("breastmnist", "full_long", 0) is None


def test_each_arm_keeps_its_cells_when_another_arm_is_added_or_changed(tmp_path, monkeypatch):
    ids = {arm: c.id for arm, c in budget_gap.ArmCells(tmp_path).arms.items()}
    assert len(set(ids.values())) == len(ids)
    arms = dict(budget_gap.PROTOCOL["arms"], lora_long=dict(budget_gap.PROTOCOL["arms"]["lora_long"], r=16))
    del arms["scratch_long"]
    monkeypatch.setattr(budget_gap, "PROTOCOL", dict(budget_gap.PROTOCOL, arms=arms))
    changed = {arm: c.id for arm, c in budget_gap.ArmCells(tmp_path).arms.items()}
    assert changed["full_long"] == ids["full_long"] and changed["lora_long"] != ids["lora_long"]


def test_a_fresh_cache_adopts_the_published_cells_of_each_arm(tmp_path):
    source = budget_gap.ArmCells(tmp_path / "a")
    for arm in ("full_long", "lora_long"):
        source.store({"target": "breastmnist", "method": arm, "seed": 1, "test_auroc": 0.7})
    published = tmp_path / "budget_gap.json"
    stored = [json.loads(p.read_text()) for p in sorted((tmp_path / "a").rglob("*.json"))]
    foreign = {"target": "breastmnist", "method": "full", "seed": 1, "protocol_id": "suite"}  # a reference cell
    published.write_text(json.dumps({"cells": stored + [foreign]}))
    fresh = budget_gap.ArmCells(tmp_path / "b")
    assert fresh.adopt(published) == 2 and fresh.adopt(published) == 0
    assert fresh.cached("breastmnist", "lora_long", 1)["test_auroc"] == 0.7
