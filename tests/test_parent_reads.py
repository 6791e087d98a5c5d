"""A parent adapter (``adapter.init_from``) is read once: in a store version folder the bytes its content hash
verified are the bytes loaded."""
import shutil

import pytest
import torch
from conftest import make_medmnist
from helpers import FAST, FINETUNE_CONFIG, count_adapter_reads, run_cli, tpp
from safetensors.torch import load_file

from tpp.adapter_dir import ADAPTER_FILES, CARD, WEIGHTS
from tpp.adapter_read import content_hash, read_adapter_dir, read_weights


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
    """The run's hand-off from ``parent_dir`` (its files counted by ``count()`` from before the config is loaded,
    whose checks read the parent); the encoder's adapter tensors after it."""
    from tpp.backbones import load_backbone
    from tpp.builders import attach_target_parameters
    from tpp.config import load_config
    from tpp.data.build import load_data
    from tpp.model import adapter_state
    from tpp.recipes import CONFIG_DIR

    count()
    cfg = load_config(CONFIG_DIR / FINETUNE_CONFIG, [f"backbone.path={tiny_mae}", f"data.root={root}", *FAST,
                                        f"adapter.init_from={parent_dir}"], recipe="finetune")
    encoder, info, _ = load_backbone(str(tiny_mae))
    dataset = load_data(cfg.data, cfg.seed, info.input_size)
    attach_target_parameters(cfg, encoder, info, dataset, _Run(), "head")
    return adapter_state(encoder)


@pytest.mark.parametrize("in_version_folder", [False, True])
def test_a_parent_adapter_s_weights_are_read_once_when_a_run_starts_from_it(monkeypatch, tiny_mae, parent,
                                                                            in_version_folder):
    """A parent in a store version folder was read and hashed with its card, then its weights file read again to
    load it: two reads, and the tensors loaded were not the bytes verified. The config's checks read the parent's
    card (and a version folder whole) again apart from the hand-off: one read of each file for the config now."""
    root, plain, version = parent
    saved = load_file(str(plain / WEIGHTS))
    zeros = {k: torch.zeros_like(v) for k, v in saved.items()}
    reads = {}
    try:
        loaded = _attach_parent(tiny_mae, root, version if in_version_folder else plain, lambda: count_adapter_reads(
            monkeypatch, reads, names={WEIGHTS, CARD}, swaps={WEIGHTS: zeros} if in_version_folder else None))
    finally:
        shutil.copy(plain / WEIGHTS, version / WEIGHTS)  # the swap undone
    assert reads == {WEIGHTS: 1, CARD: 1}
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


@pytest.mark.parametrize("command", ["validate", "run"])
@pytest.mark.parametrize("in_version_folder", [False, True])
def test_validate_and_a_run_read_the_parent_once(monkeypatch, tmp_path, tiny_mae, parent, command, in_version_folder):
    """``tpp validate`` read the parent's card about five times (the prompt-size check, ignored options, the frame
    check, the method's attach check, the leakage check and its ``init_from:`` notes), a version folder whole each
    time, and its weights twice; a run as many before its hand-off read them again."""
    root, plain, version = parent
    reads: dict = {}
    count_adapter_reads(monkeypatch, reads, names={WEIGHTS, CARD})
    parent_dir = version if in_version_folder else plain
    args = [f"backbone.path={tiny_mae}", f"data.root={root}", *FAST, f"adapter.init_from={parent_dir}",
            f"output_dir={tmp_path / 'run'}"]
    if command == "validate":
        assert run_cli("validate", FINETUNE_CONFIG, *args) == 0
    else:
        assert run_cli("run", "finetune", "--config", FINETUNE_CONFIG, "train.max_steps=1", *args) == 0
    assert reads == {WEIGHTS: 1, CARD: 1}


@pytest.mark.parametrize("in_version_folder", [False, True])
def test_a_parent_swapped_after_the_checks_is_not_loaded_unchecked(monkeypatch, tmp_path, tiny_mae, parent,
                                                                   in_version_folder):
    """A run's checks (before its folder exists) read the parent's weights, then the hand-off read them again:
    zeros swapped in between were loaded as the parent without the checks having seen them (a version folder's:
    hashed again, so the run failed after it had started). The run now fine-tunes from the bytes its checks read
    (a version folder's: the ones its content hash verified)."""
    import tpp.builders

    root, plain, version = parent
    saved, original = load_file(str(plain / WEIGHTS)), (plain / WEIGHTS).read_bytes()
    loaded = []
    monkeypatch.setattr(tpp.builders, "load_adapter_state", lambda encoder, state, source, real=tpp.builders.
                        load_adapter_state: loaded.append(dict(state)) or real(encoder, state, source))
    reads: dict = {}
    count_adapter_reads(monkeypatch, reads, names={WEIGHTS},
                        swaps={WEIGHTS: {k: torch.zeros_like(v) for k, v in saved.items()}})
    try:
        assert run_cli("run", "finetune", "--config", FINETUNE_CONFIG, "train.max_steps=1", f"backbone.path={tiny_mae}",
                       f"data.root={root}", *FAST, f"adapter.init_from={version if in_version_folder else plain}",
                       f"output_dir={tmp_path / 'run'}") == 0
    finally:
        for folder in (plain, version):  # the swap undone
            (folder / WEIGHTS).write_bytes(original)
    assert reads == {WEIGHTS: 1} and len(loaded) == 1
    assert loaded[0].keys() == saved.keys() and all(torch.equal(loaded[0][k], v) for k, v in saved.items())
