"""An adapter evaluated from a store version folder is loaded from the bytes its content hash verified: its weights
and head files are not read again after the check (a file swapped in between would be used unverified)."""
import shutil

import pytest
import torch
from conftest import make_medmnist
from helpers import finetune
from safetensors.torch import load_file, save_file

from tpp import adapter_dir
from tpp.adapter_dir import ADAPTER_FILES, HEAD, WEIGHTS, content_hash


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, tiny_mae):
    """A fine-tuned adapter (a head and LoRA weights), and a copy in a folder named by its content hash."""
    base = tmp_path_factory.mktemp("evaluated")
    root = make_medmnist(base / "data")
    assert finetune(tiny_mae, root, base / "run") == 0
    plain = base / "run" / "adapter"
    files = {f.name: f.read_bytes() for f in plain.iterdir() if f.name in ADAPTER_FILES}
    version = base / content_hash(files)
    shutil.copytree(plain, version, ignore=lambda _, names: set(names) - set(ADAPTER_FILES))
    return plain, version


def _swap_after_first_read(monkeypatch, reads: dict, swaps: dict) -> None:
    """Count in ``reads`` the reads of each tensor file through adapter_dir (whole-file reads and safetensors loads);
    right after a file's first read, the file on disk is replaced by ``swaps[name]`` (what a second read finds)."""
    read_regular, load = adapter_dir.read_regular, adapter_dir.load_file

    def counted(read):
        def wrapper(path, *args, **kwargs):
            out = read(path, *args, **kwargs)
            name = str(path).rsplit("/", 1)[-1]
            if name in swaps:
                reads[name] = reads.get(name, 0) + 1
                if reads[name] == 1:
                    save_file(swaps[name], str(path))
            return out
        return wrapper

    monkeypatch.setattr(adapter_dir, "read_regular", counted(read_regular))
    monkeypatch.setattr(adapter_dir, "load_file", counted(load))


def test_an_evaluated_version_folder_loads_the_bytes_its_hash_verified(monkeypatch, tiny_mae, adapter):
    """load_task_model hashed the version's files with its card, then read the weights and head files again to
    load them: what it loaded was not what it verified."""
    from tpp.recipes.evaluate import load_task_model

    plain, version = adapter
    saved = {name: load_file(str(plain / name)) for name in (WEIGHTS, HEAD)}
    zeros = {name: {k: torch.zeros_like(v) for k, v in state.items()} for name, state in saved.items()}
    reads: dict = {}
    _swap_after_first_read(monkeypatch, reads, zeros)
    try:
        model, card, _ = load_task_model(str(version), str(tiny_mae))
    finally:
        for name in (WEIGHTS, HEAD):  # the swaps undone
            shutil.copy(plain / name, version / name)
    assert reads == {WEIGHTS: 1, HEAD: 1}
    state = {k: v for k, v in model.state_dict().items()}
    head = {k.split("head.", 1)[1]: v for k, v in state.items() if k.startswith("head.")}
    assert all(torch.equal(head[k], v) for k, v in saved[HEAD].items())  # the head verified, not zeros
    lora = {k: v for k, v in state.items() if "lora_" in k}
    assert lora and not all(torch.count_nonzero(v) == 0 for v in lora.values())


def test_a_plain_adapter_folder_evaluates_as_before(tiny_mae, adapter):
    from tpp.recipes.evaluate import load_task_model

    plain, _ = adapter
    model, card, _ = load_task_model(str(plain), str(tiny_mae))
    head = load_file(str(plain / HEAD))
    state = model.state_dict()
    assert card["stage"] and all(torch.equal(state[f"head.{k}"], v) for k, v in head.items())
