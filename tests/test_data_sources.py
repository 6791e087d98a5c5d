"""Data sources are plug-ins: a registry of sources with typed options set flat as ``data.<option>``, an
option of another source is an error naming it, and a toy source from a temporary folder runs fine-tuning
with nothing in tpp naming it."""
import json

import numpy as np
import pytest
import yaml
from conftest import make_medmnist
from helpers import FINETUNE_CONFIG, finetune, plugin_from_file, run_cli

from tpp.config import build_config, help_lines, load_config
from tpp.data.arrays import load_medmnist, load_npz
from tpp.data.build import data_license, load_data, preflight
from tpp.data.sources import Source, all_sources, get_source, register
from tpp.errors import ConfigError
from tpp.recipes import CONFIG_DIR

BUILTIN = ["csv", "folder", "medmnist", "npz", "seg_folder", "seg_npz", "unlabeled_folder"]


def test_registry_lists_the_builtin_sources_with_their_capabilities():
    sources = {s.name: s for s in all_sources()}
    assert sorted(sources) == BUILTIN
    assert {n for n in BUILTIN if sources[n].masks} == {"seg_npz", "seg_folder"}
    assert {n for n in BUILTIN if sources[n].needs_modality} == {"csv", "folder", "unlabeled_folder", "seg_folder"}
    for source in sources.values():
        assert source.summary and source.options_cls.__dataclass_fields__ is not None
        assert all(f.metadata.get("help") for f in source.options_cls.__dataclass_fields__.values())
    with pytest.raises(ConfigError, match=r"unknown data.source 'ftp'. Known sources: csv, folder, medmnist"):
        get_source("ftp")
    with pytest.raises(ValueError, match="registered twice"):
        register(Source(name="npz", options_cls=sources["npz"].options_cls, load=sources["npz"].load))


def test_source_options_are_typed_and_checked_by_their_source():
    cfg = build_config({"data": {"source": "npz", "file": "x.npz", "classes": ["a", "b"]}})
    options = cfg.data.resolved()
    assert type(options).__name__ == "NpzOptions" and options.file == "x.npz" and options.image_key == "images"
    assert cfg.data.options == {"file": "x.npz", "classes": ["a", "b"]}  # what the user set
    assert not hasattr(cfg.data, "file")  # source options live in the source's dataclass only
    with pytest.raises(ConfigError, match=r"'data\.image_key' must be str, got 3"):
        build_config({"data": {"source": "npz", "image_key": 3}})
    with pytest.raises(ConfigError, match=r"'data\.on_bad_file' must be one of 'error', 'skip'"):
        build_config({"data": {"source": "folder", "on_bad_file": "ignore"}})
    with pytest.raises(ConfigError, match=r"did you mean data\.file"):
        build_config({"data": {"source": "npz", "fil": "x.npz"}})
    with pytest.raises(ConfigError, match="binary masks have 2"):  # a check in the options' __post_init__
        build_config({"data": {"source": "seg_npz", "file": "s.npz", "classes": ["background"]}})
    with pytest.raises(ConfigError, match="names a class twice"):
        build_config({"data": {"source": "folder", "classes": ["a", "a"]}})
    with pytest.raises(ConfigError, match=r"'data\.mask_classes' must be one of 'binary', 'indices'"):
        build_config({"data": {"source": "seg_folder", "mask_classes": "from_label"}})  # folders have no labels


def test_an_option_of_another_source_names_that_source():
    with pytest.raises(ConfigError, match="data.mask_key is an option of source seg_npz: set data.source=seg_npz"):
        build_config({"data": {"mask_key": "masks"}})  # medmnist (the default) has no masks
    with pytest.raises(ConfigError, match=r"data.download is an option of source medmnist: set data.source=medmnist"):
        build_config({"data": {"source": "npz", "file": "x.npz", "download": True}})
    with pytest.raises(ConfigError, match=r"data.group_key is an option of source csv, folder, seg_folder, seg_npz"):
        build_config({"data": {"group_key": "patient"}})
    pool = {"recipe": "pretrain_backbone", "pool": [{"data": {"name": "bloodmnist"}},
                                                    {"data": {"source": "npz", "mask_key": "m", "file": "x.npz"}}]}
    with pytest.raises(ConfigError, match=r"pool\[1\]\.data\.mask_key is an option of source seg_npz: set "
                                          r"pool\[1\]\.data\.source=seg_npz"):
        build_config(pool)
    pool["pool"][1]["data"].pop("mask_key")
    cfg = build_config(pool)
    assert cfg.pool[1].data.resolved().file == "x.npz" and cfg.pool[0].data.options == {}


def test_resolved_options_are_written_back_flat_and_round_trip(tmp_path):
    cfg = build_config({"data": {"source": "seg_npz", "file": "s.npz", "classes": ["bg", "fg"], "group_key": "g"}})
    data = cfg.to_dict()["data"]
    assert "options" not in data and data["file"] == "s.npz" and data["mask_key"] == "masks"
    assert data["mask_classes"] == "binary" and data["group_key"] == "g" and data["val_fraction"] == 0.1
    assert "download" not in data and "on_bad_file" not in data  # other sources' options are not written
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    again = load_config(tmp_path / "c.yaml").to_dict()  # backbone.path: the default, now relative to the file
    assert again["data"] == cfg.to_dict()["data"] and again.keys() == cfg.to_dict().keys()
    pool = build_config({"recipe": "pretrain_backbone", "pool": [{"data": {"source": "npz", "file": "p.npz"}}]})
    assert pool.to_dict()["pool"][0]["data"]["image_key"] == "images"


def test_a_source_override_drops_the_files_source_options_left_at_their_defaults(tmp_path):
    path = tmp_path / "seg.yaml"
    path.write_text(yaml.safe_dump({"data": {"source": "seg_npz", "file": "s.npz", "mask_key": "masks",
                                             "label_key": "labels", "modality": "US"}}))  # the two keys' defaults
    cfg = load_config(path, ["data.source=npz", "data.file=x.npz"])
    assert cfg.data.options == {"file": "x.npz"} and cfg.data.modality == "US"  # common keys stay
    with pytest.raises(ConfigError, match="data.mask_key is an option of source seg_npz"):
        load_config(path, ["data.source=npz", "data.file=x.npz", "data.mask_key=k"])


def test_a_source_override_refuses_the_files_options_it_would_drop_naming_each(tmp_path):
    """``data.source=seg_folder`` on a seg_npz config dropped its label key and its group key without a word (the
    split then ignored the near-duplicate groups): each option set away from its default is named, with the way
    out; one the new source reads too (group_key: an array there, a metadata.csv column here) is not carried over
    silently either."""
    path = tmp_path / "seg.yaml"
    data = {"source": "seg_npz", "file": "s.npz", "label_key": "label", "group_key": "dup_group",
            "mask_classes": "binary", "image_key": "images", "modality": "US"}
    path.write_text(yaml.safe_dump({"data": data}))
    with pytest.raises(ConfigError) as caught:
        load_config(path, ["data.source=seg_folder"])
    problems = caught.value.problems
    assert len(problems) == 3 and str(path) in str(caught.value)  # not image_key / mask_classes: their defaults
    assert problems[0].startswith("data.file='s.npz' in the config file (written for data.source=seg_npz): "
                                  "data.source=seg_folder given on the command line reads data.file too")
    assert problems[0].endswith("give data.file=... on the command line for seg_folder, or remove it from (a copy of) "
                                "the config file.")
    assert "data.group_key='dup_group'" in problems[1] and "metadata.csv column" in problems[1]
    assert problems[2] == ("data.label_key='label' in the config file (written for data.source=seg_npz) is not read "
                           "by data.source=seg_folder given on the command line, so it would be dropped: remove it "
                           "from (a copy of) the config file, or keep data.source=seg_npz.")
    cfg = load_config(path, ["data.source=seg_npz"])  # no switch: nothing to say
    assert cfg.data.resolved().label_key == "label"
    data.pop("label_key")
    path.write_text(yaml.safe_dump({"data": data}))
    cfg = load_config(path, ["data.source=seg_folder", "data.file=folder", "data.group_key=patient"])
    assert cfg.data.options == {"file": "folder", "group_key": "patient",  # given again: the command line's
                                "mask_classes": "binary"}  # read alike by both: carried over
    cfg = load_config(path, ["data={source: seg_folder, file: null, group_key: null}"])
    assert cfg.data.resolved().file is None and cfg.data.resolved().group_key is None


def test_the_source_override_still_serves_the_own_data_workflow_on_medmnist_configs():
    """The source override still works on the shipped configs whose source options sit at their defaults (the
    MedMNIST ones: the own-data workflow ``data.source=folder data.file=...``)."""
    cfg = load_config(CONFIG_DIR / FINETUNE_CONFIG, ["data.source=folder", "data.file=site", "data.modality=US"])
    assert cfg.data.options == {"file": "site"}
    with pytest.raises(ConfigError, match=r"data\.label_key='label' in the config file \(written for "
                                          r"data\.source=seg_npz\)"):
        load_config(CONFIG_DIR / "breast_us/busi_seg_lora_finetune.yaml", ["data.source=seg_folder", "data.file=f"])


def test_a_run_trained_with_download_evaluates_another_sites_folder(tmp_path):
    """docs/input_side.md's source shift: ``tpp run evaluate --config RUN/config.yaml data.source=folder ...`` on a
    run that fetched its MedMNIST file (``data.download=true``, saved in its config.yaml) was refused for leaving
    ``data.download`` behind: it only says how the replaced MedMNIST file is fetched, so nothing is lost."""
    cfg = load_config(CONFIG_DIR / FINETUNE_CONFIG, ["data.download=true"])
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    cfg = load_config(tmp_path / "config.yaml", ["data.source=folder", f"data.root={tmp_path}", "data.name=other",
                                                 "data.modality=US", "data.split=test"], recipe="evaluate")
    assert cfg.data.source == "folder" and cfg.data.options == {}


def test_keys_and_ls_list_every_source(capsys):
    lines = help_lines()
    assert any(line.startswith("data.mask_key (str, default 'masks') [data.source=seg_npz]:") for line in lines)
    assert any(line.startswith("data.download (bool, default False) [data.source=medmnist]:") for line in lines)
    assert not any(line.startswith("data.file (") and "[data.source=" not in line for line in lines)
    assert run_cli("ls") == 0
    out = capsys.readouterr().out
    assert "data sources (data.source):" in out
    for name in BUILTIN:
        assert f"\n  {name:<18} {get_source(name).summary}\n" in out


def test_preflight_asks_the_source(tmp_path):
    cfg = build_config({"data": {"source": "npz", "root": str(tmp_path)}})
    assert preflight(cfg.data) == ["data.source=npz needs data.file (path of the .npz, relative to data.root)."]
    cfg = build_config({"data": {"source": "seg_folder", "root": str(tmp_path), "file": "gone"}})
    problems = preflight(cfg.data)
    assert len(problems) == 2 and "needs data.modality" in problems[0] and "'gone' does not exist" in problems[1]
    cfg = build_config({"data": {"name": "breastmnist", "root": str(tmp_path)}})
    assert "breastmnist.npz' is not in" in preflight(cfg.data)[0]
    make_medmnist(tmp_path)
    assert preflight(cfg.data) == []
    for download in (False, True):  # a typo is no missing file: downloading cannot fix it
        cfg = build_config({"data": {"name": "breastmnsit", "root": str(tmp_path), "download": download}})
        (problem,) = preflight(cfg.data)
        assert "'breastmnsit' is no MedMNIST dataset. Did you mean 'breastmnist'?" in problem
        assert "Zenodo" not in problem and "pneumoniamnist" in problem


def test_load_data_through_the_registry_gives_what_the_loaders_give(tmp_path):
    make_medmnist(tmp_path)
    cfg = build_config({"data": {"name": "breastmnist", "root": str(tmp_path)}})
    dataset = load_data(cfg.data, 0, 28)
    assert dataset.content_hash() == load_medmnist("breastmnist", str(tmp_path)).content_hash()
    assert dataset.origin == "BUSI" and data_license(cfg.data) == "CC BY 4.0"
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "pool.npz", images=rng.integers(0, 255, (30, 8, 8), dtype=np.uint8),
             labels=np.repeat([0, 1, 2], 10), class_names=np.array(["a", "b", "c"]))
    cfg = build_config({"data": {"source": "npz", "name": "p", "root": str(tmp_path), "file": "pool.npz",
                                 "classes": ["c", "a"], "modality": "DX", "license": "CC0", "split_seed": 3}})
    dataset = load_data(cfg.data, 0, 28)  # split by data.split_seed, not by the run's seed
    direct = load_npz("p", str(tmp_path), "pool.npz", classes=["c", "a"], modality="DX", seed=3)
    assert dataset.class_names == ["c", "a"] and dataset.content_hash() == direct.content_hash()
    assert data_license(cfg.data) == "CC0"
    assert data_license(build_config({"data": {"source": "npz", "file": "pool.npz"}}).data) == "unknown"


TOY_SOURCE = '''
"""Toy stripes: a tiny labelled set made in code, registered from outside tpp."""
from dataclasses import dataclass, field

import numpy as np

from tpp.data import Dataset, Split
from tpp.data.sources import Source, register
from tpp.errors import ConfigError
from tpp.recipes import CONFIG_DIR


@dataclass
class StripesOptions:
    count: int = field(default=24, metadata={"help": "images per split"})
    contrast: int = field(default=60, metadata={"help": "brightness added to class-1 images"})

    def __post_init__(self):
        if self.count < 4:
            raise ConfigError(f"data.count must be at least 4, got {self.count}.")


def load(common, options, seed, image_size, labels=True):
    """uint8 (count, 28, 28) per split; class 1 is brighter by ``contrast``."""
    rng = np.random.default_rng(seed)
    splits = {}
    for name in ("train", "val", "test"):
        y = np.arange(options.count) % 2
        x = rng.integers(0, 120, (options.count, 28, 28)) + options.contrast * y[:, None, None]
        splits[name] = Split(x.astype(np.uint8), y.astype(np.int64))
    return Dataset(common.name, common.modality or "US", ["plain", "bright"], splits, split_id="toy")


register(Source(name="toy_stripes", options_cls=StripesOptions, load=load))
'''


@pytest.fixture()
def toy_source(tmp_path, monkeypatch):
    import tpp.data.sources as sources

    with plugin_from_file(sources, "_SOURCES", "toy_stripes", TOY_SOURCE, tmp_path / "plugins", monkeypatch):
        yield sources.get_source("toy_stripes")


def test_a_source_is_one_file_and_one_registration(toy_source, tiny_mae, tmp_path, capsys):
    assert toy_source.summary.startswith("Toy stripes") and not toy_source.masks
    with pytest.raises(ConfigError, match="data.count must be at least 4"):
        build_config({"data": {"source": "toy_stripes", "count": 2}})
    with pytest.raises(ConfigError, match="data.count is an option of source toy_stripes"):
        build_config({"data": {"count": 8}})
    assert any("[data.source=toy_stripes]" in line for line in help_lines())
    out = tmp_path / "run"
    assert finetune(tiny_mae, tmp_path, out, "data.source=toy_stripes", "data.name=stripes", "data.count=16",
                    "data.modality=US") == 0, capsys.readouterr().err
    card = json.loads((out / "adapter" / "tpp_card.json").read_text())
    cfg = load_config(CONFIG_DIR / FINETUNE_CONFIG, ["data.source=toy_stripes", "data.count=16"])
    expected = load_data(cfg.data, cfg.seed, 28)
    assert card["data"]["name"] == "stripes" and card["data"]["modality"] == "US"
    assert card["data"]["content_sha256"] == expected.content_hash() and card["data"]["split_id"] == "toy"
    assert card["data"]["counts"] == {"train": 16, "val": 16, "test": 16}
    assert card["data"]["classes"] == ["plain", "bright"]
    saved = yaml.safe_load((out / "config.yaml").read_text())["data"]
    assert saved["source"] == "toy_stripes" and saved["count"] == 16 and saved["contrast"] == 60


def test_a_source_override_carries_the_options_both_sources_read_alike():
    """``data.source=csv data.file=...`` on the shipped CT config (a folder source) refused its ``data.slice``,
    ``data.window`` and ``data.max_image_pixels`` and asked to repeat them, though csv reads image files exactly as
    folder does: options marked with the same meaning in both sources (``meaning`` in their field metadata) are
    carried over; the folder itself (``data.file: scans``) is no CSV and is still refused."""
    from tpp.data.sources import carried_options

    reading = {"frame", "slice", "window", "max_image_pixels"}
    assert carried_options("folder", "csv") == reading | {"classes", "on_bad_file"}
    assert carried_options("folder", "unlabeled_folder") == reading | {"file", "on_bad_file"}
    assert carried_options("folder", "seg_folder") == {"max_image_pixels", "group_key", "on_bad_file"}
    assert carried_options("seg_npz", "seg_folder") == {"mask_classes", "classes"}  # not group_key, not file
    assert carried_options("npz", "seg_npz") == set() and carried_options("ftp", "csv") == set()
    ct = CONFIG_DIR / "own_data/ct_volumes_lora_finetune.yaml"
    cfg = load_config(ct, ["data.source=csv", "data.file=labels.csv"])
    assert cfg.data.source == "csv" and cfg.data.modality == "CT"
    assert cfg.data.options == {"file": "labels.csv", "slice": "2:middle", "window": "40,400",
                                "max_image_pixels": 134217728}
    reading = cfg.data.resolved().file_reading()
    assert (reading.slice, reading.window, reading.max_image_pixels) == ("2:middle", "40,400", 134217728)
    cfg = load_config(ct, ["data.source=csv", "data.file=labels.csv", "data.window=50,350"])  # given again: wins
    assert cfg.data.resolved().window == "50,350" and cfg.data.resolved().slice == "2:middle"
    with pytest.raises(ConfigError) as caught:  # the folder is no CSV: not carried over
        load_config(ct, ["data.source=csv"])
    (problem,) = caught.value.problems
    assert problem.startswith("data.file='scans' in the config file (written for data.source=folder): "
                              "data.source=csv given on the command line reads data.file too")
    assert problem.endswith("give data.file=... on the command line for csv, or remove it from (a copy of) the "
                            "config file.")
    cfg = load_config(ct, ["data.source=unlabeled_folder"])  # the same image folder, read without labels
    assert cfg.data.options == {"file": "scans", "slice": "2:middle", "window": "40,400",
                                "max_image_pixels": 134217728}
    with pytest.raises(ConfigError) as caught:  # seg_folder reads no slice or window, and its folder differs
        load_config(ct, ["data.source=seg_folder"])
    assert [p.split("=")[0] for p in caught.value.problems] == ["data.file", "data.slice", "data.window"]


@pytest.mark.parametrize("config, overrides, refused", [
    ("own_data/ct_volumes_lora_finetune.yaml", ["data.source=csv", "data.file=l.csv"], []),
    ("own_data/ct_volumes_lora_finetune.yaml", ["data.source=npz", "data.file=f.npz"],
     ["max_image_pixels", "slice", "window"]),  # an .npz holds arrays: no image files to read
    ("own_data/csv_lora_finetune.yaml", ["data.source=folder"], ["file"]),  # a CSV is no folder
    ("own_data/csv_lora_finetune.yaml", ["data.source=folder", "data.file=site"], []),
    ("chest_xray/mednist_cxr_lora_tpp.yaml", ["data.source=folder", "data.file=site"], []),  # classes: carried
    ("chest_xray/mednist_cxr_lora_tpp.yaml", ["data.source=seg_npz", "data.file=s.npz"], ["classes"]),
    ("breast_us/busi_seg_lora_tpp.yaml", ["data.source=seg_folder", "data.file=site"],
     ["class_names_key", "group_key", "label_key"]),  # group_key: an array there, a metadata.csv column here
])
def test_the_shipped_configs_switched_to_another_source_carry_or_refuse_as_documented(config, overrides, refused):
    """docs/data.md: options both sources read alike are carried over, the rest set away from their defaults are
    refused, each named."""
    if not refused:
        cfg = load_config(CONFIG_DIR / config, overrides)
        assert cfg.data.source == overrides[0].split("=")[1]
        return
    with pytest.raises(ConfigError) as caught:
        load_config(CONFIG_DIR / config, overrides)
    assert [p.split("=")[0] for p in caught.value.problems] == [f"data.{key}" for key in refused]
