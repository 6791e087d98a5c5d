"""Benchmark plumbing: paired statistics, grid order, the per-cell cache, the report files."""
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file, save_file
from conftest import make_medmnist
from helpers import HANG_S, toy_segmentation_npz

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import lr_select  # noqa: E402
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
    cells = [("breastmnist", m, 0.5, 0) for m in ("lora", "lora+tpp_mae", "linear_probe", "lora+tpp_mae~lr1e-4",
                                                  "bottleneck%0.003", "dora+tpp_mae")]
    done, missing, errors = tpp_gain.fill(bench, cells, budget_s=HANG_S)
    assert not errors and not missing and len(done) == 6
    by_method = {c["method"]: c for c in done}
    assert by_method["lora+tpp_mae"]["tpp_s"] > 0 and by_method["linear_probe"]["trainable_parameters"] == 66
    assert by_method["lora"]["train_labels"] == 30  # half of the 60 training labels
    # every cell validates on the label-fraction subsample (half of the 20 val images), the tpp default
    assert by_method["lora"]["val_images"] == 10 and by_method["bottleneck%0.003"]["val_images"] == 10
    assert "last step kept" in by_method["lora"]["selection"]
    # cells keyed with the validation rule go to their own folder; learning-rate grid cells and TPP adapters
    # (unchanged by it) keep the protocol's own id, folder and stamp, so caches from before stay valid
    assert bench.tpp_id == report.protocol_id(protocol, str(tiny_mae)) != bench.protocol_id
    assert by_method["lora"]["protocol_id"] == bench.protocol_id
    assert by_method["bottleneck%0.003"]["protocol_id"] == bench.tpp_id
    assert (bench.cache / "cells_valsub" / "breastmnist" / "lora" / "f0.5_s0.json").is_file()
    assert (bench.cache / "cells" / "breastmnist" / "bottleneck_lr0.003" / "f0.5_s0.json").is_file()
    assert (bench.cache / "tpp" / "breastmnist_lora_mae_s0" / tpp_gain.STAMP).read_text() == bench.tpp_id
    variant_card = json.loads((bench.cache / "tpp" / "breastmnist_lora_mae~lr1e-4_s0" / "adapter" /
                               "tpp_card.json").read_text())
    assert (variant_card["pretext"]["lr"] == 1e-4
            and by_method["lora+tpp_mae~lr1e-4"]["tpp_variant"] == ["train.lr=1e-4"])
    dora_card = json.loads((bench.cache / "tpp" / "breastmnist_dora_mae_s0" / "adapter" / "tpp_card.json")
                           .read_text())  # an option variant: TPP and fine-tuning run LoRA with use_dora
    assert dora_card["method"] == "lora" and dora_card["options"]["use_dora"] is True
    assert by_method["dora+tpp_mae"]["method_options"] == {"use_dora": True}
    assert by_method["dora+tpp_mae"]["trainable_parameters"] > by_method["lora"]["trainable_parameters"]  # + magnitudes
    assert not list((bench.cache / "work").iterdir())  # fine-tuning outputs are not kept
    assert not [p for p in (bench.cache / "tpp").iterdir() if ".partial_" in p.name]  # moved into place
    again, _, _ = tpp_gain.fill(bench, cells, budget_s=HANG_S)
    assert again == []  # everything came from the cache
    other = tpp_gain.Bench(tmp_path / "cache", dict(protocol, finetune_steps=4), str(tiny_mae), str(root))
    assert other.cached(*cells[0]) is None  # another protocol does not reuse cells
    (tmp_path / "linked_backbone").symlink_to(tiny_mae)  # same weights reached by another path: cache reused
    assert tpp_gain.Bench(tmp_path / "cache", protocol, str(tmp_path / "linked_backbone"), str(root)).cached(*cells[0])
    payload = tpp_gain.write_report(bench, cells, tmp_path / "out", [], quick=True)
    assert [(c["lr"], c["complete"], c["val_images"]) for c in payload["lr_choices"]] == [(0.003, False, 10)]
    assert "bottleneck*" not in {r["method"] for r in payload["rows"]}  # one rate of three (on half the 20 val
    # images): listed, not compared
    assert payload["complete"] and {p.name for p in (tmp_path / "out").iterdir()} == {
        "tpp_gain.json", "tpp_gain.md", "tpp_gain.png"}
    fresh_clone = tpp_gain.Bench(tmp_path / "fresh_cache", protocol, str(tiny_mae), str(root))
    assert fresh_clone.adopt(tmp_path / "out" / "tpp_gain.json") == 6  # a published report seeds an empty cache
    assert all(fresh_clone.cached(*c) == bench.cached(*c) for c in cells)
    assert fresh_clone.adopt(tmp_path / "out" / "tpp_gain.json") == 0  # nothing twice
    assert other.adopt(tmp_path / "out" / "tpp_gain.json") == 0  # nor cells of another protocol
    before_key = json.loads((tmp_path / "out" / "tpp_gain.json").read_text())  # as published before the key
    for c in before_key["cells"]:
        c["protocol_id"] = bench.tpp_id
    (tmp_path / "before_key.json").write_text(json.dumps(before_key))
    old_cache = tpp_gain.Bench(tmp_path / "old_cache", protocol, str(tiny_mae), str(root))
    assert old_cache.adopt(tmp_path / "before_key.json") == 1  # only the learning-rate grid cell keeps its meaning
    assert old_cache.cached(*cells[4]) and not old_cache.cached(*cells[0])
    assert not (old_cache.cache / "cells_valsub").exists()
    paired = json.loads((tmp_path / "out" / "tpp_gain.json").read_text())["paired"]
    assert {(d["method"], d["reference"]) for d in paired} == {
        ("lora", "linear_probe"), ("lora+tpp_mae", "lora"), ("lora+tpp_mae~lr1e-4", "lora"),
        ("lora+tpp_mae~lr1e-4", "lora+tpp_mae")}


def test_learning_rate_grid_keeps_per_seed_the_rate_with_the_best_validation_auroc():
    rates = tpp_gain.PROTOCOL["lr"]
    names = lr_select.lr_grid("bottleneck+tpp_mae", rates)
    assert [lr_select.split_lr(n)[1] for n in names] == [3e-4, 1e-3, 3e-3]  # half-decade steps around the base rate
    assert lr_select.lr_grid("full", rates)[1] == "full%0.0001"

    def lr_cell(method, seed, val, test):
        return dict(cell(method, seed, test), val_auroc=val, val_images=9)

    raw = [lr_cell("bottleneck%0.0003", 0, 0.70, 0.90), lr_cell("bottleneck%0.001", 0, 0.80, 0.60),
           lr_cell("bottleneck%0.003", 0, 0.75, 0.95), lr_cell("bottleneck%0.001", 1, 0.60, 0.70),
           lr_cell("bottleneck%0.003", 1, 0.60, 0.72), lr_cell("bottleneck%0.0003", 1, 0.50, 0.65),
           lr_cell("bottleneck%0.001", 2, 0.90, 0.80)]
    selected, choices = lr_select.select_by_val(raw, rates)
    by_seed = {c["seed"]: c for c in selected}
    assert by_seed[0]["method"] == "bottleneck*" and by_seed[0]["lr"] == 0.001
    assert by_seed[0]["test_auroc"] == 0.60  # chosen on validation, never on test
    assert by_seed[1]["lr"] == 0.001  # a tie goes to the smaller rate
    assert [c["complete"] for c in choices] == [True, True, False] and 2 not in by_seed  # seed 2: one rate run
    [quality] = lr_select.selection_quality(choices)  # the incomplete seed 2 is left out
    assert quality["groups"] == 2 and quality["val_images"] == [9]
    assert quality["chosen_is_test_best"] == 0  # seed 0: 0.60 chosen, 0.95 best; seed 1: 0.70 chosen, 0.72 best
    assert quality["lost_to_test_best"] == pytest.approx((0.35 + 0.02) / 2)
    assert quality["gain_over_base_rate"] == pytest.approx(0.0)  # both seeds chose the base rate 1e-3
    assert "0 of 2" in lr_select.markdown_quality([quality])
    pairs = tpp_gain.comparisons_for(["bottleneck*", "bottleneck+tpp_mae*", "lora*"])
    assert ("bottleneck+tpp_mae*", "bottleneck*") in pairs and ("bottleneck*", "lora*") in pairs


def test_method_names_are_checked_before_any_cell_runs(capsys):
    tpp_gain.check_methods(["ssf+tpp_mae%0.003", "vpt+tpp_dino", "ln_tuning%0.001", "full", "lora+tpp_mae~lr1e-4",
                            "houlsby+tpp_mae%0.003", "vpt_deep"], tpp_gain.PROTOCOL)
    for bad, message in (("lora+tpp_mea", "unknown pretext.name"), ("lorra", "unknown adapter.method"),
                         ("linear_probe+tpp_mae", "no target parameters"), ("lora+tpp_mae~x", "unknown TPP variant")):
        with pytest.raises(SystemExit):
            tpp_gain.main(["--report-only", "--methods", bad, "--cache", "/nonexistent"])
        assert message in capsys.readouterr().err


def test_a_published_report_that_is_not_one_is_a_usage_error_naming_the_file(tiny_mae, tmp_path, capsys):
    bad = tmp_path / "results.json"
    bad.write_text('{"rows": []}')
    with pytest.raises(SystemExit):
        tpp_gain.main(["--report-only", "--from-results", str(bad), "--backbone", str(tiny_mae),
                       "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out")])
    assert f"{bad}: not a benchmark report" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()


def test_fill_skips_a_cell_that_another_invocation_finished_meanwhile():
    finished, ran = set(), []

    def run_cell(name):
        ran.append(name)
        finished.update({name, "b"})  # as if a second process sharing the cache finished "b" meanwhile
        return {"name": name}

    done, missing, errors = report.fill(run_cell, lambda name: name in finished, ["a", "b", "c"], 600,
                                        kind=lambda cell: "x", describe=lambda cell, r: cell, first_estimate_s=1)
    assert ran == ["a", "c"] and [r["name"] for r in done] == ["a", "c"] and not missing and not errors


def test_a_cell_another_invocation_is_running_is_left_to_it_and_taken_once_free(tmp_path):
    """Two invocations on one cache split the grid: a claimed cell is skipped (reported as left), the others run;
    once the claim ends the next fill runs it."""
    claims, finished, ran = report.CellClaims(tmp_path / "claims"), set(), []

    def run_cell(name):
        ran.append(name)
        finished.add(name)
        return {"name": name}

    def fill():
        return report.fill(run_cell, lambda name: name in finished, ["a", "b", "c"], 600, kind=lambda cell: "x",
                           describe=lambda cell, r: cell, first_estimate_s=1, claims=claims)

    with claims.claim("b") as held:  # as another process would hold it (flock: per open file, so here too)
        assert held
        done, missing, errors = fill()
    assert ran == ["a", "c"] and missing == ["b"] and not errors
    done, missing, errors = fill()
    assert ran == ["a", "c", "b"] and [r["name"] for r in done] == ["b"] and not missing


def test_a_claim_ends_with_its_process(tmp_path):
    """A run killed mid-cell leaves no stale claim: the kernel drops the lock with the process."""
    import subprocess

    code = ("import sys, time; sys.path.insert(0, sys.argv[1]); import report; "
            "c = report.CellClaims(sys.argv[2]).claim(('t', 0.1, 3)); assert c.__enter__(); print('held', flush=True); "
            "time.sleep(3600)")
    child = subprocess.Popen([sys.executable, "-c", code, str(Path(report.__file__).parent), str(tmp_path)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        with report.CellClaims(tmp_path).claim(("t", 0.1, 3)) as mine:
            assert not mine  # the live process holds it
    finally:
        child.kill()
        child.wait(timeout=HANG_S)
    with report.CellClaims(tmp_path).claim(("t", 0.1, 3)) as mine:
        assert mine


def test_segmentation_cells_of_a_published_report_seed_an_empty_cache(tiny_mae, tmp_path):
    import seg_gain

    bench = seg_gain.SegBench(tmp_path / "cache", seg_gain.PROTOCOL, str(tiny_mae), "unused", "seg/busi_64.npz")
    ours = {"target": "busi_64", "method": "lora", "fraction": 0.1, "seed": 0, "test_dice": 0.5,
            "protocol_id": bench.protocol_id}
    theirs = dict(ours, seed=1, protocol_id="another")  # another protocol or backbone: not adopted
    (tmp_path / "seg_gain.json").write_text(json.dumps({"rows": [], "cells": [ours, theirs]}))
    assert bench.adopt(tmp_path / "seg_gain.json") == 1
    assert bench.cached("lora", 0.1, 0) == ours and bench.cached("lora", 0.1, 1) is None


def test_a_unet_cell_trains_and_is_stored_like_the_recipes_cells(tiny_mae, tmp_path):
    """The task-specific U-Net cell goes through the same cell record as the recipe's cells (it lacked a key)."""
    import seg_gain

    toy = dict(np.load(toy_segmentation_npz(tmp_path / "seg.npz")))
    np.savez(tmp_path / "seg.npz", **toy, dup_group=toy["group"])  # the BUSI config's duplicate groups
    protocol = dict(seg_gain.PROTOCOL, budget={"epochs": 1, "min_steps": 2})
    bench = seg_gain.SegBench(tmp_path / "cache", protocol, str(tiny_mae), str(tmp_path), "seg.npz")
    cell = bench.run_cell("unet", 1.0, 0)
    assert cell["steps"] == bench.budget_steps(cell["train_masks"]) and cell["decoder_bytes"] == 0
    assert cell["trainable_parameters"] == cell["adapter_parameters"] > 0 and 0 <= cell["test_dice"] <= 1
    assert bench.cached("unet", 1.0, 0) == cell


def test_a_tpp_adapter_folder_is_moved_into_place_whole(tmp_path):
    def folder(name, stamp):
        (tmp_path / name).mkdir()
        (tmp_path / name / tpp_gain.STAMP).write_text(stamp)
        return tmp_path / name

    out = folder("out", "old protocol")
    tpp_gain.move_into_place(folder("ours", "now"), out, "now")  # a stale adapter is replaced
    assert tpp_gain.stamped(out, "now") and not (tmp_path / "ours").exists()
    late = folder("late", "now")
    (late / "marker").write_text("")
    tpp_gain.move_into_place(late, out, "now")  # another process was first: its adapter stays, ours goes
    assert not (out / "marker").exists() and not late.exists()


def test_method_cost_measures_every_method_against_full_fine_tuning(tiny_mae, tmp_path):
    import method_cost

    root = make_medmnist(tmp_path / "data")
    names = method_cost.methods()
    assert "full" in names and len(names) >= 11
    results = [method_cost.worker(m, steps=1, batch_size=8, backbone=str(tiny_mae), data_root=str(root))
               for m in names]
    rows = {r["method"]: r for r in method_cost.summarise(results)}
    head = 32 * 2 + 2  # linear head of the width-32 backbone, two classes
    assert rows["full"]["params_vs_full"] == 1.0 and rows["linear_probe"]["trainable_parameters"] == head
    for name, row in rows.items():
        assert row["images_per_s"] > 0 and row["adapter_bytes"] > 0
        if name != "full":
            assert head < row["trainable_parameters"] < rows["full"]["trainable_parameters"] or name == "linear_probe"
            assert row["adapter_bytes"] < rows["full"]["adapter_bytes"]
    assert "| vpt |" in method_cost.markdown(list(rows.values()))


def test_segmentation_report_states_the_goals_from_the_cells():
    import seg_gain

    def seg_cell(method, seed, dice, fraction):
        return {"method": method, "fraction": fraction, "seed": seed, "target": "busi_64", "test_dice": dice,
                "test_iou": dice / 2, "test_hd95": 10.0, "empty_predictions": 1, "adapter_parameters": 5,
                "decoder_parameters": 7, "decoder_bytes": 28, "finetune_s": 1.0}

    cells = [seg_cell("lora", s, d, 0.1) for s, d in enumerate([0.40, 0.42, 0.38])] + \
            [seg_cell("lora+tpp_mae", s, d, 0.1) for s, d in enumerate([0.45, 0.44, 0.41])] + \
            [seg_cell("full", s, d, 0.1) for s, d in enumerate([0.48, 0.47, 0.46])]
    rows = seg_gain.summarise(cells)
    diffs = report.paired(cells, "lora+tpp_mae", "lora", metric="test_dice")
    assert diffs[0]["diff_mean"] == pytest.approx(0.10 / 3)
    lines = seg_gain.goals(rows, diffs, cells)
    assert "10% masks: no difference detected (95% CI includes 0), +0.033" in lines[0]  # [-0.005, +0.071]
    assert ("best PEFT (lora+tpp_mae, 0.433; picked on test) vs full fine-tuning (0.470): full - PEFT +0.037 "
            "[+0.008, +0.065] Dice over 3 paired seeds; within 2 points: undetermined") in lines[1]
    assert "| 10% | full | 3 | 0.470 ± 0.010 |" in seg_gain.markdown(rows, diffs)
    ahead = [dict(c, test_dice=c["test_dice"] + 0.1) if c["method"] == "full" else c for c in cells]
    assert "within 2 points: no." in seg_gain.goals(seg_gain.summarise(ahead), diffs, ahead)[1]
    tpp = {c["seed"]: c["test_dice"] for c in cells if c["method"] == "lora+tpp_mae"}
    level = [dict(c, test_dice=tpp[c["seed"]] + 0.01 + 0.001 * c["seed"]) if c["method"] == "full" else c
             for c in cells]
    assert "within 2 points: yes." in seg_gain.goals(seg_gain.summarise(level), diffs, level)[1]


def test_backbone_fingerprint_follows_the_weights_not_the_path(tiny_mae, tmp_path):
    copy = Path(shutil.copytree(tiny_mae, tmp_path / "copy"))
    assert report.backbone_fingerprint(str(copy)) == report.backbone_fingerprint(str(tiny_mae))
    weights = next(copy.glob("*.safetensors"))
    state = load_file(weights)
    name = next(iter(state))
    state[name] = state[name] + 1
    save_file(state, weights)
    assert report.backbone_fingerprint(str(copy)) != report.backbone_fingerprint(str(tiny_mae))
    assert report.backbone_fingerprint("org/some-hub-model") == "org/some-hub-model"
    assert report.protocol_id({"a": 1}, str(tiny_mae)) != report.protocol_id({"a": 1}, str(copy))


def test_each_backbone_keeps_its_cells_in_its_own_folder(tiny_mae, tmp_path):
    """A run with another backbone on the same cache never replaces the shipped backbone's cells (it did)."""
    cell = ("breastmnist", "lora", 0.1, 0)
    shipped = tpp_gain.Bench(tmp_path / "c", tpp_gain.PROTOCOL, "builtin:mae-vit-tiny-med", "unused")
    other = tpp_gain.Bench(tmp_path / "c", tpp_gain.PROTOCOL, str(tiny_mae), "unused")
    assert shipped.cache == tmp_path / "c"  # the published layout, unchanged for the default
    assert other.cell_path(*cell) != shipped.cell_path(*cell) and other.cache.parent == tmp_path / "c" / "backbones"
    (tmp_path / "linked").symlink_to(tiny_mae)  # the same weights by another path: the same folder
    assert tpp_gain.Bench(tmp_path / "c", tpp_gain.PROTOCOL, str(tmp_path / "linked"), "unused").cache == other.cache
    import seg_gain

    seg = [seg_gain.SegBench(tmp_path / "c", seg_gain.PROTOCOL, b, "unused", "seg/busi_64.npz")
           for b in ("builtin:mae-vit-tiny-med", str(tiny_mae))]
    assert seg[0].cell_path("lora", 0.1, 0) != seg[1].cell_path("lora", 0.1, 0)
    import incontext_finetune
    import suite_incontext

    finetune = [incontext_finetune.FinetuneBench("unused", b, tmp_path / "f") for b in ("builtin:mae-vit-tiny-med",
                                                                                           str(tiny_mae))]
    assert finetune[0].cell_path("breastmnist", "lora", 2, 0) != finetune[1].cell_path("breastmnist", "lora", 2, 0)
    task = type("Task", (), {"name": "breastmnist"})
    incontext = [suite_incontext.InContextBench(tmp_path / "i", {}, b, "unused", {})
                 for b in ("builtin:mae-vit-tiny-med", str(tiny_mae))]
    assert incontext[0].cell_path(task, "knn", 0.1, 0) != incontext[1].cell_path(task, "knn", 0.1, 0)


def test_method_variants_are_valid_options_of_their_method_and_not_method_names():
    from tpp.adapters import all_methods, get_method

    registered = {m.name for m in all_methods()}
    for name, (method, options) in tpp_gain.METHOD_VARIANTS.items():
        assert name not in registered and "+" not in name and "%" not in name
        get_method(method).options_cls(**options)  # an unknown or invalid option raises here
        section = tpp_gain.adapter_section(name, tpp_gain.PROTOCOL)
        assert section["method"] == method and options.items() <= section.items()
    assert tpp_gain.adapter_section("lora", tpp_gain.PROTOCOL) == {"method": "lora", "r": 8, "alpha": 16}


def test_cache_key_ignores_the_saved_mask_ratio_only(tmp_path):
    """The shipped default saves mask_ratio 0.0 where ../shared's copy says 0.75 (tpp applies the pretext's
    ratio itself): both key the same cached cells; any other config change keys new ones."""
    def folder(name: str, **config) -> str:
        path = tmp_path / name
        path.mkdir()
        (path / "config.json").write_text(json.dumps(dict({"model_type": "vit_mae", "hidden_size": 8}, **config),
                                                     indent=2, sort_keys=True) + "\n")
        (path / "model.safetensors").write_bytes(b"same weights")
        return str(path)

    original = report.backbone_fingerprint(folder("original", mask_ratio=0.75))
    assert report.backbone_fingerprint(folder("shipped", mask_ratio=0.0)) == original
    assert report.backbone_fingerprint(folder("wider", mask_ratio=0.75, hidden_size=16)) != original
    assert report.backbone_fingerprint(folder("other_ratio", mask_ratio=0.5)) != original


def test_seg_gain_budget_is_the_shipped_configs_epoch_rule(tiny_mae, tmp_path):
    import seg_gain

    from tpp.config import load_config
    from tpp.recipes import CONFIG_DIR
    from tpp.training import plan_steps

    cfg = load_config(CONFIG_DIR / seg_gain.FINETUNE_CONFIG, ["data.root=/nonexistent"], recipe="finetune")
    bench = seg_gain.SegBench(tmp_path, seg_gain.PROTOCOL, str(tiny_mae), "unused", "seg/busi_64.npz")
    assert (cfg.train.epochs, cfg.train.min_steps) == tuple(seg_gain.PROTOCOL["budget"].values())
    for masks in (5, 47, 117, 300, 451):  # the floor at few masks, epochs beyond it
        assert bench.budget_steps(masks) == plan_steps(cfg.train, masks).num_steps
    assert bench.budget_steps(47) == 150 < bench.budget_steps(451) == 290


def test_serving_benchmark_parses_its_own_options_without_engine():
    """`python benchmarks/serving.py` with no --engine (its documented default) had crashed on argv.index."""
    import serving

    with pytest.raises(SystemExit) as exit_info:
        serving.main(["--help"])
    assert exit_info.value.code == 0


# MedNIST's classes and their modality (../shared/data SOURCES.md: abdomen, chest and head CT, breast MRI, chest
# and hand X-rays)
MEDNIST_MODALITY = {"AbdomenCT": "CT", "BreastMRI": "MR", "CXR": "DX", "ChestCT": "CT", "Hand": "DX", "HeadCT": "CT"}


def test_multitask_memory_tags_mednist_with_the_modality_of_every_class_it_reads_or_none():
    """The 6-class MedNIST task was tagged CT: its breast MRI, chest and hand X-ray images are not."""
    import multitask_memory

    mednist = [t for t in multitask_memory.TASKS if t["data"].get("file", "").startswith("mednist/")]
    assert mednist
    for task in mednist:
        modalities = {MEDNIST_MODALITY[c] for c in task["data"].get("classes") or MEDNIST_MODALITY}
        expected = modalities.pop() if len(modalities) == 1 else "unknown"  # one DICOM code per dataset
        assert task["data"].get("modality", "unknown") == expected, task["name"]
