"""``benchmarks/serving.py --engine ray``: ``tpp serve --engine ray`` against the single-process service.

    python benchmarks/serving.py --engine ray                 # writes benchmarks/results/serving_ray.{json,md}
    python benchmarks/serving.py --engine ray --quick --out runs/serving_ray_quick

The store of ``benchmarks/serving.py`` (one real LoRA site on BreastMNIST, the others distinct copies) with 50
sites. Scenarios, each under the same load (client threads on loopback, one 28x28 PNG per request, sites
round-robin): 1, 10 and 50 sites against the single-process service (``tpp serve``, a subprocess), Ray Serve
with 1 replica and with 2 replicas (a local Ray started and stopped here: 127.0.0.1, no dashboard, no usage
stats). Both engines keep ``--max-resident`` sites per process (default 16). Reported: requests/s, p50/p99
latency, errors, mismatches against offline predictions (label equal, every probability within 1e-4; must be 0),
and for Ray the fraction of requests that found their site loaded on the replica that took them (hit
fraction). Then the replica-kill run: 2 replicas, 10 sites, and ``kill -9`` of one replica's worker process a
third into the window; errors are counted, wrong answers must be 0, and the run waits for Ray's replacement.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import serving

SITE_COUNTS = (1, 10, 50)


def ray_stats(ingress) -> dict:
    return ingress.stats.remote().result()


def hits_and_misses(stats: dict) -> tuple[int, int]:
    states = stats["replicas"].values()
    return sum(s["hits"] for s in states), sum(s["misses"] for s in states)


def window(port: int, sites: list[str], pngs, expected, args, ingress=None, during=None) -> dict:
    """One load window; with ``ingress``, the hit fraction of its requests; ``during(seconds)`` runs in a
    thread alongside (the kill)."""
    import threading

    before = hits_and_misses(ray_stats(ingress)) if ingress is not None else None
    side = threading.Thread(target=during, args=(args.seconds,)) if during else None
    if side:
        side.start()
    w = serving.load_test(port, sites, pngs, expected, args.clients, args.seconds, args.max_requests)
    if side:
        side.join()
    row = serving.pooled([w])
    if ingress is not None:
        hits, misses = (a - b for a, b in zip(hits_and_misses(ray_stats(ingress)), before))
        row["hit_fraction"] = hits / max(hits + misses, 1)
    return row


def single_process(backbone: str, store_path: Path, names: list[str], pngs, expected, args) -> dict:
    proc, port = serving.start_server(backbone, store_path, args.max_resident)
    try:
        serving.load_test(port, names, pngs, expected, args.clients, 3, len(names) * 2)  # warm-up
        return {f"{n} sites": window(port, names[:n], pngs, expected, args) for n in SITE_COUNTS}
    finally:
        proc.terminate()
        proc.wait(60)


def deploy(backbone: str, store_path: Path, replicas: int, args):
    from ray import serve

    from tpp.serve import ray_engine

    serve.run(ray_engine.application(backbone, str(store_path), replicas=replicas, threads=args.threads,
                                     max_resident=args.max_resident), name=ray_engine.APP, route_prefix="/")
    return serve.get_deployment_handle("TppIngress", app_name=ray_engine.APP)


def wait_for_replacement(killed: str, replicas: int, patience_s: float = 600) -> tuple[float, bool]:
    """(seconds, True) once Ray runs ``replicas`` TppSites replicas again, none of them the ``killed`` one (Ray's
    named replica actors, from the GCS: no dashboard needed); (``patience_s``, False) if the killed one's name is
    still listed then (restarted in place, or not replaced)."""
    import ray

    started = time.perf_counter()
    while time.perf_counter() - started < patience_s:
        names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                 if "TppSites" in a["name"] and killed not in a["name"]]
        if len(names) >= replicas:
            return time.perf_counter() - started, True
        time.sleep(0.5)
    return patience_s, False


def kill_run(ingress, port: int, names, pngs, expected, args) -> dict:
    """2 replicas, 10 sites; the worker process of the replica that took the most requests gets SIGKILL a third
    into the window."""
    killed = {}

    def kill(seconds: float):
        time.sleep(seconds / 3)
        replicas = ray_stats(ingress)["replicas"]  # the busiest: it holds requests in flight
        rid, state = max(replicas.items(), key=lambda item: item[1]["hits"] + item[1]["misses"])
        os.kill(state["pid"], signal.SIGKILL)
        killed.update(id=rid, pid=state["pid"])

    row = window(port, names[:10], pngs, expected, args, ingress, during=kill)
    row["killed_pid"] = killed["pid"]
    # counted from the end of the window
    row["replaced_after_s"], row["replaced_by_new_replica"] = wait_for_replacement(killed["id"], 2)
    return row


def ray_numbers(backbone: str, store_path: Path, names: list[str], pngs, expected, args) -> dict:
    from tpp.serve import ray_engine

    sock = __import__("socket").socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    out = {}
    ray_engine.start("127.0.0.1", port)
    for sig in (signal.SIGINT, signal.SIGTERM):  # after ray.init's own handlers: stop Ray on the way out
        signal.signal(sig, ray_engine.interrupt)
    try:
        for replicas in (1, 2):
            ingress = deploy(backbone, store_path, replicas, args)
            serving.load_test(port, names, pngs, expected, args.clients, 3, len(names) * 2)  # warm-up
            for n in SITE_COUNTS:
                out[f"ray {replicas} replica{'s' * (replicas > 1)}, {n} sites"] = window(
                    port, names[:n], pngs, expected, args, ingress)
                print(f"ray {replicas} replicas, {n} sites: {out[list(out)[-1]]}", flush=True)
        out["ray 2 replicas, 10 sites, one replica killed"] = kill_run(ingress, port, names, pngs, expected, args)
        out["ray 2 replicas, 10 sites, after the replacement"] = window(port, names[:10], pngs, expected, args,
                                                                         ingress)
    finally:
        ray_engine.stop()
    return out


def markdown(rows: dict) -> str:
    base = {n: rows[f"single process, {n} sites"]["requests_per_s"] for n in SITE_COUNTS}
    lines = ["| scenario | requests | req/s | vs single process | p50 ms | p99 ms | hit fraction | errors | "
             "mismatches |", "|---|---|---|---|---|---|---|---|---|"]
    for label, row in rows.items():
        n = int(label.split(" sites")[0].split()[-1])
        hit = f"{row['hit_fraction']:.2f}" if "hit_fraction" in row else "-"
        lines.append(f"| {label} | {row['requests']} | {row['requests_per_s']:.1f} | "
                     f"{row['requests_per_s'] / base[n]:.2f}x | {row['p50_ms']:.0f} | {row['p99_ms']:.0f} | {hit} | "
                     f"{row['errors']} | {row['mismatches']} |")
    kill = rows.get("ray 2 replicas, 10 sites, one replica killed")
    if kill:
        lines += ["", f"Replica kill: pid {kill['killed_pid']} got SIGKILL a third into the window; Ray ran a "
                      f"replacement replica {kill['replaced_after_s']:.0f} s after the window's end "
                      f"(a new replica: {kill['replaced_by_new_replica']}); "
                      f"{kill['errors']} requests failed, {kill['mismatches']} wrong answers."]
    return "\n".join(lines)


def main(argv: list[str], command: str) -> int:
    import argparse

    import report

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="6 s windows instead of 20 s")
    parser.add_argument("--clients", type=int, default=8, help="concurrent client threads")
    parser.add_argument("--seconds", type=float, default=20.0, help="load window per scenario")
    parser.add_argument("--max-requests", type=int, default=5000, help="cap per window")
    parser.add_argument("--max-resident", type=int, default=16, help="sites kept per process (both engines)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per replica / service")
    serving.add_paths(parser, "serving")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds = 6.0
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))  # the single-process service inherits it
    args.work.mkdir(parents=True, exist_ok=True)
    store_path = serving.make_sites(args.work, args.backbone, args.data_root, max(SITE_COUNTS))
    from tpp.data.arrays import load_medmnist

    images = load_medmnist("breastmnist", args.data_root, False).split("test").images[:16]
    expected = serving.offline(store_path, args.backbone, images)
    names = sorted(expected)
    pngs = [serving.png(im) for im in images]
    rows = {f"single process, {k}": v for k, v in single_process(args.backbone, store_path, names, pngs, expected,
                                                                 args).items()}
    rows.update(ray_numbers(args.backbone, store_path, names, pngs, expected, args))
    report.publish(args.out, "serving_ray", report.machine(), command,
                   f"Backbone {args.backbone}; {len(names)} LoRA sites; {args.clients} client threads on loopback, "
                   f"one 28x28 PNG per request, {args.seconds:g} s per window; --max-resident {args.max_resident} "
                   f"per process; {args.threads} torch thread(s) per process. Absolute numbers on 2 shared cores "
                   "say little: read the ratios.",
                   markdown(rows), {"rows": rows})
    return 0
