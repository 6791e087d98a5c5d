import os
import re

import pytest
import yaml
from helpers import without_config_name

from tpp.config import RunConfig, apply_overrides, build_config, help_lines, load_config, load_yaml, parse_override
from tpp.errors import ConfigError
from tpp.recipes import CONFIG_DIR, get_recipe, shipped_configs
from tpp.training import plan_steps


CONFIGS_ON_DISK = sorted(p for p in CONFIG_DIR.rglob("*") if p.suffix in (".yaml", ".yml"))


def test_shipped_configs_are_every_yaml_file_in_the_config_folder_recursively():
    assert shipped_configs() == CONFIGS_ON_DISK and len(CONFIGS_ON_DISK) >= 4


@pytest.mark.parametrize("path", CONFIGS_ON_DISK, ids=lambda p: p.relative_to(CONFIG_DIR).as_posix())
def test_shipped_config_loads_and_passes_its_recipe_check(path, tmp_path, monkeypatch):
    """What `tpp run RECIPE --config FILE` does first, RECIPE from the file's first line: the config loads
    under that recipe (its own ``recipe:``) and the recipe's ``check(cfg)`` accepts it (with a data root set,
    as the README's commands set one: incontext refuses to start without)."""
    monkeypatch.setenv("TPP_DATA_ROOT", str(tmp_path))
    recipe = path.read_text().split("\n", 1)[0].removeprefix("# tpp run ").split(" ", 1)[0]
    assert path.read_text().startswith(f"# tpp run {recipe} --config"), path
    cfg = load_config(path, recipe=recipe)
    assert cfg.recipe == recipe == yaml.safe_load(path.read_text())["recipe"]
    get_recipe(recipe).check(cfg)


def test_unknown_key_names_its_path(tmp_path):
    with pytest.raises(ConfigError, match=r"'train\.lrr'"):
        build_config({"train": {"lrr": 1}})
    with pytest.raises(ConfigError, match=r"'adapter\.rank'"):
        build_config({"adapter": {"rank": 4}})


def test_wrong_type_names_key_and_type():
    with pytest.raises(ConfigError, match=r"'train\.epochs' must be int"):
        build_config({"train": {"epochs": "ten"}})
    with pytest.raises(ConfigError, match=r"unknown data\.source 'ftp'"):
        build_config({"data": {"source": "ftp"}})
    with pytest.raises(ConfigError, match="adapter.r must be at least 1"):
        build_config({"adapter": {"r": 0}})
    with pytest.raises(ConfigError, match="adapter.bias='lora_only' is not supported.*bitfit"):
        build_config({"adapter": {"bias": "lora_only"}})
    assert build_config({"adapter": {"bias": "none"}}).adapter.resolved_options()["bias"] == "none"


def test_overrides_are_typed_and_floats_accept_exponents():
    assert parse_override("train.lr=1e-4") == (["train", "lr"], "1e-4")
    cfg = build_config(apply_overrides({}, ["train.lr=1e-4", "adapter.r=4", "data.source=npz", "data.classes=[a, b]",
                                            "train.max_steps=7"]))
    assert cfg.train.lr == pytest.approx(1e-4) and cfg.adapter.options == {"r": 4}
    assert cfg.adapter.resolved_options()["r"] == 4 and cfg.data.options["classes"] == ["a", "b"]
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["train.lr"])


def test_fp16_on_cpu_is_a_config_error():
    with pytest.raises(ConfigError, match="fp16"):
        build_config({"train": {"mixed_precision": "fp16"}})


def test_max_steps_takes_precedence_over_epochs():
    cfg = build_config({"train": {"epochs": 3, "batch_size": 10}})
    assert plan_steps(cfg.train, 95).num_steps == 30  # 3 epochs x 10 batches
    cfg = build_config({"train": {"epochs": 3, "batch_size": 10, "max_steps": 7}})
    plan = plan_steps(cfg.train, 95)
    assert plan.num_steps == 7 and plan.eval_every == 7


def test_resolved_config_round_trips(tmp_path):
    """A loaded config's paths are absolute, so its dump (a run's config.yaml) loads the same from anywhere."""
    first = tmp_path / "c.yaml"
    first.write_text(yaml.safe_dump({"adapter": {"r": 2}, "data": {"name": "pneumoniamnist", "root": "data"},
                                     "backbone": {"path": "../models/m"}}))
    cfg = load_config(first)
    assert cfg.backbone.path == str(tmp_path.parent / "models" / "m") and cfg.data.root == str(tmp_path / "data")
    (tmp_path / "elsewhere").mkdir()
    path = tmp_path / "elsewhere" / "c.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    again = load_config(path)
    assert again.to_dict() == cfg.to_dict()


def test_help_lists_every_key():
    text = "\n".join(help_lines())
    for key in ("site", "backbone.path", "adapter.method", "data.label_fraction", "train.max_steps", "output_dir"):
        assert f"\n{key} (" in "\n" + text
    assert "\nadapter.r (int, default 8) [adapter.method=lora]: " in text
    assert "\npretext.mask_ratio (float, default 0.75) [pretext.name=mae]: " in text
    assert "\npretext.dino_ema (float, default 0.99) [pretext.name=dino]: " in text


def test_pretext_options_belong_to_the_chosen_pretext():
    cfg = build_config({"recipe": "tpp", "pretext": {"name": "dino", "dino_ema": 0.9}})
    assert cfg.pretext.resolved().dino_ema == 0.9 and cfg.to_dict()["pretext"]["dino_crop_min"] == 0.4
    assert cfg.to_dict()["pretext"].keys() == {"name", "dino_out_dim", "dino_student_temp", "dino_teacher_temp",
                                               "dino_ema", "dino_crop_min"}
    with pytest.raises(ConfigError,
                       match=r"'pretext\.dino_ema' for pretext.name=mae \(its options: decoder, mask_ratio"):
        build_config({"recipe": "tpp", "pretext": {"dino_ema": 0.9}})
    with pytest.raises(ConfigError, match=r"pretext.mask_ratio must be in \(0, 1\), got 1.5"):
        build_config({"recipe": "tpp", "pretext": {"mask_ratio": 1.5}})
    with pytest.raises(ConfigError, match=r"'pretext\.norm_pix_loss' must be bool"):
        build_config({"recipe": "tpp", "pretext": {"norm_pix_loss": "maybe"}})
    with pytest.raises(ConfigError, match="unknown pretext.name 'simclr'. Known: dino, mae"):
        build_config({"recipe": "tpp", "pretext": {"name": "simclr"}})


def test_plugin_options_are_typed_and_sections_must_be_mappings():
    cfg = build_config(apply_overrides({}, ["recipe=tpp", "pretext.mask_ratio=5e-1", "adapter.dropout=1e-1"]))
    assert cfg.pretext.options == {"mask_ratio": 0.5} and cfg.adapter.options == {"dropout": 0.1}
    assert cfg.to_dict()["pretext"]["mask_ratio"] == 0.5
    for section in ("pretext", "adapter"):
        with pytest.raises(ConfigError, match=f"config key '{section}' must be a mapping, got str"):
            build_config(apply_overrides({}, ["recipe=tpp", f"{section}=dino"]))


def test_configs_saved_with_every_pretexts_options_still_load(tmp_path):
    from tpp.recipes.resume import check_same_config

    old = build_config({"recipe": "tpp", "backbone": {"path": "../models/mae"}}).to_dict()  # a relative path
    old["pretext"].update(dino_out_dim=256, dino_student_temp=0.1, dino_teacher_temp=0.04, dino_ema=0.99,
                          dino_crop_min=0.4)  # how config.yaml looked before options were per pretext
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    cfg = load_config(tmp_path / "config.yaml")
    folder_relative = os.path.normpath(tmp_path / old["backbone"]["path"])
    expected = build_config({"recipe": "tpp", "backbone": {"path": folder_relative}})
    assert cfg.pretext.name == "mae" and cfg.to_dict() == expected.to_dict()  # its relative path: from its folder
    # a run interrupted before these changes can resume: its config.yaml's paths were the current folder's
    check_same_config(tmp_path, load_config(tmp_path / "config.yaml", [f"backbone.path={old['backbone']['path']}"])
                      .to_dict())
    old["pretext"]["dino_ema"] = 0.5  # a changed value of another pretext is still an error, with its owner
    with pytest.raises(ConfigError, match="dino_ema is an option of pretext dino: set pretext.name=dino"):
        build_config(old)


def test_switching_the_pretext_on_the_command_line_drops_the_files_options():
    shipped = CONFIG_DIR / "breast_us/mae_vit_tiny_lora_tpp.yaml"
    assert "mask_ratio" in yaml.safe_load(shipped.read_text())["pretext"]
    cfg = load_config(shipped, ["pretext.name=dino", "pretext.dino_ema=0.9"])
    assert cfg.pretext.name == "dino" and cfg.pretext.options == {"dino_ema": 0.9}
    assert load_config(shipped, ["pretext.name=mae", "pretext.norm_pix_loss=true"]).pretext.options == {
        "mask_ratio": 0.75, "norm_pix_loss": True}  # same pretext: the file's options stay
    with pytest.raises(ConfigError, match=r"'pretext\.mask_ratio' for pretext.name=dino"):
        load_config(shipped, ["pretext.name=dino", "pretext.mask_ratio=0.5"])


def test_switching_the_method_on_the_command_line_drops_the_files_options():
    shipped = CONFIG_DIR / "breast_us/mae_vit_tiny_lora_finetune.yaml"
    assert "r" in yaml.safe_load(shipped.read_text())["adapter"]
    cfg = load_config(shipped, ["adapter.method=bottleneck", "adapter.dim=32", "adapter.init_from=runs/tpp/adapter"])
    assert cfg.adapter.method == "bottleneck" and cfg.adapter.options == {"dim": 32}
    assert cfg.adapter.init_from == os.path.abspath("runs/tpp/adapter")  # a command line path: the current folder's
    assert cfg.adapter.explicit == {"method", "dim", "init_from"}
    assert load_config(shipped, ["adapter.method=lora", "adapter.dropout=0.2"]).adapter.options["r"] == 8  # same method
    with pytest.raises(ConfigError, match=r"adapter\.r is an option of method loha, lokr, lora \(set adapter\.method"):
        load_config(shipped, ["adapter.method=bottleneck", "adapter.r=4"])
    with pytest.raises(ConfigError, match=r"adapter\.dim is an option of method bottleneck: set adapter\.method=bott"):
        load_config(shipped, ["adapter.dim=4"])


def test_a_method_that_stays_a_part_keeps_the_files_options(tmp_path):
    """Composing the file's lora with a prompt on the command line used to drop the file's r silently."""
    shipped = CONFIG_DIR / "breast_us/mae_vit_tiny_lora_finetune.yaml"
    r = yaml.safe_load(shipped.read_text())["adapter"]["r"]
    composed = load_config(shipped, ["adapter.method=[visual_prompt, lora]"])
    assert composed.adapter.method == "visual_prompt+lora" and composed.adapter.options["lora"]["r"] == r
    both = tmp_path / "both.yaml"
    both.write_text("adapter:\n  method: [visual_prompt, lora]\n  lora: {r: 3}\n  visual_prompt: {pad: 2}\n")
    assert load_config(both, ["adapter.method=lora"]).adapter.options == {"r": 3}  # the part, flat
    assert load_config(both, ["adapter.method=visual_prompt + lora"]).adapter.method == "visual_prompt+lora"
    assert load_config(both, ["adapter.method=visual_prompt+lora"]).adapter.options["visual_prompt"]["pad"] == 2
    swapped = load_config(both, ["adapter.method=[vpt, lora]"]).adapter.options
    assert swapped["lora"]["r"] == 3 and "visual_prompt" not in swapped
    assert load_config(both, ["adapter.method=bitfit"]).adapter.options == {}  # no part in common: dropped
    assert load_config(shipped, ["adapter.method=[lora]"]).adapter.options["r"] == r  # the same method, as a list


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1,\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(bad)


def test_defaults_are_a_runconfig():
    assert isinstance(build_config({}), RunConfig)


def test_yaml_no_is_the_string_no_for_choices(tmp_path):
    from tpp.config import load_config
    from tpp.recipes import CONFIG_DIR

    cfg = load_config(CONFIG_DIR / "breast_us/mae_vit_tiny_lora_finetune.yaml", ["train.mixed_precision=no"])
    assert cfg.train.mixed_precision == "no"


@pytest.mark.parametrize("key, value, message", [
    ("train.head_lr_scale", -1, r"train\.head_lr_scale must be positive"),
    ("train.head_lr_scale", 0, r"train\.head_lr_scale must be positive"),
    ("train.weight_decay", -0.01, r"train\.weight_decay must not be negative, got -0\.01"),
    ("train.adam_beta2", 2, r"train\.adam_beta2 must lie in \[0, 1\).*got 2\.0"),
    ("train.adam_beta2", 1, r"train\.adam_beta2 must lie in \[0, 1\)"),
    ("train.eval_batch_size", 0, r"train\.eval_batch_size must be at least 1, got 0"),
    ("train.eval_every", -2, r"train\.eval_every must be at least 1"),
    ("train.lr", ".inf", r"train\.lr must be a finite number"),
    ("train.weight_decay", ".nan", r"train\.weight_decay must be a finite number"),
    ("seed", -1, r"seed must be an integer in 0 \.\. 2\*\*32 - 1.*got -1"),
    ("seed", 2**32, r"seed must be an integer in 0 \.\. 2\*\*32 - 1.*got 4294967296"),
    ("data.val_fraction", -0.5, r"data\.val_fraction must lie in \[0, 1\).*got -0\.5"),
    ("data.val_fraction", 1.5, r"data\.val_fraction must lie in \[0, 1\).*got 1\.5"),
    ("data.test_fraction", 1, r"data\.test_fraction must lie in \[0, 1\)"),
    ("adapter.alpha", 0, r"adapter\.alpha must be a positive number .*at 0 the adapter would never train\), got 0"),
    ("adapter.alpha", -16, r"adapter\.alpha must be a positive number"),
])
def test_out_of_range_training_and_split_values_are_config_errors(key, value, message):
    with pytest.raises(ConfigError, match=message):
        build_config(apply_overrides({}, [f"{key}={value}"]))


def test_split_fractions_must_leave_images_for_training_also_in_a_pool():
    with pytest.raises(ConfigError, match=r"data\.val_fraction \+ data\.test_fraction must be below 1"):
        build_config({"data": {"val_fraction": 0.5, "test_fraction": 0.5}})
    with pytest.raises(ConfigError, match=r"pool\[1\]\.data\.val_fraction must lie in \[0, 1\)"):
        build_config({"recipe": "pretrain_backbone", "pool": [{"data": {}}, {"data": {"val_fraction": -0.1}}]})
    cfg = build_config(apply_overrides({}, ["seed=4294967295", "train.head_lr_scale=10", "train.weight_decay=0",
                                            "train.adam_beta2=0", "data.val_fraction=0", "data.test_fraction=0.9"]))
    assert cfg.seed == 2**32 - 1 and cfg.train.adam_beta2 == 0 and cfg.data.val_fraction == 0  # the edges are fine


def test_out_of_range_values_are_one_paragraph_cli_errors(tmp_path, capsys):
    from tpp.cli import main

    shipped = "breast_us/mae_vit_tiny_lora_finetune.yaml"
    for override in ("train.eval_batch_size=0", "train.weight_decay=-1", "train.adam_beta2=2", "seed=-1",
                     "data.val_fraction=1.5", "train.head_lr_scale=-1"):
        assert main(["validate", shipped, override]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and override.split("=")[0] in err


# ---- configs scoped to their recipe -------------------------------------------------------------------------

FINETUNE = CONFIG_DIR / "breast_us/mae_vit_tiny_lora_finetune.yaml"
SEG_FINETUNE = CONFIG_DIR / "breast_us/busi_seg_lora_finetune.yaml"
TPP = CONFIG_DIR / "breast_us/mae_vit_tiny_lora_tpp.yaml"
POOL = CONFIG_DIR / "backbones/mae_vit_tiny_med_pool.yaml"


def problems(path, overrides, recipe=None) -> list[str]:
    """The lines of the one ConfigError that loading ``path`` with ``overrides`` raises."""
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides, recipe=recipe)
    assert str(info.value).startswith(f"config '{path}'")  # the file the problems are about
    return without_config_name(str(info.value)).splitlines()


@pytest.mark.parametrize("path, override, line", [
    (FINETUNE, "pretext.mask_ratio=0.9", "pretext.mask_ratio: the finetune recipe does not use the pretext section "
                                         "(pretrain_backbone and tpp do)."),
    (FINETUNE, "pool=[{data: {name: bloodmnist}}]", "pool: the finetune recipe does not use pool (pretrain_backbone "
                                                    "and multitask do)."),
    (FINETUNE, "model.hidden_size=7", "model.hidden_size: the finetune recipe does not use the model section"),
    (FINETUNE, "supervised_weight=0", "supervised_weight: the finetune recipe does not use supervised_weight"),
    (TPP, "task=segmentation", "task: the tpp recipe does not use task (finetune does)."),
    (TPP, "segmentation.dice_weight=2", "segmentation.dice_weight: the tpp recipe does not use the segmentation "
                                        "section (finetune does)."),
    (POOL, "adapter.r=4", "adapter.r: the pretrain_backbone recipe does not use the adapter section"),
    (POOL, "backbone.path=x", "backbone.path: the pretrain_backbone recipe does not use the backbone section"),
    (POOL, "site=a", "site: the pretrain_backbone recipe does not use site (finetune, tpp and "
                              "multitask do)."),
])
def test_a_key_the_recipe_does_not_use_is_an_error_naming_the_recipe(path, override, line):
    found = problems(path, [override])
    assert len(found) == 1 and found[0].startswith(line), found


@pytest.mark.parametrize("path, override, recipe, line", [
    (FINETUNE, "adapter.path=x", None, "adapter.path='x': the finetune recipe does not use adapter.path (evaluate "
                                       "does); drop it."),
    (TPP, "data.label_fraction=0.5", None, "data.label_fraction=0.5: the tpp recipe does not use data.label_fraction "
                                           "(finetune does); drop it."),
    (TPP, "adapter.init_from=runs/a", None, "adapter.init_from='runs/a': the tpp recipe does not use"),
    (POOL, "train.select_best=false", None, "train.select_best=False: the pretrain_backbone recipe does not use"),
    (FINETUNE, "data.use_eval_splits=true", "evaluate", "data.use_eval_splits=True: the evaluate recipe does not use"),
])
def test_a_key_the_recipe_never_reads_set_off_its_default_is_an_error(path, override, recipe, line):
    found = problems(path, [override, "adapter.path=a"] if recipe == "evaluate" else [override], recipe=recipe)
    assert len(found) == 1 and found[0].startswith(line), found
    assert load_config(path, [override.split("=")[0] + "=null"] if "init_from" in override or "path" in override
                       else []).recipe  # the default value is no error


def test_unknown_keys_suggest_the_close_known_key():
    assert problems(FINETUNE, ["train.lrr=0.1"]) == ["unknown config key 'train.lrr'; did you mean train.lr?"]
    assert problems(FINETUNE, ["trian.lr=0.1"]) == ["unknown config key 'trian'; did you mean train?"]
    assert problems(FINETUNE, ["adapter.alpah=4"]) == [
        "unknown config key 'adapter.alpah' for adapter.method=lora; did you mean adapter.alpha?"]
    assert problems(SEG_FINETUNE, ["segmentation.dice_weigth=2"]) == [
        "unknown config key 'segmentation.dice_weigth'; did you mean segmentation.dice_weight?"]
    assert problems(TPP, ["pretext.mask_ration=0.5"]) == [
        "unknown config key 'pretext.mask_ration' for pretext.name=mae; did you mean pretext.mask_ratio?"]
    assert problems(FINETUNE, ["recipe=finetun"], recipe=None)[0].endswith(
        "recipe: unknown recipe 'finetun'; did you mean finetune? recipes: finetune, evaluate, pretrain_backbone, "
        "tpp, multitask, incontext (`tpp ls`).")
    far = problems(FINETUNE, ["train.zzz=1"])[0]  # nothing close: the keys there are listed
    assert far.startswith("unknown config key 'train.zzz'. Known keys here: adam_beta2, batch_size")


def test_every_problem_of_a_file_is_reported_at_once(tmp_path):
    config = yaml.safe_load(FINETUNE.read_text())
    config["train"].update(lrr=1e-3, epochs="ten", weight_decay=-1)
    config["adapter"].update(r=0, alpah=2)
    config.update(pretext={"mask_ratio": 0.9}, seed=-1, trian={})
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(config))
    lines = problems(path, ["data.val_fraction=1.5"])
    assert lines[0] == "9 config problems:" and all(line.startswith("  - ") for line in lines[1:])
    for needle in ("pretext.mask_ratio: the finetune recipe does not use the pretext section",
                   "unknown config key 'trian'; did you mean train?",
                   "unknown config key 'adapter.alpah' for adapter.method=lora; did you mean adapter.alpha?",
                   "adapter.r must be at least 1, got 0.", "unknown config key 'train.lrr'; did you mean train.lr?",
                   "config key 'train.epochs' must be int, got 'ten'.", "seed must be an integer in 0 .. 2**32 - 1",
                   "train.weight_decay must not be negative, got -1.0.", "data.val_fraction must lie in [0, 1)"):
        assert sum(needle in line for line in lines) == 1, (needle, lines)


def test_the_config_must_be_written_for_the_recipe_run():
    with pytest.raises(ConfigError, match=r"mae_vit_tiny_lora_tpp\.yaml' is written for the tpp recipe \(recipe: "
                                          r"tpp\), not finetune: run it with `tpp run tpp`"):
        load_config(TPP, recipe="finetune")
    with pytest.raises(ConfigError, match="written for the finetune recipe .*not pretrain_backbone"):
        load_config(FINETUNE, recipe="pretrain_backbone")
    with pytest.raises(ConfigError, match="recipe=tpp on the command line, but the recipe run is finetune"):
        load_config(FINETUNE, ["recipe=tpp"], recipe="finetune")
    with pytest.raises(ConfigError, match="give the evaluate recipe a evaluate or finetune config"):
        load_config(TPP, ["adapter.path=runs/a/adapter"], recipe="evaluate")
    assert load_config(TPP, recipe="tpp").recipe == "tpp" and load_config(TPP).recipe == "tpp"


def test_a_run_dir_refuses_a_config_of_another_recipe_before_it_exists(tmp_path, capsys):
    from tpp.cli import main

    assert main(["run", "finetune", "--config", str(TPP), f"output_dir={tmp_path / 'run'}"]) == 2
    assert "written for the tpp recipe" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_evaluate_runs_from_the_finetune_config_of_the_run_it_evaluates(tmp_path):
    """The rule: evaluate reads an evaluate config, or a finetune config (checked as a finetune config), of
    which it uses its own sections only; what it saves is an evaluate config."""
    cfg = load_config(SEG_FINETUNE, ["adapter.path=runs/seg/adapter", "data.split=val"], recipe="evaluate")
    assert cfg.recipe == "evaluate" and cfg.data.split == "val"
    assert cfg.adapter.path == os.path.abspath("runs/seg/adapter")
    saved = cfg.to_dict()
    assert saved.keys() == {"recipe", "seed", "output_dir", "device", "train", "backbone", "adapter", "data",
                            "evaluate"}
    assert saved["recipe"] == "evaluate"  # task, segmentation and site of the fine-tuning are not evaluate's
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    assert load_config(tmp_path / "config.yaml", recipe="evaluate").to_dict() == saved
    assert load_config(FINETUNE, ["recipe=evaluate", "adapter.path=a"]).recipe == "evaluate"  # tpp validate
    # the finetune file is still checked as one: a key finetune does not use is an error under evaluate too
    assert problems(FINETUNE, ["adapter.path=a", "pretext.mask_ratio=0.9"], recipe="evaluate") == [
        "pretext.mask_ratio: the finetune recipe does not use the pretext section (pretrain_backbone and tpp do)."]
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump(dict(saved, site="a")))  # an evaluate config has no site
    assert problems(tmp_path / "eval.yaml", [], recipe="evaluate") == [
        "site: the evaluate recipe does not use site (finetune, tpp and multitask do)."]


@pytest.mark.parametrize("path, recipe, sections", [
    (FINETUNE, "finetune", {"recipe", "task", "site", "seed", "output_dir", "device", "backbone", "adapter", "data",
                            "train", "classification"}),  # the task's own section, defaults filled in
    (SEG_FINETUNE, "finetune", {"recipe", "task", "site", "seed", "output_dir", "device", "backbone", "adapter", "data",
                                "train", "segmentation"}),
    (TPP, "tpp", {"recipe", "site", "seed", "output_dir", "device", "backbone", "adapter", "data", "train", "pretext"}),
    (POOL, "pretrain_backbone", {"recipe", "seed", "output_dir", "device", "data", "train", "pretext", "model", "pool",
                                 "supervised_weight"}),
])
def test_the_saved_config_holds_the_sections_the_recipe_reads(path, recipe, sections):
    assert load_config(path, recipe=recipe).to_dict().keys() == sections


@pytest.mark.parametrize("recipe, config, sections", [
    ("finetune", FINETUNE, {"recipe", "task", "site", "seed", "output_dir", "device", "backbone", "adapter", "data",
                            "train", "classification"}),
    ("tpp", TPP, {"recipe", "site", "seed", "output_dir", "device", "backbone", "adapter", "data", "train", "pretext"}),
    ("evaluate", FINETUNE, {"recipe", "seed", "output_dir", "device", "backbone", "adapter", "data", "train",
                            "evaluate"}),
])
def test_run_dir_config_yaml_holds_only_the_recipes_sections(tiny_mae, tmp_path, recipe, config, sections, capsys,
                                                             monkeypatch):
    """What ``tpp run`` writes before the recipe starts (here each run stops at once: no data, no adapter;
    the checks `tpp validate` makes, which would refuse that before the run directory exists, are skipped)."""
    import tpp.recipes
    from tpp.cli import main

    monkeypatch.setattr(tpp.recipes, "preflight", lambda cfg, *args: [])
    out = tmp_path / "run"
    adapter = [f"adapter.path={tmp_path / 'no_adapter'}"] if recipe == "evaluate" else []
    assert main(["run", recipe, "--config", str(config), f"backbone.path={tiny_mae}", f"output_dir={out}",
                 f"data.root={tmp_path / 'no_data'}", *adapter]) == 2
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved.keys() == sections and saved["recipe"] == recipe
    assert len((out / "config.yaml").read_text().splitlines()) < 70


def test_resume_accepts_a_config_yaml_saved_with_every_section(tmp_path):
    """Runs written before configs were scoped saved every section; a resume compares the recipe's only."""
    from tpp.errors import TppError
    from tpp.recipes.resume import check_same_config

    cfg = load_config(FINETUNE, recipe="finetune")
    old = dict(build_config({"recipe": "tpp"}).to_dict(), **cfg.to_dict())  # + pretext, the other sections
    old.update(model={"hidden_size": 192}, pool=[], supervised_weight=1.0,
               segmentation={"decoder_channels": [64, 32], "dice_weight": 1.0})
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    check_same_config(tmp_path, cfg.to_dict())
    check_same_config(tmp_path, load_config(FINETUNE, ["train.resume=auto"], recipe="finetune").to_dict())
    with pytest.raises(TppError, match=r"differs from the interrupted run.*\(train\.lr: 0\.001 -> 0\.5\)"):
        check_same_config(tmp_path, load_config(FINETUNE, ["train.lr=0.5"], recipe="finetune").to_dict())


def test_resume_reads_keys_added_since_the_run_as_their_defaults(tmp_path):
    """A run saved before ``device`` and the ``classification`` section existed ran as their defaults do: it
    resumes under them, and is refused when the resumed config sets one of them to something else."""
    from tpp.errors import TppError
    from tpp.recipes.resume import _defaults, check_same_config

    cfg = load_config(FINETUNE, recipe="finetune")
    old = cfg.to_dict()
    del old["device"], old["classification"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    with pytest.raises(TppError, match="device: None -> 'auto'"):  # without defaults, the old behaviour
        check_same_config(tmp_path, cfg.to_dict())
    check_same_config(tmp_path, cfg.to_dict(), defaults=_defaults(cfg))
    changed = load_config(FINETUNE, ["device=cpu", "classification.threshold=0.3"], recipe="finetune")
    with pytest.raises(TppError, match=r"classification\.threshold: 'youden' -> 0\.3; device: 'auto' -> 'cpu'"):
        check_same_config(tmp_path, changed.to_dict(), defaults=_defaults(changed))


@pytest.mark.parametrize("method", ["[]", "lora+", "'+lora'"])
def test_an_empty_method_name_says_so(method):
    with pytest.raises(ConfigError, match="leaves a method name empty: give one method"):
        load_config(CONFIG_DIR / "breast_us/mae_vit_tiny_lora_finetune.yaml", [f"adapter.method={method}"])


@pytest.mark.parametrize("overrides, says", [
    (["adapter.method=visual_prompt", "adapter.mode=full", "adapter.pad=8"], "adapter.pad=8 is ignored with "
                                                                             "adapter.mode=full"),
    (["adapter.method=[visual_prompt, lora]", "adapter.visual_prompt.mode=full", "adapter.visual_prompt.pad=8"],
     "adapter.visual_prompt.pad=8 is ignored with adapter.visual_prompt.mode=full"),
    (["adapter.method=visual_prompt", "adapter.discrepancy=cosine"], "discrepancy_weight is 0"),
    (["classification.source_head=classifier"], "classification.source_head='classifier' is ignored with "
                                                "classification.output_mapping=probe"),
    (["recipe=evaluate", "adapter.path=x", "evaluate.corruption_preset=pneumoniamnist"],
     "evaluate.corruption_preset='pneumoniamnist' is ignored without evaluate.corruption")])
def test_options_the_run_would_ignore_are_warned_about(overrides, says):
    with pytest.warns(UserWarning, match=re.escape(says)):
        load_config(CONFIG_DIR / "breast_us/mae_vit_tiny_lora_finetune.yaml", overrides)


def test_options_that_act_are_not_warned_about():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for overrides in (["adapter.method=movl", "adapter.discrepancy=cosine"],  # movl's weight is 0.1
                          ["adapter.method=visual_prompt", "adapter.mode=pad", "adapter.pad=8"],
                          ["classification.output_mapping=rlm", "classification.source_head=classifier"]):
            load_config(CONFIG_DIR / "breast_us/mae_vit_tiny_lora_finetune.yaml", overrides)


def test_an_override_of_a_section_the_run_does_not_read_is_warned_about():
    """classification.bootstrap_resamples=0 on `tpp run evaluate` with a finetune config was silently ignored."""
    import warnings

    from helpers import FINETUNE_CONFIG

    from tpp.config import load_config

    config = CONFIG_DIR / FINETUNE_CONFIG
    with pytest.warns(UserWarning, match=r"classification.bootstrap_resamples on the command line is not used by "
                                         r"the evaluate recipe .*adapter's card"):
        load_config(config, ["classification.bootstrap_resamples=0"], recipe="evaluate")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_config(config, ["classification.bootstrap_resamples=0"], recipe="finetune")


@pytest.mark.parametrize("data, name", [
    ({}, "breastmnist"),
    ({"source": "medmnist", "name": "pneumoniamnist"}, "pneumoniamnist"),
    ({"source": "npz", "file": "mednist/mednist_64_every5th.npz", "modality": "DX"}, "mednist_64_every5th"),
    ({"source": "folder", "root": "/data/site_a/", "modality": "US"}, "site_a"),
    ({"source": "folder", "root": "/data/site_a", "file": "ultrasound", "modality": "US"}, "ultrasound"),
    ({"source": "csv", "file": "labels.csv", "name": "my-site"}, "my-site"),
    ({"source": "folder", "root": "/data/site.v2", "modality": "US"}, "site_v2"),  # a folder: whole, made safe
    ({"source": "folder", "modality": "US"}, "folder"),  # no root at all (TPP_DATA_ROOT unset below)
])
def test_a_data_section_without_a_name_is_named_after_its_own_data(data, name, monkeypatch):
    """Not after a MedMNIST set it never read: the name goes into cards, leakage messages and the corruption preset."""
    monkeypatch.delenv("TPP_DATA_ROOT", raising=False)
    assert build_config({"data": data}).data.name == name
    pool = build_config({"recipe": "multitask", "pool": [{"kind": "mae", "data": data}]}).pool
    assert pool[0].data.name == name


def test_an_inherited_option_given_as_the_parents_default_resolved_is_no_conflict():
    """The parent's card says target_modules None (the backbone family's default) and lists the layers it chose;
    naming those layers' leaf names explicitly asks for the same thing; other names, or another rank, conflict."""
    from tpp.builders import inherit

    card = {"method": "lora", "options": {"r": 8, "alpha": 16.0, "target_modules": None},
            "target_modules": ["layers.0.attention.q_proj", "layers.0.attention.v_proj", "layers.1.attention.q_proj"]}
    shipped = CONFIG_DIR / "breast_us/mae_vit_tiny_lora_finetune.yaml"

    def adapter(*overrides):
        return load_config(shipped, ["adapter.init_from=runs/tpp/adapter", *overrides]).adapter

    method, options, notes = inherit(adapter("adapter.target_modules=[v_proj, q_proj]"), card)
    assert method == "lora" and set(options["target_modules"]) == {"q_proj", "v_proj"} and notes == []
    with pytest.raises(ConfigError, match=r"adapter\.target_modules=\['q_proj', 'out_proj'\] conflicts"):
        inherit(adapter("adapter.target_modules=[q_proj, out_proj]"), card)
    with pytest.raises(ConfigError, match=r"adapter\.r=4 conflicts"):
        inherit(adapter("adapter.r=4"), card)


def test_without_data_root_the_data_is_named_after_its_source_not_the_environments_root(monkeypatch):
    """The name seeds the split: TPP_DATA_ROOT's folder name made it change with the machine (tests/
    test_config_data_name.py)."""
    monkeypatch.setenv("TPP_DATA_ROOT", "/hospital/ultrasound_2024/")
    assert build_config({"data": {"source": "folder", "modality": "US"}}).data.name == "folder"
    assert build_config({"data": {"source": "folder", "modality": "US", "root": "/x/us_24"}}).data.name == "us_24"


def test_switching_the_source_away_from_medmnist_on_the_command_line_drops_the_files_dataset_name():
    shipped = CONFIG_DIR / "breast_us/mae_vit_tiny_lora_tpp.yaml"
    assert yaml.safe_load(shipped.read_text())["data"]["name"] == "breastmnist"
    switched = ["data.source=npz", "data.file=mednist/mednist_64_every5th.npz", "data.modality=DX"]
    assert load_config(shipped, switched).data.name == "mednist_64_every5th"
    assert load_config(shipped, [*switched, "data.name=mednist"]).data.name == "mednist"
    assert load_config(shipped, ["data.source=medmnist"]).data.name == "breastmnist"  # no switch: kept


def test_a_key_given_twice_in_a_config_file_is_refused_naming_both_lines(tmp_path):
    """Plain YAML keeps the last of two `train:` sections: the first one's values were lost without a word."""
    path = tmp_path / "dup.yaml"
    path.write_text("train:\n  max_steps: 3\n  lr: 5.0e-4\nadapter:\n  r: 4\ntrain:\n  batch_size: 16\n")
    with pytest.raises(ConfigError, match=r"dup\.yaml' is not valid YAML: key 'train' is given twice \(first on "
                                          r"line 1\); keep one\n.*line 6"):
        load_config(path)
    path.write_text("train:\n  lr: 1.0e-3\n  lr: 5.0e-4\n")
    with pytest.raises(ConfigError, match=r"key 'lr' is given twice \(first on line 2\)"):
        load_config(path)
    path.write_text("base: &b {lr: 1.0e-3}\ntrain:\n  <<: *b\n  max_steps: 3\n")  # a merge key is no repeat
    assert load_yaml(path)["train"] == {"lr": 1.0e-3, "max_steps": 3}
