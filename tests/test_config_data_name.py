"""A ``data.name`` left out is derived from the config alone (``data.file``, else ``data.root`` as written, else the
source's name), never from env ``TPP_DATA_ROOT``: the name seeds the split and the label subsets and goes into cards,
so the same config over the same images split differently with the data root spelled another way on another machine
(and ``data.root: .`` was named after TPP_DATA_ROOT, which it does not read)."""
import os
import warnings

import pytest
import yaml
from conftest import make_image_folder

from tpp.config import build_config, load_config
from tpp.data.build import load_data

FOLDER = {"source": "folder", "modality": "US"}


@pytest.fixture
def site(tmp_path):
    """``site_a``, a folder of labelled images, and ``elsewhere``, a link to it under another name."""
    make_image_folder(tmp_path / "site_a", n=30)
    try:
        (tmp_path / "elsewhere").symlink_to(tmp_path / "site_a", target_is_directory=True)
    except OSError:
        pytest.skip("symbolic links cannot be made here")
    return tmp_path


def test_the_data_roots_environment_variable_does_not_name_the_data(site, monkeypatch):
    names, splits = set(), set()
    for root in ("site_a", "elsewhere"):  # the same images, the root spelled two ways
        monkeypatch.setenv("TPP_DATA_ROOT", str(site / root))
        with pytest.warns(UserWarning, match=r"data\.name: .*named 'folder' after its source.*give data\.name"):
            cfg = load_config({"data": FOLDER})
        names.add(cfg.data.name)
        splits.add(tuple(sorted(load_data(cfg.data, 0, 16).split_sha256().items())))
    assert names == {"folder"} and len(splits) == 1  # one name, one split: the images decide, not the machine


def test_a_root_written_as_dot_is_not_named_after_the_environment(site, monkeypatch):
    monkeypatch.setenv("TPP_DATA_ROOT", "/somewhere/else/data")
    (site / "site_a" / "here.yaml").write_text(yaml.safe_dump({"data": {**FOLDER, "root": "."}}))
    with pytest.warns(UserWarning, match="give data.name"):
        assert load_config(site / "site_a" / "here.yaml").data.name == "folder"
    assert load_config(site / "site_a" / "here.yaml", ["data.name=site_a"]).data.name == "site_a"


def test_a_name_in_the_config_stays_and_says_nothing(site, monkeypatch):
    monkeypatch.setenv("TPP_DATA_ROOT", "/hospital/ultrasound_2024/")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_config({"data": {**FOLDER, "root": str(site / "site_a")}}).data.name == "site_a"
        assert load_config({"data": {**FOLDER, "root": str(site), "file": "site_a"}}).data.name == "site_a"
        assert load_config({"data": {**FOLDER, "name": "mine"}}).data.name == "mine"
        assert load_config({"data": {"source": "medmnist"}}).data.name == "breastmnist"
    assert build_config({"data": FOLDER}).data.name == "folder"
    assert os.environ["TPP_DATA_ROOT"] == "/hospital/ultrasound_2024/"


def test_a_pool_entry_is_named_from_its_own_section_too(monkeypatch):
    monkeypatch.setenv("TPP_DATA_ROOT", "/hospital/ultrasound_2024/")
    cfg = build_config({"recipe": "pretrain_backbone", "pool": [{"data": FOLDER}]})
    assert cfg.pool[0].data.name == "folder"


def test_a_source_that_makes_its_data_is_named_after_itself_without_a_warning(monkeypatch):
    """Only sources that read files under the data root (options with ``file``) are asked for a name."""
    from dataclasses import dataclass

    import tpp.data.sources as sources

    @dataclass
    class Made:
        count: int = 4

    monkeypatch.setitem(sources._SOURCES, "made", sources.Source(name="made", options_cls=Made, load=None))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_config({"data": {"source": "made", "modality": "US"}}).data.name == "made"
