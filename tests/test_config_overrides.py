"""``key=value`` overrides: a mapping value for a section merges into it (as its dotted keys would), a free-form
dict's replaces it, and a value that starts like a YAML mapping or list but does not parse is an error naming it.
Through every path overrides come in: load_config, ``tpp validate`` / ``tpp run`` and the Python API."""
import re

import pytest
import yaml
from helpers import FINETUNE_CONFIG

import tpp
from tpp.api import override_args
from tpp.config import RunConfig, apply_overrides, load_config, parse_override, repeated_overrides
from tpp.config.parse import free_form_dicts
from tpp.errors import ConfigError, TppError
from tpp.recipes import CONFIG_DIR

FINETUNE = CONFIG_DIR / FINETUNE_CONFIG
SEGMENTER = CONFIG_DIR / "incontext/segmentation.yaml"


def test_a_mapping_for_a_section_merges_into_it_as_its_dotted_keys_would():
    """``train={lr: 1e-4}`` replaced the file's whole train section: its epochs, batch size, weight decay ...
    fell back to their defaults without a word."""
    written = yaml.safe_load(FINETUNE.read_text())["train"]
    dotted = load_config(FINETUNE, ["train.lr=1e-4", "adapter.r=4"]).to_dict()
    merged = load_config(FINETUNE, ["train={lr: 1e-4}", "adapter={r: 4}"]).to_dict()
    assert merged == dotted
    assert merged["train"]["epochs"] == written["epochs"] != 10 and merged["train"]["lr"] == pytest.approx(1e-4)
    assert merged["adapter"]["alpha"] == 16 and merged["adapter"]["r"] == 4
    whole = load_config(FINETUNE, ["train={lr: 1e-4, batch_size: 8}"]).train
    assert (whole.lr, whole.batch_size, whole.epochs) == (pytest.approx(1e-4), 8, written["epochs"])


def test_a_mapping_merges_recursively_into_the_parts_of_a_composed_method(tmp_path):
    both = tmp_path / "both.yaml"
    both.write_text("adapter:\n  method: [visual_prompt, lora]\n  lora: {r: 3, alpha: 6}\n  visual_prompt: {pad: 2}\n")
    options = load_config(both, ["adapter={lora: {r: 5}}"]).adapter.options
    assert options["lora"]["r"] == 5 and options["lora"]["alpha"] == 6 and options["visual_prompt"]["pad"] == 2
    assert load_config(both, ["adapter.lora={r: 5}"]).adapter.options == options


def test_a_mapping_for_a_free_form_dict_replaces_it():
    """``incontext.tasks`` maps task names to weights (no section of keys): a mapping given for it is the whole
    mapping, inside a section's mapping too."""
    cfg = load_config(SEGMENTER, ["incontext.tasks={shapes: 2}"], recipe="incontext")
    assert cfg.incontext.tasks == {"shapes": 2}
    nested = load_config(SEGMENTER, ["incontext={tasks: {shapes: 2}}"], recipe="incontext").incontext
    assert nested.tasks == {"shapes": 2} and nested.max_context == 8 and nested.kind == "segmentation"  # the file's


def test_the_free_form_dicts_of_the_config_are_its_dict_fields():
    """What replaces rather than merges: dict-typed fields, never a section (a dataclass)."""
    assert free_form_dicts(RunConfig) == {("incontext", "tasks"), ("adapter", "options"), ("data", "options"),
                                          ("pretext", "options")}


def test_a_section_set_twice_only_where_a_key_is_set_twice_is_refused():
    assert repeated_overrides(["train.max_steps=5", "train={lr: 1e-4}"]) == []
    assert repeated_overrides(["train={lr: 1e-4}", "train={max_steps: 5}", "adapter={lora: {r: 2}}",
                               "adapter.lora.alpha=4"]) == []
    assert repeated_overrides(["train.lr=1", "train={lr: 2}"]) == [
        "train.lr is given twice ('train.lr=1', then 'train={lr: 2}'); keep one"]
    assert repeated_overrides(["adapter={lora: {r: 2}}", "adapter.lora.r=4"]) == [
        "adapter.lora.r is given twice ('adapter={lora: {r: 2}}', then 'adapter.lora.r=4'); keep one"]
    assert repeated_overrides(["incontext.tasks.shapes=1", "incontext={tasks: {denoise: 1}}"]) == [
        "incontext.tasks.shapes is given twice ('incontext.tasks.shapes=1', then 'incontext={tasks: {denoise: 1}}', "
        "which sets the whole of incontext.tasks); keep one"]
    assert repeated_overrides(["train={lr: 1}", "train=5"]) == [
        "train.lr is given twice ('train={lr: 1}', then 'train=5', which sets the whole of train); keep one"]


@pytest.mark.parametrize("override, problem", [
    ("train={lr: 1", "expected ',' or '}', but got '<stream end>' (line 1, column 7 of the value)"),
    ("data.classes=[a, b", "expected ',' or ']', but got '<stream end>' (line 1, column 6 of the value)"),
    ("train={lr: 1}}", "expected '<document start>', but found '}' (line 1, column 8 of the value)"),
    ("adapter= {lora: [1, 2}", "expected ',' or ']', but got '}' (line 1, column 14 of the value)"),
])
def test_a_value_that_starts_like_a_mapping_or_list_but_does_not_parse_is_named(override, problem):
    """``train={lr: 1`` stayed the text '{lr: 1', then reported as a section that must be a mapping, or as a
    duplicate of a ``train.lr`` given beside it."""
    with pytest.raises(ConfigError) as caught:
        parse_override(override)
    said = str(caught.value)
    assert said.startswith(f"override '{override}': its value is not valid YAML: {problem}"), said
    assert repeated_overrides([override, "train.lr=1e-3", "data.classes=[c]", "adapter.r=2"]) == []
    with pytest.raises(ConfigError, match="is not valid YAML") as caught:
        load_config(FINETUNE, [override])
    assert "given twice" not in str(caught.value) and "must be a mapping" not in str(caught.value)


@pytest.mark.parametrize("split, piece", [(["train={lr:", "1e-4}"], "train={lr:"),
                                          (["data.classes=[a,", "b]"], "data.classes=[a,")])
def test_a_mapping_the_shell_split_at_a_space_says_to_quote_the_whole_override(split, piece, capsys):
    """``tpp validate X train={lr: 1e-4}`` unquoted reaches tpp as 'train={lr:' and '1e-4}': the advice was to
    quote the value as text, which is not what the user meant."""
    from tpp.cli import main

    with pytest.raises(ConfigError) as caught:
        parse_override(piece)
    assert "The shell splits an argument at its spaces: quote the whole override" in str(caught.value)
    assert main(["validate", FINETUNE_CONFIG, *split]) == 2
    err = capsys.readouterr().err
    assert f"override '{piece}'" in err and "quote the whole override" in err and "Traceback" not in err, err
    with pytest.raises(ConfigError) as caught:  # cut inside, not at a space: no shell advice
        parse_override("train={lr: 1")
    assert "shell" not in str(caught.value)


def test_a_quoted_value_that_looks_like_a_mapping_stays_text():
    assert parse_override("site='{lr: 1'") == (["site"], "{lr: 1")
    assert parse_override("site=a: b: c") == (["site"], "a: b: c")  # no mapping or list meant: the text


def test_apply_overrides_merges_into_an_empty_or_absent_section_and_replaces_a_scalar():
    assert apply_overrides({}, ["train={lr: 1}", "train={epochs: 2}"]) == {"train": {"lr": 1, "epochs": 2}}
    assert apply_overrides({"train": 5}, ["train={lr: 1}"]) == {"train": {"lr": 1}}
    assert apply_overrides({"train": {"lr": 1}}, ["train={}"]) == {"train": {"lr": 1}}


def test_the_command_line_merges_a_section_and_names_a_malformed_value(tmp_path, capsys):
    from tpp.cli import main

    nowhere = f"data.root={tmp_path / 'no_data'}"
    assert main(["validate", FINETUNE_CONFIG, nowhere, "train.max_steps=5", "train={lr: 1e-4}"]) == 2
    err = capsys.readouterr().err
    assert "given twice" not in err and "no_data" in err, err  # accepted: refused for its missing data only
    for argv in (["validate", FINETUNE_CONFIG, nowhere, "train={lr: 1", "train.lr=1e-3"],
                 ["run", "finetune", "--config", FINETUNE_CONFIG, nowhere, f"output_dir={tmp_path / 'run'}",
                  "train={lr: 1"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "override 'train={lr: 1': its value is not valid YAML: expected ',' or '}'" in err, err
        assert "given twice" not in err and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()


def test_the_python_api_merges_a_section_and_names_a_malformed_value(tmp_path):
    given = {"train.max_steps": 2, "train": {"lr": 1e-4}}
    cfg = load_config(FINETUNE, override_args(given))
    assert (cfg.train.max_steps, cfg.train.lr, cfg.train.epochs) == (2, pytest.approx(1e-4), 30)
    nowhere = str(tmp_path / "no_data")  # accepted, then refused for its data: nothing is trained
    with pytest.raises(TppError) as caught:
        tpp.finetune(FINETUNE_CONFIG, {"data.root": nowhere, **given}, output_dir=tmp_path / "run")
    assert "given twice" not in str(caught.value) and "no_data" in str(caught.value)
    with pytest.raises(ConfigError, match=r"override 'train=\{lr: 1': its value is not valid YAML"):
        tpp.finetune(FINETUNE_CONFIG, [f"data.root={nowhere}", "train={lr: 1"], output_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override", ["adapter=null", "data=null", "backbone=~", "train=null", "adapter="])
def test_a_section_set_to_null_is_refused_not_reset_to_its_defaults(override, tmp_path):
    """``adapter=null`` reset the file's adapter section to the defaults without a word (r 8 for the file's r 4),
    while ``train=null`` was refused: each is an error naming the section and how to set its keys, the one refusal
    of a section left null in the file too (``parse.not_a_mapping``)."""
    section = override.split("=")[0]
    said = (f"config key '{section}' must be a mapping, got NoneType (None): it is a section, not a value; set its "
            f"keys ({section}.<key>=value, or {section}={{key: value}}).")
    with pytest.raises(ConfigError, match=re.escape(f"with its overrides: {said}")):
        load_config(FINETUNE, [override, "adapter.r=4"] if section != "adapter" else [override])
    data = yaml.safe_load(FINETUNE.read_text())
    data[section] = None
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=re.escape(f"config.yaml': {said}")):
        load_config(tmp_path / "config.yaml")
    assert load_config(FINETUNE, [f"{section}={{}}"]).to_dict() == load_config(FINETUNE).to_dict()


def test_a_task_section_set_to_null_is_refused_not_reset_to_its_defaults():
    """``classification=null`` (a task's section: not a RunConfig field) passed the section check and reset the
    file's classification options to the defaults without a word, as ``adapter=null`` did."""
    with pytest.raises(ConfigError, match="classification"):
        load_config(FINETUNE, ["classification.threshold=0.3", "classification=null"])


@pytest.mark.parametrize("section", ["adapter", "data", "classification"])
def test_a_section_left_empty_in_the_file_is_refused_as_train_is(tmp_path, section):
    """``adapter:`` with every key commented out is null in YAML: it gave the defaults without a word (lora for
    the file's method), while an empty ``train:`` was refused ('must be a mapping'); each is refused alike."""
    data = yaml.safe_load(FINETUNE.read_text())
    data[section] = None
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=rf"'{section}' must be a mapping, got NoneType"):
        load_config(path)
    data["train"] = None
    data[section] = {}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="'train' must be a mapping, got NoneType"):
        load_config(path)


@pytest.mark.parametrize("overrides, said", [
    (["train.lr=1e-3", "train.lr=1e-4"], "override train.lr is given twice ('train.lr=1e-3', then 'train.lr=1e-4')"),
    (["train.lr=1e-3", "train={lr: 1e-4}"], "override train.lr is given twice ('train.lr=1e-3', then "
                                            "'train={lr: 1e-4}'); keep one."),
])
def test_load_config_and_run_recipe_refuse_a_key_given_twice(overrides, said, tmp_path):
    """Only `tpp run` / `tpp validate` and tpp.finetune refused it; load_config and run_recipe (the benchmarks'
    entry) trained with the last one without a word."""
    from tpp.recipes import run_recipe

    with pytest.raises(ConfigError) as caught:
        load_config(FINETUNE, overrides)
    assert said in str(caught.value)
    with pytest.raises(ConfigError, match=r"train\.lr is given twice"):
        run_recipe("finetune", FINETUNE, [f"output_dir={tmp_path / 'run'}", *overrides])
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match=r"train\.lr is given twice"):
        load_config({"train": {"max_steps": 2}}, overrides)  # a config built in Python too
    assert load_config(FINETUNE, ["train.max_steps=5", "train={lr: 1e-4}"]).train.max_steps == 5  # two keys


def test_later_wins_lets_the_last_of_a_repeated_key_win_when_asked():
    cfg = load_config(FINETUNE, ["train.lr=1e-3", "adapter.r=2", "train={lr: 1e-4}", "adapter.r=4"], later_wins=True)
    assert cfg.train.lr == pytest.approx(1e-4) and cfg.adapter.options["r"] == 4


def test_the_benchmarks_tpp_variants_replace_the_protocols_settings(tmp_path, monkeypatch):
    """tpp_gain appends a variant's overrides (train.max_steps=1600) to the protocol's own (train.max_steps=...):
    the one caller that means the later to win, and says so."""
    import sys
    from pathlib import Path

    import tpp.recipes

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import tpp_gain

    loaded = []

    def loading_only(name, config, overrides, overwrite=False, started=None, **kw):
        loaded.append(load_config(config, overrides, recipe=name, **kw))
        raise KeyboardInterrupt  # stop before anything trains

    monkeypatch.setattr(tpp.recipes, "run_recipe", loading_only)
    bench = tpp_gain.Bench(tmp_path / "cache", tpp_gain.PROTOCOL, "builtin:mae-vit-tiny-med", str(tmp_path))
    for variant, key, value in (("steps1600", "max_steps", 1600), ("lr1e-4", "lr", 1e-4)):
        with pytest.raises(KeyboardInterrupt):
            bench.tpp_adapter("breastmnist", "lora", "mae", variant, 0)
        assert getattr(loaded[-1].train, key) == pytest.approx(value)


@pytest.mark.parametrize("given, kept", [
    (["train.batch_size=16", "train.max_steps=6", "train={max_steps: 3}"],
     ["train.batch_size=16", "train={max_steps: 3}"]),
    (["train.lr=1e-3", "train.lr=1e-4"], ["train.lr=1e-4"]),
    (["train.lr=1e-3", "train=5"], ["train=5"]),  # a value set whole: tpp's repetition too
    (["adapter.init_from=p", "adapter.r=2", "adapter={method: bottleneck}"], ["adapter.init_from=p",
                                                                            "adapter={method: bottleneck}"]),
    (["adapter.r=2", "adapter.method=linear_probe", "adapter.r=4"], ["adapter.method=linear_probe", "adapter.r=4"]),
    (["adapter.r=2", "adapter={alpha: 4}"], ["adapter.r=2", "adapter={alpha: 4}"]),  # merged, as tpp merges
    (["incontext.tasks={busi: 1}", "incontext.tasks={shapes: 1}"], ["incontext.tasks={shapes: 1}"]),
])
def test_the_tests_later_wins_drops_only_what_tpp_would_call_given_twice(given, kept):
    """tests/helpers.later_wins dropped every earlier key of a section a later mapping named (``train={max_steps: 3}``
    dropped the helper's train.batch_size), where tpp merges the mapping into the section."""
    from helpers import later_wins

    argv = ["run", "finetune", "--config", "a=b.yaml", *given]
    assert later_wins(argv) == ["run", "finetune", "--config", "a=b.yaml", *kept]
    assert repeated_overrides(kept) == []  # what is left, tpp takes
    assert later_wins(["validate", "c.yaml", *given]) == ["validate", "c.yaml", *kept]
