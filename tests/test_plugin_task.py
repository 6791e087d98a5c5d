"""A task is one file plus one registration: a toy task from a temporary folder runs fine-tuning (with its own
config section), evaluation, ``tpp compare``, publishing, ``tpp predict`` and a service request, with nothing
in tpp naming it."""
import csv
import json

import numpy as np
import pytest
import torch
from helpers import FINETUNE_CONFIG, evaluate, finetune, plugin_from_file, png_bytes, recipe_args, run_cli
from PIL import Image
from serving_fixtures import call

TOY_TASK = '''
"""toy_score: a scalar per image (the label index times a scale), least squares; registered from outside tpp."""
from dataclasses import dataclass, field

import numpy as np

import torch
import torch.nn as nn
import torch.nn.functional as F

from tpp.errors import ConfigError
from tpp.tasks import Task, register


@dataclass
class ToyOptions:
    scale: float = field(default=1.0, metadata={"help": "target = label index x scale"})

    def __post_init__(self):
        if self.scale <= 0:
            raise ConfigError("toy_score.scale must be positive.")


class Head(nn.Module):
    def __init__(self, hidden_size):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)

    def forward(self, patch_tokens, grid=None, pixel_values=None):
        return self.linear(patch_tokens.mean(dim=1))


class ToyScore(Task):
    name = "toy_score"
    options_cls = ToyOptions
    main_metric = "mae"
    columns = (("mae", "MAE", ".3f"),)

    def targets(self, split):
        return torch.from_numpy(split.labels).float()

    def build_head(self, options, info, dataset):
        return Head(info.hidden_size)

    def card_entry(self, options, dataset, info, targets):
        return {"type": self.name, "label_names": list(dataset.class_names), "scale": options.scale}

    def head_from_card(self, entry, hidden_size, channels):
        return Head(hidden_size)

    def loss(self, logits, targets, options):
        return F.mse_loss(logits[:, 0], targets * options.scale)

    def predictions(self, logits, entry, size=None):
        return logits.float()[:, :1] / entry["scale"]

    def augment(self, images, targets, options, hflip):  # written before augment took a frame
        return images, targets

    def output_shape(self, entry):
        return (1,)

    def score(self, predictions, targets, dataset):
        mae = float((predictions[:, 0] - targets).abs().mean())
        return -mae, {"val_mae": mae}

    def metrics(self, predictions, targets, dataset, seed):
        return {"mae": float((predictions[:, 0] - targets).abs().mean()), "n": len(targets)}

    def report(self, summary):
        return f"test MAE {summary['test']['mae']:.3f}"

    def split_line(self, split, result):
        return f"{split}: MAE {result['mae']:.3f} (n={result['n']})"

    def per_image(self, output, image):
        return float(output[0])

    def json_entry(self, result, label_names):
        return {"score": result}

    def csv_entry(self, result, label_names, stem):  # a file beside the CSV too: a tiny gray tile
        tile = f"{stem}_tile.png"
        return {"score": f"{result:.6f}", "tile": tile}, {tile: np.full((4, 4), 7, np.uint8)}


register(ToyScore())
'''


@pytest.fixture()
def toy_task(tmp_path, monkeypatch):
    import tpp.tasks as tasks

    with plugin_from_file(tasks, "_TASKS", "toy_score", TOY_TASK, tmp_path / "plugins", monkeypatch):
        yield tasks.get_task("toy_score")


def test_a_task_from_one_file_trains_evaluates_compares_publishes_predicts_and_serves(toy_task, tiny_mae, data_root,
                                                                                       tmp_path, capsys):
    from tpp.recipes.evaluate import load_task_model
    from tpp.serve import store
    from tpp.serve.bank import AdapterBank
    from tpp.serve.images import to_model_input
    from tpp.serve.server import create_app
    from tpp.serve.worker import InferenceWorker

    run = tmp_path / "ft"
    assert finetune(tiny_mae, data_root, run, "task=toy_score", "toy_score.scale=2.0", "train.lr=1e-2") == 0
    metrics = json.loads((run / "metrics.json").read_text())
    card = json.loads((run / "adapter" / "tpp_card.json").read_text())
    assert card["task"] == {"type": "toy_score", "label_names": ["malignant", "normal, benign"], "scale": 2.0}
    assert card["metrics"] == {"val_mae": metrics["val"]["mae"], "test_mae": metrics["test"]["mae"]}
    assert "test MAE" in capsys.readouterr().out
    assert run_cli("ls") == 0 and "toy_score" in capsys.readouterr().out

    assert evaluate(tiny_mae, data_root, run / "adapter", tmp_path / "eval") == 0
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())["test"]
    assert evaluated["mae"] == pytest.approx(metrics["test"]["mae"], abs=1e-5)

    assert run_cli("compare", run, tmp_path / "eval", "--csv", tmp_path / "cmp.csv") == 0
    table = capsys.readouterr().out
    assert "MAE" in table and table.count("toy_score") == 2
    rows = list(csv.DictReader(open(tmp_path / "cmp.csv")))
    assert [float(r["mae"]) for r in rows] == pytest.approx([metrics["test"]["mae"], evaluated["mae"]], abs=1e-6)

    store.publish(run, tmp_path / "store", "site")
    images = np.load(data_root / "breastmnist.npz")["test_images"][:3]
    model, card, _ = load_task_model(str(run / "adapter"), str(tiny_mae))
    with torch.no_grad():
        offline = [float(model(to_model_input(im, card["input"]))[0, 0]) / 2.0 for im in images]

    files = []
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / f"scan{i}.png")
        files.append(tmp_path / f"scan{i}.png")
    assert run_cli("predict", "--backbone", tiny_mae, "--store", tmp_path / "store", "--site", "site", *files,
                   "--out", tmp_path / "pred.csv") == 0
    rows = list(csv.DictReader(open(tmp_path / "pred.csv")))
    assert [float(r["score"]) for r in rows] == pytest.approx(offline, abs=1e-5)
    assert [np.asarray(Image.open(tmp_path / r["tile"])).tolist() for r in rows] == [[[7] * 4] * 4] * 3

    worker = InferenceWorker(AdapterBank(str(tiny_mae), str(tmp_path / "store")), max_wait_ms=1)
    try:
        status, body, _ = call(create_app(worker, str(tmp_path / "store")), "POST", "/v1/sites/site/predict",
                               files=[(f"s{i}.png", png_bytes(im)) for i, im in enumerate(images)])
    finally:
        worker.stop()
    assert status == 200, body
    assert [p["score"] for p in body["predictions"]] == pytest.approx(offline, abs=1e-5)


def test_a_task_section_of_another_task_is_an_error_naming_it(tmp_path):
    from tpp.config import build_config
    from tpp.errors import ConfigError

    with pytest.raises(ConfigError, match="segmentation.*task=segmentation"):
        build_config({"task": "classification", "segmentation": {"dice_weight": 5}})
    with pytest.raises(ConfigError, match="unknown task 'regression'.*classification, segmentation"):
        build_config({"task": "regression"})


def test_registering_a_task_leaves_the_registry_as_it_was():
    from tpp.tasks import all_tasks

    assert [t.name for t in all_tasks()] == ["classification", "segmentation"]  # also after the toy test


def test_a_task_whose_augment_takes_no_frame_refuses_a_padding_prompt(toy_task, tiny_mae, data_root, tmp_path,
                                                                      capsys):
    """Without a frame it trains as before (above); with a padding prompt it would move the prompt's border."""
    code = run_cli(*recipe_args("finetune", FINETUNE_CONFIG, tiny_mae, data_root, tmp_path / "vp", "task=toy_score",
                                "adapter.method=visual_prompt", "adapter.input_size=28", "train.max_steps=2"))
    err = capsys.readouterr().err
    assert code == 2 and "task toy_score cannot train with a padding visual prompt" in err and "Traceback" not in err
    assert not (tmp_path / "vp").exists()  # refused with the config, before the run directory


def test_an_augment_taking_keyword_arguments_takes_the_frame():
    from tpp.recipes.finetune import takes_frame

    assert takes_frame(lambda images, targets, options, hflip, **extra: None)
    assert takes_frame(lambda images, targets, options, hflip, frame=0: None)
    assert not takes_frame(lambda images, targets, options, hflip: None)
