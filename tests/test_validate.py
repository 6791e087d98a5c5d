"""`tpp validate` checks what can be checked before a run starts: the backbone resolves, the data root and
files exist, the modality is set where the source needs it, the adapter directories named exist; every
problem at once, as one message."""
import json

import numpy as np
import pytest
from conftest import make_image_folder, make_medmnist
from helpers import without_config_name

from tpp.cli import main
from tpp.config import load_config
from tpp.recipes import find_config

TPP = "breast_us/mae_vit_tiny_lora_tpp.yaml"
FINETUNE = "breast_us/mae_vit_tiny_lora_finetune.yaml"


def validate(capsys, *args) -> tuple[int, str]:
    code = main(["validate", *args])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_a_config_that_would_run_is_ok(tiny_mae, data_root, capsys):
    code, text = validate(capsys, TPP, f"backbone.path={tiny_mae}", f"data.root={data_root}")
    assert code == 0 and text.startswith("ok: ")


def test_tpp_is_validated_on_its_data_loaded_without_labels(tiny_mae, data_root, tmp_path, capsys):
    """The pre-training data is loaded as the run loads it (images only): a wrong key of an .npz is found by
    validate, not by the run after the backbone loaded."""
    base = [f"backbone.path={tiny_mae}", f"data.root={data_root}"]
    code, text = validate(capsys, TPP, *base, "data.use_eval_splits=true")
    assert code == 0 and "data breastmnist: 60 train / 20 val / 20 test images used" in text
    images = np.zeros((12, 28, 28), np.uint8)
    np.savez(tmp_path / "scans.npz", images=images, labels=np.arange(12) % 2)
    npz = ["data.source=npz", f"data.file={tmp_path / 'scans.npz'}", "data.modality=US"]
    code, text = validate(capsys, TPP, *base, *npz, "data.image_key=imgs")
    assert code == 2 and "found with its data loaded" in text and "has no key 'imgs'" in text
    code, text = validate(capsys, TPP, *base, *npz)
    assert code == 0 and "data scans: " in text and " train images used" in text, text


def test_every_problem_before_a_run_is_listed_at_once(tiny_mae, data_root, tmp_path, capsys):
    code, text = validate(capsys, FINETUNE, f"backbone.path={tmp_path / 'no_backbone'}",
                          f"data.root={tmp_path / 'nowhere'}", f"adapter.init_from={tmp_path / 'no_adapter'}")
    assert code == 2 and "Traceback" not in text
    assert "no_backbone' does not exist" in text and "nowhere' does not exist" in text
    assert "no_adapter' does not exist" in text


def test_hub_ids_resolve_from_the_local_cache_only_offline(data_root, capsys):
    code, text = validate(capsys, TPP, "backbone.path=someone/not-a-cached-model", f"data.root={data_root}")
    assert code == 2 and "cannot read backbone 'someone/not-a-cached-model'" in text
    assert "Offline (HF_HUB_OFFLINE is set) a hub id loads only from the local Hugging Face cache" in text


def test_a_backbone_folder_without_weights_is_refused_before_the_run(tiny_mae, data_root, tmp_path, capsys):
    folder = tmp_path / "bb"
    folder.mkdir()
    (folder / "config.json").write_bytes((tiny_mae / "config.json").read_bytes())
    code, text = validate(capsys, TPP, f"backbone.path={folder}", f"data.root={data_root}")
    assert code == 2 and "has a config.json but no weights (model.safetensors)" in text


def test_data_files_and_modality_are_checked(tiny_mae, data_root, capsys):
    code, text = validate(capsys, FINETUNE, f"backbone.path={tiny_mae}", f"data.root={data_root}",
                          "data.name=mystery")
    assert code == 2 and "'mystery' is no MedMNIST dataset" in text
    code, text = validate(capsys, FINETUNE, f"backbone.path={tiny_mae}", f"data.root={data_root}",
                          "data.name=pneumoniamnist")  # a MedMNIST name whose file is not there
    assert code == 2 and "'pneumoniamnist.npz' is not in" in text
    code, text = validate(capsys, FINETUNE, f"backbone.path={tiny_mae}", f"data.root={data_root}",
                          "data.source=folder", "data.file=scans")
    assert code == 2 and "data.file 'scans' does not exist" in text and "needs data.modality" in text
    make_image_folder(data_root / "scans")
    code, text = validate(capsys, FINETUNE, f"backbone.path={tiny_mae}", f"data.root={data_root}",
                          "data.source=folder", "data.file=scans", "data.modality=US")
    assert code == 0, text


def test_an_absolute_data_file_needs_no_data_root(tiny_mae, data_root, monkeypatch, capsys):
    """The loaders never join an absolute data.file to a root, so neither may the pre-run check demand one."""
    monkeypatch.delenv("TPP_DATA_ROOT", raising=False)
    make_image_folder(data_root / "scans")
    folder = ["data.source=folder", "data.modality=US"]
    code, text = validate(capsys, FINETUNE, f"backbone.path={tiny_mae}", *folder, f"data.file={data_root / 'scans'}")
    assert code == 0, text
    code, text = validate(capsys, FINETUNE, f"backbone.path={tiny_mae}", *folder, f"data.file={data_root / 'gone'}")
    assert code == 2 and f"data.file '{data_root / 'gone'}' does not exist." in text and "data root" not in text
    code, text = validate(capsys, FINETUNE, f"backbone.path={tiny_mae}", *folder, "data.file=scans")
    assert code == 2 and "no data root" in text  # a relative one still does


def test_evaluate_needs_an_existing_adapter_directory(tiny_mae, data_root, tmp_path, capsys):
    code, text = validate(capsys, FINETUNE, "recipe=evaluate", f"backbone.path={tiny_mae}", f"data.root={data_root}",
                          f"adapter.path={tmp_path / 'gone'}")
    assert code == 2 and "gone' does not exist" in text


def test_a_config_is_validated_against_its_own_recipe(tiny_mae, data_root, capsys):
    code, text = validate(capsys, TPP, f"backbone.path={tiny_mae}", f"data.root={data_root}")
    assert code == 0 and "(recipe tpp," in text
    code, text = validate(capsys, TPP, "pretext.mask_ratio=0.5", "task=segmentation")  # tpp reads pretext, not task
    assert code == 2 and without_config_name(text) == "error: task: the tpp recipe does not use task (finetune does).\n"
    code, text = validate(capsys, FINETUNE, "pretext.mask_ratio=0.9")
    assert code == 2 and without_config_name(text) == (
        "error: pretext.mask_ratio: the finetune recipe does not use the pretext section (pretrain_backbone and tpp "
        "do).\n")
    code, text = validate(capsys, TPP, "recipe=finetune")
    assert code == 2 and "is written for the tpp recipe (recipe: tpp), not finetune" in text


def test_every_config_problem_is_one_error_with_a_line_each(capsys):
    code, text = validate(capsys, FINETUNE, "train.lrr=1", "model.hidden_size=7", "adapter.r=0", "seed=-1")
    assert code == 2 and "Traceback" not in text
    assert text.startswith("error: config '") and "mae_vit_tiny_lora_finetune.yaml' with its overrides: " in text
    assert without_config_name(text).splitlines() == [
        "error: 4 config problems:",
        "  - model.hidden_size: the finetune recipe does not use the model section (pretrain_backbone does).",
        "  - adapter.r must be at least 1, got 0.",
        "  - unknown config key 'train.lrr'; did you mean train.lr?",
        "  - seed must be an integer in 0 .. 2**32 - 1 (4294967295), got -1."]


def test_a_tpp_adapter_to_evaluate_and_an_option_against_the_parent_are_refused_before_the_run(
        tiny_mae, data_root, tmp_path, capsys):
    """Both were found only after output_dir existed (a failed run folder left behind)."""
    parent = tmp_path / "tpp"
    assert main(["run", "tpp", "--config", TPP, f"backbone.path={tiny_mae}", f"data.root={data_root}",
                 "train.max_steps=1", f"output_dir={parent}"]) == 0
    capsys.readouterr()
    out = tmp_path / "ev"
    code = main(["run", "evaluate", "--config", FINETUNE, f"backbone.path={tiny_mae}", f"data.root={data_root}",
                 f"adapter.path={parent / 'adapter'}", f"output_dir={out}"])
    text = capsys.readouterr().err
    assert code == 2 and "has no task head (stage 'tpp')" in text and not out.exists()
    out = tmp_path / "ft"
    code = main(["run", "finetune", "--config", FINETUNE, f"backbone.path={tiny_mae}", f"data.root={data_root}",
                 "adapter.r=4", f"adapter.init_from={parent / 'adapter'}", f"output_dir={out}"])
    text = capsys.readouterr().err
    assert code == 2 and "adapter.r=4 conflicts with the parent adapter" in text and not out.exists()
    code, text = validate(capsys, FINETUNE, f"backbone.path={tiny_mae}", f"data.root={data_root}",
                          f"adapter.init_from={parent / 'adapter'}")  # inheriting, nothing overridden: fine
    assert code == 0, text
    import yaml

    from tpp.recipes import find_config

    mine = yaml.safe_load(find_config(FINETUNE).read_text())
    mine["adapter"]["r"] = 4  # in the file: the run replaces it by the parent's and says so; validate says it too
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(mine))
    code, text = validate(capsys, str(tmp_path / "mine.yaml"), f"backbone.path={tiny_mae}", f"data.root={data_root}",
                          f"adapter.init_from={parent / 'adapter'}")
    assert code == 0 and "init_from: adapter.r=4 from the config file replaced by the parent's 8" in text, text
    weights = parent / "adapter" / "adapter_model.safetensors"  # a truncated copy of the parent: said now
    weights.write_bytes(weights.read_bytes()[:-200])
    code, text = validate(capsys, FINETUNE, f"backbone.path={tiny_mae}", f"data.root={data_root}",
                          f"adapter.init_from={parent / 'adapter'}")
    assert code == 2 and f"'{weights}' is not a readable safetensors file" in text, text


def test_a_target_module_that_matches_no_layer_is_refused_before_the_run(tiny_mae, data_root, tmp_path, capsys):
    """The method is attached to the backbone's skeleton (meta device) by validate and before a run: a
    target_modules typo was found only after output_dir existed."""
    code, text = validate(capsys, TPP, f"backbone.path={tiny_mae}", f"data.root={data_root}",
                          "adapter.target_modules=[q_proj,vproj]")
    assert code == 2 and "['vproj'] match no module of the vit_mae encoder's layers" in text
    out = tmp_path / "ft"
    code = main(["run", "finetune", "--config", FINETUNE, f"backbone.path={tiny_mae}", f"data.root={data_root}",
                 "adapter.method=ssf", "adapter.target_modules=[fc_1]", f"output_dir={out}"])
    assert code == 2 and "['fc_1'] match no module" in capsys.readouterr().err and not out.exists()
    code, text = validate(capsys, FINETUNE, f"backbone.path={tmp_path / 'gone'}", f"data.root={data_root}",
                          "adapter.target_modules=[nothing]")
    assert code == 2 and "gone' does not exist" in text and "match no module" not in text  # one message
    from tpp.backbones import skeleton

    encoder = skeleton(str(tiny_mae))  # names and shapes, nothing read or allocated
    assert {p.device.type for p in encoder.model.parameters()} == {"meta"}


@pytest.mark.parametrize("change, says", [
    ({"model_type": "depth_anything"}, "not a supported"),  # a family transformers knows, tpp does not encode with
    ({"hidden_act": "nope"}, "cannot load backbone"),  # a config.json that builds no model
])
def test_a_backbone_config_that_builds_no_model_is_one_message(tiny_mae, data_root, tmp_path, capsys, change, says):
    import json
    import shutil

    folder = tmp_path / "bb"
    shutil.copytree(tiny_mae, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(dict(config, **change)))
    code, text = validate(capsys, TPP, f"backbone.path={folder}", f"data.root={data_root}")
    assert code == 2 and says in text and "Traceback" not in text


def test_what_the_run_checks_of_its_loaded_data_validate_checks_too(tiny_mae, data_root, tmp_path, capsys):
    """The positive class, an adapter's classes and a parent's modality were found only once a run had loaded
    its data (a failed run folder left behind, `tpp validate` saying ok)."""
    make_medmnist(data_root, "pneumoniamnist")
    base = [f"backbone.path={tiny_mae}", f"data.root={data_root}"]
    code, text = validate(capsys, FINETUNE, *base, "classification.positive_class=cancer")
    assert code == 2 and "positive_class='cancer' must be one of ['malignant', 'normal, benign']" in text
    out = tmp_path / "ft"
    code = main(["run", "finetune", "--config", FINETUNE, *base, "classification.positive_class=cancer",
                 f"output_dir={out}", "train.max_steps=1"])
    assert code == 2 and not (out / "checkpoints").exists()  # refused before any training
    code, text = validate(capsys, FINETUNE, *base, "classification.positive_class=malignant")
    assert code == 0 and "data breastmnist: 60 train / 20 val / 20 test images used, classes ['malignant'" in text
    code, text = validate(capsys, FINETUNE, *base, "data.label_fraction=0.1")  # what the run uses of the splits
    assert code == 0 and "6 train / 2 val / 20 test images used" in text

    assert main(["run", "finetune", "--config", FINETUNE, *base, "train.max_steps=1", f"output_dir={out}",
                 "--overwrite"]) == 0
    capsys.readouterr()
    code, text = validate(capsys, FINETUNE, "recipe=evaluate", *base, f"adapter.path={out / 'adapter'}",
                          "data.name=pneumoniamnist")
    assert code == 2 and "differ from the adapter's ['malignant', 'normal, benign']" in text

    parent = tmp_path / "tpp"  # target parameters pre-trained on ultrasound, fine-tuned on chest X-rays
    assert main(["run", "tpp", "--config", TPP, *base, "train.max_steps=1", f"output_dir={parent}"]) == 0
    child = [*base, "data.name=pneumoniamnist", f"adapter.init_from={parent / 'adapter'}"]
    code, text = validate(capsys, FINETUNE, *child, "adapter.require_same_modality=true")
    assert code == 2 and "(adapter.require_same_modality=true)" in text
    with pytest.warns(UserWarning, match="was pre-trained on modality US, but the fine-tuning data is DX"):
        code, text = validate(capsys, FINETUNE, *child)  # without the requirement a warning, no refusal
    assert code == 0, text
    make_medmnist(data_root, "pneumoniamnist", n=(8, 0, 4))  # and no validation images: both problems at once
    code, text = validate(capsys, FINETUNE, *child, "adapter.require_same_modality=true")
    assert code == 2 and text.count("\n  - ") == 2 and "the 'val' split is empty" in text  # listed one by one
    assert "(adapter.require_same_modality=true)" in text


def test_validate_downloads_nothing_and_finds_splits_the_run_would_find_empty(tiny_mae, data_root, tmp_path,
                                                                              capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, text = validate(capsys, FINETUNE, f"backbone.path={tiny_mae}", f"data.root={empty}", "data.download=true")
    assert code == 0 and "not loaded" in text and "the run downloads it" in text and not any(empty.iterdir())
    make_medmnist(data_root, "breastmnist", n=(8, 0, 4))  # no validation images
    code, text = validate(capsys, FINETUNE, f"backbone.path={tiny_mae}", f"data.root={data_root}")
    assert code == 2 and "the 'val' split is empty" in text


def test_evaluate_is_validated_on_data_loaded_at_the_adapters_input_size(tiny_mae, data_root, tmp_path, capsys,
                                                                         monkeypatch):
    """A folder of mixed sizes is decoded to the run's input size and its split hashed from that: validate must
    load it as evaluate does (at the card's size), or it refuses the adapter's own split."""
    folder = make_image_folder(tmp_path / "mixed", n=40)
    data = ["data.source=folder", f"data.file={folder}", "data.modality=US", "data.name=mixed"]
    out = tmp_path / "ft"
    assert main(["run", "finetune", "--config", FINETUNE, f"backbone.path={tiny_mae}", *data, "train.max_steps=1",
                 "backbone.input_size=16", f"output_dir={out}"]) == 0
    capsys.readouterr()
    code, text = validate(capsys, FINETUNE, "recipe=evaluate", f"backbone.path={tiny_mae}", *data,
                          f"adapter.path={out / 'adapter'}")
    assert code == 0 and "data mixed: " in text, text
    import tpp.recipes.evaluate as evaluate_recipe

    loads = []
    monkeypatch.setattr(evaluate_recipe, "load_task_model",
                        lambda *a, real=evaluate_recipe.load_task_model, **k: loads.append(a) or real(*a, **k))
    assert main(["run", "evaluate", "--config", FINETUNE, f"backbone.path={tiny_mae}", *data,
                 f"adapter.path={out / 'adapter'}", f"output_dir={tmp_path / 'eval'}"]) == 0
    assert len(loads) == 1  # validate loads the adapter whole; a run, which loads it anyway, only reads its card
    (out / "adapter" / "head.safetensors").write_bytes(b"not safetensors")  # the run would fail on loading it
    code, text = validate(capsys, FINETUNE, "recipe=evaluate", f"backbone.path={tiny_mae}", *data,
                          f"adapter.path={out / 'adapter'}")
    assert code == 2 and "head.safetensors' is not a readable safetensors file" in text, text
    code = main(["run", "evaluate", "--config", FINETUNE, f"backbone.path={tiny_mae}", *data, "--overwrite",
                 f"adapter.path={out / 'adapter'}", f"output_dir={tmp_path / 'eval'}"])
    assert code == 2 and (tmp_path / "eval" / "metrics.json").is_file()  # refused before --overwrite cleared it
    (out / "adapter" / "head.safetensors").unlink()
    code, text = validate(capsys, FINETUNE, "recipe=evaluate", f"backbone.path={tiny_mae}", *data,
                          f"adapter.path={out / 'adapter'}")
    assert code == 2 and "lacks head.safetensors" in text, text


def test_files_the_run_would_skip_are_named(tiny_mae, tmp_path, capsys):
    folder = make_image_folder(tmp_path / "scans", n=40)
    (folder / "a" / "broken.png").write_bytes(b"not a png")
    data = ["data.source=folder", f"data.file={folder}", "data.modality=US", f"backbone.path={tiny_mae}"]
    code, text = validate(capsys, FINETUNE, *data)
    assert code == 2 and "broken.png" in text
    with pytest.warns(UserWarning, match="broken.png' would be left out"):
        code, text = validate(capsys, FINETUNE, *data, "data.on_bad_file=skip")
    assert code == 0, text


@pytest.mark.parametrize("overrides, says", [
    (["adapter.method=movl", "adapter.discrepancy_weight=nan"], "must be a finite number, 0 or more, got nan"),
    (["backbone.input_size=30"], "backbone.input_size=30 must be a positive multiple of the patch size (4)"),
    (["classification.output_mapping=rlm", "adapter.method=visual_prompt", "adapter.input_size=28"],
     "saves no classification head, so label mapping has no source classes")])
def test_what_a_run_found_at_its_start_validate_finds(tiny_mae, data_root, tmp_path, capsys, overrides, says):
    """A NaN discrepancy weight trained as 0 and saved a card nothing could load; the other two were found only
    once the run had started (from a hostile review of the input-side methods)."""
    code, text = validate(capsys, FINETUNE, f"backbone.path={tiny_mae}", f"data.root={data_root}", *overrides)
    assert code == 2 and says in text, text
    code = main(["run", "finetune", "--config", FINETUNE, f"backbone.path={tiny_mae}", f"data.root={data_root}",
                 *overrides, "train.max_steps=1", f"output_dir={tmp_path / 'run'}"])
    assert code == 2 and not (tmp_path / "run" / "adapter").exists()


def test_a_split_without_one_class_is_warned_about_before_training(tiny_mae, tmp_path, capsys):
    """A validation split without positives used to train and report NaN AUROC without a word."""
    root = make_medmnist(tmp_path / "data", classes=2)
    arrays = dict(np.load(root / "breastmnist.npz"))
    arrays["val_labels"] = np.zeros_like(arrays["val_labels"])  # every validation image of class 0
    np.savez(root / "breastmnist.npz", **arrays)
    with pytest.warns(UserWarning, match=r"the val split \(20 images\) has no image of class .*best-step selection"):
        code, text = validate(capsys, FINETUNE, f"backbone.path={tiny_mae}", f"data.root={root}")
    assert code == 0, text
    with pytest.warns(UserWarning, match="the val split"):
        assert main(["run", "finetune", "--config", FINETUNE, f"backbone.path={tiny_mae}", f"data.root={root}",
                     "train.max_steps=1", f"output_dir={tmp_path / 'run'}"]) == 0
    arrays["test_labels"] = np.ones_like(arrays["test_labels"])  # evaluate a test split of one class
    np.savez(root / "breastmnist.npz", **arrays)
    with pytest.warns(UserWarning, match=r"auroc on the test split \(20 images\) is undefined and written as null"):
        assert main(["run", "evaluate", "--config", FINETUNE, f"backbone.path={tiny_mae}", f"data.root={root}",
                     f"adapter.path={tmp_path / 'run' / 'adapter'}", f"output_dir={tmp_path / 'eval'}"]) == 0
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["test"]["auroc"] is None


def test_an_option_the_parent_makes_act_is_not_warned_about(tiny_mae, data_root, tmp_path):
    """With adapter.init_from the parent's options apply (its discrepancy weight), not the method's defaults."""
    import warnings

    parent = tmp_path / "tpp"
    assert main(["run", "tpp", "--config", TPP, f"backbone.path={tiny_mae}", f"data.root={data_root}",
                 "adapter.method=visual_prompt", "adapter.input_size=28", "adapter.discrepancy_weight=0.5",
                 "train.max_steps=1", f"output_dir={parent}"]) == 0
    child = [f"adapter.init_from={parent / 'adapter'}", "adapter.method=visual_prompt", "adapter.discrepancy=cosine"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_config(find_config(FINETUNE), child)  # the parent's weight 0.5: the form acts
    with pytest.warns(UserWarning, match="adapter.discrepancy=cosine is ignored: adapter.discrepancy_weight is 0"):
        load_config(find_config(FINETUNE), [*child, "adapter.discrepancy_weight=0"])


def test_a_backbone_whose_own_image_size_gives_too_many_tokens_is_refused_before_training(tmp_path):
    """With backbone.input_size unset the checkpoint's size was not checked: the run trained an adapter that
    evaluate then refused to load."""
    from transformers import ViTConfig, ViTModel

    from tpp.errors import TppError
    from tpp.recipes import input_size_fits

    ViTModel(ViTConfig(image_size=260, patch_size=4, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=8)).save_pretrained(tmp_path / "big")
    with pytest.raises(TppError, match=r"image size 260, backbone.input_size unset\) gives 4,225 patch tokens"):
        input_size_fits(None, str(tmp_path / "big"))
    input_size_fits(256, str(tmp_path / "big"))  # 4,096 tokens: the most


def test_paths_of_the_wrong_kind_and_empty_or_broken_configs_get_errors_that_say_so(tmp_path, capsys):
    """A file where a folder is expected was reported as missing (or as 'no log.jsonl'), a run folder as no
    adapter without the hint, an empty config ran the defaults (BreastMNIST), and tpp cp showed tracebacks."""
    a_file = tmp_path / "results.csv"
    a_file.write_text("x\n")
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "tpp_card.json").write_text("{}")
    (tmp_path / "empty.yaml").write_text("# only a comment\n")
    (tmp_path / "bad.yaml").write_text("recipe: tpp\n  bad: [\n")
    cases = [(["plot", str(a_file)], "is a file; tpp plot takes a run folder"),
             (["adapters", "ls", str(a_file)], "is a file, not a store folder"),
             (["validate", str(tmp_path / "empty.yaml")], "is empty (or holds only comments)"),
             (["run", "tpp", "--config", str(tmp_path / "empty.yaml")], "is empty (or holds only comments)"),
             (["validate", FINETUNE, f"adapter.init_from={run}"], f"did you mean '{run / 'adapter'}'?"),
             (["cp", str(tmp_path / "bad.yaml"), str(tmp_path / "copy.yaml")], "is not valid YAML"),
             (["cp", FINETUNE, str(a_file / "x.yaml")], "is a file, so")]
    for argv, said in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert said in err and "Traceback" not in err, (argv, err)
    assert not (tmp_path / "copy.yaml").exists() and not (tmp_path / "runs").exists()


def test_multitask_is_validated_on_its_pools_data_loaded(tiny_mae, data_root, tmp_path, capsys):
    """A one-class task was said ok by validate, then refused by the run after its folder was made."""
    np.savez(tmp_path / "mr.npz", images=np.zeros((40, 28, 28), np.uint8), labels=np.arange(40) % 2,
             class_names=np.array(["brain", "breast"]))
    one = (f"{{kind: classification, data: {{source: npz, name: mr, file: {tmp_path / 'mr.npz'}, modality: MR, "
           "classes: [breast]}}")
    base = ["multitask/tpp_pool.yaml", f"backbone.path={tiny_mae}", f"data.root={data_root}"]
    code, text = validate(capsys, *base, f"pool=[{one}]")
    assert code == 2 and "found with its data loaded" in text and "task 'mr-classification': dataset 'mr' has 1" in text
    code, text = validate(capsys, *base, "pool=[{kind: mae, data: {source: medmnist, name: breastmnist}}]")
    assert code == 0 and "data pool: breastmnist-mae 60 training images" in text, text


def test_the_ok_line_names_a_pretrain_pool_by_its_datasets():
    """A ``pretrain_backbone`` pool's entries have no ``kind`` (that is the multitask recipe's key): validate's ok
    line lists them by dataset name, not as ``bloodmnist-None``."""
    from tpp.cli import _what_runs
    line = _what_runs(load_config(find_config("backbones/mae_vit_tiny_med_pool.yaml")))
    assert line.startswith("pool bloodmnist, ") and "None" not in line
    multitask = _what_runs(load_config(find_config("multitask/tpp_pool.yaml")))
    assert "None" not in multitask and "pool " in multitask
