"""A hostile learned in-context model folder (``tpp predict --context ... --method learned --model DIR``): every
malformed card or weights file is refused with exit code 2 and one error line naming the folder and the field,
never a traceback, and no architecture a card describes is allocated before it is checked."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import run_cli
from PIL import Image
from safetensors.torch import load_file, save_file

from tpp.incontext import learned


def _classifier_dir(folder, feature_dim=32):
    torch.manual_seed(0)
    learned.save(learned.SetClassifier(feature_dim, hidden=16, layers=1, heads=2, max_classes=4), "classification",
                 folder, {"task_distribution": {}})
    return folder


def _segmenter_dir(folder):
    torch.manual_seed(0)
    learned.save(learned.CrossConvNet((4, 8)), "segmentation", folder, {"task_distribution": {"image_size": 16}})
    return folder


def _edit_card(folder, change):
    card = json.loads((folder / learned.CARD).read_text())
    (folder / learned.CARD).write_text(json.dumps(change(card)))


def _arch(**fields):
    return lambda card: dict(card, architecture=dict(card["architecture"], **fields))


def _image_size(value):
    return lambda card: dict(card, task_distribution={"image_size": value})


def _wrong_shape(folder):
    state = load_file(str(folder / learned.WEIGHTS))
    state["proj.0.weight"] = torch.zeros(16, 7)
    save_file(state, str(folder / learned.WEIGHTS))


def _flip_a_weight_byte(folder):
    data = bytearray((folder / learned.WEIGHTS).read_bytes())
    data[-3] ^= 0x01  # inside the last tensor's bytes: every shape still fits
    (folder / learned.WEIGHTS).write_bytes(bytes(data))


def _text(text):
    return lambda folder: (folder / learned.CARD).write_text(text)


CASES = {  # name: (kind, how the folder is spoiled, words the error must hold)
    "heads_not_dividing_hidden": ("classification", lambda f: _edit_card(f, _arch(heads=3)), "architecture.hidden"),
    "card_is_a_list": ("classification", _text("[1, 2]"), "JSON object"),
    "card_not_json": ("classification", _text("{not json"), "not valid JSON"),
    "card_not_utf8": ("classification", lambda f: (f / learned.CARD).write_bytes(b"\xff\xfe{"), "UTF-8"),
    "architecture_a_string": ("classification", lambda f: _edit_card(f, lambda c: dict(c, architecture="x")),
                              "architecture must be an object"),
    "unknown_field": ("classification", lambda f: _edit_card(f, _arch(dropout=0.5)), "unknown fields dropout"),
    "layers_a_bool": ("classification", lambda f: _edit_card(f, _arch(layers=True)), "architecture.layers"),
    "heads_a_list": ("classification", lambda f: _edit_card(f, _arch(heads=[2])), "architecture.heads"),
    "huge_feature_dim": ("classification", lambda f: _edit_card(f, _arch(feature_dim=1_000_000)),
                         "architecture.feature_dim"),
    "huge_hidden": ("classification", lambda f: _edit_card(f, _arch(hidden=40_000, heads=2)), "architecture.hidden"),
    "in_range_but_gigabytes": ("classification", lambda f: _edit_card(f, _arch(feature_dim=8192, hidden=2048,
                                                                             layers=24, heads=64)), "parameters"),
    "task_distribution_a_list": ("classification", lambda f: _edit_card(f, lambda c: dict(c, task_distribution=[])),
                                 "task_distribution must be an object"),
    "kind_unknown": ("classification", lambda f: _edit_card(f, lambda c: dict(c, kind="detection")), "kind"),
    "weights_wrong_shape": ("classification", _wrong_shape, "proj.0.weight"),
    "weights_byte_changed": ("classification", _flip_a_weight_byte, "weights were changed"),
    "no_weights_hash": ("segmentation", lambda f: _edit_card(f, lambda c: {k: v for k, v in c.items()
                                                                          if k != "weights_sha256"}), "records none"),
    "classifier_format_1": ("classification", lambda f: _edit_card(f, lambda c: dict(c, format="tpp-incontext/1")),
                            "re-train"),
    "image_size_31": ("segmentation", lambda f: _edit_card(f, _image_size(31)), "image_size"),
    "image_size_0": ("segmentation", lambda f: _edit_card(f, _image_size(0)), "image_size"),
    "image_size_text": ("segmentation", lambda f: _edit_card(f, _image_size("x")), "image_size"),
    "channels_not_multiple_of_4": ("segmentation", lambda f: _edit_card(f, _arch(channels=[4, 6])),
                                   "architecture.channels[1]"),
    "channels_huge": ("segmentation", lambda f: _edit_card(f, _arch(channels=[4] * 10_000)), "architecture.channels"),
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A classification context (2 classes), a segmentation context (images/ + masks/) and a query folder."""
    base = tmp_path_factory.mktemp("hostile_learned")
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (base / "cls" / label).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(base / "cls" / label / f"{i}.png")
    for sub in ("images", "masks"):
        (base / "seg" / sub).mkdir(parents=True)
    mask = np.zeros((28, 28), np.uint8)
    mask[5:15, 5:15] = 255
    Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(base / "seg" / "images" / "x.png")
    Image.fromarray(mask).save(base / "seg" / "masks" / "x.png")
    (base / "q").mkdir()
    Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(base / "q" / "q.png")
    return base


def _predict(tiny_mae, inputs, kind, model, out):
    context = inputs / ("cls" if kind == "classification" else "seg")
    return run_cli("predict", "--context", context, inputs / "q", "--backbone", tiny_mae, "--method", "learned",
                   "--model", model, "--out", out)


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_malformed_model_folder_gets_one_error_naming_it(case, tiny_mae, inputs, tmp_path, capsys):
    kind, spoil, words = CASES[case]
    folder = (_classifier_dir if kind == "classification" else _segmenter_dir)(tmp_path / "model")
    spoil(folder)
    out = tmp_path / ("preds.csv" if kind == "classification" else "masks")
    assert _predict(tiny_mae, inputs, kind, folder, out) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and str(folder) in err and words in err, err
    assert not out.exists()


def test_a_model_for_other_features_is_refused_before_predicting(tiny_mae, inputs, tmp_path, capsys):
    folder = _classifier_dir(tmp_path / "model", feature_dim=12)  # tiny_mae gives 32-dim features
    assert _predict(tiny_mae, inputs, "classification", folder, tmp_path / "p.csv") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(folder) in err and "12-dim features" in err, err


def test_the_untouched_folders_still_predict(tiny_mae, inputs, tmp_path):
    """The checks refuse only what is wrong: both kinds, as saved, load and predict."""
    assert _predict(tiny_mae, inputs, "classification", _classifier_dir(tmp_path / "c"), tmp_path / "p.csv") == 0
    assert _predict(tiny_mae, inputs, "segmentation", _segmenter_dir(tmp_path / "s"), tmp_path / "m") == 0
    model, _ = learned.load(tmp_path / "c")
    assert all(p.device.type == "cpu" and not p.requires_grad for p in model.parameters())
