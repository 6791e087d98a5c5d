"""Devices on the CPU: ``device`` recorded by every run, refused with a sentence when this machine lacks it,
unknown names listing the valid ones; ``--precision bf16`` inference on the CPU; ``train.log_with`` trackers.
The same paths on a GPU are in test_gpu.py (marked ``gpu``)."""
import json

import numpy as np
import pytest
import torch
from helpers import finetune, png_bytes, run_cli, tpp
from serving_fixtures import SITES, fine_tuned_sites

from tpp import devices
from tpp.backbones import backbone_hash
from tpp.errors import TppError
from tpp.serve import store
from tpp.serve.bank import AdapterBank
from tpp.serve.images import to_model_input

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")


def events(out, name) -> list[dict]:
    return [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if r.get("event") == name]


def test_device_cpu_is_printed_logged_and_in_metrics(tiny_mae, data_root, tmp_path, capsys):
    out = tmp_path / "ft"
    assert finetune(tiny_mae, data_root, out, "device=cpu") == 0
    assert "[tpp] device cpu (" in capsys.readouterr().err
    assert [(e["device"], e["requested"]) for e in events(out, "device")] == [("cpu", "cpu")]
    assert json.loads((out / "metrics.json").read_text())["device"] == "cpu"
    assert "device: cpu" in (out / "config.yaml").read_text()
    pre = tmp_path / "tpp"
    assert tpp(tiny_mae, data_root, pre, "device=auto") == 0  # auto on this machine: what torch has
    assert json.loads((pre / "metrics.json").read_text())["device"] == str(devices.resolve("auto"))


@no_gpu
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_a_gpu_asked_for_without_one_is_refused_before_the_run_folder(tiny_mae, data_root, tmp_path, capsys, device):
    out = tmp_path / "run"
    assert finetune(tiny_mae, data_root, out, f"device={device}") == 2
    err = capsys.readouterr().err
    assert f"device={device} asks for a CUDA GPU, but torch sees none here" in err and "device=cpu" in err
    assert "Traceback" not in err and not out.exists()


def test_unknown_devices_name_the_valid_ones(tiny_mae, data_root, tmp_path, capsys):
    assert finetune(tiny_mae, data_root, tmp_path / "run", "device=gpu") == 2
    assert "device='gpu' is not a device; use one of auto, cpu, cuda, cuda:N" in capsys.readouterr().err
    store_dir = tmp_path / "store"
    store_dir.mkdir()
    for command in (["predict", "--site", "x", str(tmp_path), "--out", str(tmp_path / "p.csv")], ["serve"]):
        assert run_cli(*command, "--backbone", tiny_mae, "--store", store_dir, "--device", "tpu") == 2
        assert "--device='tpu' is not a device; use one of auto, cpu, cuda" in capsys.readouterr().err


def test_a_gpu_index_beyond_the_machines_is_named(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert devices.device_problem("cuda:1") is None
    assert "has 2 CUDA GPU(s) (cuda:0..cuda:1)" in devices.device_problem("cuda:2")


def test_a_tracker_accelerate_knows_but_not_installed_names_its_package(tiny_mae, data_root, tmp_path, capsys):
    from accelerate.utils import is_mlflow_available

    if not is_mlflow_available():  # installed, it would simply log: the error path needs it absent
        assert finetune(tiny_mae, data_root, tmp_path / "run", "train.log_with=mlflow") == 2
        assert "train.log_with=mlflow needs its package, which is not installed: pip install mlflow" in \
            capsys.readouterr().err
        assert not (tmp_path / "run").exists()
    assert finetune(tiny_mae, data_root, tmp_path / "run", "train.log_with=neptune") == 2
    err = capsys.readouterr().err
    assert "'neptune' is not a tracker Accelerate supports" in err and "tensorboard" in err and "wandb" in err


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Two sites: plain LoRA (the shared peft group) and a linear probe (its own copy)."""
    base = tmp_path_factory.mktemp("device")
    w = fine_tuned_sites(base, {"site_a": SITES["site_a"], "site_d": SITES["site_d"]}, images=6)
    for site, run in w["runs"].items():
        store.publish(run, base / "store", site)
    return dict(w, store=base / "store")


def probabilities(bank, images) -> torch.Tensor:
    """(sites, images, K) through ``bank``, every site in one mixed batch."""
    sites = [bank.site(s) for s in ("site_a", "site_d") for _ in images]
    x = [to_model_input(im, sites[0].input_rule) for im in images] * 2
    return torch.stack(bank.predict(sites, x)).reshape(2, len(images), -1)


def test_bf16_inference_on_cpu_is_close_to_fp32_and_leaves_the_backbone_alone(world):
    fp32 = AdapterBank(str(world["backbone"]), str(world["store"]), device="cpu")
    bf16 = AdapterBank(str(world["backbone"]), str(world["store"]), device="cpu", precision="bf16")
    exact, reduced = probabilities(fp32, world["images"]), probabilities(bf16, world["images"])
    assert reduced.dtype == torch.float32 and torch.allclose(reduced.sum(-1), torch.ones(2, 6), atol=1e-5)
    assert not torch.equal(exact, reduced) and (exact - reduced).abs().max() < 0.05
    assert torch.equal(exact, probabilities(fp32, world["images"]))  # fp32 (the default) stays exact
    assert bf16.guard.changed() == [] and backbone_hash(bf16.encoder.model) == bf16.info.hash
    with pytest.raises(TppError, match="--precision fp16 needs a GPU"):
        AdapterBank(str(world["backbone"]), str(world["store"]), device="cpu", precision="fp16")


def test_predict_precision_bf16_cli_runs_and_stays_close(world, tmp_path, capsys):
    import csv

    (tmp_path / "imgs").mkdir()
    for i, image in enumerate(world["images"]):
        (tmp_path / "imgs" / f"{i}.png").write_bytes(png_bytes(image))
    args = ["predict", "--backbone", world["backbone"], "--store", world["store"], "--site", "site_a",
            tmp_path / "imgs", "--device", "cpu"]
    assert run_cli(*args, "--out", tmp_path / "fp32.csv") == 0
    assert run_cli(*args, "--out", tmp_path / "bf16.csv", "--precision", "bf16") == 0
    assert "device cpu (" in capsys.readouterr().err

    def probs(name):
        return np.array([float(r["prob_malignant"]) for r in csv.DictReader(open(tmp_path / name))])

    assert np.abs(probs("fp32.csv") - probs("bf16.csv")).max() < 0.05
