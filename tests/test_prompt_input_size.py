"""A visual prompt's input size against backbone.input_size (tpp.config.checks.prompt_size_problems): a mismatch
is a config error of `tpp validate` and of `tpp run`'s checks before output_dir exists, naming both keys as written
(single method, movl, a part of a composed method, a parent's inherited prompt), never a failed first step."""
import pytest
from helpers import run_cli

from tpp.config import load_config
from tpp.errors import ConfigError
from tpp.recipes import find_config

FINETUNE = "breast_us/mae_vit_tiny_lora_finetune.yaml"
TPP = "breast_us/mae_vit_tiny_lora_tpp.yaml"
FINETUNE_FILE, TPP_FILE = find_config(FINETUNE), find_config(TPP)

# docs/input_side.md's composed-method example ("Composed methods"), on the default (shipped, 28-px) backbone
README_ADAPTER = """\
adapter:
  method: [visual_prompt, lora]
  visual_prompt: {pad: 4, input_size: 36}
  lora: {r: 8}
"""


def readme_config(tmp_path, data_root, extra: str = ""):
    path = tmp_path / "composed.yaml"
    path.write_text(f"recipe: finetune\noutput_dir: {tmp_path / 'run'}\ndata:\n  root: {data_root}\n"
                    f"train:\n  max_steps: 1\n  batch_size: 8\n{README_ADAPTER}{extra}")
    return path


def validate(capsys, *args) -> tuple[int, str]:
    code = run_cli("validate", *args)
    out = capsys.readouterr()
    return code, out.out + out.err


def test_the_readmes_composed_example_needs_backbone_input_size(tmp_path, data_root, capsys):
    code, text = validate(capsys, readme_config(tmp_path, data_root))
    assert code == 2 and "Traceback" not in text
    assert ("adapter.visual_prompt.input_size=36 differs from backbone.input_size (unset: the backbone's 28)"
            in text)
    assert "set backbone.input_size=36" in text
    code, text = validate(capsys, readme_config(tmp_path, data_root, "backbone:\n  input_size: 36\n"))
    assert code == 0 and text.startswith("ok: "), text


def test_a_run_of_it_stops_before_output_dir_exists(tmp_path, data_root, capsys):
    assert run_cli("run", "finetune", "--config", readme_config(tmp_path, data_root)) == 2
    text = capsys.readouterr().err
    assert "adapter.visual_prompt.input_size=36 differs from backbone.input_size" in text
    assert "was made for a 36-px input" not in text and not (tmp_path / "run").exists()  # not the step's error


@pytest.mark.parametrize("method", ["visual_prompt", "movl"])
def test_a_single_prompt_method_is_checked_both_ways(method, tiny_mae, data_root, tmp_path, capsys):
    common = [FINETUNE, f"backbone.path={tiny_mae}", f"data.root={data_root}", f"adapter.method={method}"]
    code, text = validate(capsys, *common, "adapter.input_size=36")
    assert code == 2 and "adapter.input_size=36 differs from backbone.input_size (unset: the backbone's 28)" in text
    code, text = validate(capsys, *common, "adapter.input_size=36", "backbone.input_size=36")
    assert code == 0, text
    code, text = validate(capsys, *common, "backbone.input_size=36")  # the prompt would cover 28 px only
    assert code == 2 and "adapter.input_size (unset: the backbone's 28) differs from backbone.input_size=36" in text
    assert "set adapter.input_size=36" in text
    code, text = validate(capsys, *common, "adapter.input_size=32", "backbone.input_size=36")
    assert code == 2 and "adapter.input_size=32 differs from backbone.input_size=36" in text
    code, text = validate(capsys, *common)  # both unset: both the checkpoint's
    assert code == 0, text
    out = tmp_path / "run"
    assert run_cli("run", "finetune", "--config", *common, "adapter.input_size=36", f"output_dir={out}") == 2
    assert "differs from backbone.input_size" in capsys.readouterr().err and not out.exists()


def test_composed_movl_and_the_tpp_recipe_are_checked(tiny_mae, data_root):
    common = [f"backbone.path={tiny_mae}", f"data.root={data_root}", "adapter.method=movl+lora",
              "adapter.movl.input_size=36"]
    with pytest.raises(ConfigError, match=r"adapter\.movl\.input_size=36 differs from backbone\.input_size"):
        load_config(FINETUNE_FILE, common)
    assert load_config(FINETUNE_FILE, [*common, "backbone.input_size=36"]).backbone.input_size == 36
    with pytest.raises(ConfigError, match=r"adapter\.input_size=36 differs"):
        load_config(TPP_FILE, [f"backbone.path={tiny_mae}", "adapter.method=visual_prompt", "adapter.input_size=36"])


def test_other_methods_and_evaluate_are_left_alone(tiny_mae, data_root, tmp_path):
    assert load_config(FINETUNE_FILE, [f"backbone.path={tiny_mae}", "backbone.input_size=36"]).adapter.method == "lora"
    # evaluate builds the model from the adapter's card (its input size included), not from adapter options
    cfg = load_config(FINETUNE_FILE, [f"backbone.path={tiny_mae}", "adapter.method=visual_prompt",
                                      "adapter.input_size=36", f"adapter.path={tmp_path}"], recipe="evaluate")
    assert cfg.recipe == "evaluate"


def test_a_parents_inherited_prompt_size_is_checked(tiny_mae, data_root, tmp_path, capsys):
    parent = tmp_path / "tpp"
    assert run_cli("run", "tpp", "--config", TPP, f"backbone.path={tiny_mae}", f"data.root={data_root}",
                   "adapter.method=visual_prompt", "adapter.input_size=36", "backbone.input_size=36",
                   "train.max_steps=1", "train.batch_size=8", f"output_dir={parent}") == 0
    capsys.readouterr()
    common = [FINETUNE, f"backbone.path={tiny_mae}", f"data.root={data_root}", "adapter.method=visual_prompt",
              f"adapter.init_from={parent / 'adapter'}"]
    code, text = validate(capsys, *common)
    assert code == 2 and "the parent adapter's adapter.input_size=36" in text and "set backbone.input_size=36" in text
    code, text = validate(capsys, *common, "backbone.input_size=36")
    assert code == 0, text
