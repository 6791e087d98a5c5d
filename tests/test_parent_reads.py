"""A parent adapter (``adapter.init_from``) is read once: in a store version folder the bytes its content hash
verified are the bytes loaded."""
import shutil

import pytest
import torch
from conftest import make_medmnist
from helpers import FAST, FINETUNE_CONFIG, count_adapter_reads, tpp
from safetensors.torch import load_file

from tpp.adapter_dir import ADAPTER_FILES, WEIGHTS, content_hash, read_adapter_dir, read_weights


class _Run:
    def log(self, **_):
        pass


@pytest.fixture(scope="module")
def parent(tmp_path_factory, tiny_mae):
    """A TPP run's adapter, copied into a folder named by its content hash (a store version, as published)."""
    base = tmp_path_factory.mktemp("parent")
    root = make_medmnist(base / "data")
    assert tpp(tiny_mae, root, base / "tpp") == 0
    files = {f.name: f.read_bytes() for f in (base / "tpp" / "adapter").iterdir() if f.name in ADAPTER_FILES}
    version = base / content_hash(files)
    shutil.copytree(base / "tpp" / "adapter", version, ignore=lambda _, names: set(names) - set(ADAPTER_FILES))
    return root, base / "tpp" / "adapter", version


def _attach_parent(tiny_mae, root, parent_dir, count):
    """The run's hand-off from ``parent_dir`` (its weights counted by ``count()`` once the config, which reads
    the parent's card, and the data are loaded); the encoder's adapter tensors after it."""
    from tpp.backbones import load_backbone
    from tpp.builders import attach_target_parameters
    from tpp.config import load_config
    from tpp.data.build import load_data
    from tpp.model import adapter_state
    from tpp.recipes import CONFIG_DIR

    cfg = load_config(CONFIG_DIR / FINETUNE_CONFIG, [f"backbone.path={tiny_mae}", f"data.root={root}", *FAST,
                                        f"adapter.init_from={parent_dir}"], recipe="finetune")
    encoder, info, _ = load_backbone(str(tiny_mae))
    dataset = load_data(cfg.data, cfg.seed, info.input_size)
    count()
    attach_target_parameters(cfg, encoder, info, dataset, _Run(), "head")
    return adapter_state(encoder)


@pytest.mark.parametrize("in_version_folder", [False, True])
def test_a_parent_adapter_s_weights_are_read_once_when_a_run_starts_from_it(monkeypatch, tiny_mae, parent,
                                                                            in_version_folder):
    """A parent in a store version folder was read and hashed with its card, then its weights file read again to
    load it: two reads, and the tensors loaded were not the bytes verified."""
    root, plain, version = parent
    saved = load_file(str(plain / WEIGHTS))
    zeros = {k: torch.zeros_like(v) for k, v in saved.items()}
    reads = {}
    try:
        loaded = _attach_parent(tiny_mae, root, version if in_version_folder else plain, lambda: count_adapter_reads(
            monkeypatch, reads, names={WEIGHTS}, swaps={WEIGHTS: zeros} if in_version_folder else None))
    finally:
        shutil.copy(plain / WEIGHTS, version / WEIGHTS)  # the swap undone
    assert reads == {WEIGHTS: 1}
    # the tensors loaded are the bytes read (in a version folder: verified), not what the file held afterwards
    assert set(saved) <= set(loaded) and all(torch.equal(loaded[k], v) for k, v in saved.items())


def test_read_adapter_dir_refuses_a_tampered_version_folder_and_reads_a_plain_one(tmp_path, parent):
    from tpp.errors import TppError

    _, plain, version = parent
    card, files, _ = read_adapter_dir(plain, weights=True)
    weights = read_weights(plain, card, files)
    assert card["stage"] == "tpp" and set(weights) == set(load_file(str(plain / WEIGHTS)))
    tampered = tmp_path / version.name
    shutil.copytree(version, tampered)
    (tampered / WEIGHTS).write_bytes((tampered / WEIGHTS).read_bytes()[:-1] + b"\0")
    with pytest.raises(TppError, match="content hash does not match"):
        read_adapter_dir(tampered, weights=True)
