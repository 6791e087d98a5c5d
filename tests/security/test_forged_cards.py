"""Forged card values that pass for well-formed JSON: NaN or huge options, a class named twice, a segmentation
decoder of absurd size, an input size of a million patch tokens, control characters for the terminal, a site
name with a newline. Each is refused (or shown escaped) before it can give a label or stall the service."""
import json

import numpy as np
import pytest
import torch
from serving_fixtures import fine_tuned_sites, forge

from tpp.adapter_dir import CARD, HEAD, verify_backbone
from tpp.backbones import MAX_PATCH_TOKENS, BackboneInfo
from tpp.cli import main
from tpp.errors import TppError
from tpp.serve import store
from tpp.serve.bank import AdapterBank
from tpp.serve.integrity import check_adapter
from tpp.serve.worker import InferenceWorker
from tpp.tasks import get_task


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return fine_tuned_sites(tmp_path_factory.mktemp("cards"), {"lora": ["adapter.r=2"]}, images=2)


def files_with(world, edit) -> dict[str, bytes]:
    """The LoRA site's files with its card edited by ``edit(card) -> JSON text``."""
    files = store.read_source(world["runs"]["lora"])[1]
    return dict(files, **{CARD: edit(json.loads(files[CARD])).encode()})


def test_nan_or_infinity_in_a_card_is_not_json(world):
    def alpha(value):
        return lambda card: json.dumps(dict(card, options=dict(card["options"], alpha=value)))

    for value in (float("nan"), float("inf")):
        with pytest.raises(TppError, match="is not valid JSON"):
            check_adapter(files_with(world, alpha(value)), "forged")


def test_a_finite_but_absurd_option_giving_non_finite_outputs_refuses_the_site(world, tmp_path):
    """alpha = 1e30 is a number, so the card parses; the site's first image (the load's own check) overflows and
    the site is refused instead of labelling images from NaN probabilities."""
    path = tmp_path / "store"
    store.publish(world["runs"]["lora"], path, "good")
    forge(path, "huge", files_with(world, lambda c: json.dumps(dict(c, options=dict(c["options"], alpha=1e30)))))
    bank = AdapterBank(str(world["backbone"]), str(path))
    with pytest.raises(TppError, match="not finite"):
        bank.site("huge")
    assert torch.isfinite(torch.as_tensor(InferenceWorker(bank).predict("good", list(world["images"])).result(
        timeout=600).outputs[0])).all()


def test_a_class_named_twice_is_refused(world):
    def twice(card):
        card["task"]["label_names"] = [card["task"]["label_names"][0]] * 2
        card["task"]["positive_class"] = card["task"]["label_names"][0]
        return json.dumps(card)

    with pytest.raises(TppError, match="names a class twice"):
        check_adapter(files_with(world, twice), "forged")


def seg_entry(**decoder) -> dict:
    spec = {"name": "progressive_upsampling", "channels": [8, 8], "pixel_skip": False, "num_classes": 2, **decoder}
    return {"type": "segmentation", "num_classes": spec["num_classes"], "label_names": ["background", "lesion"],
            "mask_size": [28, 28], "decoder": spec}


@pytest.mark.parametrize("decoder, says", [
    ({"channels": [1] * 11}, "has 11 stages; at most 7"),
    ({"channels": [20000]}, "more than 2048 channels"),
    ({"channels": [12]}, "multiples of 8"),
    ({"num_classes": 300}, "num_classes must be an integer in 2..256"),
    ({"num_classes": 3}, "must name each of the decoder's 3 classes, got 2 names"),
])
def test_a_segmentation_card_must_describe_a_bounded_decoder_naming_every_class(decoder, says):
    problems = get_task("segmentation").check_entry(seg_entry(**decoder))
    assert any(says in p for p in problems), problems
    assert get_task("segmentation").check_entry(seg_entry()) == []


def test_a_head_whose_tensors_do_not_fill_the_card_is_refused_before_it_is_built(monkeypatch):
    """The card's decoder is built on the meta device and compared first: a spec of 2048-channel stages with a
    tiny head file is refused without allocating the decoder."""
    from tpp.model import build_head

    card = {"task": seg_entry(channels=[2048] * 4), "input": {"channels": 1, "image_size": 28}}
    built = []
    real = get_task("segmentation").head_from_card
    monkeypatch.setattr(type(get_task("segmentation")), "head_from_card",
                        lambda self, *a: built.append(torch.empty(0).device.type) or real(*a))
    with pytest.raises(TppError, match="does not fit the head"):
        build_head(card, 16, {"w": torch.zeros(2)}, "forged/" + HEAD)
    assert built == ["meta"]


def test_an_input_size_of_too_many_patch_tokens_is_refused_at_load():
    info = BackboneInfo(id="b", model_type="vit_mae", image_size=28, patch_size=4, channels=1, hidden_size=16,
                        num_layers=1, hash="h")
    side = int(MAX_PATCH_TOKENS ** 0.5) * 4
    verify_backbone({"backbone": {"hash": "h"}, "input": {"image_size": side}}, info, "ok")
    with pytest.raises(TppError, match="patch tokens per image"):
        verify_backbone({"backbone": {"hash": "h"}, "input": {"image_size": side + 4}}, info, "big")


def test_site_names_with_a_newline_are_refused_and_card_strings_are_listed_escaped(world, tmp_path, capsys):
    with pytest.raises(TppError):
        store.check_site("lora\n")
    path = tmp_path / "store"
    forge(path, "ansi", files_with(world, lambda c: json.dumps(dict(c, created="\x1b[2J\x1b[31mALL OK\r\u202e"))))
    assert main(["adapters", "ls", str(path)]) == 0
    out = capsys.readouterr().out
    assert "\\x1b[2J\\x1b[31mALL OK\\x0d\\u202e" in out and "\x1b" not in out and "\u202e" not in out
    assert store.listing(path)[0]["created"].startswith("\x1b")  # the JSON of GET /v1/sites keeps the value


class FakeBank:
    """A bank of 2-px classification sites for the worker: ``answer(sites, tensors)`` gives the outputs (or
    raises); it records the batch sizes it was asked and the sites it refused. Nothing is read to load a site."""

    max_resident = 4

    def __init__(self, answer=None):
        self.answer, self.sizes, self.refused, self.resident = answer, [], [], {}

    def version_to_load(self, name):
        return None

    def prepare(self, name, version):
        return None

    def site(self, name, prepared=None):
        from types import SimpleNamespace

        self.resident[name] = SimpleNamespace(
            name=name, version="v", label_names=["a", "b"], task=get_task("classification"),
            input_rule={"image_size": 2, "channels": 1, "image_channels": 1, "mean": [0.0], "std": [1.0]})
        return self.resident[name]

    def predict(self, sites, tensors):
        self.sizes.append(len(sites))
        if self.answer is not None:
            self.answer(sites, tensors)
        return [torch.tensor([0.5, 0.5])] * len(sites)

    def refuse(self, *args):
        self.refused.append(args)


def test_one_request_of_many_images_runs_in_batches_of_max_batch():
    bank = FakeBank()
    worker = InferenceWorker(bank, max_batch=2)
    result = worker.predict("s", [np.zeros((2, 2), np.uint8)] * 5).result(timeout=600)
    worker.stop()
    assert len(result.outputs) == 5 and bank.sizes == [2, 2, 1]


def test_an_input_giving_non_finite_outputs_fails_its_own_request_and_leaves_the_site_served():
    """Only the row that overflows gets the error (HTTP 422); the site is not refused for every client."""
    from tpp.serve.bank import NonFiniteOutputs

    def overflow_on_white(sites, tensors):
        if any(float(t.max()) > 0.5 for t in tensors):
            raise NonFiniteOutputs("overflows")

    bank = FakeBank(overflow_on_white)
    worker = InferenceWorker(bank, max_wait_ms=200)
    bad = worker.predict("s", [np.full((2, 2), 255, np.uint8)])
    good = worker.predict("s", [np.zeros((2, 2), np.uint8)])
    with pytest.raises(NonFiniteOutputs):
        bad.result(timeout=600)
    assert len(good.result(timeout=600).outputs) == 1 and bank.refused == []
    worker.stop()


def test_a_row_that_fails_otherwise_on_the_retry_refuses_the_site_and_the_worker_lives_on():
    """An error other than non-finite outputs during the row-by-row retry ended the inference thread."""
    from tpp.serve.bank import NonFiniteOutputs, SiteRefused

    def first_overflow_then_device_lost(sites, tensors):
        if len(bank.sizes) == 1:
            raise NonFiniteOutputs("overflows")
        if len(bank.sizes) == 2:
            raise RuntimeError("device lost")

    bank = FakeBank(first_overflow_then_device_lost)
    worker = InferenceWorker(bank)
    with pytest.raises(SiteRefused, match="device lost"):
        worker.predict("s", [np.zeros((2, 2), np.uint8)]).result(timeout=600)
    assert len(worker.predict("t", [np.zeros((2, 2), np.uint8)]).result(timeout=600).outputs) == 1
    assert [args[0] for args in bank.refused] == ["s"]
    worker.stop()


def test_an_unexpected_error_in_a_batch_fails_its_requests_and_the_worker_lives_on():
    """A defect in the batch path (here max_batch=0, which the CLI now refuses) used to kill the inference thread:
    every later request then failed while /healthz said ok."""
    worker = InferenceWorker(FakeBank(), max_batch=0)
    try:
        for _ in range(2):
            with pytest.raises(ValueError):
                worker.predict("s", [np.zeros((2, 2), np.uint8)]).result(timeout=600)
        assert worker.alive
    finally:
        worker.stop()
    assert not worker.alive
