"""A ViT-MAE given by hub id, whose weights hold part of its decoder: the run names the missing tensors (the
pre-run check reads only local folders' safetensors headers, so a hub id is checked when it loads). The hub is the
Hugging Face cache, filled here with a tiny checkpoint: no network."""
import shutil

import pytest
from test_backbones import _partial_decoder

from tpp.backbones import load_backbone
from tpp.errors import TppError

COMMIT = "0" * 40


@pytest.fixture()
def hub_partial(tmp_path, monkeypatch):
    """The hub id of a tiny ViT-MAE without its decoder_pred tensors, in an offline Hugging Face cache."""
    from huggingface_hub import constants

    folder = _partial_decoder(tmp_path / "partial", drop=("decoder.decoder_pred.",))
    repo = tmp_path / "hf_cache" / "models--someone--tiny-mae"
    shutil.copytree(folder, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return "someone/tiny-mae"


def test_a_hub_vit_mae_with_part_of_its_decoder_loads_without_it_and_names_what_it_lacks(hub_partial):
    encoder, info, decoder = load_backbone(hub_partial, with_decoder=True)
    assert decoder is None and info.id == hub_partial  # never transformers' random completion
    report = encoder.decoder_weights
    assert report.present and report.missing == ("decoder.decoder_pred.bias", "decoder.decoder_pred.weight")
    assert f"'{hub_partial}' holds 22 of the 24 decoder tensors whole" in report.describe()


def test_the_mae_pretext_and_scope_backbone_name_the_missing_decoder_tensors_of_a_hub_checkpoint(hub_partial):
    """Both said 'saved without its decoder' / 'holds no decoder weights (an encoder-only save)' for it."""
    from tpp.pretext import get_pretext

    encoder, _, decoder = load_backbone(hub_partial, with_decoder=True)
    mae = get_pretext("mae")
    with pytest.raises(TppError) as err:
        mae.build(encoder, decoder, mae.options_cls(decoder="checkpoint"))
    assert "part of its decoder" in str(err.value) and "decoder.decoder_pred.bias" in str(err.value)
    assert "without its decoder" not in str(err.value)
    from tpp.recipes.multitask import decoder_refusal  # what scope=backbone says when the load gave no decoder

    message = decoder_refusal(hub_partial, encoder.decoder_weights)
    assert "holds part of it" in message and "decoder.decoder_pred.weight" in message
    assert "no decoder weights" not in message
