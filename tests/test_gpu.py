"""On a CUDA GPU (marked ``gpu``; skipped without one, run whenever torch sees one): fine-tuning with
``device=cuda`` and bf16, ``tpp predict --device cuda`` (fp32 close to the CPU's, bf16 close to fp32), and
``tpp serve --device cuda`` answering exactly as offline prediction on the same device. benchmarks/gpu_check.sh
runs these and the GPU measurements in one go."""
import csv
import json
import socket
import subprocess
import urllib.error

import numpy as np
import pytest
import torch
from helpers import FAST, FINETUNE_CONFIG, HANG_S, finetune, png_bytes, recipe_args, run_cli, run_cli_subprocess, \
    start_cli_subprocess, wait_for
from serving_fixtures import SITES, fine_tuned_sites, request

from tpp.backbones import backbone_hash
from tpp.serve import store
from tpp.serve.bank import AdapterBank

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
GPU_SITES = ("site_a", "site_c", "site_d")  # LoRA (shared group), DoRA and a linear probe (own copies)


def events(out, name) -> list[dict]:
    return [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if r.get("event") == name]


def test_finetune_on_cuda_with_bf16_records_the_gpu(tiny_mae, data_root, tmp_path):
    out = tmp_path / "bf16"
    proc = run_cli_subprocess(*recipe_args("finetune", FINETUNE_CONFIG, tiny_mae, data_root, out, "train.max_steps=6",
                                           *FAST, "device=cuda", "train.mixed_precision=bf16"))
    assert proc.returncode == 0, proc.stderr
    assert "[tpp] device cuda:0 (" in proc.stderr
    assert json.loads((out / "metrics.json").read_text())["device"] == "cuda:0"
    [event] = events(out, "device")
    assert event["requested"] == "cuda" and event["mixed_precision"] == "bf16"
    assert event["name"] == f"cuda:0 ({torch.cuda.get_device_name(0)})"
    cpu_then_gpu = tmp_path / "in_process"  # Accelerate's process-wide state moves to the GPU asked for
    assert finetune(tiny_mae, data_root, tmp_path / "cpu", "device=cpu") == 0
    assert finetune(tiny_mae, data_root, cpu_then_gpu, "device=cuda:0") == 0
    assert json.loads((cpu_then_gpu / "metrics.json").read_text())["device"] == "cuda:0"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("gpu")
    w = fine_tuned_sites(base, {s: SITES[s] for s in GPU_SITES}, images=6)
    for site, run in w["runs"].items():
        store.publish(run, base / "store", site)
    (base / "imgs").mkdir()
    for i, image in enumerate(w["images"]):
        (base / "imgs" / f"{i}.png").write_bytes(png_bytes(image))
    return dict(w, store=base / "store", folder=base / "imgs")


def predicted(world, tmp_path, site, *flags) -> np.ndarray:
    """(images, K) probabilities from ``tpp predict`` with ``flags``."""
    out = tmp_path / f"{site}{'_'.join(flags)}.csv"
    assert run_cli("predict", "--backbone", world["backbone"], "--store", world["store"], "--site", site,
                   world["folder"], "--out", out, *flags) == 0
    return np.array([[float(v) for k, v in r.items() if k.startswith("prob_")] for r in csv.DictReader(open(out))])


def test_predict_on_cuda_is_close_to_the_cpu_and_bf16_close_to_fp32(world, tmp_path, capsys):
    for site in GPU_SITES:
        cpu = predicted(world, tmp_path, site, "--device", "cpu")
        gpu = predicted(world, tmp_path, site, "--device", "cuda")
        bf16 = predicted(world, tmp_path, site, "--device", "cuda", "--precision", "bf16")
        assert np.abs(cpu - gpu).max() < 1e-3, site  # fp32 convolutions may run in TF32 on the GPU
        assert np.abs(gpu - bf16).max() < 0.05, site
    assert "device cuda:0 (" in capsys.readouterr().err
    bank = AdapterBank(str(world["backbone"]), str(world["store"]), device="cuda", precision="bf16")
    for site in GPU_SITES:
        bank.site(site)
    assert all(p.device.type == "cuda" and p.dtype == torch.float32 for p in bank.encoder.model.parameters())
    assert bank.guard.changed() == [] and backbone_hash(bank.encoder.model) == bank.info.hash


def test_serve_on_cuda_answers_as_offline_predict_on_cuda(world, tmp_path):
    expected = {site: predicted(world, tmp_path, site, "--device", "cuda") for site in GPU_SITES}
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    proc = start_cli_subprocess("serve", "--backbone", world["backbone"], "--store", world["store"], "--port", port,
                                "--device", "cuda", env={"TPP_SERVE_TOKEN": ""}, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"

        def answered() -> bool:
            try:
                return request(f"{url}/healthz")[0] == 200
            except (urllib.error.URLError, ConnectionError):
                return False

        wait_for(answered, "the server to come up", proc=proc, poll_s=0.5)
        for site in GPU_SITES:
            files = [(f"{i}.png", png_bytes(image)) for i, image in enumerate(world["images"])]
            status, body = request(f"{url}/v1/sites/{site}/predict", files)
            assert status == 200
            served = np.array([list(p["probabilities"].values()) for p in body["predictions"]])
            assert np.abs(served - expected[site]).max() < 1e-5, site
    finally:
        proc.terminate()
        logs = proc.communicate(timeout=HANG_S)[0]
    assert proc.returncode == 0, logs
    assert "device cuda:0 (" in logs and "precision fp32" in logs
