"""Cold-site burst: N sites that are not in memory requested at once, as after a restart of ``tpp serve``.

    python benchmarks/serving_cold.py      # 20 sites, 3 rounds; writes benchmarks/results/serving_cold.{json,md}
    python benchmarks/serving_cold.py --sites 8 --rounds 1 --out runs/cold_quick

The store is built by the benchmark in a temporary folder (deleted after): one real LoRA site, fine-tuned for a few
steps on BreastMNIST with rank 128 on every linear layer of the shared backbone (about 10 MiB of adapter
tensors, as a larger clinical adapter on a ViT-B would have), and N - 1 distinct copies of it (re-drawn LoRA B
matrices and heads), each published. A burst: every site evicted, then one one-image request per site submitted
together to an :class:`~tpp.serve.worker.InferenceWorker` as ``tpp serve`` runs it (its loader threads read and
verify the sites' files, the inference thread installs each site between batches), once per ``--loader-threads``
count in each round; measured: the wall time until the last request is answered (and against the first count's),
the median and largest request latency. For reference, the two parts of a cold load
timed one by one on the main thread (no worker): reading and verifying (:meth:`~tpp.serve.bank.AdapterBank.prepare`)
and installing (:meth:`~tpp.serve.bank.AdapterBank.site` given the prepared files). The page cache is warm (the
files were just written): a disk read after a real restart adds to the reading part, which ``--read-latency-ms``
simulates (a sleep before each version folder's read, as the round trips of a network file system add; 0 and 50 ms
by default).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import report  # noqa: E402
from serving import make_sites  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ADAPTER = ["adapter.r=128", "adapter.alpha=128",
           "adapter.target_modules=[q_proj,k_proj,v_proj,o_proj,fc1,fc2]"]


def burst(worker, names: list[str], image: np.ndarray) -> dict:
    """Evict every site of ``names``, then submit one one-image request per site at once; seconds until the
    last answer (``wall_s``) and each request's latency (``latencies``), in the order of ``names``."""
    worker.call(lambda bank: [bank.evict(name) for name in names]).result()
    done: dict[int, float] = {}
    start = time.perf_counter()
    futures = [worker.predict(name, [image]) for name in names]
    for i, future in enumerate(futures):
        future.add_done_callback(lambda _, i=i: done.__setitem__(i, time.perf_counter()))
    for future in futures:
        future.result()  # raises if a site failed: a burst of errors measures nothing
    latencies = [done[i] - start for i in range(len(names))]
    return {"wall_s": max(latencies), "latencies": latencies}


@contextmanager
def read_latency(ms: float):
    """Each store version folder read takes ``ms`` longer (a sleep before it, which holds no lock and no CPU: the
    round trips of a network file system or a cold disk), while the context lasts."""
    from tpp.serve import store

    real = store.read_version_folder

    def slow(*args, **kwargs):
        time.sleep(ms / 1000)
        return real(*args, **kwargs)

    store.read_version_folder = slow
    try:
        yield
    finally:
        store.read_version_folder = real


def parts(bank, names: list[str]) -> dict:
    """Median milliseconds of the two parts of a cold load, timed one by one on this thread: reading and verifying
    a site's files, and installing the prepared site (the model side, on the inference thread in the service)."""
    read, install = [], []
    for name in names:
        bank.evict(name)
        start = time.perf_counter()
        prepared = bank.prepare(name, bank.version_to_load(name))
        middle = time.perf_counter()
        bank.site(name, prepared)
        install.append(time.perf_counter() - middle)
        read.append(middle - start)
    return {"read_ms": 1000 * float(np.median(read)), "install_ms": 1000 * float(np.median(install))}


def summary(bursts: list[dict]) -> dict:
    walls = [b["wall_s"] for b in bursts]
    latencies = np.array([x for b in bursts for x in b["latencies"]]) * 1000
    return {"burst_wall_ms": 1000 * float(np.median(walls)), "burst_walls_ms": [1000 * w for w in walls],
            "latency_p50_ms": float(np.percentile(latencies, 50)), "latency_max_ms": float(latencies.max())}


def measure(backbone: str, store_path: Path, names: list[str], image: np.ndarray, rounds: int,
            latencies_ms: list[float], threads: list[int]) -> dict:
    """{read latency: the cold-load parts and, per loader-thread count, ``rounds`` bursts of all ``names``} for each
    simulated read latency. A round runs one burst per thread count (a fresh worker each, over one bank), so noise
    hits them alike; ``vs_first``: the median over rounds of the first count's burst time over this count's. Every
    site stays resident at once (``max_resident`` = the number of sites: nothing is evicted within a burst)."""
    from tpp.serve.bank import AdapterBank
    from tpp.serve.worker import InferenceWorker

    bank = AdapterBank(backbone, str(store_path), max_resident=len(names), device="cpu")
    for name in names:  # every site loaded once: the pinned version and the peft group exist, as after warm-up
        bank.site(name)
    rows = {}
    for ms in latencies_ms:
        with read_latency(ms):
            row = parts(bank, names)
            bursts: dict[int, list] = {k: [] for k in threads}
            for _ in range(rounds):
                for k in threads:
                    worker = InferenceWorker(bank, loader_threads=k)
                    try:
                        bursts[k].append(burst(worker, names, image))
                    finally:
                        worker.stop()
        first = bursts[threads[0]]
        row["loader_threads"] = {
            str(k): dict(summary(b), vs_first=float(np.median([f["wall_s"] / x["wall_s"] for f, x in zip(first, b)])))
            for k, b in bursts.items()}
        rows[f"{ms:g}"] = row
        print(f"read latency {ms:g} ms: {row}", flush=True)
    return rows


def markdown(rows: dict, sites: int, adapter_mib: float) -> str:
    lines = [f"{sites} sites of {adapter_mib:.1f} MiB each, all cold, one one-image request each, submitted together; "
             "the read latency is simulated (a sleep before each version folder's read).", "",
             "| read latency added | one site read + verified, alone | one site installed, alone | loader threads | "
             "burst: until the last answer (median; each round) | vs the first count (median of rounds) | "
             "request latency p50 / max |", "|---|---|---|---|---|---|---|"]
    for ms, row in rows.items():
        for k, r in row["loader_threads"].items():
            walls = ", ".join(f"{w:.0f}" for w in r["burst_walls_ms"])
            lines.append(f"| {ms} ms | {row['read_ms']:.1f} ms | {row['install_ms']:.1f} ms | {k} | "
                         f"{r['burst_wall_ms']:.0f} ms ({walls}) | {r['vs_first']:.2f}x | "
                         f"{r['latency_p50_ms']:.0f} / {r['latency_max_ms']:.0f} ms |")
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", type=int, default=20, help="cold sites requested at once (at least 2)")
    parser.add_argument("--rounds", type=int, default=3, help="bursts measured")
    parser.add_argument("--read-latency-ms", default="0,50",
                        help="comma-separated read latencies simulated, each measured (default 0,50)")
    parser.add_argument("--loader-threads", default="1,2,4",
                        help="comma-separated loader-thread counts, each measured; the first is the reference")
    parser.add_argument("--site-steps", type=int, default=2, help="fine-tuning steps of the real site")
    parser.add_argument("--backbone", default="builtin:mae-vit-tiny-med")
    parser.add_argument("--data-root", default=None, help="default: env TPP_DATA_ROOT")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    try:
        latencies = [float(x) for x in args.read_latency_ms.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--read-latency-ms takes comma-separated numbers, got {args.read_latency_ms!r}")
    if not latencies or not all(0 <= x < 1e5 for x in latencies):
        parser.error(f"--read-latency-ms needs one or more numbers in 0..100000, got {args.read_latency_ms!r}")
    try:
        threads = list(dict.fromkeys(int(x) for x in args.loader_threads.split(",") if x.strip()))
    except ValueError:
        parser.error(f"--loader-threads takes comma-separated integers, got {args.loader_threads!r}")
    if not threads or not all(1 <= k <= 64 for k in threads):
        parser.error(f"--loader-threads needs one or more counts in 1..64, got {args.loader_threads!r}")
    if args.sites < 2 or args.rounds < 1:
        parser.error(f"--sites must be at least 2 and --rounds at least 1, got {args.sites} and {args.rounds}")
    from tpp.serve import store

    data_root = args.data_root or os.environ.get("TPP_DATA_ROOT", str(ROOT.parent / "shared" / "data"))
    with tempfile.TemporaryDirectory(prefix="tpp_serving_cold_") as tmp:
        store_path = make_sites(Path(tmp), args.backbone, data_root, args.sites, steps=args.site_steps,
                                overrides=ADAPTER)
        names = sorted(store.sites(store_path))
        card = store.current(store_path, names[0]).card
        adapter_mib = sum(f.stat().st_size for f in store.current(store_path, names[0]).path.glob("*")) / 2**20
        image = np.zeros((card["input"]["image_size"],) * 2, np.uint8)
        rows = measure(args.backbone, store_path, names, image, args.rounds, latencies, threads)
    report.publish(args.out, "serving_cold", report.machine(), "python benchmarks/serving_cold.py " + " ".join(argv),
                   f"Backbone {args.backbone}; LoRA r=128 on every linear layer; {args.rounds} rounds of one burst per "
                   f"loader-thread count ({args.loader_threads}); CPU, default torch threads.",
                   markdown(rows, args.sites, adapter_mib),
                   {"sites": args.sites, "adapter_mib": adapter_mib, "by_read_latency_ms": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
