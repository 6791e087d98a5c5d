"""Deployment end to end: the inference worker, the HTTP service on loopback, and the CLI commands."""
import csv
import io
import json
import logging
import os
import re
import socket
import subprocess
import threading
import urllib.error

import numpy as np
import pytest
import torch
from helpers import HANG_S, dicom_bytes, png_bytes, run_cli_subprocess, start_cli_subprocess, wait_for
from serving_fixtures import SITES, build_store, offline_probs, paused, request, serving

from tpp.serve import store
from tpp.serve.bank import AdapterBank
from tpp.cli import main
from tpp.serve.worker import InferenceWorker


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = build_store(tmp_path_factory.mktemp("serve"))
    w["expected"] = {s: offline_probs(w["backbone"], w["store"] / s / store.current_version(w["store"], s), w["images"])
                     for s in SITES}
    return w


def close(got, expected) -> bool:
    return bool(torch.allclose(torch.tensor(got), expected, atol=1e-5, rtol=0))


def settled(worker) -> None:
    """Wait until the inference thread finished its batch (it counts and logs a batch after answering it)."""
    worker.call(lambda bank: None).result(HANG_S)


def test_queued_requests_for_different_sites_run_as_one_batch_each_with_its_adapter(world):
    worker = InferenceWorker(AdapterBank(str(world["backbone"]), str(world["store"])), max_batch=64, max_wait_ms=1)
    for s in SITES:  # resident first: a site that is not waits for its files aside (test_serve_loading.py)
        worker.predict(s, world["images"][:1]).result(HANG_S)
    settled(worker)  # the last warm-up batch is counted after its answer is set
    batches = worker.batches
    jobs = [(s, i) for i in range(3) for s in SITES]  # 15 requests, 5 sites, 4 methods (LoRA, DoRA, probe, LoHa)
    with paused(worker):
        futures = [(s, i, worker.predict(s, world["images"][i:i + 2])) for s, i in jobs]
    for s, i, f in futures:
        result = f.result(HANG_S)
        assert result.site == s and close(result.outputs, world["expected"][s][i:i + 2])
    settled(worker)
    assert worker.batches == batches + 1
    worker.stop()


def test_a_batch_never_spans_more_sites_than_stay_resident(world, caplog):
    worker = InferenceWorker(AdapterBank(str(world["backbone"]), str(world["store"]), max_resident=2), max_wait_ms=1)
    caplog.set_level(logging.INFO, logger="tpp.serve")
    with paused(worker):
        futures = {s: worker.predict(s, world["images"][:3]) for s in SITES}
    for s, f in futures.items():
        assert close(f.result(HANG_S).outputs, world["expected"][s][:3])
    settled(worker)
    sites_per_batch = [int(re.search(r"(\d+) sites in", m)[1]) for m in caplog.messages if m.startswith("batch of ")]
    assert len(sites_per_batch) == worker.batches >= -(-len(SITES) // 2) and max(sites_per_batch) <= 2
    assert len(worker.bank.resident) == 2 and worker.bank.loads == len(SITES)
    worker.stop()


def test_concurrent_threads_and_a_reload_never_mix_versions(world, tmp_path):
    s = tmp_path / "store"
    old = store.publish(world["runs"]["site_a"], s, "x").version
    worker = InferenceWorker(AdapterBank(str(world["backbone"]), str(s)), max_wait_ms=2)
    images = world["images"][:4]
    expected = {old: world["expected"]["site_a"][:4], None: world["expected"]["site_b"][:4]}
    results, stop = [], threading.Event()

    def client():
        while not stop.is_set():
            results.append(worker.predict("x", images).result(HANG_S))

    threads = [threading.Thread(target=client) for _ in range(3)]
    for t in threads:
        t.start()
    wait_for(lambda: len(results) >= 3, "answers before the reload")  # counted, not timed: a slow machine too
    new = store.publish(world["runs"]["site_b"], s, "x").version
    assert worker.reload("x").result(HANG_S) == (old, new)
    wait_for(lambda: sum(r.version == new for r in results) >= 3, "answers after the reload")
    stop.set()
    for t in threads:
        t.join()
    expected[new] = expected.pop(None)
    assert {r.version for r in results} == {old, new}
    assert all(close(r.outputs, expected[r.version]) for r in results)
    worker.stop()


# -- the HTTP service --------------------------------------------------------------------------------

def test_service_routes_predictions_and_reports_versions(world):
    files = [(f"img{i}.png", png_bytes(world["images"][i])) for i in range(3)]
    with serving(world) as url:
        assert request(f"{url}/healthz") == (200, {"status": "ok"})
        status, listing = request(f"{url}/v1/sites")
        assert status == 200 and [r["site"] for r in listing["sites"]] == sorted(SITES)
        for site in SITES:
            status, out = request(f"{url}/v1/sites/{site}/predict", files)
            assert status == 200 and out["version"] == store.current_version(world["store"], site)
            assert (out["backbone_hash"] == listing["backbone"]["hash"]
                    and out["adapter_id"] == f"{site}@{out['version']}")
            probs = [list(p["probabilities"].values()) for p in out["predictions"]]
            assert close(probs, world["expected"][site][:3])
            assert [p["file"] for p in out["predictions"]] == ["img0.png", "img1.png", "img2.png"]
        assert all(r["resident"] for r in request(f"{url}/v1/sites")[1]["sites"])


def test_service_bad_input_gets_clear_status_codes(world):
    png = png_bytes(world["images"][0])
    with serving(world, max_upload_bytes=20_000) as url:
        status, out = request(f"{url}/v1/sites/nobody/predict", [("a.png", png)])
        assert status == 404 and "GET /v1/sites" in out["detail"]
        for bad in ("a..b", "x%20y", "%2E%2E"):
            assert request(f"{url}/v1/sites/{bad}/predict", [("a.png", png)])[0] in (400, 404)
        assert request(f"{url}/v1/sites/..%2Fstore/predict", [("a.png", png)])[0] in (400, 404)
        status, out = request(f"{url}/v1/sites/site_a/predict", [("scan.png", b"\x89PNG\r\n\x1a\nnot really")])
        assert status == 400 and "scan.png" in out["detail"]
        status, out = request(f"{url}/v1/sites/site_a/predict", [("x.npy", b"\x93NUMPYgarbage")])
        assert status == 400
        status, out = request(f"{url}/v1/sites/site_a/predict", [("notes.txt", b"hello")])
        assert status == 400 and "unsupported image format" in out["detail"]
        five = io.BytesIO()
        np.save(five, np.zeros((28, 28, 5), np.uint8))
        status, out = request(f"{url}/v1/sites/site_a/predict", [("five.npy", five.getvalue())])
        assert status == 400 and "neither (H, W) gray nor (H, W, 3) RGB" in out["detail"]
        status, out = request(f"{url}/v1/sites/site_a/predict", [("big.png", b"\0" * 30_000)])
        assert status == 413 and "upload limit" in out["detail"]
        status, out = request(f"{url}/v1/sites/site_a/predict?window=abc", [("a.png", png)])
        assert status == 400 and "CENTER,WIDTH" in out["detail"]
        assert request(f"{url}/v1/sites/site_a/predict", body=b"")[0] == 422  # no images field


def test_a_stalled_worker_gives_503_not_a_hung_request(world):
    worker = InferenceWorker(AdapterBank(str(world["backbone"]), str(world["store"])))
    worker.predict("site_a", world["images"][:1]).result(HANG_S)  # resident: the second request below is quick
    with serving(world, timeout=3, worker=worker) as url:
        with paused(worker):
            status, out = request(f"{url}/v1/sites/site_a/predict", [("a.png", png_bytes(world["images"][0]))])
        assert status == 503 and "overloaded" in out["detail"]
        assert request(f"{url}/v1/sites/site_a/predict", [("a.png", png_bytes(world["images"][0]))])[0] == 200


def test_healthz_says_503_once_the_inference_worker_has_stopped(world):
    worker = InferenceWorker(AdapterBank(str(world["backbone"]), str(world["store"])))
    with serving(world, worker=worker) as url:
        assert request(f"{url}/healthz") == (200, {"status": "ok"})
        worker.stop()
        assert request(f"{url}/healthz") == (503, {"status": "the inference worker has stopped"})


def test_service_token_reload_and_logs_without_patient_data(world, tmp_path, caplog):
    s = tmp_path / "store"
    store.publish(world["runs"]["site_a"], s, "x")
    dicom = dicom_bytes((world["images"][0].astype(np.uint16) * 4))
    caplog.set_level(logging.DEBUG)
    with serving(world, token="s3cret", store_path=s) as url:
        assert request(f"{url}/v1/sites/x/predict", [("a.dcm", dicom)])[0] == 401
        assert request(f"{url}/v1/sites/x/predict", [("a.dcm", dicom)], token="wrong")[0] == 401
        status, first = request(f"{url}/v1/sites/x/predict", [("a.dcm", dicom)], token="s3cret")
        assert status == 200 and request(f"{url}/healthz")[0] == 200
        new = store.publish(world["runs"]["site_b"], s, "x").version
        (row,) = request(f"{url}/v1/sites", token="s3cret")[1]["sites"]  # published, not reloaded yet:
        assert (row["version"], row["serving"], row["resident"]) == (new, first["version"], False)  # says so
        status, out = request(f"{url}/v1/sites/x/reload", token="s3cret", method="POST", body=b"")
        assert status == 200 and out["new_version"] == new and out["old_version"] == first["version"]
        status, second = request(f"{url}/v1/sites/x/predict", [("a.dcm", dicom)], token="s3cret")
        assert second["version"] == new != first["version"]
    text = caplog.text
    assert "batch of 1 images" in text  # the worker logs, but never patient data
    assert "SECRET" not in text and "424242" not in text and "a.dcm" not in text


# -- CLI -----------------------------------------------------------------------------------------------

def test_cli_publish_ls_check(world, tmp_path, capsys):
    s = tmp_path / "store"
    assert main(["adapters", "publish", str(world["runs"]["site_a"]), str(s), "--site", "north"]) == 0
    assert main(["adapters", "publish", str(world["runs"]["site_c"]), str(s), "--site", "south"]) == 0
    assert main(["adapters", "ls", str(s), "--backbone", str(world["backbone"])]) == 0
    out = capsys.readouterr().out
    assert "north" in out and "south" in out and "| yes" in out
    assert main(["adapters", "check", str(s), "--backbone", str(world["backbone"])]) == 0
    assert main(["adapters", "publish", str(world["runs"]["site_a"]), str(s), "--site", "../evil"]) == 2
    assert "not allowed" in capsys.readouterr().err


def test_cli_rollback_serves_an_earlier_version_again_only_if_it_is_intact(world, tmp_path, capsys):
    s = tmp_path / "store"
    first = store.publish(world["runs"]["site_a"], s, "x").version
    second = store.publish(world["runs"]["site_b"], s, "x").version
    assert main(["adapters", "rollback", str(s), "--site", "x"]) == 0  # without --version: what it could serve
    listed = capsys.readouterr().out
    assert listed.startswith("versions of site 'x', newest first:\n") and "--version V" in listed
    assert listed.index(f"  {second}  created ") < listed.index(f"  {first}  created ") and "(current)" in listed
    assert main(["adapters", "rollback", str(s), "--site", "x", "--version", "0123456789abcdef"]) == 2
    assert "'0123456789abcdef' is not a version of site 'x'; the store holds" in capsys.readouterr().err
    assert main(["adapters", "rollback", str(s), "--site", "x", "--version", first, "--backbone",
                 str(world["backbone"])]) == 0
    assert store.current_version(s, "x") == first
    assert f"x serves {first} again (was {second})" in capsys.readouterr().out
    assert main(["adapters", "rollback", str(s), "--site", "x", "--version", first]) == 0  # the one it serves
    assert f"x already serves {first}; nothing changed" in capsys.readouterr().out
    weights = next((s / "x" / second).glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-1] + bytes([weights.read_bytes()[-1] ^ 1]))
    assert main(["adapters", "rollback", str(s), "--site", "x", "--version", second]) == 2  # damaged: refused
    assert "content hash does not match" in capsys.readouterr().err and store.current_version(s, "x") == first


def test_each_adapters_action_has_its_own_help_and_refuses_the_options_of_others(world, capsys):
    """`tpp adapters publish --help` printed every action's options; `ls --repo x --private` ignored both."""
    with pytest.raises(SystemExit) as exited:
        main(["adapters", "ls", str(world["store"]), "--repo", "foo/bar", "--version", "zz", "--private"])
    assert exited.value.code == 2
    assert "unrecognized arguments: --repo foo/bar --version zz --private" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["adapters", "publish", "--help"])
    helped = capsys.readouterr().out
    assert exited.value.code == 0 and "usage: tpp adapters publish" in helped and "RUN_DIR STORE" in helped
    assert "--site SITE" in helped and "--repo" not in helped and "--private" not in helped
    with pytest.raises(SystemExit) as exited:
        main(["adapters", "check", str(world["store"])])
    assert exited.value.code == 2 and "required: --backbone" in capsys.readouterr().err
    assert main(["adapters", "list", str(world["store"])]) == 0 and "site_a" in capsys.readouterr().out  # ls


def test_versions_are_listed_by_when_their_adapter_was_created_not_by_folder_times(tmp_path):
    """A copied or restored store has new folder times: "newest first" must not follow them."""
    site = tmp_path / "store" / "x"
    for name, created, mtime in [("a" * 16, "2026-01-02T10:00:00+00:00", 100), ("b" * 16, "2026-01-01T10:00:00+00:00",
                                 300), ("c" * 16, None, 200)]:
        (site / name).mkdir(parents=True)
        (site / name / "tpp_card.json").write_text(json.dumps({"created": created} if created else {}))
        os.utime(site / name, (mtime, mtime))
    assert store.versions(tmp_path / "store", "x") == [("a" * 16, "2026-01-02T10:00:00+00:00"),
                                                        ("b" * 16, "2026-01-01T10:00:00+00:00"), ("c" * 16, None)]


def test_cli_predict_single_site_and_site_map(world, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(5):
        (folder / f"{i}.png").write_bytes(png_bytes(world["images"][i]))
    out = tmp_path / "preds.csv"
    args = ["predict", "--backbone", str(world["backbone"]), "--store", str(world["store"])]
    assert main([*args, "--site", "site_c", str(folder), "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out)))
    assert [r["image"] for r in rows] == [str(folder / f"{i}.png") for i in range(5)]
    probs = [[float(r["prob_malignant"]), float(r["prob_normal, benign"])] for r in rows]
    assert close(probs, world["expected"]["site_c"][:5])
    mapping = tmp_path / "map.csv"
    mapping.write_text("image,site\n" + "".join(f"imgs/{i}.png,{list(SITES)[i % 5]}\n" for i in range(5)))
    threads = torch.get_num_threads()
    try:  # same probabilities on one thread
        assert main([*args, "--site-map", str(mapping), "--out", str(out), "--batch-size", "3", "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert main([*args, "--site", "site_c", str(folder), "--out", str(out), "--threads", "0"]) == 2
    assert "--threads must be at least 1" in capsys.readouterr().err
    for i, r in enumerate(csv.DictReader(open(out))):
        site = list(SITES)[i % 5]
        assert r["site"] == site and close([float(r["prob_malignant"]), float(r["prob_normal, benign"])],
                                           world["expected"][site][i])
    (folder / "5.png").write_bytes(b"not an image")
    before = out.read_bytes()
    assert main([*args, "--site", "site_a", str(folder), "--out", str(out), "--on-bad-file", "fail"]) == 2
    assert "5.png" in capsys.readouterr().err and out.read_bytes() == before  # nothing half-written
    assert main([*args, "--site", "site_a", str(folder), "--out", str(out)]) == 0  # default: skip and list it
    assert len(list(csv.DictReader(open(out)))) == 5
    assert [r["image"] for r in csv.DictReader(open(tmp_path / "preds_skipped.csv"))] == [str(folder / "5.png")]


def test_tpp_serve_command_starts_answers_and_stops(world, tmp_path):
    env = {"TPP_SERVE_TOKEN": ""}
    args = ["serve", "--backbone", world["backbone"], "--store", world["store"]]
    refused = run_cli_subprocess(*args, "--host", "0.0.0.0", env=env)
    assert refused.returncode == 2 and "token" in refused.stderr
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    proc = start_cli_subprocess(*args, "--port", port, "--threads", "1", "--loader-threads", "3", env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url, health = f"http://127.0.0.1:{port}", []

        def answered() -> bool:
            try:
                health.append(request(f"{url}/healthz")[0])
                return True
            except (urllib.error.URLError, ConnectionError):
                return False

        wait_for(answered, "the server to come up", proc=proc, poll_s=0.5)
        assert health == [200]
        status, out = request(f"{url}/v1/sites/site_d/predict", [("a.png", png_bytes(world["images"][0]))])
        assert status == 200 and close([list(out["predictions"][0]["probabilities"].values())],
                                       world["expected"]["site_d"][:1])
    finally:
        proc.terminate()
        logs = proc.communicate(timeout=HANG_S)[0]
    assert proc.returncode == 0, logs
    assert "3 loader threads, 1 torch threads" in logs


@pytest.mark.parametrize("option, value, said", [
    ("--max-batch", "0", "--max-batch must be at least 1, got 0."),
    ("--port", "70000", "--port must lie in 1..65535, got 70000."),
    ("--max-upload-mb", "-1", "--max-upload-mb must be positive, got -1.0."),
    ("--max-wait-ms", "-5", "--max-wait-ms must be 0 or more, got -5.0."),
    ("--max-resident", "0", "--max-resident must be at least 1, got 0."),
    ("--loader-threads", "0", "--loader-threads must lie in 1..64, got 0."),
])
def test_tpp_serve_refuses_a_number_option_out_of_range_before_loading(world, capsys, option, value, said):
    """--max-batch 0 used to start, then kill the inference thread at the first request (healthz still ok)."""
    assert main(["serve", "--backbone", "nowhere", "--store", str(world["store"]), option, value]) == 2
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err and "nowhere" not in err  # refused before the backbone


def test_tpp_serve_refuses_loader_threads_with_the_ray_engine_before_loading(world, capsys):
    """Ray replicas build their own workers: the option would have been ignored silently."""
    assert main(["serve", "--backbone", "nowhere", "--store", str(world["store"]), "--engine", "ray",
                 "--loader-threads", "3"]) == 2
    err = capsys.readouterr().err
    assert "--loader-threads is an option of the default engine" in err and "Traceback" not in err


def test_tpp_serve_on_a_port_in_use_is_one_error_before_loading(world, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--backbone", "nowhere", "--store", str(world["store"]), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "--port" in err and "nowhere" not in err


def test_tpp_run_refuses_fewer_than_one_process(capsys):
    assert main(["run", "finetune", "--config", "breast_us/mae_vit_tiny_lora_finetune.yaml",
                 "--num-processes", "0"]) == 2
    assert "--num-processes must be at least 1, got 0." in capsys.readouterr().err


def test_a_prediction_reads_its_sites_pointer_once(tmp_path, monkeypatch):
    """The route's pointer read (404 unless published) is the version whose card gives the input options of a site
    not in memory: read once per request, not again."""
    from serving_fixtures import call, stub_app

    app, _ = stub_app(tmp_path)
    real, reads = store.current_version, []
    monkeypatch.setattr(store, "current_version", lambda root, site: (reads.append(site), real(root, site))[1])
    status, answer, _ = call(app, "POST", "/v1/sites/s/predict", files=[("q.png", png_bytes(np.zeros((8, 8),
                                                                                                     np.uint8)))])
    assert status == 200 and answer["predictions"][0]["label"] == "a" and reads == ["s"]
