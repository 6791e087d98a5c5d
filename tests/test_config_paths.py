"""Paths in a config name what the OS opens for them: ``link/..`` leads to the parent of the link's target (a
shell's ``cat link/../x``), not back beside the link (``os.path.normpath`` dropped ``link/..`` as text)."""
import os

import pytest
import yaml

from tpp.config import load_config
from tpp.config.paths import as_the_os_reads, resolve_path, with_absolute_paths

pytestmark = pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symbolic links")


@pytest.fixture
def linked(tmp_path):
    """``real/inner`` with ``real/x`` beside it; ``other/link`` -> ``real/inner`` and a decoy ``other/x``."""
    (tmp_path / "real" / "inner").mkdir(parents=True)
    (tmp_path / "real" / "x").mkdir()
    (tmp_path / "other" / "x").mkdir(parents=True)
    try:
        (tmp_path / "other" / "link").symlink_to(tmp_path / "real" / "inner", target_is_directory=True)
    except OSError:
        pytest.skip("symbolic links cannot be made here")
    return tmp_path


def test_dot_dot_after_a_link_leaves_the_links_target(linked):
    opened = os.path.realpath(linked / "other" / "link" / ".." / "x")  # what the OS opens
    assert opened == str(linked / "real" / "x")
    assert resolve_path("link/../x", linked / "other") == str(linked / "real" / "x")
    assert resolve_path(str(linked / "other" / "link" / ".." / "x"), linked) == str(linked / "real" / "x")
    assert resolve_path("link/./../../real/x", linked / "other") == str(linked / "real" / "x")


def test_a_link_without_dot_dot_after_it_keeps_its_name(linked):
    """Recorded paths stay as written where normpath was right (a resumed run's config.yaml compares them)."""
    assert resolve_path("link/sub", linked / "other") == str(linked / "other" / "link" / "sub")
    assert resolve_path("link/sub/..", linked / "other") == str(linked / "other" / "link")  # sub: no link
    assert resolve_path("./x/../x", linked / "other") == str(linked / "other" / "x")
    assert resolve_path("missing/../x", linked / "other") == str(linked / "other" / "x")  # nothing to follow
    assert as_the_os_reads(str(linked / "other" / "x")) == str(linked / "other" / "x")


def test_a_relative_link_target_is_followed_from_the_links_folder(linked):
    (linked / "other" / "rel").symlink_to(os.path.join("..", "real", "inner"), target_is_directory=True)
    assert resolve_path("rel/../x", linked / "other") == str(linked / "real" / "x")


def test_home_and_hub_ids_still_resolve_as_before(linked, monkeypatch):
    monkeypatch.setenv("HOME", str(linked / "other"))
    assert resolve_path("~/link/../x", linked) == str(linked / "real" / "x")
    assert resolve_path("org/name", linked, hub_ok=True) == "org/name"  # no such folder: a hub id
    assert resolve_path("link", linked / "other", hub_ok=True) == str(linked / "other" / "link")


def test_a_config_file_and_an_override_through_a_link_name_the_file_the_shell_opens(linked, monkeypatch):
    config = linked / "other" / "my.yaml"
    config.write_text(yaml.safe_dump({"recipe": "finetune", "data": {"root": "link/../x"},
                                      "adapter": {"init_from": "link/../x"}}))
    monkeypatch.chdir(linked / "other")
    cfg = load_config(config)
    assert cfg.data.root == cfg.adapter.init_from == str(linked / "real" / "x")
    assert load_config(config, ["data.root=link/../x"]).data.root == str(linked / "real" / "x")  # cwd's
    assert load_config({"data": {"root": "link/../x"}}).data.root == str(linked / "real" / "x")  # a mapping


def test_tpp_cp_writes_the_path_the_os_opens(linked):
    text, changed = with_absolute_paths("data:\n  root: link/../x\n", linked / "other")
    assert changed == ["data.root"] and yaml.safe_load(text)["data"]["root"] == str(linked / "real" / "x")


def test_tpp_cp_rewrites_the_line_of_the_keys_own_section(tmp_path):
    """The line edit looked for the first ``path: VALUE`` line in the file: with ``backbone.path`` a hub id written
    like ``adapter.path`` (left as it is), the backbone's line was rewritten, the copy then read back wrong and was
    written out whole by ``yaml.safe_dump``, losing every comment. Now each value's own line (from its YAML node)
    is rewritten, also in a pool entry above ``data:``."""
    text = ("# my config\nbackbone:\n  path: models  # a hub id\nadapter:\n  path: models  # my adapter folder\n"
            "pool:\n  - data:\n      root: other\ndata:\n  root: scans  # CT\n")
    copied, changed = with_absolute_paths(text, tmp_path)
    assert sorted(changed) == ["adapter.path", "data.root", "pool[0].data.root"]
    lines = copied.splitlines()
    assert lines[:3] == ["# my config", "backbone:", "  path: models  # a hub id"]  # the hub id stays, as written
    assert lines[4].startswith(f"  path: {tmp_path / 'models'}  # my adapter folder  # tpp cp: 'models' made ")
    assert lines[7].startswith(f"      root: {tmp_path / 'other'}  # tpp cp: 'other' made absolute")
    assert lines[9].startswith(f"  root: {tmp_path / 'scans'}  # CT  # tpp cp:")
    assert yaml.safe_load(copied) == {"backbone": {"path": "models"}, "adapter": {"path": str(tmp_path / "models")},
                                      "pool": [{"data": {"root": str(tmp_path / "other")}}],
                                      "data": {"root": str(tmp_path / "scans")}}
