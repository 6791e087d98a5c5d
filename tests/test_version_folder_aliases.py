"""A store version folder (named by its files' content hash) reached under another name: through a symbolic link
to it, or as the current folder (``.``). Its files must be checked against the hash the folder is named by, as
when it is named directly: a byte changed since publishing is refused, never loaded, evaluated or published
again under a new version."""
import os
import shutil

import pytest
from helpers import adapter_and_version_copy
from safetensors.torch import load_file, save_file

from tpp.adapter_dir import WEIGHTS
from tpp.adapter_read import content_hash, read_adapter_dir
from tpp.errors import TppError
from tpp.serve import store


@pytest.fixture(scope="module")
def tampered(tmp_path_factory, tiny_mae):
    """A copy of a fine-tuned adapter in a folder named by its content hash, whose weights changed afterwards (still
    a valid adapter), and a symbolic link to that folder under a plain name."""
    base = tmp_path_factory.mktemp("aliases")
    plain, version, files = adapter_and_version_copy(tiny_mae, base, "store_copy")
    save_file({k: v * 2 for k, v in load_file(str(version / WEIGHTS)).items()}, str(version / WEIGHTS))
    link = base / "my_adapter"
    link.symlink_to(version, target_is_directory=True)
    return version, link


@pytest.mark.parametrize("follow", [True, False])
def test_a_link_to_a_version_folder_is_checked_against_its_hash(tampered, follow):
    version, link = tampered
    with pytest.raises(TppError, match="content hash does not match version " + version.name):
        read_adapter_dir(link, weights=True, head=True, follow=follow)


def test_a_version_folder_read_as_the_current_folder_is_checked(tampered, monkeypatch):
    version, _ = tampered
    monkeypatch.chdir(version)
    with pytest.raises(TppError, match="content hash does not match version " + version.name):
        read_adapter_dir(".", weights=True)


@pytest.mark.parametrize("alias", ["link", "dot"])
def test_a_tampered_version_folder_is_not_published_again_under_another_name(tmp_path, tampered, monkeypatch, alias):
    version, link = tampered
    if alias == "dot":
        monkeypatch.chdir(version)
    with pytest.raises(TppError, match="content hash does not match"):
        store.publish(link if alias == "link" else ".", tmp_path / "store", "s")
    assert not os.path.exists(tmp_path / "store" / "s")


def test_a_link_named_like_another_version_is_refused(tmp_path, tampered):
    version, _ = tampered
    good = tmp_path / "good"
    shutil.copytree(version, good)  # a plain folder: read as it is
    files = {f.name: f.read_bytes() for f in good.iterdir()}
    real = tmp_path / content_hash(files)
    good.rename(real)
    assert read_adapter_dir(real, weights=True).files == files  # the version it is named by
    plain_link = tmp_path / "current_adapter"
    plain_link.symlink_to(real, target_is_directory=True)
    assert read_adapter_dir(plain_link, weights=True).files == files  # verified, as the version it is
    assert store.publish(plain_link, tmp_path / "store", "s").version == real.name
    alias = tmp_path / ("0" * 16)
    alias.symlink_to(real, target_is_directory=True)
    with pytest.raises(TppError, match=f"named like version {'0' * 16} but is the folder of version {real.name}"):
        read_adapter_dir(alias)


def test_read_once_refuses_an_owner_it_cannot_follow_and_holds_nothing_for_it(tmp_path):
    """An owner that cannot be weakly referenced (a dict) raised TypeError after an entry was made for its id: the
    entry was never dropped, so a later owner given the same id found that owner's reads."""
    from tpp import adapter_read

    owner = {}
    with pytest.raises(TypeError):
        adapter_read.read_once(owner, tmp_path)
    assert id(owner) not in adapter_read._HELD
