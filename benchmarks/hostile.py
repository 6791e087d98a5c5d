"""Hostile traffic against ``tpp serve``: good requests mixed with a tampered store and hostile inputs.

    python benchmarks/hostile.py                   # writes benchmarks/results/hostile.{json,md}
    python benchmarks/serving.py --hostile --quick # the same scenario, short (also: hostile.py --quick)

``tpp serve`` runs in a subprocess on loopback (:func:`serving.start_server`) over a fresh store: good
sites from :func:`serving.make_sites` (one real LoRA fine-tuning run, the others copies with re-drawn
LoRA B matrices and heads), plus entries written straight into the store folder the way an attacker
with write access to it could (correct content hashes, so only the service's own checks stand between
them and the shared backbone):

- ``forged_base_key``: a LoRA adapter whose weights carry an extra backbone tensor
  (``...q_proj.base_layer.weight``);
- ``full_as_adapter``: backbone-named tensors in ``model.safetensors``, card method ``full``, kind ``adapter``;
- ``flipped_bytes``: a published adapter with one byte of its weights flipped afterwards;
- ``labels_misfit``: a card naming three labels for a two-row head;
- ``linked_site``: a site folder that is a symbolic link to a store outside this one;
- ``linked_pointer``: a ``current`` pointer that is a symbolic link to a secret file outside the store;
- ``secret_pointer``: a ``current`` pointer whose content is that secret text;
- ``bad.name``: a site name the service must not take as a path.

Client threads (keep-alive connections) send a fixed interleaving: ``--good-per-hostile`` good requests
(one 28x28 PNG to a good site, round-robin over sites and test images), then one hostile request: a
predict request to each hostile site, and to good sites: 20 all-zero 8192x8192 PNGs in one request, one
PNG just above the per-image pixel limit, gzip bombs named ``x.nii.gz`` (plain, and behind a valid NIfTI
header) and a text file. Halfway, one good site gets a new version (same tensors, other bytes) published
and ``POST /reload``-ed while traffic goes on.

Every good answer is checked against offline predictions of the evaluate recipe's model (label equal,
every probability within 1e-4). Reported: good requests, good-request errors (any non-200, or a failed
reload), wrong answers (a 200 that differs from the offline reference, or a 200 for a hostile site),
hostile requests by case and status, 5xx count, whether the secret appeared in any response body, the
server's RSS (VmRSS after warm-up and at the end, VmHWM), the backbone hash of ``GET /v1/sites`` before
and after, the addresses the server listens on, and p50/p99 latency of good requests. Exit status 1 when
any check fails (good-request errors and wrong answers must both be 0).
"""
from __future__ import annotations

import argparse
import gzip
import http.client
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
import zlib
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
import report  # noqa: E402
import serving  # noqa: E402

HOSTILE_SITE_CODES = {400, 404, 409}  # refused, unknown or badly named: never 200, never 5xx
BASE_KEY = "base_model.model.layers.0.attention.q_proj.base_layer.weight"
REQUEST_TIMEOUT_S = 300  # a client waits this long for one answer (the service itself answers 503 after 120 s)


# -- the store ---------------------------------------------------------------------------------------

def forge(store_path: Path, site: str, files: dict[str, bytes]) -> str:
    """Write ``files`` as the current version of ``site`` straight into the store folder (no checks), with
    the content hash the store expects, as an attacker with write access to the store could."""
    from tpp.serve import store

    version = store.content_hash(files)
    folder = store_path / site / version
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    (store_path / site / store.POINTER).write_text(version + "\n")
    return version


def add_hostile_sites(store_path: Path, work: Path, backbone: str, template: str, secret: str) -> dict[str, str]:
    """Write the hostile entries next to the good sites; returns {site: what it is}. ``template`` is a
    good LoRA site whose files the forgeries start from."""
    from safetensors import safe_open
    from safetensors.torch import load as load_bytes
    from safetensors.torch import save as save_bytes

    from tpp.serve import store
    from tpp.adapter_dir import CARD, FULL_WEIGHTS, HEAD, WEIGHTS

    good = store.current(store_path, template)
    files = {p.name: p.read_bytes() for p in good.path.iterdir()}
    card = json.loads(files[CARD])
    sites = {}

    weights = load_bytes(files[WEIGHTS])
    weights[BASE_KEY] = torch.zeros(8, 8)
    forge(store_path, "forged_base_key", dict(files, **{WEIGHTS: save_bytes(weights)}))
    sites["forged_base_key"] = f"LoRA weights plus a backbone tensor {BASE_KEY}"

    from tpp.backbones import resolve_backbone

    with safe_open(str(Path(resolve_backbone(backbone)) / "model.safetensors"), "pt") as fh:  # names and shapes only
        full = {k: torch.zeros(fh.get_slice(k).get_shape()) for k in sorted(fh.keys())[:6]}
    full_card = dict(card, method="full", kind="adapter", options={}, target_modules=[], weights_file=FULL_WEIGHTS)
    forge(store_path, "full_as_adapter", {CARD: json.dumps(full_card).encode(), HEAD: files[HEAD],
                                          FULL_WEIGHTS: save_bytes(full)})
    sites["full_as_adapter"] = "backbone-named tensors, card method 'full' and kind 'adapter'"

    version = store.publish(good.path, store_path, "flipped_bytes").version
    target = store_path / "flipped_bytes" / version / WEIGHTS
    data = bytearray(target.read_bytes())
    data[-3] ^= 0x40  # a value byte: the file still parses, the predictions would differ
    target.write_bytes(bytes(data))
    sites["flipped_bytes"] = "a published adapter, one byte of its weights flipped afterwards"

    task = dict(card["task"], label_names=["benign", "malignant", "normal"], num_classes=3)
    forge(store_path, "labels_misfit", dict(files, **{CARD: json.dumps(dict(card, task=task)).encode()}))
    sites["labels_misfit"] = "card names 3 labels, the head has 2 rows"

    outside = work / "outside"
    shutil.rmtree(outside, ignore_errors=True)
    store.publish(good.path, outside, "linked_site")
    os.symlink(outside / "linked_site", store_path / "linked_site")
    sites["linked_site"] = "site folder: a symbolic link to a store outside this one"

    secret_file = work / "secret.txt"
    secret_file.write_text(secret)
    (store_path / "linked_pointer").mkdir()
    shutil.copytree(good.path, store_path / "linked_pointer" / good.version)
    os.symlink(secret_file, store_path / "linked_pointer" / store.POINTER)
    sites["linked_pointer"] = "'current' pointer: a symbolic link to a secret file outside the store"

    (store_path / "secret_pointer").mkdir()
    (store_path / "secret_pointer" / store.POINTER).write_text(secret + "\n")
    sites["secret_pointer"] = "'current' pointer holding the secret text"
    return sites


def republished(source: Path, work: Path) -> Path:
    """A copy of the adapter directory ``source`` whose weights file has other bytes (a metadata entry)
    but the very same tensors: publishing it makes a new version with the same predictions."""
    from safetensors.torch import load_file, save_file

    from tpp.adapter_dir import WEIGHTS

    copy = work / "republish"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(source, copy)
    tensors = load_file(copy / WEIGHTS)
    save_file(tensors, copy / WEIGHTS, metadata={"republished": "hostile benchmark"})
    assert all(torch.equal(tensors[k], v) for k, v in load_file(copy / WEIGHTS).items())
    return copy


# -- hostile inputs ----------------------------------------------------------------------------------

def zero_png(width: int, height: int) -> bytes:
    """A valid all-zero 8-bit gray PNG, compressed row by row (its pixels are never held in memory)."""
    row = bytes(1 + width)
    deflate = zlib.compressobj(9)
    idat = b"".join(deflate.compress(row) for _ in range(height)) + deflate.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def gzip_bomb(inflated_mib: int, prefix: bytes = b"") -> bytes:
    """``prefix`` (its own gzip member) then ``inflated_mib`` MiB of zeros as 1-MiB gzip members (~1 KB each)."""
    member = gzip.compress(bytes(2**20), 9)
    return (gzip.compress(prefix) if prefix else b"") + member * inflated_mib


def nifti_16x16() -> bytes | None:
    """A valid single-file NIfTI-1 image of 16x16 float32 voxels (None without nibabel)."""
    try:
        import nibabel
    except ImportError:
        return None
    return nibabel.Nifti1Image(np.zeros((16, 16), np.float32), np.eye(4)).to_bytes()


def multipart(files: list[tuple[str, bytes]]) -> tuple[bytes, dict]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="{name}"\r\n'
             f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n" for name, data in files]
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def hostile_cases(hostile_sites: dict[str, str], good_site: str, probe_png: bytes) -> list[dict]:
    """One entry per hostile request kind: path, body, headers, the status codes it may get, what it is."""
    cases = []
    body, headers = multipart([("probe.png", probe_png)])
    for site, what in {**hostile_sites, "bad.name": "a site name with a dot (no paths)"}.items():
        cases.append({"case": site, "kind": "site", "what": what, "path": f"/v1/sites/{site}/predict",
                      "body": body, "headers": headers, "expect": sorted(HOSTILE_SITE_CODES)})
    big = zero_png(8192, 8192)  # ~64 KB of file, 64 Mi pixels: exactly the default per-image limit
    inputs = [("png_8192x20", "20 all-zero 8192x8192 PNGs in one request", [(f"z{i}.png", big) for i in range(20)],
               [413]),
              ("png_over_limit", "one all-zero PNG of 8192x8193 pixels (above the per-image limit)",
               [("big.png", zero_png(8192, 8193))], [413]),
              ("gzip_bomb", "x.nii.gz: 256 KiB of gzip that inflates to 256 MiB of zeros",
               [("x.nii.gz", gzip_bomb(256))], [400, 413]),
              ("not_an_image", "a text file", [("notes.txt", b"hello, this is not an image\n")], [400])]
    header = nifti_16x16()
    if header is not None:
        inputs.insert(3, ("gzip_bomb_nifti", "x.nii.gz: a valid 16x16 NIfTI header, then 256 MiB of gzipped zeros",
                          [("x.nii.gz", gzip_bomb(256, prefix=header))], [400, 413]))
    for case, what, files, expect in inputs:
        body, headers = multipart(files)
        cases.append({"case": case, "kind": "input", "what": what, "path": f"/v1/sites/{good_site}/predict",
                      "body": body, "headers": headers, "expect": expect})
    return cases


# -- the client side ---------------------------------------------------------------------------------

class Client:
    """One keep-alive connection to the service; a request that fails on a *reused* connection (the
    server closed it while idle) is sent once more on a fresh one, anything else is reported."""

    def __init__(self, port: int):
        self.port, self.conn, self.reconnects = port, None, 0

    def call(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        """(status, body bytes) or ("connection error (...)", b"")."""
        for attempt in (0, 1):
            fresh = self.conn is None
            if fresh:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=REQUEST_TIMEOUT_S)
            try:
                self.conn.request(method, path, body, headers or {})
                resp = self.conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                self.conn.close()
                self.conn = None
                if fresh or attempt:
                    return f"connection error ({type(exc).__name__})", b""
                self.reconnects += 1
                continue
            if resp.will_close:
                self.conn.close()
                self.conn = None
            return resp.status, data
        raise AssertionError("unreachable")

    def close(self):
        if self.conn is not None:
            self.conn.close()


def wrong_answer(payload: bytes, want: np.ndarray) -> bool:
    """A 200 whose label or probabilities differ from the offline reference (1e-4), or no prediction."""
    try:
        pred = json.loads(payload)["predictions"][0]
        names = list(pred["probabilities"])
        probs = np.array(list(pred["probabilities"].values()), dtype=float)
        label = names[int(want.argmax())]
        if "threshold" in pred:  # binary: the card's threshold on the positive class's offline probability
            k = names.index(pred["positive_class"])
            label = names[k] if want[k] >= pred["threshold"] else names[1 - k]
    except (ValueError, KeyError, IndexError, TypeError):
        return True
    return bool(probs.shape != want.shape or np.abs(probs - want).max() > 1e-4 or pred["label"] != label)


def listening(pid: int, port: int) -> list[str]:
    """Addresses the process ``pid`` listens on at ``port`` (its own sockets, from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    out = []
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        path = Path(f"/proc/net/{table}")
        if not path.is_file():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].split(":")
            if fields[3] != "0A" or int(hex_port, 16) != port or fields[9] not in inodes:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address)
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # per 32-bit word, host order
            out.append(socket.inet_ntop(family, raw))
    return sorted(out)


def rss_mib(pid: int) -> dict:
    """VmRSS (now) and VmHWM (peak) of process ``pid``, MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


def sites_snapshot(client: Client) -> dict:
    status, body = client.call("GET", "/v1/sites")
    if status != 200:
        raise RuntimeError(f"GET /v1/sites answered {status}")
    listing = json.loads(body)
    return {"backbone_hash": listing["backbone"]["hash"], "body": body,
            "healthy": {row["site"]: row["healthy"] for row in listing["sites"]}}


def traffic(port: int, good_sites: list[str], pngs: list[bytes], expected: dict, cases: list[dict], *,
            clients: int, max_requests: int, seconds: float | None, good_per_hostile: int, secret: bytes,
            reload_site: str, reload_source: Path, store_path: Path) -> dict:
    """The mixed traffic. Request k is entry k of a fixed cycle (``good_per_hostile`` good requests, then
    the next hostile case); it stops after ``max_requests``, or at ``seconds`` once every case was sent.
    Halfway (by count or time) one client publishes a new version of ``reload_site`` and reloads it."""
    from tpp.serve import store

    cycle = []
    for case in cases:
        cycle += [None] * good_per_hostile + [case]
    max_requests = max(max_requests, len(cycle))
    good_bodies = [multipart([(f"{i}.png", data)]) for i, data in enumerate(pngs)]
    lock, counter, good_counter = threading.Lock(), iter(range(10**12)), iter(range(10**12))
    start = time.time()
    deadline = None if seconds is None else start + seconds
    state = {"reloaded": False, "reload": None}
    rows = []

    def reload() -> dict:
        old = store.current_version(store_path, reload_site)
        new = store.publish(reload_source, store_path, reload_site).version
        client = Client(port)
        status, body = client.call("POST", f"/v1/sites/{reload_site}/reload")
        client.close()
        out = {"site": reload_site, "published": [old, new], "status": status, "secret_echoed": secret in body}
        if status == 200:
            answer = json.loads(body)
            out["answer"] = [answer.get("old_version"), answer.get("new_version")]
        return out

    def worker():
        client, mine = Client(port), []
        while True:
            with lock:
                k = next(counter)
                now = time.time()
                if k >= max_requests or (deadline is not None and now >= deadline and k >= len(cycle)):
                    break
                entry = cycle[k % len(cycle)]
                g = next(good_counter) if entry is None else None
                do_reload = not state["reloaded"] and (
                    k >= max_requests // 2 or (deadline is not None and now >= start + seconds / 2))
                state["reloaded"] |= do_reload
            if do_reload:
                state["reload"] = reload()
            if entry is None:
                site, i = good_sites[g % len(good_sites)], (g // len(good_sites)) % len(pngs)
                body, headers = good_bodies[i]
                path = f"/v1/sites/{site}/predict"
            else:
                path, body, headers = entry["path"], entry["body"], entry["headers"]
            began = time.perf_counter()
            status, payload = client.call("POST", path, body, headers)
            row = {"good": entry is None, "case": None if entry is None else entry["case"], "status": status,
                   "seconds": time.perf_counter() - began, "secret": secret in payload}
            if entry is None:
                row["wrong"] = status == 200 and wrong_answer(payload, expected[site][i])
            else:
                row["wrong"] = status == 200 and entry["kind"] == "site"
            mine.append(row)
        client.close()
        with lock:
            rows.extend(mine)
            state.setdefault("reconnects", 0)
            state["reconnects"] += client.reconnects

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"rows": rows, "wall_s": time.time() - start, "reload": state["reload"],
            "reconnects": state.get("reconnects", 0)}


# -- the scenario ------------------------------------------------------------------------------------

def scenario(work: Path, backbone: str, data_root: str, *, sites: int = 4, clients: int = 8,
             max_requests: int = 20000, seconds: float | None = 60.0, good_per_hostile: int = 3,
             images: int = 16, max_resident: int = 16) -> dict:
    """Build the store (reusing ``work/site_real`` when it holds a fine-tuned adapter), run ``tpp serve``
    on it and the mixed traffic; returns the measurements and the checks (see :func:`checks`)."""
    from tpp.serve import store
    from tpp.data.arrays import load_medmnist

    work = Path(work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    store_path = serving.make_sites(work, backbone, data_root, sites)
    good_sites = store.sites(store_path)
    test_images = load_medmnist("breastmnist", data_root, False).split("test").images[:images]
    expected = serving.offline(store_path, backbone, test_images)  # before any hostile entry exists
    pngs = [serving.png(im) for im in test_images]
    secret = f"TOP-SECRET-{uuid.uuid4().hex}"
    hostile_sites = add_hostile_sites(store_path, work, backbone, good_sites[0], secret)
    reload_site = good_sites[-1]
    source = republished(store.current(store_path, reload_site).path, work)
    cases = hostile_cases(hostile_sites, good_sites[0], pngs[0])

    proc, port = serving.start_server(backbone, store_path, max_resident)
    try:
        control = Client(port)
        bound = listening(proc.pid, port)
        before = sites_snapshot(control)
        warm = []  # every good site and image once: the sites are resident before the RSS is read
        for site in good_sites:
            for i, data in enumerate(pngs):
                status, payload = control.call("POST", f"/v1/sites/{site}/predict", *multipart([(f"{i}.png", data)]))
                warm.append({"good": True, "case": None, "status": status, "seconds": None,
                             "secret": secret.encode() in payload,
                             "wrong": status == 200 and wrong_answer(payload, expected[site][i])})
        rss_before = rss_mib(proc.pid)
        run = traffic(port, good_sites, pngs, expected, cases, clients=clients, max_requests=max_requests,
                      seconds=seconds, good_per_hostile=good_per_hostile, secret=secret.encode(),
                      reload_site=reload_site, reload_source=source, store_path=store_path)
        rss_after = rss_mib(proc.pid)
        after = sites_snapshot(control)
        control.close()
        alive = proc.poll() is None
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return summarise(warm, run, cases, {
        "bound": bound, "alive_at_end": alive, "rss_mib": {"before": rss_before["VmRSS"], "after": rss_after["VmRSS"],
                                                           "peak": rss_after["VmHWM"]},
        "backbone_hash": {"before": before["backbone_hash"], "after": after["backbone_hash"]},
        "listing_secret_echoed": any(secret.encode() in s["body"] for s in (before, after)),
        "hostile_listed_healthy": sorted(s for s, ok in after["healthy"].items() if ok and s in hostile_sites),
        "good_listed_healthy": all(after["healthy"].get(s) for s in good_sites),
        "good_sites": good_sites, "hostile_sites": hostile_sites, "settings": {
            "sites": sites, "clients": clients, "max_requests": max_requests, "seconds": seconds,
            "good_per_hostile": good_per_hostile, "images": len(pngs), "max_resident": max_resident}})


def summarise(warm: list[dict], run: dict, cases: list[dict], extra: dict) -> dict:
    rows = warm + run["rows"]
    good = [r for r in rows if r["good"]]
    lat = np.array([r["seconds"] for r in run["rows"] if r["good"] and r["status"] == 200]) * 1000
    reload = run["reload"] or {"status": "not run"}
    reload_ok = reload["status"] == 200 and reload.get("answer") == reload.get("published") and \
        reload["published"][0] != reload["published"][1]
    by_case = {}
    for case in cases:
        mine = [r for r in rows if r["case"] == case["case"]]
        statuses = {}
        for r in mine:
            statuses[str(r["status"])] = statuses.get(str(r["status"]), 0) + 1
        ms = [1000 * r["seconds"] for r in mine if r["seconds"] is not None]
        by_case[case["case"]] = {"kind": case["kind"], "what": case["what"], "requests": len(mine),
                                 "statuses": statuses, "expected": case["expect"],
                                 "median_ms": float(np.median(ms)) if ms else None, "max_ms": max(ms, default=None),
                                 "ok": bool(mine) and all(r["status"] in case["expect"] for r in mine)}
    out = {
        "good_requests": len(good), "good_requests_warmup": len(warm),
        "good_errors": sum(r["status"] != 200 for r in good) + (0 if reload_ok else 1),
        "wrong_answers": int(sum(bool(r["wrong"]) for r in rows)),
        "hostile_requests": sum(r["case"] is not None for r in rows),
        "server_errors_5xx": sum(isinstance(r["status"], int) and r["status"] >= 500 for r in rows),
        "connection_errors": sum(isinstance(r["status"], str) for r in rows),
        "secret_echoed": sum(r["secret"] for r in rows) + int(extra["listing_secret_echoed"])
        + int(bool(reload.get("secret_echoed"))),
        "hostile_by_case": by_case, "reload": reload, "reload_ok": reload_ok, "reconnects": run["reconnects"],
        "traffic_wall_s": run["wall_s"],
        "good_latency_ms": {"p50": float(np.percentile(lat, 50)) if len(lat) else None,
                            "p99": float(np.percentile(lat, 99)) if len(lat) else None,
                            "max": float(lat.max()) if len(lat) else None},
        "requests_per_s": len(run["rows"]) / run["wall_s"],
        **extra,
    }
    out["checks"] = checks(out)
    return out


def checks(r: dict) -> dict[str, bool]:
    """What must hold; the run fails if any is False."""
    return {
        "good-request errors == 0": r["good_errors"] == 0,
        "wrong answers == 0": r["wrong_answers"] == 0,
        "no 5xx": r["server_errors_5xx"] == 0,
        "no connection errors": r["connection_errors"] == 0,
        "secret never in a response body": r["secret_echoed"] == 0,
        "every hostile case got its expected status": all(c["ok"] for c in r["hostile_by_case"].values()),
        "backbone hash unchanged": r["backbone_hash"]["before"] == r["backbone_hash"]["after"],
        "server listens on 127.0.0.1 only": r["bound"] == ["127.0.0.1"],
        "reload of a good site served its new version": r["reload_ok"],
        "no hostile site listed healthy": not r["hostile_listed_healthy"],
        "every good site listed healthy": r["good_listed_healthy"],
        "server alive at the end": r["alive_at_end"],
    }


def markdown(r: dict) -> str:
    lat = r["good_latency_ms"]

    def fmt(v):
        return "-" if v is None else f"{v:.1f}"

    rss = r["rss_mib"]
    lines = ["| measure | value | must be |", "|---|---|---|",
             f"| good requests (warm-up included) | {r['good_requests']} ({r['good_requests_warmup']}) | |",
             f"| good-request errors | {r['good_errors']} | 0 |",
             f"| wrong answers | {r['wrong_answers']} | 0 |",
             f"| hostile requests | {r['hostile_requests']} | |",
             f"| 5xx responses / connection errors | {r['server_errors_5xx']} / {r['connection_errors']} | 0 / 0 |",
             f"| secret in a response body | {r['secret_echoed']} | 0 |",
             f"| backbone hash before / after | {r['backbone_hash']['before'][:16]} / "
             f"{r['backbone_hash']['after'][:16]} | equal |",
             f"| server RSS after warm-up / at the end / peak (VmHWM) | {rss['before']:.0f} / {rss['after']:.0f} / "
             f"{rss['peak']:.0f} MiB | |",
             f"| good-request latency p50 / p99 / max | {fmt(lat['p50'])} / {fmt(lat['p99'])} / "
             f"{fmt(lat['max'])} ms | |",
             f"| requests/s (all traffic) | {r['requests_per_s']:.1f} | |",
             f"| mid-run reload of {r['reload'].get('site', '?')} | {r['reload']['status']}, "
             f"{' -> '.join(map(str, r['reload'].get('published', [])))} | 200, new version |",
             f"| listening on | {', '.join(r['bound'])} | 127.0.0.1 |",
             "", "| hostile case | what | requests | statuses | expected | ok | median / max ms |",
             "|---|---|---|---|---|---|---|"]
    for case, c in r["hostile_by_case"].items():
        statuses = ", ".join(f"{s}: {n}" for s, n in sorted(c["statuses"].items()))
        lines.append(f"| {case} | {c['what']} | {c['requests']} | {statuses} | "
                     f"{'/'.join(map(str, c['expected']))} | {'yes' if c['ok'] else '**NO**'} | "
                     f"{fmt(c['median_ms'])} / {fmt(c['max_ms'])} |")
    lines += ["", "| check | result |", "|---|---|"]
    lines += [f"| {name} | {'pass' if ok else '**FAIL**'} |" for name, ok in r["checks"].items()]
    return "\n".join(lines)


def main(argv=None, command: str | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10 s / at most 600 requests, 4 clients")
    parser.add_argument("--sites", type=int, default=4, help="good sites (1 fine-tuned, the rest derived)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent client threads")
    parser.add_argument("--seconds", type=float, default=60.0,
                        help="traffic duration (every case is still sent at least once)")
    parser.add_argument("--max-requests", type=int, default=20000, help="cap on requests after the warm-up")
    parser.add_argument("--good-per-hostile", type=int, default=3, help="good requests between two hostile ones")
    parser.add_argument("--images", type=int, default=16, help="BreastMNIST test images the good requests cycle over")
    parser.add_argument("--max-resident", type=int, default=16)
    serving.add_paths(parser, "hostile")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.max_requests, args.clients = 10.0, 600, 4
    if args.sites < 2:
        parser.error("--sites must be at least 2 (one of them is reloaded mid-run)")
    result = scenario(args.work, args.backbone, args.data_root, sites=args.sites, clients=args.clients,
                      max_requests=args.max_requests, seconds=args.seconds, good_per_hostile=args.good_per_hostile,
                      images=args.images, max_resident=args.max_resident)
    command = command or "python benchmarks/hostile.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report.publish(args.out, "hostile", report.machine(), command,
                   f"Backbone {args.backbone}; {args.sites} good LoRA sites and {len(result['hostile_sites'])} hostile "
                   f"store entries; tpp serve in a subprocess on loopback; {args.clients} client threads, "
                   f"{args.good_per_hostile} good requests (one 28x28 PNG) per hostile one, up to "
                   f"{args.max_requests} requests or {args.seconds:g} s; good answers checked against offline "
                   "predictions (label equal, probabilities within 1e-4).", markdown(result), {"result": result})
    failed = [name for name, ok in result["checks"].items() if not ok]
    if failed:
        print("FAILED: " + "; ".join(failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
