import pytest
import torch
from conftest import make_backbone

from tpp.backbones import backbone_hash, load_backbone, resolve_targets
from tpp.errors import TppError
from tpp.model import attach_adapter


@pytest.mark.parametrize("kind", ["vit", "vit_mae", "dinov2"])
def test_families_load_from_directory_and_give_tokens(tmp_path, kind):
    encoder, info, _ = load_backbone(str(make_backbone(tmp_path / kind, kind)))
    assert info.model_type == kind and info.mean == [0.5] * 3 and info.std == [0.25] * 3
    tokens = encoder(torch.randn(2, 3, 28, 28))
    assert tokens.shape == (2, 1 + 49, 32)
    assert encoder.patch_tokens(tokens).shape == (2, 49, 32)
    assert not any(p.requires_grad for p in encoder.parameters())


def test_vit_mae_eval_forwards_are_deterministic_and_in_raster_order(tiny_mae):
    """ViT-MAE masks and shuffles on every call; the wrapper must not. Copying its weights into a
    plain ViT (which never shuffles) gives the same tokens only if the order is raster order."""
    from transformers import ViTConfig, ViTModel

    encoder, _, _ = load_backbone(str(tiny_mae))
    x = torch.randn(3, 3, 28, 28)
    first, second = encoder(x), encoder(x)
    assert torch.equal(first, second) and first.shape[1] == 50
    cfg = encoder.model.config.to_dict()
    vit = ViTModel(ViTConfig(**{k: cfg[k] for k in ("image_size", "patch_size", "hidden_size", "num_hidden_layers",
                                                   "num_attention_heads", "intermediate_size", "num_channels",
                                                   "layer_norm_eps", "qkv_bias")}), add_pooling_layer=False)
    missing, unexpected = vit.load_state_dict(encoder.model.state_dict(), strict=False)
    assert not missing and not unexpected
    torch.testing.assert_close(vit.eval()(pixel_values=x).last_hidden_state, first, rtol=1e-5, atol=1e-5)


def test_hash_is_independent_of_wrapper_class_and_sensitive_to_weights(tiny_mae, tmp_path):
    _, plain, decoder_none = load_backbone(str(tiny_mae))
    encoder, with_decoder, decoder = load_backbone(str(tiny_mae), with_decoder=True)
    assert decoder_none is None and decoder is not None
    assert plain.hash == with_decoder.hash
    attach_adapter(encoder, "lora", {"r": 2})
    assert backbone_hash(encoder.model) == plain.hash  # adapter tensors are not part of the backbone
    other = make_backbone(tmp_path / "other", "vit_mae", seed=1)
    assert load_backbone(str(other))[1].hash != plain.hash


def test_targets_are_encoder_only_and_cover_every_layer(tiny_mae):
    encoder, _, decoder = load_backbone(str(tiny_mae), with_decoder=True)
    names = resolve_targets(encoder)
    assert sorted(names) == sorted(f"layers.{i}.attention.{m}" for i in range(2) for m in ("q_proj", "v_proj"))
    attach_adapter(encoder, "lora", {"r": 2})
    assert not any("lora_" in n for n, _ in decoder.named_parameters())  # zero decoder matches
    per_layer = {n.split(".")[3] for n, _ in encoder.model.named_parameters() if "lora_A" in n}
    assert per_layer == {"0", "1"}


def test_no_target_match_is_an_error(tiny_mae):
    encoder, _, _ = load_backbone(str(tiny_mae))
    with pytest.raises(TppError, match="match no module"):
        resolve_targets(encoder, ["qkv"])
    with pytest.raises(TppError, match=r"\['v_prj'\] match no module"):  # one typo among good names
        resolve_targets(encoder, ["q_proj", "v_prj"])
    for method, options in (("bitfit", {"target_modules": ["q_proj", "fc9"]}),
                            ("ln_tuning", {"target_modules": ["lnx"]}),
                            ("bottleneck", {"target_modules": ["mlp", "atention"]})):
        with pytest.raises(TppError, match="match no module"):
            attach_adapter(encoder, method, options)


def test_bad_backbone_paths_are_clear(tmp_path):
    with pytest.raises(TppError, match="does not exist"):
        load_backbone(str(tmp_path / "missing"))
    with pytest.raises(TppError, match="'nope_dir/' does not exist"):  # not a hub id's rules for a folder
        load_backbone("nope_dir/")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TppError, match="no config.json"):
        load_backbone(str(tmp_path / "empty"))
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                         vocab_size=50)).save_pretrained(tmp_path / "bert")
    with pytest.raises(TppError, match="not a supported vision encoder"):
        load_backbone(str(tmp_path / "bert"))


def test_one_channel_backbone(tmp_path):
    encoder, info, _ = load_backbone(str(make_backbone(tmp_path / "gray", "vit_mae", channels=1)))
    assert info.channels == 1 and len(info.mean) == 1
    assert encoder(torch.randn(2, 1, 28, 28)).shape == (2, 50, 32)


def test_mismatched_adapter_state_lists_the_keys(tiny_mae):
    from tpp.model import adapter_state, load_adapter_state

    encoder, _, _ = load_backbone(str(tiny_mae))
    attach_adapter(encoder, "lora", {"r": 2})
    state = adapter_state(encoder)
    dropped = sorted(state)[0]
    partial = {k: v for k, v in state.items() if k != dropped}
    with pytest.raises(TppError, match="missing " + dropped.replace(".", r"\.")):
        load_adapter_state(encoder, partial, "parent")
    wrong = dict(state, **{dropped: torch.zeros(3, 3)})
    with pytest.raises(TppError, match="has shape"):
        load_adapter_state(encoder, wrong, "parent")


def _edit_config(folder, **changes):
    import json

    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))


@pytest.mark.parametrize("damage, said", [
    (lambda f: _edit_config(f, hidden_size=2**40), "config.json's hidden_size is 1099511627776"),
    (lambda f: _edit_config(f, patch_size=0), "config.json's patch_size is 0"),
    (lambda f: _edit_config(f, image_size="28"), "image_size"),
    (lambda f: _edit_config(f, hidden_size=33), "is not a multiple of num_attention_heads"),
    (lambda f: _edit_config(f, hidden_size=64, num_attention_heads=2), "do not fit its config.json"),
    (lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:-100]),
     "its weights are damaged"),
    (lambda f: (f / "preprocessor_config.json").write_text('{"image_mean": "abc", "image_std": [1]}'),
     "image_mean / image_std must be lists of numbers"),
    (lambda f: (f / "preprocessor_config.json").write_text('{"image_mean": [0.5], "image_std": [0]}'),
     "image_std positive"),
])
def test_a_damaged_backbone_folder_is_refused_naming_it(tmp_path, damage, said):
    """A backbone folder is input too: absurd sizes, a truncated weights file or a broken normalisation give a
    TppError naming the folder, never an allocation, a division by zero or a traceback."""
    folder = make_backbone(tmp_path / "bb")
    damage(folder)
    with pytest.raises(TppError, match=f"backbone '{folder}'.*{said}"):
        load_backbone(str(folder))


def _partial_decoder(folder, drop=(), reshape=()):
    """A tiny ViT-MAE saved with its decoder, then rewritten without the tensors whose names start with one of
    ``drop`` and with those named in ``reshape`` cut to one row."""
    from safetensors.torch import load_file, save_file

    make_backbone(folder, "vit_mae")
    weights = folder / "model.safetensors"
    state = {k: v for k, v in load_file(weights).items() if not k.startswith(tuple(drop))}
    state.update({k: state[k][:1].clone() for k in reshape})
    save_file(state, weights, metadata={"format": "pt"})
    return folder


@pytest.mark.parametrize("drop, reshape, named", [
    (("decoder.decoder_pred.",), (), "decoder.decoder_pred.bias, decoder.decoder_pred.weight"),
    (("decoder.decoder_encoder.",), (), "holds 8 of the 24 decoder tensors whole"),
    ((), ("decoder.decoder_pred.weight",), "decoder.decoder_pred.weight"),
])
def test_a_vit_mae_holding_part_of_its_decoder_has_no_decoder_weights(tmp_path, drop, reshape, named):
    """has_decoder_weights said yes as soon as one ``decoder.*`` tensor was there: validate passed, and the run then
    used no decoder, or transformers completed it with random ones. Now every tensor the decoder has must be there
    with its shape, and what is missing is named with the file."""
    from tpp.backbones import decoder_weights, has_decoder_weights

    folder = _partial_decoder(tmp_path / "partial", drop, reshape)
    assert has_decoder_weights(str(folder)) is False
    report = decoder_weights(str(folder))
    assert report.present and not report.whole
    assert str(folder / "model.safetensors") in report.describe() and named in report.describe()
    assert len(report.missing) < 5 or report.describe().endswith(f"and {len(report.missing) - 4} more")
    assert has_decoder_weights(str(make_backbone(tmp_path / "whole", "vit_mae"))) is True


def test_a_partial_decoder_is_refused_before_the_run_naming_the_file_and_the_missing_tensors(tmp_path, capsys):
    """pretext.decoder=checkpoint and multitask.scope=backbone on a ViT-MAE whose weights hold part of its decoder:
    `tpp validate` said ok."""
    from conftest import make_medmnist
    from helpers import run_cli

    folder = _partial_decoder(tmp_path / "partial", drop=("decoder.decoder_pred.",))
    weights = folder / "model.safetensors"
    root = make_medmnist(tmp_path / "data", name="bloodmnist", classes=3, n=(24, 4, 4))
    assert run_cli("validate", "breast_us/mae_vit_tiny_lora_tpp.yaml", f"data.root={make_medmnist(tmp_path / 'b')}",
                   f"backbone.path={folder}", "pretext.decoder=checkpoint") == 2
    err = capsys.readouterr().err
    assert "pretext.decoder=checkpoint needs" in err and f"'{weights}'" in err and "decoder.decoder_pred.bias" in err
    assert run_cli("validate", "multitask/backbone_pool.yaml", f"data.root={root}", "multitask.eval_targets=[]",
                   "pool=[{kind: mae, data: {source: medmnist, name: bloodmnist}}]", f"backbone.path={folder}") == 2
    err = capsys.readouterr().err
    assert "multitask.scope=backbone" in err and f"'{weights}'" in err and "decoder.decoder_pred.weight" in err
    assert "Traceback" not in err
