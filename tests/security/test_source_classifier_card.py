"""A hostile ``tpp_backbone_card.json`` (the backbone directory is untrusted input): its ``source_classifier`` entry
can name no file outside the backbone directory, and a malformed card is one TppError naming the card, never a
JSONDecodeError / TypeError traceback."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from tpp.errors import TppError
from tpp.source_classifier import BACKBONE_CARD, HEADS_FILE, available, load_source_classifier


def _backbone(folder, entry=None, heads_file=HEADS_FILE):
    """A backbone directory holding only what the source classifier reads: the card and a 3-class head (D=8)."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"h.weight": torch.randn(3, 8), "h.bias": torch.randn(3)}, str(folder / heads_file))
    entry = entry if entry is not None else {"file": heads_file, "pooling": "mean_patch_tokens",
                                             "heads": {"h": {"label_names": ["a", "b", "c"]}}}
    (folder / BACKBONE_CARD).write_text(json.dumps({"source_classifier": entry}))
    return folder


def _entry(**change):
    return dict({"file": HEADS_FILE, "pooling": "mean_patch_tokens", "heads": {"h": {"label_names": ["a", "b", "c"]}}},
                **change)


def test_a_well_formed_card_reads_its_head(tmp_path):
    classifier = load_source_classifier(str(_backbone(tmp_path / "bb")))
    assert classifier.name == "h" and classifier.weight.shape == (3, 8) and classifier.label_names == ["a", "b", "c"]


@pytest.mark.parametrize("file", ["../outside.safetensors", "../../../etc/passwd", "/etc/passwd", "sub/heads.st",
                                  "..", ".", "", "..\\outside.safetensors", "C:outside", 7, None])
def test_the_card_cannot_point_outside_the_backbone_dir(tmp_path, file):
    outside = tmp_path / "outside.safetensors"  # a readable head outside: it must not be read
    save_file({"h.weight": torch.randn(3, 8), "h.bias": torch.randn(3)}, str(outside))
    folder = _backbone(tmp_path / "bb", _entry(file=file))
    (folder / "sub").mkdir()
    save_file({"h.weight": torch.randn(3, 8), "h.bias": torch.randn(3)}, str(folder / "sub" / "heads.st"))
    with pytest.raises(TppError, match="plain file name inside the backbone directory") as err:
        load_source_classifier(str(folder))
    assert str(folder / BACKBONE_CARD) in str(err.value)


def test_a_symlink_leading_out_of_the_dir_is_not_followed(tmp_path):
    outside = tmp_path / "secret.safetensors"
    save_file({"h.weight": torch.randn(3, 8), "h.bias": torch.randn(3)}, str(outside))
    folder = _backbone(tmp_path / "bb", _entry(file="link.safetensors"))
    (folder / "link.safetensors").symlink_to(outside)
    with pytest.raises(TppError, match="inside the backbone directory"):
        load_source_classifier(str(folder))


def test_a_hub_cache_snapshot_whose_files_link_to_blobs_is_read(tmp_path):
    """The Hugging Face cache layout (snapshots/<rev>/file -> ../../blobs/<sha>) is a backbone dir like any other."""
    repo = tmp_path / "models--org--bb"
    blob = _backbone(repo / "blobs", heads_file="0123abcd") / "0123abcd"
    snapshot = repo / "snapshots" / "rev"
    snapshot.mkdir(parents=True)
    (snapshot / HEADS_FILE).symlink_to(blob)
    (snapshot / BACKBONE_CARD).write_text(json.dumps({"source_classifier": _entry()}))
    assert load_source_classifier(str(snapshot)).weight.shape == (3, 8)


@pytest.mark.parametrize("card_text, words", [
    ("{not json", "cannot be read as JSON"),
    ("[1, 2]", "must hold a JSON object"),
    (json.dumps({"source_classifier": [1]}), "source_classifier.must be an object"),
    (json.dumps({"source_classifier": _entry(heads=["h"])}), "heads must map head names"),
    (json.dumps({"source_classifier": _entry(heads={"h": ["a"]})}), "heads.h must be an object"),
    (json.dumps({"source_classifier": _entry(heads={"h": {"label_names": "abc"}})}), "label_names is a list"),
    (json.dumps({"source_classifier": _entry(pooling=["cls_token"])}), "pooling must be a string"),
])
def test_a_malformed_card_is_one_error_naming_it(tmp_path, card_text, words):
    folder = _backbone(tmp_path / "bb")
    (folder / BACKBONE_CARD).write_text(card_text)
    for call in (available, load_source_classifier):
        with pytest.raises(TppError) as err:
            call(str(folder))
        assert str(folder / BACKBONE_CARD) in str(err.value) and words in str(err.value), err.value


def test_a_malformed_hub_config_is_one_error_naming_it(tmp_path):
    (tmp_path / "hub").mkdir()
    (tmp_path / "hub" / "config.json").write_bytes(b"\xff{")
    with pytest.raises(TppError, match="config.json' cannot be read as JSON"):
        available(str(tmp_path / "hub"))
