"""tpp_gain's 'lora+tpp_multitask' cells: the multi-task TPP config per target, the method name, the cache keys,
and (integration) one cell through the real multitask and finetune recipes on ../shared/data."""
import copy
import json
import sys
from pathlib import Path

import pytest
from conftest import shared_backbone, shared_data
from helpers import HANG_S

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import tpp_gain  # noqa: E402
import tpp_gain_multitask as mt  # noqa: E402
from tpp.config import load_config  # noqa: E402
from tpp.errors import TppError  # noqa: E402
from tpp.multitask_build import check_eval_targets, origin_of  # noqa: E402
from tpp.recipes import get_recipe  # noqa: E402

LORA = tpp_gain.adapter_section("lora", tpp_gain.PROTOCOL)


@pytest.mark.parametrize("target", tpp_gain.TARGETS)
def test_the_pool_has_the_targets_own_mae_and_no_evaluation_target(target):
    cfg = mt.multitask_config(target, LORA, mt.MULTITASK_PROTOCOL)
    kinds = [(e["kind"], e["data"]["name"]) for e in cfg["pool"]]
    assert ("mae", target) in kinds and sum(k == "mae" for k, _ in kinds) == 1
    evals = {origin_of(t) for t in tpp_gain.TARGETS}
    classification = [name for kind, name in kinds if kind == "classification"]
    assert classification and not {origin_of(n) for n in classification} & evals
    assert set(classification) == {"bloodmnist", "organamnist", "dermamnist_jpeg", "mednist"}
    assert cfg["multitask"]["eval_targets"] == tpp_gain.TARGETS  # the leakage check stays on
    assert cfg["adapter"] == {"method": "lora", "r": 8, "alpha": 16}  # hands off by adapter.init_from
    assert cfg["train"]["max_steps"] == mt.MULTITASK_PROTOCOL["multitask_tpp_steps"]
    run = load_config(cfg, recipe="multitask")
    get_recipe("multitask").check(run)  # includes the evaluation-target check, which allows the target's own MAE
    with pytest.raises(TppError, match="evaluation target"):  # ... but not its labels
        check_eval_targets([("x", "classification", target, None)], run.multitask.eval_targets)


def test_method_name_and_early_checks():
    assert tpp_gain.parse_method("lora+tpp_multitask", "pneumoniamnist") == ("lora", "multitask", None,
                                                                             "pneumoniamnist")
    tpp_gain.check_methods(["lora+tpp_multitask", "dora+tpp_multitask"], tpp_gain.PROTOCOL)
    for bad, why in [("lora+tpp_multitask@mednist_cxr", "no '~variant' or '@source'"),
                     ("linear_probe+tpp_multitask", "no target parameters")]:
        with pytest.raises(TppError, match=why):
            tpp_gain.check_methods([bad], tpp_gain.PROTOCOL)
    pairs = tpp_gain.comparisons_for(["lora", "lora+tpp_dino", "lora+tpp_mae", "lora+tpp_multitask"])
    assert {("lora+tpp_multitask", "lora"), ("lora+tpp_multitask", "lora+tpp_mae"),
            ("lora+tpp_multitask", "lora+tpp_dino")} <= set(pairs)
    assert ("lora+tpp_multitask", "lora+tpp_dino") not in tpp_gain.comparisons_for(["lora", "lora+tpp_multitask"])


def test_a_pool_or_budget_change_changes_the_stamp_and_the_cell_key(tmp_path):
    shipped = mt.shipped_config()
    base = mt.stamp("id", mt.multitask_config("breastmnist", LORA, mt.MULTITASK_PROTOCOL, shipped))
    smaller = copy.deepcopy(shipped)
    smaller["pool"] = [e for e in smaller["pool"] if e["data"]["name"] != "organamnist"]
    longer = dict(mt.MULTITASK_PROTOCOL, multitask_tpp_steps=401)
    assert mt.stamp("id", mt.multitask_config("breastmnist", LORA, mt.MULTITASK_PROTOCOL, smaller)) != base
    assert mt.stamp("id", mt.multitask_config("breastmnist", LORA, longer, shipped)) != base
    assert mt.stamp("id", mt.multitask_config("pneumoniamnist", LORA, mt.MULTITASK_PROTOCOL, shipped)) != base
    assert mt.stamp("id", mt.multitask_config("breastmnist", LORA, mt.MULTITASK_PROTOCOL, shipped)) == base
    # a stored cell is reused only under the multi-task budget it was run with; other methods' cells are unaffected
    bench = tpp_gain.Bench(tmp_path, tpp_gain.PROTOCOL, shared_backbone(), str(tmp_path))
    other = tpp_gain.Bench(tmp_path, tpp_gain.PROTOCOL, shared_backbone(), str(tmp_path), longer)
    for method in ("lora+tpp_multitask", "lora"):
        cell = ("breastmnist", method, 0.1, 0)
        base_name, pretext, _, source = tpp_gain.parse_method(method, "breastmnist")
        bench.store({"target": "breastmnist", "method": method, "fraction": 0.1, "seed": 0, "tpp_variant": None,
                     "protocol_id": bench.cell_id(method), "method_options": None,
                     "tpp_protocol": mt.cell_config(bench.multitask, pretext, source, LORA)})
        assert bench.cached(*cell)
        assert bool(other.cached(*cell)) is (method == "lora")



def test_a_cell_recorded_under_another_modality_tag_is_the_same_measurement(tmp_path):
    """The pool's MedNIST tasks were tagged CT until 2026-12-02 (now unknown): a tag or licence changes what a card
    records, not what trains, so the cells measured before stay cached; another dataset in the pool does not."""
    bench = tpp_gain.Bench(tmp_path, tpp_gain.PROTOCOL, shared_backbone(), str(tmp_path))
    current = mt.cell_config(bench.multitask, "multitask", "breastmnist", LORA)
    recorded = copy.deepcopy(current)
    for entry in recorded["pool"]:
        entry["data"]["modality"] = "CT"
        entry["data"]["license"] = "other"
    moved = copy.deepcopy(current)
    moved["pool"][0]["data"]["name"] = "pathmnist"
    for protocol, kept in ((recorded, True), (moved, False)):
        bench.store({"target": "breastmnist", "method": "lora+tpp_multitask", "fraction": 0.1, "seed": 0,
                     "tpp_variant": None, "protocol_id": bench.cell_id("lora+tpp_multitask"), "method_options": None,
                     "tpp_protocol": protocol})
        assert bool(bench.cached("breastmnist", "lora+tpp_multitask", 0.1, 0)) is kept


@pytest.mark.integration
def test_a_multitask_cell_runs_through_the_real_recipes(tmp_path):
    protocol = dict(tpp_gain.QUICK_PROTOCOL, finetune_steps=2, finetune_batch_size=8)
    budget = dict(mt.MULTITASK_PROTOCOL, multitask_tpp_steps=2, multitask_tpp_batch_size=4)
    bench = tpp_gain.Bench(tmp_path / "cache", protocol, shared_backbone(), str(shared_data()), budget)
    cells = [("pneumoniamnist", "lora+tpp_multitask", 0.01, 0)]
    done, missing, errors = tpp_gain.fill(bench, cells, budget_s=HANG_S)
    assert not errors and not missing and len(done) == 1
    assert done[0]["tpp_s"] > 0 and done[0]["tpp_protocol"]["train"]["max_steps"] == 2
    folder = tmp_path / "cache" / "tpp" / "pneumoniamnist_lora_multitask_s0"
    assert (folder / tpp_gain.STAMP).read_text().startswith(bench.tpp_id)
    assert not list(folder.parent.glob("*.partial_*"))  # trained aside, moved into place
    card = json.loads((folder / "adapter" / "tpp_card.json").read_text())
    assert [t["name"] for t in card["multitask"]["tasks"]][-1] == "pneumoniamnist-mae"
    assert card["multitask"]["steps"] == 2 and card["options"]["r"] == 8
    log = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    assert {"bloodmnist-classification", "pneumoniamnist-mae"} <= {t["name"] for e in log if e.get("event") == "data"
                                                                   for t in e["tasks"]}
    assert bench.cached(*cells[0])  # cached: a second fill trains nothing
    assert tpp_gain.fill(bench, cells, budget_s=HANG_S)[0] == []
    payload = tpp_gain.write_report(bench, cells, tmp_path / "out", [], quick=True)
    assert payload["multitask_protocol"] == budget
