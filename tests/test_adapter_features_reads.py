"""Adapter features for in-context prediction (``--adapter`` / ``adapter=``, :func:`with_adapter`) from a store
version folder: its content hash is checked, and the tensors loaded are the bytes it verified."""
import shutil
from dataclasses import asdict

import pytest
import torch
from helpers import count_adapter_reads
from safetensors.torch import load_file, save_file

from tpp.adapter_dir import ADAPTER_FILES, WEIGHTS
from tpp.adapter_read import content_hash
from tpp.errors import TppError


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, tiny_mae):
    """A TPP-stage LoRA adapter with non-zero weights (the real writer), and a copy in a folder named by its
    content hash (a store version, or a copy of one)."""
    from tpp.adapter_dir import make_card, write_adapter_dir
    from tpp.backbones import load_backbone
    from tpp.model import attach_adapter

    base = tmp_path_factory.mktemp("features")
    encoder, info, _ = load_backbone(str(tiny_mae))
    method, options, targets = attach_adapter(encoder, "lora", {"r": 2})
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in encoder.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    card = make_card(method="lora", options=asdict(options), targets=targets, backbone=info, input_rule={},
                     site="s", modality="us", task={}, data={}, metrics={}, parent=None, trainable_parameters=0,
                     stage="tpp")
    plain = base / "adapter"
    write_adapter_dir(plain, encoder, None, card)
    files = {f.name: f.read_bytes() for f in plain.iterdir() if f.name in ADAPTER_FILES}
    version = base / "store" / "s" / content_hash(files)
    shutil.copytree(plain, version, ignore=lambda _, names: set(names) - set(ADAPTER_FILES))
    return plain, version


def _lora(extractor) -> dict[str, torch.Tensor]:
    return {k: v for k, v in extractor.encoder.model.state_dict().items() if "lora_B" in k}


def test_a_tampered_version_folder_is_refused_naming_it(tmp_path, tiny_mae, adapter):
    """A version folder's files were read without their content hash being checked: weights changed after
    publishing gave features as if they were the published adapter's."""
    from tpp.incontext.features import load_extractor
    from tpp.serve.adapter_features import with_adapter

    plain, version = adapter
    tampered = tmp_path / version.name
    shutil.copytree(version, tampered)
    weights = load_file(str(tampered / WEIGHTS))
    save_file({k: v * 2 for k, v in weights.items()}, str(tampered / WEIGHTS))  # still a valid adapter
    with pytest.raises(TppError, match=rf"'{tampered}': the files' content hash does not match version"):
        with_adapter(load_extractor(str(tiny_mae)), str(tampered))


def test_a_version_folder_s_weights_are_the_bytes_its_hash_verified(monkeypatch, tiny_mae, adapter):
    """The weights file swapped right after its first read (the hash check's): that read is the only one, and
    the encoder holds the verified tensors, not the swapped-in zeros."""
    from tpp.incontext.features import load_extractor
    from tpp.serve.adapter_features import with_adapter

    plain, version = adapter
    saved = load_file(str(plain / WEIGHTS))
    reads: dict = {}
    extractor = load_extractor(str(tiny_mae))
    count_adapter_reads(monkeypatch, reads, names={WEIGHTS}, store_alias=True,
                        swaps={WEIGHTS: {k: torch.zeros_like(v) for k, v in saved.items()}})
    try:
        adapted = with_adapter(extractor, str(version))
    finally:
        shutil.copy(plain / WEIGHTS, version / WEIGHTS)  # the swap undone
    assert reads == {WEIGHTS: 1}
    lora = _lora(adapted)
    assert lora and all(torch.count_nonzero(v) > 0 for v in lora.values())


def test_a_plain_adapter_folder_gives_the_same_features_as_its_version(tiny_mae, adapter):
    from tpp.incontext.features import load_extractor
    from tpp.serve.adapter_features import with_adapter

    plain, version = adapter
    extractor = load_extractor(str(tiny_mae))
    from_plain, from_version = _lora(with_adapter(extractor, str(plain))), _lora(with_adapter(extractor, str(version)))
    assert from_plain.keys() == from_version.keys() and all(torch.equal(from_plain[k], from_version[k])
                                                            for k in from_plain)
