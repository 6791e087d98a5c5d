"""The Python API (``tpp.finetune`` ..., ``tpp.load``, ``tpp.AdapterStore``): the same runs, checks and
numbers as the commands, nothing heavy at ``import tpp``, no library warnings, and the README's example."""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from conftest import make_backbone, make_medmnist
from helpers import FINETUNE_CONFIG, HANG_S, TPP_CONFIG, run_cli, toy_segmentation_npz, without_config_name
from PIL import Image

import tpp
from tpp import api
from tpp.api import override_args, quiet
from tpp.config import load_config
from tpp.config.parse import parse_override
from tpp.errors import ConfigError, TppError

REPO = Path(__file__).resolve().parents[1]
TINY_RUN = {"train.max_steps": 6, "train.batch_size": 16, "train.eval_batch_size": 64, "adapter.r": 2}
NOISY = (FutureWarning, UserWarning, DeprecationWarning)


def library_warnings(caught) -> list[str]:
    return [f"{w.category.__name__} {w.filename}:{w.lineno}: {w.message}" for w in caught
            if issubclass(w.category, NOISY)]


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_mae):
    """One tiny fine-tuning run through ``tpp.finetune``, loaded and used once, every warning recorded."""
    base = tmp_path_factory.mktemp("api")
    root = make_medmnist(base / "data")
    overrides = {"backbone.path": str(tiny_mae), "data.root": str(root), **TINY_RUN}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = tpp.finetune(FINETUNE_CONFIG, overrides, output_dir=base / "run")
        model = tpp.load(result.adapter, backbone=tiny_mae)  # the card names it by folder name only
        model.predict([np.zeros((28, 28), np.uint8), str(write_png(base / "one.png", 28, 28))])
    return SimpleNamespace(base=base, root=root, backbone=tiny_mae, result=result, model=model, caught=list(caught))


def write_png(path: Path, height: int, width: int, rgb: bool = False, seed: int = 0) -> Path:
    shape = (height, width, 3) if rgb else (height, width)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)).save(path)
    return path


def test_import_tpp_is_cheap_and_exports_the_api():
    code = ("import sys, tpp; heavy = [m for m in ('torch', 'transformers', 'peft', 'numpy') if m in sys.modules]; "
            "print(heavy, sorted(tpp.__all__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG_S,
                         cwd=REPO).stdout
    assert out.startswith("[] ") and "'finetune'" in out and "'AdapterStore'" in out
    for name in tpp.__all__:
        assert getattr(tpp, name) is not None
    assert tpp.AdapterStore is api.AdapterStore and "load" in dir(tpp)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        tpp.nope  # noqa: B018


def test_tpp_ls_lists_methods_and_tasks_without_loading_peft_transformers_or_torchmetrics():
    code = ("import sys; from tpp.cli import main; main(['ls']); "
            "print('HEAVY', [m for m in ('transformers', 'peft', 'torchmetrics') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG_S,
                         cwd=REPO).stdout
    assert "lora" in out and "visual_prompt" in out and "segmentation" in out  # the registry was listed
    assert out.rstrip().endswith("HEAVY []")


@pytest.mark.parametrize("value", [20, 0.1, 1e-4, "10", "yes", "runs/a b", None, True, [1, 2], {"method": "lora"}])
def test_dict_overrides_keep_their_type(value):
    (arg,) = override_args({"train.x": value})
    assert parse_override(arg) == (["train", "x"], value)


def test_paths_and_numpy_numbers_are_override_values():
    given = {"output_dir": Path("2024"), "train.lr": np.float64(0.25), "train.max_steps": np.int64(3),
             "data.mean": (0.5, np.float32(0.25))}
    assert [parse_override(a)[1] for a in override_args(given)] == ["2024", 0.25, 3, [0.5, 0.25]]


def test_bad_overrides_say_what_is_expected():
    with pytest.raises(TppError, match="dict of dotted keys"):
        override_args("train.max_steps=3")
    with pytest.raises(TppError, match="not a dotted config key"):
        override_args({"train..lr": 1})
    with pytest.raises(TppError, match="object is not a config value"):
        override_args({"train.lr": object()})


def test_a_config_dict_is_checked_scoped_and_resolved_like_a_file(tmp_path, monkeypatch):
    data = {"recipe": "finetune", "backbone": {"path": "bb"}, "data": {"root": "d"}, "train": {"max_steps": 3}}
    folder = tmp_path / "here"
    (folder / "bb").mkdir(parents=True)  # a folder, not a hub id (it holds no checkpoint)
    (folder / "c.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.chdir(folder)  # the dict's paths are the current folder's, the file's its folder's: the same here
    from_dict, from_file = load_config(data), load_config(folder / "c.yaml")
    assert from_dict.to_dict() == from_file.to_dict() and from_dict.backbone.path == str(folder / "bb")
    assert data["backbone"]["path"] == "bb"  # the caller's dict is not changed
    for bad, problem in (({"train": {"max_step": 3}}, "max_step"), ({"pretext": {"name": "mae"}}, "pretext")):
        with pytest.raises(ConfigError, match=problem) as from_dict_error:
            load_config({**data, **bad})
        (folder / "bad.yaml").write_text(yaml.safe_dump({**data, **bad}))
        with pytest.raises(ConfigError) as from_file_error:
            load_config(folder / "bad.yaml")
        assert str(from_file_error.value).startswith(f"config '{folder / 'bad.yaml'}': ")  # the file named
        assert str(from_dict_error.value) == without_config_name(str(from_file_error.value))
    from tpp.recipes import run_recipe

    with pytest.raises(TppError, match="the config dict would not run") as refused:
        run_recipe("finetune", {**data, "output_dir": "out"})  # 'bb' holds no checkpoint
    assert str(folder / "bb") in str(refused.value) and not (folder / "out").exists()


def test_finetune_returns_its_run_and_no_library_warning_leaks(world):
    result = world.result
    saved = json.loads((result.run_dir / "metrics.json").read_text())
    assert result.recipe == "finetune" and result.adapter == result.run_dir / "adapter"
    assert result.metrics["test"]["auroc"] == saved["test"]["auroc"] and result.metrics["steps"] == 6
    assert (result.adapter / "tpp_card.json").is_file() and str(result.run_dir) in repr(result)
    assert library_warnings(world.caught) == []  # finetune + load + predict


def test_quiet_hides_library_warnings_only():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet():
            for module in ("transformers.modeling_utils", "peft.peft_model", "accelerate.accelerator", "tpp.x", "me"):
                warnings.warn_explicit(f"from {module}", FutureWarning, "f.py", 1, module=module)
        warnings.warn_explicit("after", FutureWarning, "f.py", 2, module="peft.peft_model")
    assert [str(w.message) for w in caught] == ["from tpp.x", "from me", "after"]


def test_python_and_tpp_predict_give_the_same_numbers(world, tmp_path, capsys):
    files = [write_png(tmp_path / "a.png", 28, 28), write_png(tmp_path / "b.png", 40, 30, rgb=True, seed=1),
             write_png(tmp_path / "c.png", 17, 23, seed=2)]
    store = tpp.AdapterStore(tmp_path / "store")
    version = store.publish(world.result, "site_a", backbone=world.backbone)
    assert store.sites() == ["site_a"] and store.check(world.backbone) == {"site_a": None}
    assert [(r["site"], r["version"], r["backbone_match"]) for r in store.list(world.backbone)] == \
        [("site_a", version.version, "yes")]
    assert run_cli("predict", "--backbone", world.backbone, "--store", tmp_path / "store", "--site", "site_a",
                   *files, "--out", tmp_path / "p.csv") == 0
    with open(tmp_path / "p.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    labels = world.model.labels
    from_paths = world.model.predict([str(f) for f in files])
    assert [r["label"] for r in rows] == [p["label"] for p in from_paths]
    assert [[r[f"prob_{k}"] for k in labels] for r in rows] == \
        [[f"{p['probabilities'][k]:.6f}" for k in labels] for p in from_paths]
    assert {r["threshold"] for r in rows} == {repr(from_paths[0]["threshold"])}
    arrays = [np.asarray(Image.open(f)) for f in files]
    as_given = [arrays[0], Image.open(files[1]), arrays[2] / 255.0]  # uint8, PIL, floats in [0, 1]
    assert world.model.predict(as_given) == from_paths == store.load("site_a", backbone=world.backbone).predict(arrays)
    assert world.model.predict(files[0]) == world.model.predict(arrays[0])  # one image in, one result out


def test_load_takes_the_backbone_its_card_names_or_says_to_pass_it(world, tmp_path):
    moved = shutil.copytree(world.result.adapter, tmp_path / "adapter")
    card = json.loads((moved / "tpp_card.json").read_text())
    card["backbone"]["id"] = str(tmp_path / "gone")
    (moved / "tpp_card.json").write_text(json.dumps(card))
    with pytest.raises(TppError, match=r"not available here; pass backbone="):
        tpp.load(moved)
    card["backbone"]["id"] = "facebook/vit-mae-base"  # a hub id is never fetched on a card's word
    (moved / "tpp_card.json").write_text(json.dumps(card))
    with pytest.raises(TppError, match=r"'facebook/vit-mae-base'\) is not available here; pass backbone="):
        tpp.load(moved)
    card["backbone"]["id"] = str(world.backbone)  # a local folder this machine holds is
    (moved / "tpp_card.json").write_text(json.dumps(card))
    assert tpp.load(moved).predict(np.full((28, 28), 90, np.uint8)) == world.model.predict(np.full((28, 28), 90,
                                                                                                   np.uint8))
    image = np.full((28, 28), 90, np.uint8)
    assert tpp.load(moved, backbone=world.backbone).predict(image) == world.model.predict(image)
    other = make_backbone(tmp_path / "other", seed=1)
    with pytest.raises(TppError, match="was trained on backbone") as wrong:
        tpp.load(moved, backbone=other)
    assert "tpp-load-" not in str(wrong.value) and str(moved) in str(wrong.value)  # named as given, not the copy
    with pytest.raises(TppError, match="does not load on backbone") as refused:
        tpp.AdapterStore(tmp_path / "store").publish(moved, "site_a", backbone=other)
    assert "check@" not in str(refused.value) and f"adapter '{moved}' was trained" in str(refused.value)
    assert not (tmp_path / "store").exists()  # refused before anything was written


def test_predict_refuses_bad_input_naming_it(world, tmp_path):
    model = world.model
    for bad, problem in ((np.zeros(5), r"shape \(5,\) is neither"), (np.full((8, 8), 2.0), r"\[0, 1\]"),
                         ({"a": 1}, "expected a file path, a PIL image or a numpy array"),
                         (str(tmp_path / "none.png"), "does not exist"),
                         (np.zeros((4, 8, 8), np.uint8), r"not one image .* as a list"),
                         ([np.zeros((8, 8), np.uint8), np.zeros((1, 8), np.uint8)], "image 1 .*too small")):
        with pytest.raises(TppError, match=problem):
            model.predict(bad)
    with pytest.raises(TppError, match="batch_size must be a whole number, at least 1, got 0"):
        model.predict(np.zeros((8, 8), np.uint8), batch_size=0)


def test_arguments_of_the_wrong_type_are_one_tpp_error_naming_them(world):
    """Each was a raw TypeError or ValueError from deep inside (pathlib, numpy, the k-NN)."""
    u8 = np.zeros((28, 28), np.uint8)
    pairs = [(u8, "a"), (u8 + 1, "b")]
    for call, said in [(lambda: world.model.predict(u8, batch_size="2"), "batch_size must be a whole number"),
                       (lambda: world.model.predict(u8, batch_size=2.5), "got 2.5"),
                       (lambda: world.model.predict(np.array([[1, "a"]], dtype=object)), "dtype object is no image"),
                       (lambda: tpp.load(world.result, backbone=5), "backbone must be a path or a name"),
                       (lambda: tpp.AdapterStore(None), "the store must be a path"),
                       (lambda: tpp.AdapterStore("s").check(None), "backbone must be a path"),
                       (lambda: tpp.in_context(pairs, u8, method="knn", k="3"), "k must be a whole number"),
                       (lambda: tpp.in_context(pairs, u8, image_size="64"), "image_size must be a whole number"),
                       (lambda: tpp.in_context(None, u8), "context must be a folder, a CSV, or a list"),
                       (lambda: tpp.finetune(FINETUNE_CONFIG, 5), "overrides must be a dict of dotted keys"),
                       (lambda: tpp.in_context(pairs, u8, adapter=5), "adapter must be a path")]:
        with pytest.raises(TppError, match=said):
            call()
    assert len(world.model.predict([u8, u8], batch_size=np.int64(1))) == 2  # a numpy integer is a whole number


def test_evaluate_a_dict_config_with_paths_of_the_current_folder(world, monkeypatch):
    monkeypatch.chdir(world.base)
    config = yaml.safe_load((REPO / "recipes" / "configs" / FINETUNE_CONFIG).read_text())
    config["backbone"]["path"] = os.path.relpath(world.backbone, world.base)
    config["data"] = {**config.get("data", {}), "root": "data", "split": "test"}
    evaluated = tpp.evaluate(config, {"train.eval_batch_size": 64}, adapter=world.result, output_dir="eval")
    assert evaluated.run_dir == world.base / "eval" and evaluated.adapter is None
    assert evaluated.metrics["test"]["auroc"] == pytest.approx(world.result.metrics["test"]["auroc"], abs=1e-6)
    by_run_folder = tpp.evaluate(config, adapter=world.result.run_dir, output_dir="eval_run")  # as its docstring says
    assert by_run_folder.metrics["test"]["auroc"] == evaluated.metrics["test"]["auroc"]


def test_tpp_stage_adapters_are_refused_by_load(world, tmp_path):
    pre = tpp.pretrain_target_parameters(TPP_CONFIG, {"backbone.path": str(world.backbone), "data.root": str(
        world.root), "train.max_steps": 2, "train.batch_size": 16, "adapter.r": 2}, output_dir=tmp_path / "tpp")
    assert pre.recipe == "tpp" and (pre.adapter / "tpp_card.json").is_file() and pre.metrics["steps"] == 2
    with pytest.raises(TppError, match=r"tpp-stage adapter without a task head.*adapter.init_from"):
        tpp.load(pre)
    again = tpp.pretrain_target_parameters(TPP_CONFIG, {"backbone.path": str(world.backbone), "data.root": str(
        world.root), "train.max_steps": 2, "train.batch_size": 16, "adapter.r": 2, "train.resume": "auto"},
        output_dir=tmp_path / "tpp")
    assert again.finished_before and again.run_dir == pre.run_dir


def test_segmentation_masks_equal_those_of_tpp_predict(world, tmp_path):
    toy = toy_segmentation_npz(tmp_path / "toy.npz")
    seg = tpp.finetune("breast_us/busi_seg_lora_finetune.yaml", {
        "backbone.path": str(world.backbone), "data.root": str(world.root), "data.name": "toy", "data.file": str(toy),
        "data.group_key": "group", "backbone.input_size": 16, "segmentation.overlays": 0, **TINY_RUN,
        "train.max_steps": 2, "train.batch_size": 8}, output_dir=tmp_path / "seg")
    files = [write_png(tmp_path / "s.png", 20, 24)]
    tpp.AdapterStore(tmp_path / "store").publish(seg, "seg")
    assert run_cli("predict", "--backbone", world.backbone, "--store", tmp_path / "store", "--site", "seg", *files,
                   "--out", tmp_path / "p.csv") == 0
    model = tpp.load(seg, backbone=world.backbone)
    (entry,) = model.predict([str(files[0])])
    saved = np.asarray(Image.open(next((tmp_path / "p_masks").iterdir())))
    assert entry["mask"].shape == (20, 24) and np.array_equal(entry["mask"], saved)
    assert sum(entry["pixels"].values()) == 20 * 24 and entry["classes"] == model.labels
    inputs = tmp_path / "in"  # --out inside the input folder: a second run does not read the first's masks
    inputs.mkdir()
    (inputs / "s.png").write_bytes(files[0].read_bytes())
    for _ in range(2):
        assert run_cli("predict", "--backbone", world.backbone, "--store", tmp_path / "store", "--site", "seg",
                       inputs, "--out", inputs / "p.csv") == 0
    assert len((inputs / "p.csv").read_text().splitlines()) == 2 and len(list((inputs / "p_masks").glob("*.png"))) == 1
    assert run_cli("predict", "--backbone", world.backbone, "--store", tmp_path / "store", "--site", "seg",
                   inputs, "--out", inputs / "q.csv") == 0  # another --out: p_masks/ is marked, so not read either
    assert len((inputs / "q.csv").read_text().splitlines()) == 2


def test_tpp_run_goes_through_the_api_entry(monkeypatch, capsys):
    def spy(recipe, config, overrides, **kwargs):
        raise TppError(f"spy {recipe} {Path(config).name} {list(overrides)} {sorted(kwargs)}")

    monkeypatch.setattr(api, "run", spy)
    assert run_cli("run", "finetune", "--config", FINETUNE_CONFIG, "train.max_steps=3") == 2
    assert "spy finetune mae_vit_tiny_lora_finetune.yaml ['train.max_steps=3'] ['overwrite', 'started']" in \
        capsys.readouterr().err


def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("\n## From Python\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_runs(world, tmp_path, monkeypatch, capsys):
    """The README's code block as written, on the shipped default backbone (which its card names, so
    ``tpp.load`` finds it) and the tiny data: ``tpp.finetune`` gets their root and the tiny-run sizes on top of
    the example's own overrides."""
    finetune = tpp.finetune

    def on_tiny(config, overrides=None, **kwargs):
        assert overrides["train.max_steps"] == 20  # the example's own
        return finetune(config, {**overrides, "data.root": str(world.root),
                                 **{k: v for k, v in TINY_RUN.items() if k != "train.max_steps"}}, **kwargs)

    monkeypatch.setattr(tpp, "finetune", on_tiny)
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exec(compile(readme_example(), "README.md", "exec"), {})
    assert library_warnings(caught) == []
    assert (tmp_path / "runs" / "notebook" / "adapter").is_dir()
    assert (tmp_path / "store" / "hospital_a" / "current").is_file()
    assert "{'hospital_a': None}" in capsys.readouterr().out


@pytest.mark.parametrize("tamper, said", [("nan", "holds NaN or infinite values"),
                                          ("int", "has dtype torch.int32; adapters hold floats")])
def test_an_adapter_with_nan_or_integer_tensors_is_refused_by_evaluate(world, tmp_path, tamper, said):
    """Evaluate read a NaN adapter or head and published NaN predictions with an AUROC beside them; it is refused,
    naming the file, as serving refuses it."""
    from safetensors.torch import load_file, save_file

    adapter = Path(shutil.copytree(world.result.adapter, tmp_path / "adapter"))
    for name in ("adapter_model.safetensors", "head.safetensors"):
        state = load_file(adapter / name)
        key = sorted(state)[0]
        state[key] = state[key].fill_(float("nan")) if tamper == "nan" else state[key].round().int()
        save_file(state, adapter / name)
        overrides = {"backbone.path": str(world.backbone), "data.root": str(world.root), "data.split": "test"}
        with pytest.raises(TppError, match=f"{name}': tensor '.*' {said}"):
            tpp.evaluate(FINETUNE_CONFIG, overrides, adapter=adapter, output_dir=tmp_path / "ev", overwrite=True)
        shutil.copy(Path(world.result.adapter) / name, adapter / name)


@pytest.mark.parametrize("edit, said", [
    (lambda c: c.update(method="full"), "method 'full' produces a full_model, but the card says 'adapter'"),
    (lambda c: c["options"].update(evil=1), "its options do not fit method 'lora'"),
    (lambda c: c["options"].update(r="two"), "its options do not fit method 'lora'"),
    (lambda c: c.pop("site"), "field 'site' must be a string"),
    (lambda c: c.update(target_modules="q_proj"), "target_modules must be a list of module names"),
    (lambda c: c["data"].update(used=["train"]), "field 'data.used' must be an object"),
    (lambda c: c.update(multitask=[1]), "field 'multitask' must be an object"),
])
def test_an_edited_card_is_refused_naming_it_before_use(world, tmp_path, edit, said):
    """Evaluate and adapter.init_from read the card's method, options and fields: an edit that would replace
    every backbone weight (an 'adapter' naming the full baseline) or crash later is refused up front."""
    from tpp.adapter_dir import CARD

    adapter = Path(shutil.copytree(world.result.adapter, tmp_path / "adapter"))
    card = json.loads((adapter / CARD).read_text())
    edit(card)
    (adapter / CARD).write_text(json.dumps(card))
    overrides = {"backbone.path": str(world.backbone), "data.root": str(world.root)}
    with pytest.raises(TppError, match=re.escape(said)):
        tpp.evaluate(FINETUNE_CONFIG, overrides, adapter=adapter, output_dir=tmp_path / "ev")
    with pytest.raises((TppError, ConfigError), match=re.escape(said)):
        tpp.finetune(FINETUNE_CONFIG, {**overrides, **TINY_RUN, "adapter.init_from": str(adapter)},
                     output_dir=tmp_path / "ft")


def test_a_refused_output_dir_names_the_python_argument_not_the_command_line_flag(world, tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("not a run")
    overrides = {"backbone.path": str(world.backbone), "data.root": str(world.root), **TINY_RUN}
    with pytest.raises(TppError, match="not even with overwrite=True") as caught:
        tpp.finetune(FINETUNE_CONFIG, overrides, output_dir=tmp_path / "mine", overwrite=True)
    assert "--overwrite" not in str(caught.value) and (tmp_path / "mine" / "notes.txt").is_file()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "status.json").write_text('{"status": "succeeded"}')
    (tmp_path / "run" / "log.jsonl").write_text('{"event": "done"}\n')
    (tmp_path / "run" / "notes.txt").write_text("beside a run")
    with pytest.raises(TppError, match="pass overwrite=True") as caught:
        tpp.finetune(FINETUNE_CONFIG, overrides, output_dir=tmp_path / "run")
    assert "--overwrite" not in str(caught.value)
    assert run_cli("run", "finetune", "--config", FINETUNE_CONFIG, f"backbone.path={world.backbone}",
                   f"data.root={world.root}", f"output_dir={tmp_path / 'run'}") == 2
    err = capsys.readouterr().err  # the command line keeps its flag
    assert "pass --overwrite" in err and "overwrite=True" not in err


def test_overwrite_with_train_resume_is_refused_naming_the_python_argument(tmp_path):
    """overwrite=True beside train.resume was dropped without a word."""
    with pytest.raises(TppError, match=r"train.resume=auto with overwrite=True:") as caught:
        tpp.finetune(FINETUNE_CONFIG, {"train.resume": "auto", "data.root": str(tmp_path / "no_data")},
                     output_dir=tmp_path / "run", overwrite=True)
    assert "--overwrite" not in str(caught.value) and not (tmp_path / "run").exists()


@pytest.mark.parametrize("overrides, said", [
    ({"train.lr": 1e-3, "train": {"lr": 2e-3}}, "train.lr is given twice ('train.lr=0.001', then "
                                                "'train={lr: 0.002}'); keep one"),
    (["train.max_steps=2", "train.max_steps=3"], "train.max_steps is given twice"),
])
def test_an_override_given_twice_is_refused_as_on_the_command_line(overrides, said, tmp_path):
    """tpp.finetune kept the last one without a word (a dict's train section setting its train.lr again),
    where `tpp run`, whose entry this is, refuses it."""
    nowhere = str(tmp_path / "no_data")  # were it accepted: refused, not trained
    overrides = {"data.root": nowhere, **overrides} if isinstance(overrides, dict) else [f"data.root={nowhere}",
                                                                                         *overrides]
    with pytest.raises(TppError, match=re.escape(f"override {said}")):
        tpp.finetune(FINETUNE_CONFIG, overrides, output_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()
