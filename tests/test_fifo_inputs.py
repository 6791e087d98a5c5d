"""A fifo where tpp reads a config, a predictions.csv or a run's files (``tpp compare``, ``tpp plot``): an error
naming it as "not a regular file (fifo)", at once. A plain ``open`` would wait for a writer for ever, so on a
regression these tests hang rather than fail (as the other fifo tests do); ``Path.is_file()`` would call it
missing."""
import json
import os
import sys
import types

import pytest
from helpers import run_cli

from tpp.errors import ConfigError, TppError


def test_a_config_that_is_a_fifo_is_named_as_one(tmp_path, capsys):
    from tpp.config.parse import load_yaml

    os.mkfifo(tmp_path / "cfg.yaml")
    with pytest.raises(ConfigError, match=r"config file '.*cfg\.yaml' is not a regular file \(fifo\)\."):
        load_yaml(tmp_path / "cfg.yaml")
    assert run_cli("validate", str(tmp_path / "cfg.yaml")) == 2
    err = capsys.readouterr().err
    assert "is not a regular file (fifo)" in err and "does not exist" not in err and "Traceback" not in err
    (tmp_path / "folder.yaml").mkdir()
    with pytest.raises(ConfigError, match=r"'.*folder\.yaml' is not a regular file \(folder\)"):
        load_yaml(tmp_path / "folder.yaml")
    with pytest.raises(ConfigError, match=r"config file '.*gone\.yaml' does not exist"):
        load_yaml(tmp_path / "gone.yaml")


def test_a_config_that_cannot_be_read_is_named(tmp_path, monkeypatch):
    """No permission to read it (simulated: the tests may run as root): a ConfigError, never a traceback."""
    import tpp.data.file_kinds as file_kinds
    from tpp.config.parse import load_yaml

    config = tmp_path / "locked.yaml"
    config.write_text("recipe: finetune\n")

    def refused(path, flags):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(file_kinds, "nonblocking", refused)
    with pytest.raises(ConfigError, match=r"config file '.*locked\.yaml' cannot be read \(Permission denied\)"):
        load_yaml(config)


def test_read_predictions_of_a_fifo_is_an_error_naming_it(tmp_path):
    from tpp.predictions_csv import read_predictions

    os.mkfifo(tmp_path / "predictions.csv")
    with pytest.raises(TppError, match=r"'.*predictions\.csv' is not a regular file \(fifo\)"):
        read_predictions(tmp_path / "predictions.csv")
    (tmp_path / "ok.csv").write_bytes(b"\xef\xbb\xbfsplit,label\r\ntest,a\r\n")  # a spreadsheet's CSV
    assert read_predictions(tmp_path / "ok.csv") == [{"split": "test", "label": "a"}]


@pytest.fixture
def toy_run(tmp_path, monkeypatch):
    """A finished run of a registered toy recipe whose row reads the adapter card; no wall time recorded (the
    table falls back to log.jsonl)."""
    from tpp.compare import card_of
    from tpp.recipes.registry import RECIPES, Recipe

    module = types.ModuleType("tpp.recipes.toy_recipe")
    module.compare_row = lambda run: {"method": card_of(run.path / "adapter").get("method")}
    monkeypatch.setitem(sys.modules, "tpp.recipes.toy_recipe", module)
    monkeypatch.setitem(RECIPES, "toy_recipe", Recipe("a toy", ("recipe", "data")))
    run = tmp_path / "toy_run"
    (run / "adapter").mkdir(parents=True)
    (run / "config.yaml").write_text("recipe: toy_recipe\n")
    (run / "status.json").write_text(json.dumps({"status": "succeeded"}))
    (run / "metrics.json").write_text(json.dumps({"n": 1}))
    (run / "adapter" / "tpp_card.json").write_text(json.dumps({"method": "lora"}))
    (run / "log.jsonl").write_text(json.dumps({"event": "step", "step": 1, "loss": 0.5, "time": 7.0}) + "\n")
    return run


@pytest.mark.parametrize("name", ["status.json", "metrics.json", "config.yaml", "log.jsonl",
                                  "adapter/tpp_card.json"])
def test_compare_names_a_run_file_that_is_a_fifo(toy_run, capsys, name):
    from tpp.compare import compare_runs

    assert compare_runs([toy_run])[0]["method"] == "lora" and compare_runs([toy_run])[0]["wall_time_s"] == 7.0
    (toy_run / name).unlink()
    os.mkfifo(toy_run / name)
    assert run_cli("compare", str(toy_run)) == 2
    err = capsys.readouterr().err
    assert f"'{toy_run / name}' is not a regular file (fifo)" in err and "Traceback" not in err
    assert ".." not in err and "has no metrics.json" not in err and "neither" not in err


def test_compare_names_a_run_folder_that_is_a_fifo(tmp_path, capsys):
    os.mkfifo(tmp_path / "run")
    assert run_cli("compare", str(tmp_path / "run")) == 2
    assert f"'{tmp_path / 'run'}' is not a folder" in capsys.readouterr().err


@pytest.fixture
def plot_run(tmp_path):
    """A classification run that trained (log.jsonl) and evaluated (predictions.csv, metrics.json)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (
        {"event": "step", "step": 1, "loss": 0.9}, {"event": "step", "step": 2, "loss": 0.5})))
    (run / "status.json").write_text(json.dumps({"status": "succeeded"}))
    (run / "metrics.json").write_text(json.dumps({"test": {"threshold": 0.5, "positive_class_index": 1}}))
    (run / "predictions.csv").write_text("split,index,label,prob_a,prob_b,prediction\n"
                                         "test,0,a,0.8,0.2,a\ntest,1,b,0.3,0.7,b\n")
    return run


@pytest.mark.parametrize("name", ["log.jsonl", "status.json", "predictions.csv", "metrics.json"])
def test_plot_names_a_run_file_that_is_a_fifo_and_writes_nothing(plot_run, capsys, name):
    pytest.importorskip("matplotlib")
    assert run_cli("plot", str(plot_run)) == 0
    pictures = {p.name for p in plot_run.glob("*.png")}
    assert pictures == {"curves.png", "roc.png", "calibration.png"}
    for picture in pictures:
        (plot_run / picture).unlink()
    capsys.readouterr()
    (plot_run / name).unlink()
    os.mkfifo(plot_run / name)
    assert run_cli("plot", str(plot_run)) == 2
    err = capsys.readouterr().err
    assert f"'{plot_run / name}' is not a regular file (fifo)" in err and "Traceback" not in err
    assert "has no log.jsonl" not in err and not list(plot_run.glob("*.png"))


def test_plot_names_a_run_folder_that_is_a_fifo(tmp_path, capsys):
    os.mkfifo(tmp_path / "run")
    assert run_cli("plot", str(tmp_path / "run")) == 2
    assert f"'{tmp_path / 'run'}' is a fifo; tpp plot takes a run folder" in capsys.readouterr().err


def test_a_site_map_swapped_for_a_fifo_after_its_look_is_refused_at_once(tmp_path, monkeypatch):
    """``read_site_map`` looked at the path (no fifo), then opened it with a plain ``open``: a file swapped for a
    fifo in between made it wait for a writer for ever. The spies swap the file for a fifo at its open and raise
    where a real open would block, so a regression fails instead of hanging."""
    import builtins

    from tpp.serve.predict import read_site_map

    mapping = tmp_path / "map.csv"
    mapping.write_text("image,site\na.png,s\n")
    assert read_site_map(str(mapping)) == [("a.png", "s")]
    real_open, real_os_open = builtins.open, os.open

    def swapped() -> None:
        mapping.unlink()
        os.mkfifo(mapping)

    def spy_open(file, *args, **kwargs):
        if str(file) == str(mapping):
            swapped()
            raise AssertionError(f"'{file}' opened blocking: a fifo swapped in would wait for a writer for ever")
        return real_open(file, *args, **kwargs)

    def spy_os_open(file, flags, *args, **kwargs):
        if str(file) == str(mapping):
            swapped()
            assert flags & os.O_NONBLOCK, f"'{file}' opened blocking"
        return real_os_open(file, flags, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(os, "open", spy_os_open)
    with pytest.raises(TppError, match=rf"^site map '{mapping}' is not a regular file \(fifo\)\.$"):
        read_site_map(str(mapping))


def test_tpp_cp_reads_its_source_once(tmp_path, monkeypatch, capsys):
    """tpp cp checked the source (load_yaml) and then opened it by name again to copy it: a file swapped for a fifo
    in between made the copy wait for a writer for ever. The text checked is the text copied."""
    import tpp.data.file_kinds as file_kinds

    source = tmp_path / "my.yaml"
    source.write_text("recipe: finetune\nseed: 3  # kept\n")
    reads = []
    whole = file_kinds.read_whole_regular

    def counted(path, *args, **kwargs):
        reads.append(str(path))
        return whole(path, *args, **kwargs)

    monkeypatch.setattr(file_kinds, "read_whole_regular", counted)
    monkeypatch.setattr("pathlib.Path.read_text", lambda self, *a, **k: pytest.fail(f"{self} opened again"))
    assert run_cli("cp", str(source), str(tmp_path / "copy.yaml")) == 0
    assert reads == [str(source)]
    monkeypatch.undo()
    assert (tmp_path / "copy.yaml").read_text() == "recipe: finetune\nseed: 3  # kept\n"
