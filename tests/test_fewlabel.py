"""Few-label results that mean what they say (issue 28): the validation split shrinks with the labels, the split
seed is apart from the run's seed, every reported number is defined in metrics.json, segmentation budgets scale
with the masks, and `tpp compare` names the pretext."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_medmnist
from helpers import FAST, TPP_CONFIG, finetune, recipe_args, run_cli, toy_segmentation_npz

from tpp.config import build_config, load_config
from tpp.data.build import load_data
from tpp.data.subsets import (MIN_SELECTION_IMAGES, label_fraction_index, selection_rule, val_fraction_used,
                              val_subset_index)
from tpp.recipes import CONFIG_DIR

SEG_CONFIGS = ["breast_us/busi_seg_lora_finetune.yaml", "breast_us/busi_seg3_lora_finetune.yaml"]


# -- the validation subset -----------------------------------------------------------------------------------

def test_val_subset_is_stratified_nested_and_never_empties_a_class():
    labels = np.array([0] * 50 + [1] * 5 + [2] * 45)
    small, big = (val_subset_index(labels, 100, f, "d", 0) for f in (0.01, 0.2))
    assert set(labels[small]) == {0, 1, 2} and len(small) == 3  # one per class at 1%
    assert set(small) <= set(big) and len(big) == 10 + 1 + 9  # per-class ceil, nested
    assert np.array_equal(big, label_fraction_index(labels, 0.2, "d/val", 0))  # what data.val_label_fraction drew
    assert not np.array_equal(big, val_subset_index(labels, 100, 0.2, "d", 1))  # drawn by seed
    assert len(val_subset_index(None, 7, 0.01, "seg", 0)) == 1  # no labels (segmentation): at least one image
    assert len(val_subset_index(None, 0, 0.5, "seg", 0)) == 0  # an empty val split stays empty


def test_the_val_fraction_follows_the_label_fraction_unless_given():
    assert val_fraction_used(0.1, None) == 0.1 and val_fraction_used(0.1, 1.0) == 1.0
    assert val_fraction_used(1.0, 0.3) == 0.3
    assert selection_rule(True, MIN_SELECTION_IMAGES) == (True, f"best step selected on {MIN_SELECTION_IMAGES} val "
                                                                 "images")
    select, note = selection_rule(True, MIN_SELECTION_IMAGES - 1)
    assert not select and "last step kept" in note and "too few" in note
    assert selection_rule(False, 500)[0] is False


def test_a_few_label_run_validates_on_as_few_labels_and_says_so(tiny_mae, tmp_path, capsys):
    root = make_medmnist(tmp_path / "data", n=(60, 40, 20))  # val: 20 + 20
    out = tmp_path / "half"
    assert finetune(tiny_mae, root, out, "data.label_fraction=0.5", "train.eval_every=2") == 0
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["val"]["n"] == metrics["val_examples"] == 20 and metrics["val_label_fraction"] == 0.5
    assert "best step selected on 20 val images" in printed and metrics["selection"] in printed
    card = json.loads((out / "adapter" / "tpp_card.json").read_text())
    assert card["data"]["used"]["val_images"] == 20 and card["data"]["used"]["split_seed"] == 0
    val_rows = [line for line in (out / "predictions.csv").read_text().splitlines() if line.startswith("val,")]
    assert len(val_rows) == 20

    few = tmp_path / "few"  # 10%: 2 + 2 val images, too few to select on: the last step is kept
    assert finetune(tiny_mae, root, few, "data.label_fraction=0.1", "train.eval_every=2") == 0
    printed = capsys.readouterr().out
    metrics = json.loads((few / "metrics.json").read_text())
    assert metrics["val"]["n"] == 4 and metrics["best_step"] == metrics["steps"] == 6
    assert "last step kept: 4 val images" in printed
    events = [json.loads(line)["event"] for line in (few / "log.jsonl").read_text().splitlines()]
    assert "eval" not in events and "selection" in events

    whole = tmp_path / "whole"  # data.val_label_fraction given: it wins
    assert finetune(tiny_mae, root, whole, "data.label_fraction=0.1", "data.val_label_fraction=1") == 0
    assert json.loads((whole / "metrics.json").read_text())["val"]["n"] == 40


# -- the split seed ------------------------------------------------------------------------------------------

def _npz(tmp_path) -> Path:
    rng = np.random.default_rng(1)
    images = (rng.integers(0, 100, (60, 28, 28)) + (np.arange(60) % 2 * 40)[:, None, None]).astype(np.uint8)
    np.savez(tmp_path / "own.npz", images=images, labels=np.arange(60) % 2)
    return tmp_path / "own.npz"


def test_the_split_follows_data_split_seed_and_not_the_seed(tmp_path):
    _npz(tmp_path)
    toy_segmentation_npz(tmp_path / "seg.npz")

    def split(source, file, **data):
        cfg = build_config({"data": {"source": source, "name": "x", "root": str(tmp_path), "file": file,
                                     "modality": "US", **data}})
        return load_data(cfg.data, None, 28)

    for source, file, extra in (("npz", "own.npz", {}), ("seg_npz", "seg.npz", {"label_key": "label",
                                                                                 "group_key": "group"})):
        a, b = split(source, file, **extra), split(source, file, split_seed=5, **extra)
        assert a.split_id.startswith("seeded: split_seed 0,") and "split_seed 5" in b.split_id
        assert a.split_sha256() != b.split_sha256()
        assert a.split_sha256() == split(source, file, split_seed=0, **extra).split_sha256()
    cfg = build_config({"data": {"source": "npz", "name": "x", "root": str(tmp_path), "file": "own.npz",
                                 "modality": "US"}, "seed": 7})
    assert load_data(cfg.data, cfg.seed, 28).split_sha256() == split("npz", "own.npz").split_sha256()


def test_tpp_and_finetunes_of_other_seeds_share_the_split(tiny_mae, tmp_path, capsys, recwarn):
    _npz(tmp_path)
    data = ["data.source=npz", "data.file=own.npz", "data.name=own", "data.origin=OWN"]
    assert run_cli(*recipe_args("tpp", TPP_CONFIG, tiny_mae, tmp_path, tmp_path / "tpp", "train.max_steps=2", *FAST,
                                *data, "seed=1")) == 0
    unknown = [w for w in recwarn if "recorded as 'unknown'" in str(w.message)]
    assert len(unknown) == 1 and "own" in str(unknown[0].message)  # no data.modality: one warning naming the data
    parent = f"adapter.init_from={tmp_path / 'tpp' / 'adapter'}"
    assert finetune(tiny_mae, tmp_path, tmp_path / "ft", *data, "seed=2", parent) == 0, capsys.readouterr().err
    config = (tmp_path / "ft" / "config.yaml").read_text()
    assert "split_seed: 0" in config
    # another split of the same images: refused, and the message names the key that fixes it
    assert finetune(tiny_mae, tmp_path, tmp_path / "other", *data, "data.split_seed=3", parent) == 2
    assert "data.split_seed" in capsys.readouterr().err


def test_a_parent_pre_trained_on_the_same_file_under_another_name_is_refused(tiny_mae, tmp_path, capsys):
    """No data.origin, and data.name (which seeds the split) changed: only the images tell it is the same data."""
    _npz(tmp_path)
    data = ["data.source=npz", "data.file=own.npz", "data.modality=US"]
    assert run_cli(*recipe_args("tpp", TPP_CONFIG, tiny_mae, tmp_path, tmp_path / "tpp", "train.max_steps=2", *FAST,
                                *data, "data.name=own")) == 0
    parent = f"adapter.init_from={tmp_path / 'tpp' / 'adapter'}"
    assert finetune(tiny_mae, tmp_path, tmp_path / "renamed", *data, "data.name=renamed", parent) == 2
    assert "the very same images as 'renamed'" in capsys.readouterr().err
    assert not (tmp_path / "renamed" / "adapter").exists()


# -- metric definitions --------------------------------------------------------------------------------------

def test_multiclass_auroc_is_the_macro_mean_of_one_vs_rest_and_metrics_json_says_so():
    from torchmetrics.functional.classification import binary_auroc

    from tpp.metrics import classification_metrics, definitions

    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(60, 3, generator=gen), dim=1)
    labels = torch.arange(60) % 3
    ovr = [float(binary_auroc(probs[:, k], (labels == k).long())) for k in range(3)]
    assert classification_metrics(probs, labels, resamples=0)["auroc"] == pytest.approx(sum(ovr) / 3, abs=1e-6)
    text = definitions(3, 200, "youden")
    assert "one-vs-rest" in text["auroc"] and "200 resamples" in text["auroc_ci95"] and "percentile" in \
        text["auroc_ci95"]
    assert "threshold" in definitions(2, 0, "youden on the validation split")["accuracy"]


def test_dice_is_per_image_with_empty_vs_empty_left_out():
    from tpp.seg_metrics import DEFINITIONS, segmentation_metrics

    truth = torch.zeros(3, 8, 8, dtype=torch.long)
    pred = torch.zeros_like(truth)
    truth[0, :4, :4] = pred[0, :4, :4] = 1  # perfect: Dice 1
    truth[2, :2, :2], pred[2, 4:, 4:] = 1, 1  # disjoint: Dice 0; image 1 is empty in both
    m = segmentation_metrics(pred, truth, ["background", "lesion"])
    assert m["dice"] == pytest.approx(0.5)  # not 2/3 (empty counted as 1) nor pooled-pixel 2*16/(20+32)
    assert "empty vs empty" in DEFINITIONS["dice"] and "hd95" in DEFINITIONS


def test_compare_names_the_pretext_of_a_tpp_parent():
    from tpp.compare import init_label

    def card(pretext):
        return {"parent": {"stage": "tpp", "pretext": pretext}}

    assert init_label(card({"name": "dino"}), None) == "TPP (dino)"
    assert init_label(card({"name": "multitask"}), None) == "TPP (multitask)"
    assert init_label(card(None), None) == "TPP (pretext not recorded)"
    assert init_label({"parent": {"stage": "finetune"}}, None) == "finetune"


# -- segmentation budgets and the seg_gain cell ---------------------------------------------------------------

@pytest.mark.parametrize("config", SEG_CONFIGS)
def test_segmentation_configs_budget_by_epochs(config):
    from tpp.training import plan_steps

    cfg = load_config(CONFIG_DIR / config, ["data.root=/nonexistent"], recipe="finetune")
    assert cfg.train.max_steps is None and cfg.data.split_seed == 0
    few, all_masks = plan_steps(cfg.train, 45), plan_steps(cfg.train, 450)
    assert few.num_steps == cfg.train.min_steps < all_masks.num_steps == cfg.train.epochs * 29  # 450 / 16 per epoch
    text = (CONFIG_DIR / config).read_text()
    assert "input_size >= 2 x patch_size x mask side / smallest structure" in text and "epochs" in text


def test_min_steps_floors_an_epoch_budget_and_max_steps_wins():
    from tpp.training import plan_steps

    cfg = build_config({"train": {"epochs": 2, "batch_size": 10, "min_steps": 7}})
    assert plan_steps(cfg.train, 20).num_steps == 7 and plan_steps(cfg.train, 100).num_steps == 20
    cfg = build_config({"train": {"epochs": 2, "batch_size": 10, "min_steps": 7, "max_steps": 3}})
    assert plan_steps(cfg.train, 100).num_steps == 3


def test_seg_gain_has_a_cell_at_the_masks_own_resolution_and_a_fixed_split(tmp_path, tiny_mae):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import seg_gain

    np.savez(tmp_path / "m.npz", masks=np.zeros((2, 48, 48), np.uint8))
    bench = seg_gain.SegBench(tmp_path / "c", seg_gain.PROTOCOL, str(tiny_mae), str(tmp_path), "m.npz")
    assert "lora@mask_res" in seg_gain.METHODS and bench.mask_side() == 48
    assert "backbone.input_size=48" in bench.common(tmp_path, 2, bench.mask_side())
    assert "data.split_seed=0" in bench.common(tmp_path, 2)
    assert bench.method_overrides("lora@mask_res") == bench.method_overrides("lora")
    resampled = seg_gain.SegBench(tmp_path / "c", dict(seg_gain.PROTOCOL, split="per seed"), str(tiny_mae),
                                  str(tmp_path), "m.npz")
    assert "data.split_seed=2" in resampled.common(tmp_path, 2) and resampled.protocol_id != bench.protocol_id
