"""MedMNIST-C corruptions (tpp/data/corruptions.py) and the evaluate recipe's corruption option."""
import json

import numpy as np
import pytest
from conftest import make_backbone, make_medmnist
from helpers import run_cli
from scipy import ndimage

from tpp.data.corruptions import PRESETS, CorruptedImages, corrupt
from tpp.errors import ConfigError

CASES = [pytest.param(p, c, id=f"{p}-{c}") for p in ("breastmnist", "pneumoniamnist", "octmnist", "organamnist")
         for c in PRESETS[p]]


def smooth_images(n: int, size: int, rgb: bool = False) -> np.ndarray:
    """uint8 (n, size, size[, 3]) smooth random images (blurred noise: structure at every scale a scan has)."""
    rng = np.random.default_rng(0)
    shape = (size, size, 3) if rgb else (size, size)
    out = []
    for _ in range(n):
        z = ndimage.gaussian_filter(rng.normal(size=shape), size / 40)
        out.append(np.clip(128 + 60 * z / z.std(), 0, 255).astype(np.uint8))
    return np.stack(out)


@pytest.mark.parametrize("preset, name", CASES)
def test_severity_zero_is_the_identity_and_severities_are_monotone(preset, name):
    """Mean absolute difference from the clean image grows with the severity (64-px images; at 28 px
    pixelate's integer sizes can break the order, MedMNIST-C set its parameters on 224 px)."""
    images = smooth_images(3, 64)
    for i, image in enumerate(images):
        assert np.array_equal(corrupt(image, name, 0, preset, i), image)
    distance = [np.mean([np.abs(corrupt(x, name, s, preset, i).astype(float) - x).mean()
                         for i, x in enumerate(images)]) for s in range(6)]
    assert distance[1] > 0 and all(b >= a for a, b in zip(distance, distance[1:])), distance


@pytest.mark.parametrize("name", list(PRESETS["breastmnist"]))
def test_colour_images_keep_their_shape_and_draws_are_reproducible(name):
    image = smooth_images(1, 32, rgb=True)[0]
    out = corrupt(image, name, 3, "breastmnist", seed=5)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert np.array_equal(out, corrupt(image, name, 3, "breastmnist", seed=5))


def test_corrupted_images_are_seen_one_at_a_time():
    images = smooth_images(4, 28)
    view = CorruptedImages(images, "speckle_noise", 2, "breastmnist", seed=3)
    assert len(view) == 4 and np.array_equal(view[2], corrupt(images[2], "speckle_noise", 2, "breastmnist", 5))


@pytest.mark.parametrize("args, message", [(("gamma_corr_up", 1, "breastmnist"), "not one of breastmnist's"),
                                           (("pixelate", 6, "breastmnist"), "severity must be 0..5"),
                                           (("pixelate", 1, "dermamnist"), "evaluate.corruption_preset")])
def test_bad_requests_are_config_errors(args, message):
    with pytest.raises(ConfigError, match=message):
        corrupt(smooth_images(1, 28)[0], *args)


def test_equal_to_medmnistc_where_it_installs():
    """The families tpp computes with MedMNIST-C's own PIL calls give its outputs (the optional package)."""
    registry = pytest.importorskip("medmnistc.corruptions.registry")
    from PIL import Image

    image = smooth_images(1, 64)[0]
    for name in ("pixelate", "jpeg_compression", "brightness_up", "brightness_down", "contrast_down"):
        theirs = registry.CORRUPTIONS_DS["breastmnist"][name].apply(Image.fromarray(image), severity=2)
        assert np.array_equal(corrupt(image, name, 3, "breastmnist"), np.asarray(theirs)), name


@pytest.mark.integration
def test_evaluate_writes_metrics_per_corruption_and_severity(tmp_path, capsys):
    backbone = make_backbone(tmp_path / "bb", "vit_mae")
    root = make_medmnist(tmp_path / "data")
    common = [f"backbone.path={backbone}", f"data.root={root}", "train.batch_size=16", "adapter.r=2"]
    assert run_cli("run", "finetune", "--config", "breast_us/mae_vit_tiny_lora_finetune.yaml", *common,
                   "train.max_steps=2", f"output_dir={tmp_path / 'ft'}") == 0
    assert run_cli("run", "evaluate", "--config", "breast_us/mae_vit_tiny_lora_finetune.yaml", *common,
                   f"adapter.path={tmp_path / 'ft' / 'adapter'}", "evaluate.corruption=all",
                   "evaluate.severity=3", f"output_dir={tmp_path / 'ev'}") == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    shift = metrics["corruption"]
    assert shift["preset"] == "breastmnist" and set(shift["per_corruption"]) == set(PRESETS["breastmnist"])
    assert all(set(v) == {"3"} and "auroc" in v["3"] for v in shift["per_corruption"].values())
    assert set(shift["mean"]) == {"3"}
    mean = np.mean([v["3"]["auroc"] for v in shift["per_corruption"].values()])
    assert shift["mean"]["3"]["auroc"] == pytest.approx(mean)
    assert all(v["3"]["n"] == metrics["test"]["n"] for v in shift["per_corruption"].values())  # entries keep n
    assert not NOT_METRICS & set(shift["mean"]["3"])  # no average of a count, an index or the threshold
    assert {"auroc", "accuracy", "sensitivity", "specificity", "f1", "ece"} <= set(shift["mean"]["3"])
    assert "auroc" in metrics["test"]  # the clean split is still evaluated
    printed = capsys.readouterr().out
    assert f"corruption ({len(PRESETS['breastmnist'])} corruptions, preset breastmnist): mean auroc at severity " \
           f"3: {shift['mean']['3']['auroc']:.3f}" in printed
    assert run_cli("run", "evaluate", "--config", "breast_us/mae_vit_tiny_lora_finetune.yaml", *common,
                   f"adapter.path={tmp_path / 'ft' / 'adapter'}", "evaluate.corruption=gamma_corr_up",
                   f"output_dir={tmp_path / 'ev2'}") == 2


NOT_METRICS = {"n", "positive_class_index", "bootstrap_resamples", "threshold", "empty_predictions", "hd95_undefined"}


def test_the_mean_over_corruptions_averages_metrics_only():
    from tpp.recipes.evaluate import mean_over_corruptions

    def binary(auroc):  # a corruption's entry as the evaluate recipe keeps it: every scalar of the split's results
        return {"n": 78, "auroc": auroc, "bootstrap_resamples": 0, "accuracy": 0.5, "f1": 0.4, "sensitivity": 0.3,
                "specificity": 0.7, "threshold": 0.42, "positive_class_index": 1, "ece": 0.1}

    def seg(dice):
        return {"n": 20, "dice": dice, "iou": dice / 2, "hd95": 3.0, "empty_predictions": 2, "hd95_undefined": 1}

    for entry, metrics in ((binary, {"auroc", "accuracy", "f1", "sensitivity", "specificity", "ece"}),
                           (seg, {"dice", "iou", "hd95"})):
        per = {"a": {"1": entry(0.6), "2": entry(0.5)}, "b": {"1": entry(0.8), "2": entry(0.7)}}
        mean = mean_over_corruptions(per, ["a", "b"], [1, 2])
        assert set(mean) == {"1", "2"} and all(set(m) == metrics for m in mean.values())
        key = "auroc" if "auroc" in metrics else "dice"
        assert mean["1"][key] == pytest.approx(0.7) and mean["2"][key] == pytest.approx(0.6)


def test_the_evaluate_report_summarises_the_corruptions():
    from tpp.recipes.evaluate import report

    test = {"n": 78, "auroc": 0.8, "auroc_ci95": [0.7, 0.9], "accuracy": 0.75, "sensitivity": 0.7,
            "specificity": 0.8, "threshold": 0.5}
    shift = {"preset": "breastmnist", "severities": [1, 2, 3, 4, 5],
             "per_corruption": {c: {} for c in PRESETS["breastmnist"]},
             "mean": {str(s): {"auroc": 0.8 - 0.05 * s, "accuracy": 0.7} for s in range(1, 6)}}
    lines = report({"test": test, "corruption": shift, "decision": "threshold 0.5"})
    assert lines[0].startswith("test: AUROC 0.800") and lines[-1] == "decision: threshold 0.5"
    assert lines[1] == (f"corruption ({len(PRESETS['breastmnist'])} corruptions, preset breastmnist): mean auroc at "
                        "severity 1: 0.750  2: 0.700  3: 0.650  4: 0.600  5: 0.550")
    assert len(report({"test": test})) == 1  # no corruption requested: no line


def test_the_evaluate_section_belongs_to_the_evaluate_recipe():
    from tpp.config import load_config

    from pathlib import Path

    finetune = Path(__file__).parents[1] / "recipes" / "configs" / "breast_us" / "mae_vit_tiny_lora_finetune.yaml"
    cfg = load_config(finetune, ["adapter.path=x", "evaluate.corruption=all", "evaluate.severity=2"],
                      recipe="evaluate")
    assert cfg.evaluate.corruption == "all" and cfg.evaluate.severity == 2
    with pytest.raises(ConfigError, match="evaluate"):  # fine-tuning never reads it
        load_config(finetune, ["evaluate.corruption=all"], recipe="finetune")
    from tpp.recipes.evaluate import check

    for overrides, message in ((["evaluate.severity=3"], "needs evaluate.corruption"),
                               (["evaluate.corruption=gamma_corr_up"], "not one of breastmnist's"),
                               (["evaluate.corruption=all", "evaluate.severity=7"], "1..5")):
        with pytest.raises(ConfigError, match=message):
            check(load_config(finetune, ["adapter.path=x", *overrides], recipe="evaluate"))
