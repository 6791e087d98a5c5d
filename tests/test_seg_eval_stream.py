"""Evaluate scores a split batch by batch: a segmentation split's predicted masks are scored, written to
predictions.csv and let go one batch at a time (benchmarks/data_scale.py seg: evaluation peak memory grew 1.28x
from 500 to 8,000 pairs holding them), with the numbers and rows of scoring the split whole."""
from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator
from helpers import FAST, recipe_args, run_cli, toy_segmentation_npz

from tpp import seg_metrics
from tpp.predictions_csv import PredictionsWriter, batch_rows, publish_predictions, split_rows
from tpp.seg_metrics import SegmentationScorer, segmentation_metrics
from tpp.errors import TppError
from tpp.tasks import get_task
from tpp.training import predict, predict_batches

NAMES = ["background", "benign", "malignant", "cyst"]  # "cyst" (3) is in no mask: an absent class


def masks(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted uint8 and true int64 class-index masks (n, 8, 8) over classes 0..2, blobs of random size; some
    images empty in the truth, in the prediction, or in both."""
    generator = torch.Generator().manual_seed(seed)
    pred, truth = torch.zeros(n, 8, 8, dtype=torch.uint8), torch.zeros(n, 8, 8, dtype=torch.long)
    for i in range(n):
        for mask in (pred[i], truth[i]):
            c, y, x, h, w = (int(v) for v in torch.randint(0, 5, (5,), generator=generator))
            mask[y:y + h + 1, x:x + w + 1] = c % 3
    pred[1], truth[1, 2:5, 2:6] = 0, 1  # an empty prediction of a lesion
    truth[2] = 0  # an empty truth
    pred[3], truth[3] = 0, 0  # empty vs empty: left out of the means
    return pred, truth


def streamed(pred, truth, batch: int, names=NAMES) -> dict:
    scorer = SegmentationScorer(names)
    for start in range(0, len(pred), batch):
        scorer.add(pred[start:start + batch], truth[start:start + batch])
    return scorer.result()


@pytest.mark.parametrize("n", [5, 13])
def test_streamed_segmentation_metrics_equal_the_whole_splits_to_the_digit(n, monkeypatch):
    pred, truth = masks(n, seed=n)
    whole = segmentation_metrics(pred, truth, NAMES, chunk=n)  # one chunk: every mask scored at once
    assert whole["per_class"]["cyst"] == {"dice": None, "iou": None, "hd95": None, "images": 0}
    assert whole["empty_predictions"] >= 1 and whole["hd95_undefined"] >= 1 and whole["dice"] is not None
    monkeypatch.setattr(seg_metrics, "CHUNK_PIXELS", 3 * 64)  # images_per_chunk: 3 masks of 8x8
    for batch in (1, 2, 3, 4, 6, n - 1, n, 64):  # below, at and across the 3-mask chunk boundaries
        assert streamed(pred, truth, batch) == whole, batch
    assert segmentation_metrics(pred, truth, NAMES) == whole


@pytest.mark.parametrize("k", [2, 4, 5])
def test_counted_dice_and_iou_are_torchmetrics_to_the_digit(k):
    """Dice and IoU from each image's pixel counts: torchmetrics' samplewise dice_score and mean_iou, bit for bit
    (NaN where torchmetrics gives NaN, or -1 for IoU: the class in neither mask)."""
    from torchmetrics.functional.segmentation import dice_score, mean_iou

    from tpp.seg_metrics import class_pixels, dice_of, iou_of
    generator = torch.Generator().manual_seed(k)
    pred, truth = masks(12, seed=k) if k == 4 else (torch.randint(0, k, (12, 9, 7), generator=generator)
                                                     for _ in range(2))
    counts = [c[:, 1:] for c in class_pixels(pred, truth, k)]
    dice = dice_score(pred.long(), truth.long(), num_classes=k, include_background=False, average="none",
                      input_format="index", aggregation_level="samplewise").reshape(12, k - 1)
    iou = mean_iou(pred.long(), truth.long(), num_classes=k, include_background=False, per_class=True,
                   input_format="index").reshape(12, k - 1).float()
    iou[iou < 0] = float("nan")
    torch.testing.assert_close(dice_of(*counts), dice, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(iou_of(*counts), iou, rtol=0, atol=0, equal_nan=True)
    assert dice.isnan().any() == (k == 4)  # masks(): "cyst" is in no mask; random masks: every class everywhere
    assert k == 4 or (((dice > 0) & (dice < 1)).any() and not dice.isnan().any())
    with pytest.raises(ValueError, match=f"class indices must be in 0..{k - 1}"):
        class_pixels(pred, torch.full_like(truth, k), k)


def test_scoring_a_segmentation_split_does_not_import_torchmetrics(tmp_path):
    """torchmetrics pulls in scipy and matplotlib (~110 MiB resident): imported while evaluate predicts batch by
    batch, it raised evaluation's peak memory by ~60 MiB (benchmarks/data_scale.py seg)."""
    import subprocess
    import sys

    code = ("import sys, torch; from tpp.seg_metrics import quick_dice, segmentation_metrics; "
            "from tpp.tasks.segmentation import per_image_dice; m = torch.randint(0, 3, (4, 8, 8)); "
            "segmentation_metrics(m, m.flip(0), ['bg', 'a', 'b']); quick_dice(m, m, 3); per_image_dice(m, m, 3); "
            "print(sorted(k for k in sys.modules if k.split('.')[0] in ('torchmetrics', 'scipy', 'matplotlib')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_a_split_streamed_without_images_scores_as_scoring_it_whole():
    empty = segmentation_metrics(torch.zeros(0, 8, 8, dtype=torch.uint8), torch.zeros(0, 8, 8).long(), NAMES)
    assert SegmentationScorer(NAMES).result() == empty and empty["n"] == 0 and empty["dice"] is None


def test_each_tasks_scorer_gives_its_metrics():
    """Segmentation scores per batch; classification (AUROC, bootstrap) holds its batches, then scores them whole."""
    pred, truth = masks(9, seed=1)
    dataset = SimpleNamespace(class_names=NAMES, num_classes=4)
    scorer = get_task("segmentation").scorer(dataset, seed=0)
    for start in range(0, 9, 4):
        scorer.add(pred[start:start + 4], truth[start:start + 4])
    assert scorer.result() == get_task("segmentation").metrics(pred, truth, dataset, 0)
    task = get_task("classification").for_card({"type": "classification", "label_names": ["a", "b"],
                                                  "num_classes": 2, "bootstrap_resamples": 20})
    probs = torch.softmax(torch.randn(30, 2, generator=torch.Generator().manual_seed(0)), dim=1)
    labels = torch.arange(30) % 2
    scorer = task.scorer(SimpleNamespace(class_names=["a", "b"], num_classes=2), seed=3)
    for start in range(0, 30, 7):
        scorer.add(probs[start:start + 7], labels[start:start + 7])
    assert scorer.result() == task.metrics(probs, labels, None, 3)


def test_a_scorer_given_no_batch_says_so_or_gives_its_empty_result():
    """The held scorer (classification, a plugin task's default) has nothing to concatenate: a TppError naming the
    task; segmentation's per-batch sums give a defined result of no images (its metrics undefined, null)."""
    task = get_task("classification").for_card({"type": "classification", "label_names": ["a", "b"],
                                                  "num_classes": 2})
    with pytest.raises(TppError, match=r"^task 'classification': no predictions were added to score"):
        task.scorer(SimpleNamespace(class_names=["a", "b"], num_classes=2), seed=0).result()
    empty = get_task("segmentation").scorer(SimpleNamespace(class_names=NAMES, num_classes=4), seed=0).result()
    assert empty["n"] == 0 and empty["dice"] is None and empty["per_class"]["benign"]["images"] == 0


def test_predict_batches_hand_over_what_predict_concatenates():
    model, images = torch.nn.Linear(3, 2), torch.rand(11, 3)
    batches = list(predict_batches(Accelerator(cpu=True), model, images, 4, lambda x: x * 2))
    assert [start for start, _ in batches] == [0, 4, 8] and [len(b) for _, b in batches] == [4, 4, 3]
    assert torch.equal(torch.cat([b for _, b in batches]), predict(Accelerator(cpu=True), model, images, 4,
                                                                    lambda x: x * 2))


def test_with_several_processes_the_batches_are_of_the_gathered_split():
    """Every process needs all N rows (gathered across processes block by block), handed over a batch at a time."""
    import contextlib

    model, images = torch.nn.Linear(3, 2), torch.rand(11, 3)

    class TwoProcesses:  # rank 0 of 2; the other rank computed the same model on its slices of the blocks
        num_processes, process_index, is_main_process, device = 2, 0, True, "cpu"
        unwrap_model, autocast = staticmethod(lambda m: m), staticmethod(contextlib.nullcontext)
        other = iter([images[4:8], images[[10, 10]]])  # blocks of 8: [0, 8) and [8, 11), rank 1's half (padded)

        def gather(self, mine):
            return torch.cat([mine, model(next(self.other)) * 2])

    batches = list(predict_batches(TwoProcesses(), model, images, 4, lambda x: x * 2))
    assert [start for start, _ in batches] == [0, 4, 8] and [len(b) for _, b in batches] == [4, 4, 3]
    assert torch.allclose(torch.cat([b for _, b in batches]), model(images) * 2)


def fake_run(path):
    return SimpleNamespace(path=path, main=True)


def test_rows_written_batch_by_batch_are_the_rows_of_the_whole_split(tmp_path):
    pred, truth = masks(13, seed=2)
    task, split = get_task("segmentation"), SimpleNamespace(images=SimpleNamespace(paths=[f"f{i}.png" for i in
                                                                                         range(13)]))
    (tmp_path / "whole").mkdir()
    publish_predictions(fake_run(tmp_path / "whole"), split_rows(task, "test", split, None, pred, truth, NAMES))
    (tmp_path / "batches").mkdir()
    rows = batch_rows(task, "test", split, None, NAMES)
    with PredictionsWriter(fake_run(tmp_path / "batches")) as writer:
        for start in range(0, 13, 5):
            writer.write(rows(start, pred[start:start + 5], truth[start:start + 5]))
            assert not (tmp_path / "batches" / "predictions.csv").exists()  # renamed into place at the end only
    assert writer.path == tmp_path / "batches" / "predictions.csv"
    assert writer.path.read_bytes() == (tmp_path / "whole" / "predictions.csv").read_bytes()
    with PredictionsWriter(fake_run(tmp_path)) as nothing:
        nothing.write([])
    assert nothing.path is None and not (tmp_path / "predictions.csv").exists()


def test_a_failure_after_some_rows_leaves_no_predictions_file(tmp_path):
    pred, truth = masks(6, seed=3)
    rows = batch_rows(get_task("segmentation"), "test", SimpleNamespace(images=None), None, NAMES)
    with pytest.raises(RuntimeError, match="the next batch failed"):
        with PredictionsWriter(fake_run(tmp_path)) as writer:
            writer.write(rows(0, pred[:3], truth[:3]))
            raise RuntimeError("the next batch failed")
    assert list(tmp_path.iterdir()) == []  # no predictions.csv, no temporary file


def rows_of(path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_evaluate_streams_a_segmentation_split_with_the_outputs_of_scoring_it_whole(tiny_mae, tmp_path):
    """evaluate in batches of 3 (and in one batch) writes the metrics and predictions.csv of the held path: the
    split predicted whole (``predict``), scored whole (``segmentation_metrics``) and its rows made whole
    (``split_rows``)."""
    from tpp.config import load_config
    from tpp.data.build import load_data
    from tpp.data.stream import ModelInputs
    from tpp.recipes.evaluate import load_task_model
    from tpp.tasks import task_of_card

    data = [f"data.file={toy_segmentation_npz(tmp_path / 'toy.npz', n=60)}", "data.name=toy", "data.group_key=group",
            "backbone.input_size=16"]
    config = "breast_us/busi_seg_lora_finetune.yaml"
    assert run_cli(*recipe_args("finetune", config, tiny_mae, tmp_path, tmp_path / "ft", "train.max_steps=2", *FAST,
                                "train.batch_size=8", "segmentation.overlays=0", *data)) == 0
    adapter = tmp_path / "ft" / "adapter"
    outputs = {}
    for batch in (3, 1000):
        out = tmp_path / f"eval{batch}"
        assert run_cli(*recipe_args("evaluate", config, tiny_mae, tmp_path, out, f"adapter.path={adapter}",
                                    "data.split=test", f"train.eval_batch_size={batch}", *data)) == 0
        metrics = json.loads((out / "metrics.json").read_text())["test"]
        outputs[batch] = (metrics, (out / "predictions.csv").read_bytes())
    assert outputs[3] == outputs[1000]

    cfg = load_config(tmp_path / "eval3" / "config.yaml")
    model, card, info = load_task_model(str(adapter), str(tiny_mae))
    task, dataset = task_of_card(card), load_data(cfg.data, cfg.seed, info.input_size)
    split = dataset.split("test")
    targets = task.targets(split)
    pred = predict(Accelerator(cpu=True), model, ModelInputs.for_backbone(split.images, info), 1000,
                   lambda logits: task.predictions(logits, card["task"], tuple(targets.shape[1:])))
    metrics, csv_bytes = outputs[3]
    assert metrics == json.loads(json.dumps(segmentation_metrics(pred, targets, dataset.class_names)))
    assert metrics["n"] == len(split) > 3 and 0 < metrics["foreground_fraction"]["truth"] < 1
    (tmp_path / "held").mkdir()
    held = publish_predictions(fake_run(tmp_path / "held"), split_rows(task, "test", split, None, pred, targets,
                                                                       list(dataset.class_names)))
    assert csv_bytes == held.read_bytes() and len(rows_of(held)) == len(split)


def test_quick_dice_is_the_scorers_dice_without_a_hausdorff_distance(monkeypatch):
    """quick_dice (model selection during training) counts with SegmentationScorer: the reported dice to the digit
    at any chunk size, an absent class left out, and no Hausdorff distance computed (the slow part); no image is
    NaN (it was a RuntimeError from torch.cat of nothing)."""
    import math

    pred, truth = masks(37, seed=3)
    whole = segmentation_metrics(pred, truth, NAMES)

    def no_distance(*args):
        raise AssertionError("a Hausdorff distance was computed")

    monkeypatch.setattr(seg_metrics, "hausdorff_percentile", no_distance)
    for chunk in (1, 5, 256):
        assert seg_metrics.quick_dice(pred, truth, len(NAMES), chunk=chunk) == whole["dice"]
    quick = SegmentationScorer(NAMES, chunk=4, hausdorff=False)
    quick.add(pred, truth)
    no_hd = {name: {**scores, "hd95": None} for name, scores in whole["per_class"].items()}
    assert quick.result() == {**whole, "hd95": None, "hd95_undefined": None, "per_class": no_hd}
    assert math.isnan(seg_metrics.quick_dice(pred[:0], truth[:0], len(NAMES)))
