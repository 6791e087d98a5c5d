"""Publishing and loading read a source adapter folder once (:func:`tpp.serve.store.read_source`): the bytes published
or loaded are the ones checked (a store version folder's: the ones its content hash verified), never a second read
that could find others. Reads of the weights file are counted; swapping it right after its first read (what a
second read would find) must not change what is published."""
import shutil

import pytest
import torch
from helpers import adapter_and_version_copy, count_adapter_reads, run_cli
from safetensors.torch import load_file, save_file

from tpp.adapter_dir import CARD, WEIGHTS
from tpp.adapter_read import content_hash
from tpp.errors import TppError
from tpp.serve import store


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, tiny_mae):
    """A fine-tuned LoRA adapter in its run folder, and a copy of it in a folder named by its content hash (a store
    version, or a copy of one)."""
    base = tmp_path_factory.mktemp("publish_reads")
    plain, version, files = adapter_and_version_copy(tiny_mae, base)
    return {"run": base / "run", "plain": plain, "version": version, "files": files}


@pytest.fixture()
def reads(monkeypatch, adapter):
    """{file name: reads} of the files of the source folders (run/adapter, the version copy) through adapter_dir's
    and the store's reads; right after the weights file's first read it is replaced on disk by zeros (still a valid
    adapter: what a second read would publish). The swap is undone afterwards."""
    counts: dict = {}
    zeros = {k: torch.zeros_like(v) for k, v in load_file(str(adapter["plain"] / WEIGHTS)).items()}
    count_adapter_reads(monkeypatch, counts, folders=(adapter["plain"], adapter["version"]), swaps={WEIGHTS: zeros},
                        store_alias=True)
    yield counts
    for folder in (adapter["plain"], adapter["version"]):
        (folder / WEIGHTS).write_bytes(adapter["files"][WEIGHTS])


def _published(sv: store.SiteVersion) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sv.path.iterdir()}


def test_publishing_a_version_folder_publishes_the_bytes_its_hash_verified(tmp_path, adapter, reads):
    """read_card hashed the version folder's files, then read_source read them again: the zeros swapped in after
    the hash check were published (under a new version)."""
    sv = store.publish(adapter["version"], tmp_path / "store", "s")
    assert reads[WEIGHTS] == 1 and reads[CARD] == 1
    assert sv.version == adapter["version"].name and _published(sv) == adapter["files"]


def test_publishing_a_run_folder_reads_each_file_once(tmp_path, adapter, reads):
    """The card was read for its checks, then again for the bytes published."""
    sv = store.publish(adapter["run"], tmp_path / "store", "s")
    assert reads == {CARD: 1, WEIGHTS: 1, "head.safetensors": 1, "adapter_config.json": 1, "README.md": 1}
    assert _published(sv) == adapter["files"]


@pytest.mark.parametrize("source", ["run", "version"])
def test_publish_with_a_dry_load_publishes_the_bytes_it_loaded(tmp_path, tiny_mae, adapter, reads, source):
    """AdapterStore.publish(backbone=) dry-loaded one read of the folder, then publish read it again: the bytes
    published were not the ones loaded."""
    import tpp

    sv = tpp.AdapterStore(tmp_path / "store").publish(adapter[source], "s", backbone=str(tiny_mae))
    assert reads[WEIGHTS] == 1 and reads[CARD] == 1
    assert sv.version == content_hash(adapter["files"]) and _published(sv) == adapter["files"]


def test_cli_publish_with_a_backbone_publishes_the_bytes_it_loaded(tmp_path, tiny_mae, adapter, reads, capsys):
    assert run_cli("adapters", "publish", adapter["version"], tmp_path / "store", "--site", "s",
                   "--backbone", tiny_mae) == 0
    assert reads[WEIGHTS] == 1 and f"s@{adapter['version'].name}" in capsys.readouterr().out
    assert _published(store.current(tmp_path / "store", "s")) == adapter["files"]


@pytest.mark.parametrize("source", ["run", "version"])
def test_load_reads_the_folder_once_and_loads_what_it_checked(tiny_mae, adapter, reads, source):
    """tpp.load read a version folder four times (the task-head check, the card's backbone, publish's card check
    and its copy), each read hashing all its files: the copy loaded was the zeros swapped in after the first."""
    import tpp

    model = tpp.load(adapter[source], backbone=str(tiny_mae))
    assert reads[WEIGHTS] == 1 and reads[CARD] == 1
    assert model.bank.site("model").version == content_hash(adapter["files"])


def test_a_version_folder_changed_since_publishing_is_refused_naming_it(tmp_path, tiny_mae, adapter):
    tampered = tmp_path / adapter["version"].name
    shutil.copytree(adapter["version"], tampered)
    weights = load_file(str(tampered / WEIGHTS))
    save_file({k: v * 2 for k, v in weights.items()}, str(tampered / WEIGHTS))  # still a valid adapter
    for publish in (lambda: store.publish(tampered, tmp_path / "store", "s"),
                    lambda: __import__("tpp").load(tampered, backbone=str(tiny_mae))):
        with pytest.raises(TppError, match=rf"'{tampered}': the files' content hash does not match version"):
            publish()
    assert not (tmp_path / "store").exists()


def test_a_pull_publishes_the_files_whose_hash_it_compared(tmp_path, monkeypatch, adapter):
    """hub.pull hashed one read of its temporary folder against --version, then publish read the folder again."""
    from huggingface_hub import constants
    from test_hub import fill_cache

    from tpp.serve import hub

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    fill_cache(tmp_path / "hf_cache", "owner/site", adapter["files"])
    counts: dict = {}
    read_regular = store._read_regular

    def counted(path, *args, **kwargs):
        out = read_regular(path, *args, **kwargs)
        if "tpp-pull-" in str(path) and str(path).endswith(WEIGHTS):
            counts["n"] = counts.get("n", 0) + 1
            if counts["n"] == 1:
                (path.parent / WEIGHTS).write_bytes(b"swapped")
        return out

    monkeypatch.setattr(store, "_read_regular", counted)
    version = content_hash(adapter["files"])
    pulled = hub.pull("owner/site", tmp_path / "store", "s", version=version)
    assert counts == {"n": 1}
    assert pulled.version.version == version and _published(pulled.version) == adapter["files"]


def _store(tmp_path, adapter, newer: bool) -> store.SiteVersion:
    """A store holding the adapter as site ``s`` (with ``newer``, another version made current after it)."""
    sv = store.publish(adapter["version"], tmp_path / "store", "s")
    if newer:  # a rollback has something to do
        store.write_version(tmp_path / "store" / "s", dict(adapter["files"], **{
            "README.md": adapter["files"]["README.md"] + b"\n"}))
    return sv


@pytest.fixture()
def swapped(monkeypatch, adapter):
    """count(sv) -> {file name: reads} of the files of the version folder of ``sv`` (adapter_dir's and the store's
    reads); right after the weights file's first read it is replaced by zeros (what a second read would find: the
    folder no longer matches its hash). Undone afterwards."""
    folders = []

    def count(sv: store.SiteVersion) -> dict:
        counts: dict = {}
        zeros = {k: torch.zeros_like(v) for k, v in load_file(str(sv.path / WEIGHTS)).items()}
        count_adapter_reads(monkeypatch, counts, folders=(sv.path,), swaps={WEIGHTS: zeros}, store_alias=True)
        folders.append(sv.path)
        return counts

    yield count
    for folder in folders:
        (folder / WEIGHTS).write_bytes(adapter["files"][WEIGHTS])


EVERY_FILE_ONCE = {CARD: 1, WEIGHTS: 1, "head.safetensors": 1, "adapter_config.json": 1, "README.md": 1}


def test_a_rollback_with_a_dry_load_reads_the_version_once(tmp_path, tiny_mae, adapter, swapped, capsys):
    """``tpp adapters rollback --backbone`` dry-loaded one read of the version folder, then make_current read and
    hashed it again (and the listing read its card): the zeros swapped in between failed the rollback after the
    dry load had passed. One read now: the dry load and the checks before the pointer moves parse the same bytes."""
    sv = _store(tmp_path, adapter, newer=True)
    reads = swapped(sv)
    assert run_cli("adapters", "rollback", tmp_path / "store", "--site", "s", "--version", sv.version,
                   "--backbone", tiny_mae) == 0
    assert reads == EVERY_FILE_ONCE
    assert store.current_version(tmp_path / "store", "s") == sv.version
    assert f"s serves {sv.version} again" in capsys.readouterr().out


def test_a_store_s_load_reads_the_version_once(tmp_path, monkeypatch, tiny_mae, adapter, swapped):
    """AdapterStore.load(site) without a backbone read the current version's card, then the whole folder (hashed)
    for the backbone the card names, then the bank read and hashed it again: the zeros swapped in after the first
    hash refused the site. One read now: the backbone is named by, and the model loaded from, the bytes verified."""
    import tpp

    sv = _store(tmp_path, adapter, newer=False)
    reads = swapped(sv)
    monkeypatch.chdir(tiny_mae.parent)  # the card names the backbone by its folder name: found from here
    model = tpp.AdapterStore(tmp_path / "store").load("s")
    assert reads == EVERY_FILE_ONCE
    assert model.bank.site("s").version == sv.version
