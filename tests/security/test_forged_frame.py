"""A padding visual prompt's input frame: a forged card's ``input.frame`` is refused when the card is checked,
and a card whose frame differs from the frame its method keeps (absent = 0: adapters written before the frame
was recorded, hand-edited cards) is refused at every load, so evaluate and predict / serve never frame
images differently."""
import json
import shutil

import numpy as np
import pytest
import torch
from serving_fixtures import fine_tuned_sites, forge, offline_probs

from tpp.adapter_dir import CARD
from tpp.errors import TppError
from tpp.recipes.evaluate import load_task_model
from tpp.serve import store
from tpp.serve.bank import AdapterBank
from tpp.serve.images import to_model_input
from tpp.serve.integrity import check_adapter


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return fine_tuned_sites(tmp_path_factory.mktemp("frame"), {"vp": ["adapter={method: visual_prompt, pad: 4}"]},
                            images=3)


def source_files(world) -> dict[str, bytes]:
    return store.read_source(world["runs"]["vp"])[1]


def with_frame(files: dict[str, bytes], frame) -> dict[str, bytes]:
    """The files with the card's ``input.frame`` set to ``frame`` (``...``: removed, as in older cards)."""
    card = json.loads(files[CARD])
    card["input"].pop("frame", None)
    if frame is not ...:
        card["input"]["frame"] = frame
    return dict(files, **{CARD: json.dumps(card).encode()})


def adapter_copy(world, tmp_path, frame):
    """A copy of the site's adapter directory whose card has ``frame`` (see :func:`with_frame`)."""
    path = tmp_path / "adapter"
    shutil.copytree(world["runs"]["vp"] / "adapter", path)
    (path / CARD).write_bytes(with_frame({CARD: (path / CARD).read_bytes()}, frame)[CARD])
    return path


def test_the_card_records_the_frame_and_evaluate_and_the_bank_agree(world, tmp_path):
    files = source_files(world)
    assert json.loads(files[CARD])["input"]["frame"] == 4
    store.publish(world["runs"]["vp"], tmp_path / "store", "vp")
    bank = AdapterBank(str(world["backbone"]), str(tmp_path / "store"))
    site = bank.site("vp")
    served = torch.stack(bank.predict([site] * 3, [to_model_input(im, site.input_rule) for im in world["images"]]))
    torch.testing.assert_close(served, offline_probs(world["backbone"], world["runs"]["vp"] / "adapter",
                                                     world["images"]), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("frame", ["x", -2, 14, 100, True, 4.0, None])
def test_a_forged_frame_is_refused_when_the_card_is_checked(world, tmp_path, frame):
    forged = with_frame(source_files(world), frame)  # image_size 28: 14 leaves no image, -2 would crop it
    with pytest.raises(TppError, match=r"tpp_card\.json.*frame must be an integer .*0 <= frame < image_size"):
        check_adapter(forged, "forged")
    forge(tmp_path / "store", "vp", forged)  # written straight into the store: the bank refuses it on load
    with pytest.raises(TppError, match="frame must be an integer"):
        AdapterBank(str(world["backbone"]), str(tmp_path / "store")).site("vp")
    rule = json.loads(forged[CARD])["input"]
    with pytest.raises(TppError, match="frame must be an integer"):  # never a ValueError or a silent crop
        to_model_input(np.zeros((28, 28), np.uint8), rule)


@pytest.mark.parametrize("frame, says", [(..., "input.frame absent"), (0, "0-px border"), (2, "2-px border")])
def test_a_frame_unlike_the_methods_is_refused_at_every_load(world, tmp_path, frame, says):
    forged = with_frame(source_files(world), frame)
    with pytest.raises(TppError, match=rf"tpp_card\.json.*{says}.*keeps a 4-px border"):
        check_adapter(forged, "old")  # the card's own method and options tell, without a backbone (publish)
    with pytest.raises(TppError, match=rf"{says}.*keeps a 4-px border"):
        store.publish(adapter_copy(world, tmp_path / "to_publish", frame), tmp_path / "published", "vp")
    assert not (tmp_path / "published" / "vp").exists()
    forge(tmp_path / "store", "vp", forged)  # written straight into the store: refused on load
    with pytest.raises(TppError, match=rf"tpp_card\.json.*{says}.*keeps a 4-px border.*re-train"):
        AdapterBank(str(world["backbone"]), str(tmp_path / "store")).site("vp")
    with pytest.raises(TppError, match=rf"tpp_card\.json.*{says}.*keeps a 4-px border.*re-train"):
        load_task_model(str(adapter_copy(world, tmp_path, frame)), str(world["backbone"]))
