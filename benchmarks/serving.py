"""Deployment benchmark: site switching, cold loads, mixed-site batches, and the HTTP service under load.

    python benchmarks/serving.py                  # writes benchmarks/results/serving.{json,md}
    python benchmarks/serving.py --quick --out runs/serving_quick
    python benchmarks/serving.py --hostile --quick   # good traffic mixed with hostile cases (benchmarks/hostile.py)
    python benchmarks/serving.py --engine ray        # Ray Serve, 1 and 2 replicas, vs one process (serving_ray.py)
    python benchmarks/serving.py --device cpu,cuda --input-size 224 --out runs/serving_gpu   # devices side by side

Sites: one real LoRA fine-tuning run on BreastMNIST with the shared backbone; the other sites are
copies of it with re-drawn LoRA B matrices and heads (distinct adapters, same card), published to a
fresh store. Everything is measured side by side in one run and reported as ratios:

- switching sites (resolving a resident site; a batch after another site's batch vs after the same site's)
  against one forward pass at batch 64 and batch 1; peft's own ``set_adapter`` for reference;
- loading a site cold from disk, through ``tpp serve``'s path (the inference worker's loader thread reads and
  verifies, the inference thread installs): what it adds to a one-image request; adapter size against backbone size;
- a mixed-site batch (8 sites x 8 images) against a single-site batch of 64, for the LoRA group
  (peft ``adapter_names``) and for per-site sub-batches;
- ``tpp serve`` in a subprocess under concurrent load from client threads on loopback: requests/s and
  p50/p99 latency with 1 site, 10 sites round-robin (all resident), and 10 sites with ``--max-resident 4``
  (thrashing). Every response is checked against offline predictions for its site (label equal, every
  probability within 1e-4): the mismatch count must be 0.

``--device cpu,cuda`` repeats the in-process numbers and the service scenarios on each device (the bank and
``tpp serve --device``), side by side in one run, with the CPU's numbers as the reference for the ratios; the
offline reference of each device is computed on that device. ``--input-size`` fine-tunes the real site at that
input size (position embeddings interpolated), e.g. 224 px as clinical backbones take.
"""
from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SERVER_START_S = 3600  # longest wait for `tpp serve` to answer /healthz
sys.path.insert(0, str(Path(__file__).parent))
import report  # noqa: E402


def make_sites(work: Path, backbone: str, data_root: str, n_sites: int, input_size: int | None = None,
               steps: int = 30, overrides: list[str] | tuple = ()) -> Path:
    """Fine-tune one real site (at ``input_size`` px; default: the backbone's), derive ``n_sites - 1`` distinct
    copies, publish all; returns the store. The real site trains ``steps`` steps (30) on the default device;
    ``overrides``: more config overrides of its run (its adapter's rank ...), for a fresh ``work`` folder."""
    from safetensors.torch import load_file, save_file

    from tpp.serve import store
    from tpp.adapter_dir import HEAD, WEIGHTS
    from tpp.recipes import run_recipe

    run = work / (f"site_real_{input_size}px" if input_size else "site_real")
    run = run.with_name(run.name + (f"_{steps}steps" if steps != 30 else ""))
    if not (run / "adapter").is_dir():
        size = [f"backbone.input_size={input_size}"] if input_size else []
        run_recipe("finetune", ROOT / "recipes/configs/breast_us/mae_vit_tiny_lora_finetune.yaml",
                   [f"backbone.path={backbone}", f"data.root={data_root}", f"output_dir={run}",
                    f"train.max_steps={steps}", *size, *overrides], overwrite=True)
    shutil.rmtree(work / "store", ignore_errors=True)
    store.publish(run, work / "store", "site00")
    gen = torch.Generator().manual_seed(0)
    for i in range(1, n_sites):
        copy = work / "copies" / f"site{i:02d}"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(run / "adapter", copy)
        weights = {k: (torch.randn(v.shape, generator=gen) * 0.05 if "lora_B" in k else v)
                   for k, v in load_file(copy / WEIGHTS).items()}
        save_file(weights, copy / WEIGHTS)
        save_file({k: torch.randn(v.shape, generator=gen) * 0.1 for k, v in load_file(copy / HEAD).items()},
                  copy / HEAD)
        store.publish(copy, work / "store", f"site{i:02d}")
    return work / "store"


def timed(fn, repeats: int, sync=None) -> float:
    """Median seconds per call over ``repeats`` calls (after one warm-up call); ``sync()`` (a GPU's) is waited
    for after each call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def switch_pairs(bank, a, b, x: torch.Tensor, repeats: int) -> tuple[float, float]:
    """Batches in the order a, a, b, b, a, a, ...: median time of a batch that follows one of the same
    site, and of one that follows another site (interleaved, so noise hits both alike)."""
    order = [a, a, b, b] * repeats
    bank.predict([b] * len(x), x)
    times = {"same": [], "other": []}
    for prev, site in zip([b] + order[:-1], order):
        start = time.perf_counter()
        bank.predict([site] * len(x), x)
        times["same" if prev is site else "other"].append(time.perf_counter() - start)
    return float(np.median(times["same"])), float(np.median(times["other"]))


def cold_loads(bank, names: list[str], image: np.ndarray) -> tuple[list[float], list[float]]:
    """Seconds of a one-image request for each site of ``names`` after it was unloaded, answered as ``tpp serve``
    answers it (an :class:`~tpp.serve.worker.InferenceWorker` over ``bank``: the ``tpp-loader`` thread reads and
    verifies the site's files, the inference thread installs the site, then runs the request), and of the same
    request right after (resident). The worker waits for no other requests (``max_wait_ms`` 0): only the load
    differs. It is stopped before this returns, so ``bank`` is the caller's alone again."""
    from tpp.serve.worker import InferenceWorker

    worker = InferenceWorker(bank, max_wait_ms=0)
    cold, warm = [], []
    try:
        for name in names:
            worker.call(lambda b, name=name: b.evict(name)).result()
            for times in (cold, warm):
                start = time.perf_counter()
                worker.predict(name, [image]).result()  # outputs come back on the CPU: a GPU has finished
                times.append(time.perf_counter() - start)
    finally:
        worker.stop()
    return cold, warm


def bank_numbers(backbone: str, store_path: Path, x: torch.Tensor, repeats: int, device: str = "cpu",
                 image: np.ndarray | None = None) -> dict:
    """Switching, cold load, sizes and mixed-site batches, in one process, on ``device``; ``image``: the uint8
    image of the cold-load requests (default: a black one of the sites' input size)."""
    from tpp.backbones import resolve_backbone
    from tpp.serve.bank import AdapterBank

    bank = AdapterBank(backbone, str(store_path), device=device)
    sync = torch.cuda.synchronize if bank.device.type == "cuda" else None  # GPU kernels run asynchronously

    def timed_(fn, repeats: int) -> float:
        return timed(fn, repeats, sync)

    names = sorted(p.name for p in store_path.iterdir())
    sites = {n: bank.site(n) for n in names}
    a, b = sites[names[0]], sites[names[1]]
    fwd64 = timed_(lambda: bank.predict([a] * 64, x[:64]), repeats)
    fwd1 = timed_(lambda: bank.predict([a], x[:1]), repeats * 4)
    lookup = timed_(lambda: [bank.site(n) for n in names], repeats * 4) / len(names)
    same, switched = switch_pairs(bank, a, b, x[:64], repeats)
    toggle = iter(range(10**9))
    group = bank.groups["lora"].model
    set_adapter = timed_(lambda: group.set_adapter(a.adapter_name if next(toggle) % 2 else b.adapter_name), repeats * 4)
    if image is None:
        image = np.zeros((x.shape[-1],) * 2, np.uint8)
    cold, warm = cold_loads(bank, names[:5], image)
    sites = {n: bank.site(n) for n in names}  # the reloaded sites are new objects
    mixed_sites = [sites[names[i % 8]] for i in range(64)]
    mixed = timed_(lambda: bank.predict(mixed_sites, x[:64]), repeats)
    # per-site sub-batches for the same adapters
    sub = AdapterBank(backbone, str(store_path), mixed_batches=False, device=device)
    sub_sites = {n: sub.site(n) for n in names[:8]}
    sub_single = timed_(lambda: sub.predict([sub_sites[names[0]]] * 64, x[:64]), repeats)
    sub_mixed = timed_(lambda: sub.predict([sub_sites[names[i % 8]] for i in range(64)], x[:64]), repeats)
    adapter_bytes = sum(f.stat().st_size for f in (store_path / names[0]).rglob("*.safetensors"))
    backbone_bytes = sum(f.stat().st_size for f in Path(resolve_backbone(backbone)).glob("*.safetensors"))
    return {
        "forward_batch64_ms": 1000 * fwd64, "forward_batch1_ms": 1000 * fwd1,
        "switch_lookup_us": 1e6 * lookup, "switch_vs_forward64": lookup / fwd64, "switch_vs_forward1": lookup / fwd1,
        "after_same_site_batch64_ms": 1000 * same, "after_other_site_batch64_ms": 1000 * switched,
        "after_other_vs_same_site": switched / same,
        "peft_set_adapter_us": 1e6 * set_adapter, "cold_load_ms": 1000 * float(np.median(np.subtract(cold, warm))),
        "cold_request_ms": 1000 * float(np.median(cold)), "warm_request_ms": 1000 * float(np.median(warm)),
        "adapter_bytes": adapter_bytes, "backbone_bytes": backbone_bytes,
        "adapter_vs_backbone": adapter_bytes / backbone_bytes,
        "mixed8x8_vs_single64_lora_group": fwd64 / mixed, "mixed8x8_vs_single64_sub_batches": sub_single / sub_mixed,
        "images_per_s_batch64": 64 / fwd64, "device": str(bank.device), "input_px": int(x.shape[-1]),
    }


def offline(store_path: Path, backbone: str, images: np.ndarray, device: str = "cpu") -> dict:
    """Per-site probabilities from the evaluate recipe's model (no bank) on ``device``, the correctness
    reference (on a GPU, fp32 convolutions may run in TF32: each device is its own reference)."""
    from tpp.devices import resolve
    from tpp.serve import store
    from tpp.serve.images import to_model_input
    from tpp.recipes.evaluate import load_task_model

    out = {}
    for site in store.sites(store_path):
        model, card, _ = load_task_model(str(store.current(store_path, site).path), backbone)
        model.to(resolve(device))
        with torch.no_grad():
            x = torch.cat([to_model_input(im, card["input"]) for im in images]).to(resolve(device))
            out[site] = model(x).softmax(-1).cpu().numpy()
    return out


def png(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def load_test(port: int, sites: list[str], pngs: list[bytes], expected: dict, clients: int, seconds: float,
              max_requests: int) -> dict:
    """Client threads with keep-alive connections send one-image requests round-robin over ``sites``.

    Returns request count, wall time, latencies (s), HTTP errors and mismatches against ``expected``.
    """
    latencies, mismatches, errors, counter, lock = [], [], [], iter(range(10**9)), threading.Lock()
    deadline = time.time() + seconds

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while time.time() < deadline:
            with lock:
                k = next(counter)
            if k >= max_requests:
                break
            site, i = sites[k % len(sites)], k % len(pngs)
            boundary = uuid.uuid4().hex
            body = (f'--{boundary}\r\nContent-Disposition: form-data; name="images"; '
                    f'filename="{i}.png"\r\n\r\n'.encode()
                    + pngs[i] + f"\r\n--{boundary}--\r\n".encode())
            start = time.perf_counter()
            conn.request("POST", f"/v1/sites/{site}/predict", body,
                         {"Content-Type": f"multipart/form-data; boundary={boundary}"})
            resp = conn.getresponse()
            payload = resp.read()
            elapsed = time.perf_counter() - start
            if resp.status != 200:
                errors.append(resp.status)
                continue
            pred = json.loads(payload)["predictions"][0]
            probs = np.array(list(pred["probabilities"].values()))
            want, names = expected[site][i], list(pred["probabilities"])
            label = names[int(want.argmax())]
            if "threshold" in pred:  # binary: the card's threshold on the positive class's offline probability
                k = names.index(pred["positive_class"])
                label = names[k] if want[k] >= pred["threshold"] else names[1 - k]
            wrong = np.abs(probs - want).max() > 1e-4 or pred["label"] != label
            latencies.append(elapsed)
            if wrong:
                mismatches.append((site, i))
        conn.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"wall_s": time.perf_counter() - started, "latencies": latencies, "errors": len(errors),
            "mismatches": len(mismatches)}


def pooled(windows: list[dict]) -> dict:
    """Rounds of one scenario -> requests/s (median over rounds), pooled latency percentiles, totals."""
    lat = np.array([x for w in windows for x in w["latencies"]]) * 1000
    return {"requests": len(lat), "errors": sum(w["errors"] for w in windows),
            "mismatches": sum(w["mismatches"] for w in windows),
            "requests_per_s": float(np.median([len(w["latencies"]) / w["wall_s"] for w in windows])),
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99))}


def start_server(backbone: str, store_path: Path, max_resident: int,
                 device: str = "cpu") -> tuple[subprocess.Popen, int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    proc = subprocess.Popen([sys.executable, "-m", "tpp.cli", "serve", "--backbone", backbone,
                             "--store", str(store_path), "--port", str(port), "--max-resident", str(max_resident),
                             "--device", device],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # a hang guard, not a speed limit: on a loaded machine the start may take minutes; a server that dies is
    # reported at once
    deadline = time.time() + SERVER_START_S
    while time.time() < deadline and proc.poll() is None:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return proc, port
        except OSError:
            time.sleep(0.3)
    if proc.poll() is not None:
        raise RuntimeError(f"tpp serve exited with code {proc.returncode} before it answered /healthz")
    proc.kill()
    raise RuntimeError(f"tpp serve did not come up within {SERVER_START_S} s")


def service_numbers(backbone: str, store_path: Path, images: np.ndarray, args, device: str = "cpu") -> dict:
    """Alternate the scenarios over ``args.rounds`` windows (machine noise hits them alike); ``tpp serve
    --device device``."""
    expected = offline(store_path, backbone, images, device)
    pngs = [png(im) for im in images]
    names = sorted(expected)[:10]
    scenarios = {16: {"1 site": names[:1], "10 sites, all resident": names},  # one server per LRU bound
                 4: {"10 sites, max_resident 4": names}}
    window = args.seconds / args.rounds
    windows: dict[str, list] = {}
    for resident, runs in scenarios.items():
        proc, port = start_server(backbone, store_path, resident, device)
        try:
            load_test(port, names, pngs, expected, args.clients, 3, 10**9)  # warm-up: every site loaded once
            for round_ in range(args.rounds):
                for label, sites in runs.items():
                    w = load_test(port, sites, pngs, expected, args.clients, window, args.max_requests)
                    windows.setdefault(label, []).append(w)
                    print(f"{device} round {round_ + 1} {label}: {len(w['latencies']) / w['wall_s']:.1f} req/s, "
                          f"{w['mismatches']} mismatches", flush=True)
        finally:
            proc.terminate()
            proc.wait(30)
    out = {label: pooled(ws) for label, ws in windows.items()}
    for row in out.values():
        row["vs_1_site"] = row["requests_per_s"] / out["1 site"]["requests_per_s"]
    return out


def markdown(bank: dict, service: dict) -> str:
    lines = [f"Device **{bank['device']}**, {bank['input_px']} px input.", "",
             "| measure | value | goal |", "|---|---|---|",
             f"| forward pass, batch 64 / batch 1 | {bank['forward_batch64_ms']:.1f} ms / "
             f"{bank['forward_batch1_ms']:.2f} ms ({bank['images_per_s_batch64']:.0f} images/s at batch 64) | |",
             f"| switching sites (resolve a resident site) | {bank['switch_lookup_us']:.1f} µs = "
             f"{100 * bank['switch_vs_forward64']:.4f}% of a batch-64 forward, "
             f"{100 * bank['switch_vs_forward1']:.3f}% of batch 1 | ≤ 1% |",
             f"| a batch-64 forward right after another site's vs after the same site's (interleaved) | "
             f"{bank['after_other_site_batch64_ms']:.1f} ms vs {bank['after_same_site_batch64_ms']:.1f} ms = "
             f"{bank['after_other_vs_same_site']:.3f}x | |",
             f"| peft `set_adapter` (reference; never on the request path) | {bank['peft_set_adapter_us']:.0f} µs | |",
             f"| loading a site cold from disk, as tpp serve does (loader thread, then installed between batches) | "
             f"{bank['cold_load_ms']:.1f} ms added to a one-image request ({bank['cold_request_ms']:.1f} ms vs "
             f"{bank['warm_request_ms']:.1f} ms resident) | |",
             f"| adapter size / backbone size | {bank['adapter_bytes'] / 1024:.0f} KiB / "
             f"{bank['backbone_bytes'] / 2**20:.1f} MiB = {100 * bank['adapter_vs_backbone']:.2f}% | |",
             f"| mixed-site batch (8 sites x 8) vs single-site 64, LoRA group (peft adapter_names) | "
             f"{bank['mixed8x8_vs_single64_lora_group']:.2f}x throughput | ≥ 0.8x |",
             f"| same, per-site sub-batches (the path of non-LoRA methods) | "
             f"{bank['mixed8x8_vs_single64_sub_batches']:.2f}x | |"]
    if service:
        lines += ["", "| service scenario | requests | req/s | vs 1 site | p50 ms | p99 ms | errors | mismatches |",
                  "|---|---|---|---|---|---|---|---|"]
    for label, row in service.items():
        lines.append(f"| {label} | {row['requests']} | {row['requests_per_s']:.1f} | {row['vs_1_site']:.2f}x | "
                     f"{row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {row['errors']} | {row['mismatches']} |")
    return "\n".join(lines)


def add_paths(parser: argparse.ArgumentParser, name: str) -> None:
    """--backbone, --data-root, --work (benchmarks/.cache/NAME) and --out: the paths every deployment
    benchmark takes."""
    parser.add_argument("--backbone", default="builtin:mae-vit-tiny-med")
    parser.add_argument("--data-root", default=os.environ.get("TPP_DATA_ROOT", str(ROOT.parent / "shared" / "data")))
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / ".cache" / name)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    i = argv.index("--engine") if "--engine" in argv else None
    if i is not None and argv[i + 1:i + 2] == ["ray"]:  # Ray Serve against the single-process service
        import serving_ray

        return serving_ray.main(argv[:i] + argv[i + 2:], "python benchmarks/serving.py " + " ".join(argv))
    if "--hostile" in argv:  # the hostile-traffic scenario: benchmarks/hostile.py takes the other options
        import hostile

        return hostile.main([a for a in argv if a != "--hostile"], "python benchmarks/serving.py " + " ".join(argv))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hostile", action="store_true",
                        help="instead: good traffic mixed with a tampered store and hostile inputs; writes "
                             "results/hostile.{json,md}; its options: python benchmarks/hostile.py --help")
    parser.add_argument("--engine", choices=("fastapi", "ray"), default="fastapi",
                        help="ray: instead, tpp serve --engine ray (1 and 2 replicas) against the single-process "
                             "service, and a replica killed under load; writes results/serving_ray.{json,md}; its "
                             "options: benchmarks/serving_ray.py")
    parser.add_argument("--quick", action="store_true", help="short load tests (about 2 minutes in all)")
    parser.add_argument("--sites", type=int, default=10)
    parser.add_argument("--clients", type=int, default=8, help="concurrent client threads")
    parser.add_argument("--seconds", type=float, default=30.0, help="load-test duration per scenario")
    parser.add_argument("--rounds", type=int, default=3, help="alternating windows per scenario")
    parser.add_argument("--max-requests", type=int, default=5000, help="cap per scenario")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="cpu", help="comma-separated devices measured side by side, e.g. "
                                                        "cpu,cuda (default cpu); the first is the reference")
    parser.add_argument("--input-size", type=int, help="input size in pixels of the sites (the real site is "
                                                       "fine-tuned at it); default: the backbone's")
    parser.add_argument("--site-steps", type=int, default=30, help="fine-tuning steps of the real site")
    parser.add_argument("--no-service", action="store_true", help="in-process numbers only (no tpp serve load test)")
    add_paths(parser, "serving")
    args = parser.parse_args(argv)
    from tpp.devices import resolve

    if args.sites < 8:
        parser.error(f"--sites must be at least 8 (the mixed-site batch is 8 sites x 8 images), got {args.sites}")
    device_list = list(dict.fromkeys(d.strip() for d in args.device.split(",") if d.strip()))  # each once
    for d in device_list:
        resolve(d, "--device")  # a missing GPU is one sentence, before any work
    if args.quick:
        args.seconds, args.repeats, args.rounds = 6.0, 5, 2
    from tpp.data.arrays import load_medmnist
    from tpp.serve.images import to_model_input

    args.work.mkdir(parents=True, exist_ok=True)
    store_path = make_sites(args.work, args.backbone, args.data_root, args.sites, args.input_size,
                            args.site_steps)
    from tpp.serve import store

    card = store.current(store_path, "site00").card
    images = load_medmnist("breastmnist", args.data_root, False).split("test").images[:64]
    x = torch.cat([to_model_input(im, card["input"]) for im in images])
    results = {}
    for device in device_list:
        bank = bank_numbers(args.backbone, store_path, x, args.repeats, device, images[0])
        print(json.dumps(bank, indent=1), flush=True)
        service = {} if args.no_service else service_numbers(args.backbone, store_path, images, args, device)
        results[bank["device"]] = {"bank": bank, "service": service}
    machine = report.machine()
    command = "python benchmarks/serving.py " + " ".join(argv)
    first = next(iter(results.values()))
    report.publish(args.out, "serving", machine, command,
                   f"Backbone {args.backbone}; {args.sites} LoRA (r=8, q/v) sites at {x.shape[-1]} px; load: "
                   f"{args.clients} client threads on loopback, one 28x28 PNG per request, {args.seconds:g} s per "
                   f"scenario in {args.rounds} alternating windows (req/s: median window; latency: pooled); medians "
                   f"of {args.repeats} repeats for in-process timings. Devices: {', '.join(results)}.",
                   "\n\n".join([device_ratios(results)] + [markdown(**r) for r in results.values()]),
                   {"bank": first["bank"], "service": first["service"], "devices": results})
    return 0


def device_ratios(results: dict) -> str:
    """One table of the devices side by side: batch-64 images/s and service req/s (1 site), each against the
    first device's."""
    ref = next(iter(results.values()))
    lines = ["| device | images/s, batch 64 | vs first | req/s, service, 1 site | vs first |", "|---|---|---|---|---|"]
    for name, r in results.items():
        rps = r["service"].get("1 site", {}).get("requests_per_s")
        ref_rps = ref["service"].get("1 site", {}).get("requests_per_s")
        lines.append(f"| {name} | {r['bank']['images_per_s_batch64']:.0f} | "
                     f"{r['bank']['images_per_s_batch64'] / ref['bank']['images_per_s_batch64']:.2f}x | "
                     f"{f'{rps:.1f}' if rps else '-'} | {f'{rps / ref_rps:.2f}x' if rps and ref_rps else '-'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
