"""The real CLI, in-process, on a tiny backbone and tiny MedMNIST-layout data."""
import json

import numpy as np
import pytest
import torch
from conftest import make_backbone, make_medmnist
from helpers import (FAST, FINETUNE_CONFIG, HANG_S, evaluate, finetune, recipe_args, run_cli, start_cli_subprocess, tpp,
                     wait_for)
from safetensors.torch import load_file

from tpp.backbones import base_state_dict
from tpp.cli import main
from transformers import AutoModel


def test_finetune_writes_run_and_adapter(tiny_mae, data_root, tmp_path):
    out = tmp_path / "run"
    assert finetune(tiny_mae, data_root, out) == 0
    assert json.loads((out / "status.json").read_text())["status"] == "succeeded"
    metrics = json.loads((out / "metrics.json").read_text())
    for split in ("val", "test"):
        assert 0 <= metrics[split]["auroc"] <= 1 and 0 <= metrics[split]["accuracy"] <= 1
        assert len(metrics[split]["confusion_matrix"]) == 2 and "ece" in metrics[split]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log if r["event"] == "step"]
    assert len(steps) == 6 and all(np.isfinite(r["loss"]) for r in steps)
    adapter = out / "adapter"
    assert sorted(p.name for p in adapter.iterdir()) == [
        "README.md", "adapter_config.json", "adapter_model.safetensors", "head.safetensors", "tpp_card.json"]
    weights = load_file(adapter / "adapter_model.safetensors")
    assert weights and all("lora_" in k for k in weights)  # no backbone tensor inside
    card = json.loads((adapter / "tpp_card.json").read_text())
    assert card["modality"] == "US" and card["task"]["label_names"] == ["malignant", "normal, benign"]
    assert card["input"]["channel_rule"].startswith("replicate gray") and card["parent"] is None
    assert card["data"]["used"]["images"] == 60 and len(card["backbone"]["hash"]) == 64
    assert str(data_root) not in json.dumps(card)  # cards travel: no paths
    assert not list(out.glob(".*tmp*"))


def test_backbone_is_bit_identical_after_training(tiny_mae, data_root, tmp_path, monkeypatch):
    import tpp.recipes.finetune as recipe

    seen = {}
    real = recipe.load_backbone

    def spy(*args, **kwargs):
        encoder, info, decoder = real(*args, **kwargs)
        seen["encoder"] = encoder
        seen["before"] = {k: v.clone() for k, v in base_state_dict(encoder.model).items()}
        return encoder, info, decoder

    monkeypatch.setattr(recipe, "load_backbone", spy)
    assert finetune(tiny_mae, data_root, tmp_path / "run", "train.lr=0.05") == 0
    after = base_state_dict(seen["encoder"].model)
    assert after.keys() == seen["before"].keys()
    assert all(torch.equal(after[k], seen["before"][k]) for k in after)


def test_same_seed_same_metrics_and_evaluate_reproduces_them(tiny_mae, data_root, tmp_path):
    assert finetune(tiny_mae, data_root, tmp_path / "a") == 0
    assert finetune(tiny_mae, data_root, tmp_path / "b") == 0
    a = json.loads((tmp_path / "a" / "metrics.json").read_text())
    b = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert a["test"] == b["test"] and a["val"] == b["val"]
    assert evaluate(tiny_mae, data_root, tmp_path / "a" / "adapter", tmp_path / "eval") == 0
    ev = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert ev["test"]["auroc"] == pytest.approx(a["test"]["auroc"], abs=1e-6)
    assert ev["test"]["accuracy"] == pytest.approx(a["test"]["accuracy"], abs=1e-6)
    assert "split_note" not in ev  # the test split is held out


@pytest.mark.parametrize("split, said", [("train", "was trained on these images"),
                                         ("val", "chose its checkpoint and decision threshold")])
def test_evaluating_a_split_the_adapter_learnt_from_says_its_metrics_are_optimistic(
        tiny_mae, data_root, tmp_path, split, said):
    assert finetune(tiny_mae, data_root, tmp_path / "a") == 0
    with pytest.warns(UserWarning, match=said):
        assert evaluate(tiny_mae, data_root, tmp_path / "a" / "adapter", tmp_path / "eval",
                        f"data.split={split}") == 0
    note = json.loads((tmp_path / "eval" / "metrics.json").read_text())["split_note"]
    assert said in note and f"the {split} split" in note and "optimistic" in note


def test_existing_output_and_config_errors(tiny_mae, data_root, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert finetune(tiny_mae, data_root, out) == 2
    assert "not empty" in capsys.readouterr().err and (out / "keep.txt").exists()
    bad = tmp_path / "bad"
    assert finetune(tiny_mae, data_root, bad, "train.lrr=1") == 2
    assert "'train.lrr'" in capsys.readouterr().err and not bad.exists()
    # a folder that holds no run is never emptied, not even with --overwrite (a typo'd output_dir=~ ...)
    assert finetune(tiny_mae, data_root, out, "--overwrite") == 2 and (out / "keep.txt").exists()
    assert "not even with --overwrite" in capsys.readouterr().err
    assert finetune(tiny_mae, data_root, out / "run") == 0  # a run folder inside it is fine
    (out / "run" / "notes.txt").write_text("mine, beside a run")
    assert finetune(tiny_mae, data_root, out / "run", "--overwrite") == 0  # a run's folder is emptied
    assert not (out / "run" / "notes.txt").exists() and (out / "keep.txt").exists()


def test_failed_run_leaves_log_and_status_but_no_artifacts(tiny_mae, tmp_path, capsys):
    out = tmp_path / "run"
    assert finetune(tiny_mae, tmp_path / "no-data", out) == 2  # what tpp validate finds: refused before the run
    err = capsys.readouterr().err
    assert "no-data" in err and "Traceback" not in err and not out.exists()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "breastmnist.npz").write_bytes(b"PK\x03\x04 not a zip")  # found only when read
    assert finetune(tiny_mae, tmp_path / "broken", out) == 2
    err = capsys.readouterr().err
    assert "breastmnist.npz" in err and "Traceback" not in err
    assert json.loads((out / "status.json").read_text())["status"] == "failed"
    assert not (out / "adapter").exists() and not (out / "metrics.json").exists()


def test_tpp_trains_only_target_parameters_and_never_reads_labels(tiny_mae, data_root, tmp_path, monkeypatch):
    import tpp.recipes.tpp as recipe
    from tpp.data import Split

    class NoLabels(Split):
        @property
        def labels(self):
            raise AssertionError("the TPP data path read labels")

        @labels.setter
        def labels(self, value):
            pass

    import tpp.data.arrays as sources

    real_load, real_backbone, seen = recipe.load_data, recipe.load_backbone, {}
    real_array, keys_read = sources.npz_array, []

    def reading(npz, key, path):
        keys_read.append(key)
        return real_array(npz, key, path)

    def guarded(*args, **kwargs):
        data = real_load(*args, **kwargs)
        data.splits = {k: NoLabels(v.images, None) for k, v in data.splits.items()}
        return data

    def spy(*args, **kwargs):
        encoder, info, decoder = real_backbone(*args, **kwargs)
        seen.update(encoder=encoder, decoder=decoder,
                    before={k: v.clone() for k, v in base_state_dict(encoder.model).items()},
                    dec_before={k: v.clone() for k, v in decoder.state_dict().items()})
        return encoder, info, decoder

    monkeypatch.setattr(recipe, "load_data", guarded)
    monkeypatch.setattr(recipe, "load_backbone", spy)
    monkeypatch.setattr(sources, "npz_array", reading)
    assert tpp(tiny_mae, data_root, tmp_path / "tpp") == 0
    assert "train_images" in keys_read and not [k for k in keys_read if "label" in k]  # label arrays stay on disk
    assert all(torch.equal(v, seen["before"][k]) for k, v in base_state_dict(seen["encoder"].model).items())
    assert all(torch.equal(v, seen["dec_before"][k]) for k, v in seen["decoder"].state_dict().items())
    card = json.loads((tmp_path / "tpp" / "adapter" / "tpp_card.json").read_text())
    assert card["stage"] == "tpp" and card["pretext"]["name"] == "mae" and card["pretext"]["mask_ratio"] == 0.75
    assert card["data"]["used"] == {"splits": ["train"], "images": 60, "labels_read": False, "use_eval_splits": False,
                                    "split_seed": 0}
    assert len(card["pretext"]["loss_curve"]) == 4
    assert not (tmp_path / "tpp" / "adapter" / "head.safetensors").exists()


TOY_PRETEXT = '''
from dataclasses import dataclass, field

import torch.nn as nn

from tpp.pretext import register


@dataclass
class ToyOptions:
    target: float = field(default=1.0, metadata={"help": "value the mean feature is pulled to"})


class Toy(nn.Module):
    def __init__(self, encoder, target):
        super().__init__()
        self.encoder, self.target = encoder, target

    def forward(self, pixel_values):
        return (self.encoder(pixel_values)[..., 0].mean() - self.target) ** 2  # tokens (B, T, D)

    def card_entry(self):
        return {"name": "toy", "target": self.target}


@register("toy", ToyOptions)
def build(encoder, decoder, options):
    return Toy(encoder, options.target)
'''


def test_a_pretext_is_one_file_and_one_registration(tiny_mae, data_root, tmp_path, monkeypatch):
    import sys

    import tpp.pretext as pretexts

    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "toy.py").write_text(TOY_PRETEXT)
    pretexts._load_builtin()  # the built-in pretexts, before the path holds the toy
    monkeypatch.setattr(pretexts, "_PRETEXTS", dict(pretexts._PRETEXTS))  # the toy is gone after the test
    monkeypatch.setattr(pretexts, "__path__", [*pretexts.__path__, str(tmp_path / "plugins")])
    pretexts._load_builtin.cache_clear()
    try:
        assert tpp(tiny_mae, data_root, tmp_path / "tpp", "pretext={name: toy, target: 2.0}",
                   "train.max_steps=12", "train.lr=0.01", "train.warmup_ratio=0") == 0
        assert finetune(tiny_mae, data_root, tmp_path / "ft", f"adapter.init_from={tmp_path / 'tpp' / 'adapter'}") == 0
    finally:
        sys.modules.pop("tpp.pretext.toy", None)
        pretexts._load_builtin.cache_clear()  # next lookup re-imports from the restored path (no toy)
    card = json.loads((tmp_path / "tpp" / "adapter" / "tpp_card.json").read_text())
    assert card["pretext"]["name"] == "toy" and card["pretext"]["target"] == 2.0
    curve = [loss for _, loss in card["pretext"]["loss_curve"]]
    assert curve[-1] < curve[0]  # the toy loss trained the target parameters


def test_registering_a_pretext_leaves_the_registry_as_it_was():
    import tpp.pretext as pretexts

    assert sorted(p.name for p in pretexts.all_pretexts()) == ["dino", "mae"]  # also after the toy test


def test_tpp_on_eval_splits_is_recorded_and_refused_for_the_same_data(tiny_mae, data_root, tmp_path, capsys):
    assert tpp(tiny_mae, data_root, tmp_path / "tpp", "data.use_eval_splits=true") == 0
    card = json.loads((tmp_path / "tpp" / "adapter" / "tpp_card.json").read_text())
    used = card["data"]["used"]
    assert used["use_eval_splits"] is True and used["splits"] == ["train", "val", "test"]
    assert used["images"] == sum(card["data"]["counts"].values())
    assert finetune(tiny_mae, data_root, tmp_path / "ft", f"adapter.init_from={tmp_path / 'tpp' / 'adapter'}") != 0
    assert "val" in capsys.readouterr().err


def test_tpp_hand_off_loads_every_tensor_and_refuses_conflicts(tiny_mae, data_root, tmp_path, capsys, monkeypatch):
    assert tpp(tiny_mae, data_root, tmp_path / "tpp") == 0
    parent = tmp_path / "tpp" / "adapter"
    import tpp.builders as builders
    from tpp.model import adapter_state

    captured = {}
    real = builders.load_adapter_state

    def spy(encoder, state, source):
        real(encoder, state, source)
        captured["loaded"] = {k: v.clone() for k, v in adapter_state(encoder).items()}  # before training

    monkeypatch.setattr(builders, "load_adapter_state", spy)
    assert finetune(tiny_mae, data_root, tmp_path / "ft", f"adapter.init_from={parent}") == 0
    file_state = load_file(parent / "adapter_model.safetensors")
    assert captured["loaded"].keys() == file_state.keys()
    assert all(torch.equal(captured["loaded"][k], file_state[k]) for k in file_state)
    card = json.loads((tmp_path / "ft" / "adapter" / "tpp_card.json").read_text())
    assert card["parent"]["stage"] == "tpp" and card["parent"]["pretext"]["name"] == "mae"
    log = (tmp_path / "ft" / "log.jsonl").read_text()
    assert "task head newly initialised" in log
    # rank is inherited: a different explicit rank is an error naming the key
    assert finetune(tiny_mae, data_root, tmp_path / "ft2", f"adapter.init_from={parent}", "adapter.r=4") == 2
    assert "adapter.r=4 conflicts" in capsys.readouterr().err


def test_config_file_adapter_options_give_way_to_the_parent(tiny_mae, data_root, tmp_path, capsys):
    """The shipped fine-tuning config says LoRA r=8: a parent with r=4, or another method, still hands off;
    only command-line values must agree with the parent."""
    def finetune(out, *extra):  # no adapter.r on the command line (FAST has one)
        return run_cli(*recipe_args("finetune", FINETUNE_CONFIG, tiny_mae, data_root, out, "train.max_steps=2",
                                    "train.batch_size=16", *extra))

    assert tpp(tiny_mae, data_root, tmp_path / "tpp", "adapter.r=4") == 0
    assert finetune(tmp_path / "ft", f"adapter.init_from={tmp_path / 'tpp' / 'adapter'}") == 0
    card = json.loads((tmp_path / "ft" / "adapter" / "tpp_card.json").read_text())
    assert card["options"]["r"] == 4
    assert "adapter.r=8 from the config file replaced by the parent's 4" in capsys.readouterr().out
    assert tpp(tiny_mae, data_root, tmp_path / "tpp_b", "adapter={method: bottleneck}") == 0
    parent_b = tmp_path / "tpp_b" / "adapter"
    assert finetune(tmp_path / "ft_b", f"adapter.init_from={parent_b}") == 0
    assert json.loads((tmp_path / "ft_b" / "adapter" / "tpp_card.json").read_text())["method"] == "bottleneck"
    assert finetune(tmp_path / "ft_c", f"adapter.init_from={parent_b}", "adapter.method=lora") == 2
    assert "adapter.method=lora conflicts" in capsys.readouterr().err
    assert finetune(tmp_path / "ft_d", f"adapter.init_from={parent_b}", "adapter.dropout=0.1") == 2  # a LoRA option
    assert "adapter.dropout: not an option of the parent adapter's method bottleneck" in capsys.readouterr().err


def test_modality_mismatch_warns_or_fails(tiny_mae, tmp_path, capsys):
    us_root = make_medmnist(tmp_path / "us")
    xray_root = make_medmnist(tmp_path / "xray", name="pneumoniamnist")
    assert tpp(tiny_mae, us_root, tmp_path / "tpp") == 0
    parent = tmp_path / "tpp" / "adapter"
    args = ["data.name=pneumoniamnist", f"adapter.init_from={parent}"]
    with pytest.warns(UserWarning, match="modality US"):
        assert finetune(tiny_mae, xray_root, tmp_path / "ft", *args) == 0
    assert finetune(tiny_mae, xray_root, tmp_path / "ft2", *args, "adapter.require_same_modality=true") == 2
    assert "require_same_modality" in capsys.readouterr().err


def test_adapter_refused_on_another_backbone(tiny_mae, data_root, tmp_path, capsys):
    assert finetune(tiny_mae, data_root, tmp_path / "run") == 0
    other = make_backbone(tmp_path / "other", "vit_mae", seed=7)
    assert main(["run", "evaluate", "--config", "breast_us/mae_vit_tiny_lora_finetune.yaml",
                 f"backbone.path={other}", f"data.root={data_root}", f"adapter.path={tmp_path / 'run' / 'adapter'}",
                 f"output_dir={tmp_path / 'eval'}"]) == 2
    assert "hash" in capsys.readouterr().err


def test_cli_help_version_ls_cp_validate(tiny_mae, data_root, tmp_path, capsys):
    for cmd in ("run", "ls", "cp", "validate", "compare"):
        with pytest.raises(SystemExit) as exit_info:
            main([cmd, "--help"])
        assert exit_info.value.code == 0 and "examples:" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.startswith("tpp ")
    assert main(["ls"]) == 0
    listing = capsys.readouterr().out
    assert "breast_us/mae_vit_tiny_lora_tpp.yaml" in listing
    assert "  dino " in listing and "Self-distillation in the spirit of DINO" in listing
    assert main(["cp", "breast_us/mae_vit_tiny_lora_finetune.yaml", str(tmp_path / "mine.yaml")]) == 0
    # validate also checks that the backbone and the data exist: here, not ../shared
    assert main(["validate", str(tmp_path / "mine.yaml"), "train.lr=3e-4", f"backbone.path={tiny_mae}",
                 f"data.root={data_root}"]) == 0
    assert main(["validate", str(tmp_path / "mine.yaml"), "adapter.method=nope"]) == 2
    assert "unknown adapter.method 'nope'" in capsys.readouterr().err
    # what a recipe needs of the config is checked by validate too, and by run before any output exists
    tpp_config = "breast_us/mae_vit_tiny_lora_tpp.yaml"
    for argv, message in ((["validate", tpp_config, "adapter.method=linear_probe"], "no target parameters"),
                          (["validate", "breast_us/mae_vit_tiny_lora_finetune.yaml", "task=segmentation"],
                           "task=segmentation needs masks"),
                          (["validate", "breast_us/mae_vit_tiny_lora_finetune.yaml", "data.source=seg_npz"],
                           "holds segmentation masks; set task=segmentation"),
                          (["run", "tpp", "--config", tpp_config, "adapter.method=linear_probe",
                            f"output_dir={tmp_path / 'never'}"], "no target parameters")):
        assert main(argv) == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


def test_linear_probe_baseline_trains_only_the_head(tiny_mae, data_root, tmp_path, capsys):
    out = tmp_path / "lp"
    assert finetune(tiny_mae, data_root, out, "adapter={method: linear_probe}") == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["trainable_parameters"] == 32 * 2 + 2  # linear head on width 32, two classes
    assert sorted(p.name for p in (out / "adapter").iterdir()) == ["README.md", "head.safetensors", "tpp_card.json"]
    assert evaluate(tiny_mae, data_root, out / "adapter", tmp_path / "eval") == 0
    ev = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert ev["test"]["auroc"] == pytest.approx(metrics["test"]["auroc"], abs=1e-6)
    # no target parameters: nothing to pre-train, and another method's options are named with their owners
    assert tpp(tiny_mae, data_root, tmp_path / "tpp", "adapter={method: linear_probe}") == 2
    assert "no target parameters to pre-train" in capsys.readouterr().err
    assert finetune(tiny_mae, data_root, tmp_path / "x", "adapter.method=linear_probe", "adapter.r=4") == 2
    err = capsys.readouterr().err
    assert "'adapter.r' for adapter.method=linear_probe" in err and "adapter.r is an option of method" in err


def test_full_fine_tuning_is_a_full_model_refused_as_adapter(tiny_mae, data_root, tmp_path, capsys):
    out = tmp_path / "full"
    assert finetune(tiny_mae, data_root, out, "adapter={method: full}", "train.lr=1e-3") == 0
    card = json.loads((out / "adapter" / "tpp_card.json").read_text())
    assert card["kind"] == "full_model" and card["weights_file"] == "model.safetensors"
    weights = load_file(out / "adapter" / "model.safetensors")
    original = base_state_dict(AutoModel.from_pretrained(tiny_mae))
    assert weights.keys() == original.keys()
    assert any(not torch.equal(weights[k], original[k]) for k in weights)  # the encoder itself trained
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["trainable_parameters"] > sum(v.numel() for v in original.values() if v.is_floating_point()) // 2
    assert evaluate(tiny_mae, data_root, out / "adapter", tmp_path / "eval") == 0
    ev = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert ev["test"]["auroc"] == pytest.approx(metrics["test"]["auroc"], abs=1e-6)
    assert finetune(tiny_mae, data_root, tmp_path / "child", f"adapter.init_from={out / 'adapter'}") == 2
    assert "full_model" in capsys.readouterr().err


@pytest.mark.parametrize("family,pretext,decoder_text", [("vit", "mae", "fresh per-token MLP"),
                                                         ("vit_mae", "dino", None)])
def test_tpp_with_fresh_pretext_heads_saves_only_target_parameters(tmp_path, data_root, family, pretext, decoder_text):
    backbone = make_backbone(tmp_path / family, family)
    assert tpp(backbone, data_root, tmp_path / "tpp", f"pretext.name={pretext}") == 0
    adapter = tmp_path / "tpp" / "adapter"
    card = json.loads((adapter / "tpp_card.json").read_text())
    assert card["pretext"]["name"] == pretext and card["pretext"]["head_parameters_discarded"] > 0
    if decoder_text:
        assert card["pretext"]["decoder"].startswith(decoder_text)
    else:
        assert "discarded" in card["pretext"]["projection_head"]
    weights = load_file(adapter / "adapter_model.safetensors")
    assert weights and all("lora_" in k for k in weights)
    assert card["trainable_parameters"] == sum(v.numel() for v in weights.values())
    assert finetune(backbone, data_root, tmp_path / "ft", f"adapter.init_from={adapter}") == 0


def test_sigterm_marks_the_run_failed_and_publishes_nothing(tiny_mae, data_root, tmp_path):
    import signal
    import subprocess

    out = tmp_path / "run"
    proc = start_cli_subprocess(*recipe_args("finetune", FINETUNE_CONFIG, tiny_mae, data_root, out,
                                             "train.max_steps=100000", *FAST),
                                env={"HF_HUB_OFFLINE": "1"}, stderr=subprocess.PIPE)
    log = out / "log.jsonl"
    try:
        wait_for(lambda: log.is_file() and '"step"' in log.read_text(), "the run's first step", proc=proc,
                 poll_s=0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=HANG_S) == 143  # 128 + SIGTERM, as a shell reports a killed job
    assert "terminated by SIGTERM" in proc.stderr.read()
    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "failed" and "SIGTERM" in status["error"]
    assert not (out / "adapter").exists() and not (out / "metrics.json").exists()


def test_tpp_plot_draws_loss_and_validation_curves(tiny_mae, data_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert finetune(tiny_mae, data_root, out, "train.eval_every=2") == 0
    assert main(["plot", str(out)]) == 0
    png = out / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    from tpp.plot import read_log

    losses, curves = read_log(out)
    assert len(losses) == 6 and [s for s, _ in curves["val_auroc"]] == [2, 4, 6]
    assert main(["plot", str(tmp_path)]) == 2 and "no log.jsonl" in capsys.readouterr().err
    failed = tmp_path / "failed"  # a run that failed before its first step says so, with its error
    failed.mkdir()
    (failed / "log.jsonl").write_text('{"time": 0.1, "event": "data"}\n')
    (failed / "status.json").write_text('{"status": "failed", "error": "TppError: no images"}')
    assert main(["plot", str(failed)]) == 2
    assert "the run failed before its first step (TppError: no images)" in capsys.readouterr().err
    assert main(["compare", str(out), "--csv", str(tmp_path / "no" / "such" / "r.csv")]) == 2  # before the table
    captured = capsys.readouterr()
    assert "does not exist; create it" in captured.err and captured.out == ""


def test_tensorboard_tracker_and_a_diverging_run_keeps_its_last_checkpoint(tiny_mae, data_root, tmp_path, capsys):
    out = tmp_path / "tb"
    assert finetune(tiny_mae, data_root, out, "train.log_with=tensorboard", "train.eval_every=3") == 0
    assert list(out.rglob("events.out.tfevents.*"))  # Accelerate's TensorBoard tracker wrote inside the run dir
    bad = tmp_path / "diverge"
    code = finetune(tiny_mae, data_root, bad, "train.lr=1e30", "train.checkpoint_every=1", "train.max_steps=20")
    err = capsys.readouterr().err
    assert code == 2 and "the loss became" in err and "at step" in err
    assert json.loads((bad / "status.json").read_text())["status"] == "failed" and not (bad / "adapter").exists()
    kept = sorted((bad / "checkpoints").iterdir())
    assert kept and all(torch.isfinite(t).all() for t in load_file(kept[-1] / "trainable.safetensors").values())


def test_val_label_fraction_subsamples_only_the_validation_split(tiny_mae, data_root, tmp_path):
    from tpp.data.subsets import label_fraction_index

    out = tmp_path / "run"
    assert finetune(tiny_mae, data_root, out, "data.val_label_fraction=0.3") == 0
    metrics = json.loads((out / "metrics.json").read_text())
    labels = np.load(data_root / "breastmnist.npz")["val_labels"].ravel()
    assert metrics["val"]["n"] == len(label_fraction_index(labels, 0.3, "breastmnist/val", 0)) < 20
    assert metrics["test"]["n"] == 20
