"""An adapter evaluated from a store version folder is loaded from the bytes its content hash verified: its weights
and head files are not read again after the check (a file swapped in between would be used unverified). A run and
``tpp validate`` read the folder once: their checks and the load parse the same bytes."""
import shutil

import pytest
import torch
from conftest import make_medmnist
from helpers import FINETUNE_CONFIG, count_adapter_reads, finetune, run_cli
from safetensors.torch import load_file, save_file

from tpp.adapter_dir import ADAPTER_FILES, HEAD, WEIGHTS
from tpp.adapter_read import content_hash


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, tiny_mae):
    """A fine-tuned adapter (a head and LoRA weights), a copy in a folder named by its content hash, its data."""
    base = tmp_path_factory.mktemp("evaluated")
    root = make_medmnist(base / "data")
    assert finetune(tiny_mae, root, base / "run") == 0
    plain = base / "run" / "adapter"
    files = {f.name: f.read_bytes() for f in plain.iterdir() if f.name in ADAPTER_FILES}
    version = base / content_hash(files)
    shutil.copytree(plain, version, ignore=lambda _, names: set(names) - set(ADAPTER_FILES))
    return plain, version, root


def test_an_evaluated_version_folder_loads_the_bytes_its_hash_verified(monkeypatch, tiny_mae, adapter):
    """load_task_model hashed the version's files with its card, then read the weights and head files again to
    load them: what it loaded was not what it verified."""
    from tpp.recipes.evaluate import load_task_model

    plain, version, _ = adapter
    saved = {name: load_file(str(plain / name)) for name in (WEIGHTS, HEAD)}
    zeros = {name: {k: torch.zeros_like(v) for k, v in state.items()} for name, state in saved.items()}
    reads: dict = {}
    count_adapter_reads(monkeypatch, reads, names=set(zeros), swaps=zeros)
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

    plain, _, _ = adapter
    model, card, _ = load_task_model(str(plain), str(tiny_mae))
    head = load_file(str(plain / HEAD))
    state = model.state_dict()
    assert card["stage"] and all(torch.equal(state[f"head.{k}"], v) for k, v in head.items())


def _evaluate(tiny_mae, root, adapter, out, command="run") -> int:
    """``tpp run evaluate`` (or ``tpp validate`` of that config) of ``adapter`` on the test split."""
    args = [f"backbone.path={tiny_mae}", f"data.root={root}", f"adapter.path={adapter}", "data.split=test",
            f"output_dir={out}"]
    if command == "run":
        return run_cli("run", "evaluate", "--config", FINETUNE_CONFIG, *args)
    return run_cli("validate", FINETUNE_CONFIG, "recipe=evaluate", *args)


@pytest.mark.parametrize("command", ["run", "validate"])
@pytest.mark.parametrize("in_version_folder", [True, False])
def test_an_adapter_is_read_once_by_a_run_and_by_validate(monkeypatch, tmp_path, tiny_mae, adapter, command,
                                                          in_version_folder):
    """evaluated_card read and hashed a version folder whole about three times (validate's checks, the data's input
    size and its class check) and check_adapter read the weights and head again (a plain folder's too), before the
    load read them all once more. No swap: every read counted."""
    plain, version, root = adapter
    counted: dict = {}
    count_adapter_reads(monkeypatch, counted, names={WEIGHTS, HEAD})  # whole-file reads and safetensors loads
    assert _evaluate(tiny_mae, root, version if in_version_folder else plain, tmp_path / "eval", command) == 0
    assert counted == {WEIGHTS: 1, HEAD: 1}


def test_a_run_loads_the_bytes_its_checks_verified(monkeypatch, tmp_path, tiny_mae, adapter):
    """The run's checks (before its folder exists) hashed the version folder, then the load read and hashed it
    again: a file swapped in between made the run fail after it had started, or, without the second hash, load
    what no check had seen. Now the load parses the bytes checked: the swapped-in zeros are never used."""
    import tpp.recipes.evaluate as evaluate_recipe

    plain, version, root = adapter
    saved = {name: load_file(str(plain / name)) for name in (WEIGHTS, HEAD)}
    zeros = {name: {k: torch.zeros_like(v) for k, v in state.items()} for name, state in saved.items()}
    models = []
    monkeypatch.setattr(evaluate_recipe, "load_task_model", lambda *a, real=evaluate_recipe.load_task_model, **k:
                        models.append(real(*a, **k)) or models[-1])
    reads: dict = {}
    count_adapter_reads(monkeypatch, reads, names=set(zeros), swaps=zeros)
    try:
        assert _evaluate(tiny_mae, root, version, tmp_path / "eval") == 0
    finally:
        for name in (WEIGHTS, HEAD):  # the swaps undone
            shutil.copy(plain / name, version / name)
    assert reads == {WEIGHTS: 1, HEAD: 1} and len(models) == 1
    state = models[0][0].state_dict()
    assert all(torch.equal(state[f"head.{k}"], v) for k, v in saved[HEAD].items())
    lora = [v for k, v in state.items() if "lora_B" in k]
    assert lora and all(torch.count_nonzero(v) > 0 for v in lora)


def test_a_tampered_version_folder_is_refused_by_a_run_before_it_starts(tmp_path, tiny_mae, adapter, capsys):
    _, version, root = adapter
    tampered = tmp_path / version.name
    shutil.copytree(version, tampered)
    head = load_file(str(tampered / HEAD))
    save_file({k: v + 1 for k, v in head.items()}, str(tampered / HEAD))
    assert _evaluate(tiny_mae, root, tampered, tmp_path / "eval") == 2
    assert f"'{tampered}': the files' content hash does not match" in capsys.readouterr().err
    assert not (tmp_path / "eval").exists()
