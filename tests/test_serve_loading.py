"""Loading sites while serving: a site's files are read and verified off the inference thread (other sites' requests
are answered meanwhile) and installed on it; ``GET /v1/sites`` reports the version a site not in memory comes back
at. Concurrency is shown with events (a read held open), never with timings."""
import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from helpers import HANG_S, png_bytes
from serving_fixtures import (build_store, call, on_event_loop, paused, publish_context, request, serving,
                              stub_app)

from tpp.serve import contexts, store
from tpp.errors import TppError
from tpp.serve.bank import AdapterBank, SiteRefused
from tpp.serve.worker import InferenceWorker, ReadQueue, _Job

SITES = {"a": ["adapter.r=2", "seed=0"], "b": ["adapter={method: linear_probe}", "seed=3"]}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_store(tmp_path_factory.mktemp("loading"), SITES, images=4, expected=True)


def close(got, expected) -> bool:
    return bool(torch.allclose(torch.tensor(got), expected, atol=1e-5, rtol=0))


class HeldReads:
    """Wraps :func:`tpp.serve.store.open_version`: records (site, thread name) of every read, and holds the reads
    of ``site`` (``first``: only its first read) until :meth:`release` (``reading`` is set once one is held)."""

    def __init__(self, monkeypatch, site: str, first: bool = False):
        self.site, self.reads = site, []
        self.reading, self.released = threading.Event(), threading.Event()
        real = store.open_version

        def held(store_path, name, version=None):
            self.reads.append((name, threading.current_thread().name))
            if name == self.site and not (first and self.reading.is_set()):
                self.reading.set()
                assert self.released.wait(HANG_S), "the read was never released"
            return real(store_path, name, version)

        monkeypatch.setattr(store, "open_version", held)

    def release(self) -> None:
        self.released.set()


def test_a_site_being_read_does_not_hold_up_the_requests_of_a_resident_site(world, monkeypatch):
    worker = InferenceWorker(AdapterBank(str(world["backbone"]), str(world["store"])), max_wait_ms=1)
    images = world["images"]
    worker.predict("a", images[:1]).result(HANG_S)  # resident
    installed_on = []
    check = worker.bank.guard.check  # runs at every install: the model is touched on the inference thread only
    worker.bank.guard.check = lambda source: (installed_on.append(threading.current_thread().name), check(source))
    held = HeldReads(monkeypatch, "b")
    first_b = worker.predict("b", images[:2])
    assert held.reading.wait(HANG_S)  # b's files are being read, and stay so until released
    second_b = worker.predict("b", images[2:4])  # waits for the same read
    answer = worker.predict("a", images[:3]).result(HANG_S)  # answered while b's read is held
    assert close(answer.outputs, world["expected"]["a"][:3])
    assert not first_b.done() and not second_b.done()
    held.release()
    assert close(first_b.result(HANG_S).outputs, world["expected"]["b"][:2])
    assert close(second_b.result(HANG_S).outputs, world["expected"]["b"][2:4])
    assert [(n, t[:10]) for n, t in held.reads] == [("b", "tpp-loader")]  # one read, on a loader thread
    assert installed_on == ["tpp-inference"]
    assert worker.bank.loads == 2 and list(worker.bank.resident) == ["a", "b"]
    worker.stop()


def test_cold_sites_are_read_at_once_but_a_reload_never_overtakes_the_read_of_its_site(world, tmp_path, monkeypatch):
    """Two loader threads: while x's files are read (held), y's are read on the other thread and y is answered; the
    reload of x asked for meanwhile is read only after x's load and swapped in after it (a pool taking reads in
    plain arrival order read it at once: x's waiting request was then answered by the new version, and the reload
    said x had served none)."""
    s = tmp_path / "store"
    old = store.publish(world["runs"]["a"], s, "x").version
    store.publish(world["runs"]["b"], s, "y")
    worker = InferenceWorker(AdapterBank(str(world["backbone"]), str(s)), max_wait_ms=1, loader_threads=2)
    images = world["images"]
    assert worker.predict("x", images[:1]).result(HANG_S).version == old
    worker.call(lambda bank: bank.evict("x")).result(HANG_S)  # x comes back at the version it served
    new = store.publish(world["runs"]["b"], s, "x").version
    held = HeldReads(monkeypatch, "x", first=True)
    waiting = worker.predict("x", images[:2])
    assert held.reading.wait(HANG_S)  # x's load is being read, and stays so until released
    reload = worker.reload("x")  # asked for after that load
    answer = worker.predict("y", images[:3]).result(HANG_S)  # read on the other loader thread meanwhile
    assert close(answer.outputs, world["expected"]["b"][:3])
    assert [name for name, _ in held.reads] == ["x", "y"] and not reload.done() and not waiting.done()
    held.release()
    answer = waiting.result(HANG_S)
    assert answer.version == old and close(answer.outputs, world["expected"]["a"][:2])
    assert reload.result(HANG_S) == (old, new)
    assert worker.predict("x", images[:1]).result(HANG_S).version == new
    assert [name for name, _ in held.reads] == ["x", "y", "x"]
    assert {thread for _, thread in held.reads} == {"tpp-loader-0", "tpp-loader-1"}
    worker.stop()


def test_many_requests_for_a_few_cold_sites_read_each_site_once_with_many_loader_threads(world, monkeypatch):
    worker = InferenceWorker(AdapterBank(str(world["backbone"]), str(world["store"])), max_wait_ms=1,
                             loader_threads=4)
    held = HeldReads(monkeypatch, "-")  # records every read, holds none
    images = world["images"]
    with paused(worker):  # every request queued before the inference thread sees the first
        futures = [(site, i, worker.predict(site, images[i:i + 1])) for i in range(4) for site in ("a", "b")]
    for site, i, future in futures:
        assert close(future.result(HANG_S).outputs, world["expected"][site][i:i + 1])
    assert sorted(name for name, _ in held.reads) == ["a", "b"] and worker.bank.loads == 2
    worker.stop()


def test_the_read_queue_keeps_each_sites_order_and_bounds_the_reads_held():
    """A read of a site is not taken while an earlier one of it is out; no more than ``ahead`` reads are out or
    waiting to be used; ``close`` ends every take. Checked without threads (``block=False``)."""
    reads = ReadQueue(ahead=3)
    jobs = [_Job("install", "a"), _Job("reload", "a"), _Job("install", "b"), _Job("install", "c"),
            _Job("install", "d")]
    for job in jobs:
        reads.put(job, None)
    assert reads.take(block=False)[0] is jobs[0]
    assert reads.take(block=False)[0] is jobs[2]  # a's reload waits for a's read; b is free
    reads.done("a")
    assert reads.take(block=False)[0] is jobs[1]  # now in the order put
    assert reads.take(block=False) is None  # three held: a's two reads and b's, none used yet
    reads.consumed()
    assert reads.take(block=False)[0] is jobs[3]
    reads.close()
    assert reads.take() is None  # closed: returns at once, reads not taken are dropped


def test_a_worker_needs_a_loader_thread(world):
    with pytest.raises(TppError, match="loader_threads must be at least 1, got 0"):
        InferenceWorker(AdapterBank(str(world["backbone"]), str(world["store"])), loader_threads=0)


def _flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))


def test_a_refused_or_unknown_site_read_aside_fails_its_requests_alone(world, tmp_path, monkeypatch):
    """Every request that waited for a tampered version gets the refusal; it is remembered (not read again) and
    shown in the bank; an unknown site is a 404 as before; the other site is answered throughout."""
    s = tmp_path / "store"
    store.publish(world["runs"]["a"], s, "a")
    version = store.publish(world["runs"]["b"], s, "bad").version
    _flip_a_byte(s / "bad" / version / "head.safetensors")
    worker = InferenceWorker(AdapterBank(str(world["backbone"]), str(s)), max_wait_ms=1)
    worker.predict("a", world["images"][:1]).result(HANG_S)
    held = HeldReads(monkeypatch, "bad")
    waiting = [worker.predict("bad", world["images"][:1])]
    assert held.reading.wait(HANG_S)
    waiting.append(worker.predict("bad", world["images"][:2]))
    assert close(worker.predict("a", world["images"][:2]).result(HANG_S).outputs, world["expected"]["a"][:2])
    held.release()
    for future in waiting:
        with pytest.raises(SiteRefused, match="content hash does not match"):
            future.result(HANG_S)
    with pytest.raises(SiteRefused, match="content hash does not match"):  # from memory
        worker.predict("bad", world["images"][:1]).result(HANG_S)
    with pytest.raises(store.UnknownSite):
        worker.predict("nobody", world["images"][:1]).result(HANG_S)
    with pytest.raises(TppError, match="not allowed"):  # the service answers 400 before; the loader lives on
        worker.predict("../a", world["images"][:1]).result(HANG_S)
    store.publish(world["runs"]["a"], s, "c")
    assert worker.predict("c", world["images"][:1]).result(HANG_S).version
    assert [name for name, _ in held.reads] == ["bad", "nobody", "../a", "../a", "c"] and worker.bank.loads == 2
    assert worker.call(lambda bank: bank.refused["bad"][0]).result(HANG_S) == version
    assert worker.call(lambda bank: list(bank.resident)).result(HANG_S) == ["a", "c"]
    worker.stop()


def test_a_reload_is_read_aside_and_swapped_in_between_batches(world, tmp_path, monkeypatch):
    s = tmp_path / "store"
    old = store.publish(world["runs"]["a"], s, "x").version
    worker = InferenceWorker(AdapterBank(str(world["backbone"]), str(s)), max_wait_ms=1)
    assert worker.predict("x", world["images"][:1]).result(HANG_S).version == old
    new = store.publish(world["runs"]["b"], s, "x").version
    held = HeldReads(monkeypatch, "x")
    reload = worker.reload("x")
    assert held.reading.wait(HANG_S)
    answer = worker.predict("x", world["images"][:2]).result(HANG_S)  # the old version answers meanwhile
    assert answer.version == old and close(answer.outputs, world["expected"]["a"][:2]) and not reload.done()
    held.release()
    assert reload.result(HANG_S) == (old, new) and [(n, t[:10]) for n, t in held.reads] == [("x", "tpp-loader")]
    answer = worker.predict("x", world["images"][:2]).result(HANG_S)
    assert answer.version == new and close(answer.outputs, world["expected"]["b"][:2])
    assert store.publish(world["runs"]["a"], s, "x").version == old  # the pointer back at old, which is damaged:
    _flip_a_byte(s / "x" / old / "head.safetensors")
    with pytest.raises(SiteRefused, match=f"content hash does not match.*still serves version {new}"):
        worker.reload("x").result(HANG_S)
    assert worker.predict("x", world["images"][:1]).result(HANG_S).version == new
    worker.stop()


def test_files_prepared_for_another_version_than_the_one_to_serve_are_not_installed(world, tmp_path, monkeypatch):
    """The loader reads what the inference thread asked for; if the site's version to serve changed meanwhile (it
    is pinned to the version it served), the bank reads that version itself instead of installing the other."""
    s = tmp_path / "store"
    old = store.publish(world["runs"]["a"], s, "x").version
    bank = AdapterBank(str(world["backbone"]), str(s))
    assert bank.site("x").version == old
    bank.evict("x")
    new = store.publish(world["runs"]["b"], s, "x").version
    prepared = bank.prepare("x")  # the store's current version: not what x serves
    assert prepared.version == new and prepared.error is None
    held = HeldReads(monkeypatch, "-")
    assert bank.version_to_load("x") == old and bank.site("x", prepared).version == old
    assert [name for name, _ in held.reads] == ["x"]  # read again, at the pinned version
    bank.evict("x")
    assert bank.site("x", bank.prepare("x", old)).version == old and len(held.reads) == 2  # used as it was
    assert bank.reload("x", prepared) == (old, new) and len(held.reads) == 2


def test_sites_lists_the_version_an_unloaded_site_comes_back_at(world, tmp_path):
    """``serving`` is the version that answers a site: in memory, or the one it served before it was unloaded
    (pinned until reload); None only while no version is chosen yet. ``resident``: the published one is in memory."""
    s = tmp_path / "store"
    old = store.publish(world["runs"]["a"], s, "x").version
    y = store.publish(world["runs"]["b"], s, "y").version
    z = store.publish(world["runs"]["a"], s, "z").version  # never requested
    png = [("a.png", png_bytes(world["images"][0]))]
    worker = InferenceWorker(AdapterBank(str(world["backbone"]), str(s), max_resident=1))
    with serving(world, store_path=s, worker=worker) as url:
        assert request(f"{url}/v1/sites/x/predict", png)[1]["version"] == old
        assert request(f"{url}/v1/sites/y/predict", png)[0] == 200  # unloads x
        new = store.publish(world["runs"]["b"], s, "x").version

        def rows():
            listing = request(f"{url}/v1/sites")[1]["sites"]
            return {r["site"]: (r["version"], r["serving"], r["resident"]) for r in listing}

        assert rows() == {"x": (new, old, False), "y": (y, y, True), "z": (z, None, False)}
        assert request(f"{url}/v1/sites/x/predict", png)[1]["version"] == old  # as listed; unloads y
        assert rows()["y"] == (y, y, False)  # not in memory, comes back at its version
        assert request(f"{url}/v1/sites/y/predict", png)[0] == 200
        shutil.rmtree(s / "x" / old)  # the version x served is gone: its next request loads the current one
        assert rows()["x"] == (new, None, False)
        assert request(f"{url}/v1/sites/x/predict", png)[1]["version"] == new
        assert rows()["x"] == (new, new, True)


@pytest.mark.parametrize("path, module", [("/v1/sites", store), ("/v1/contexts", contexts)])
def test_the_listings_read_the_store_off_the_event_loop(tmp_path, monkeypatch, path, module):
    """``GET /v1/sites`` reads every site's card (``/v1/contexts`` every manifest): on the event loop, a slow disk
    held up every other request meanwhile. The reads run in a thread, as decoding does."""
    app, _ = stub_app(tmp_path)
    real, calls = module.listing, []
    monkeypatch.setattr(module, "listing", lambda *args: (calls.append(on_event_loop()), real(*args))[1])
    status, body, _ = call(app, "GET", path)
    assert status == 200 and calls == [False]
    assert path != "/v1/sites" or [row["site"] for row in body["sites"]] == ["s"]


def test_the_versions_unloaded_sites_come_back_at_are_known_without_listing_their_folders(world, tmp_path,
                                                                                            monkeypatch):
    """``bank.serving`` answers every ``GET /v1/sites`` on the inference thread: it used to list each unloaded
    site's version folder and stat each file. Whether the folder is there is all it needs, and it follows a
    reload, a refusal and a deleted version at once."""
    s = tmp_path / "store"
    old = store.publish(world["runs"]["a"], s, "x").version
    y = store.publish(world["runs"]["b"], s, "y").version
    bank = AdapterBank(str(world["backbone"]), str(s), max_resident=1)
    bank.site("x")
    bank.site("y")  # unloads x, which comes back at old
    listed, scandir = [], os.scandir
    monkeypatch.setattr(os, "scandir", lambda *path: (listed.append(path), scandir(*path))[1])
    assert bank.serving() == {"x": old, "y": y} and listed == []
    monkeypatch.setattr(os, "scandir", scandir)
    new = store.publish(world["runs"]["b"], s, "x").version
    assert bank.serving()["x"] == old  # published, not reloaded: still old
    assert bank.reload("x") == (None, new) and bank.serving() == {"x": new, "y": y}  # y unloaded, comes back at y
    bank.refuse("y", y, "outputs are not finite")  # not pinned any more: follows the store's pointer
    assert bank.serving() == {"x": new}
    bank.evict("x")
    assert bank.serving() == {"x": new}
    shutil.rmtree(s / "x" / new)  # the version x served is gone: its next request loads the store's current one
    assert bank.serving() == {}


def test_the_serving_benchmark_loads_sites_cold_as_the_service_does(world, monkeypatch):
    """``benchmarks/serving.py`` timed ``bank.site`` on its own thread; the service reads a site's files on the
    loader thread and installs it on the inference thread. Its cold loads now take that path."""
    import serving as benchmark  # benchmarks/serving.py (serving_fixtures put benchmarks/ on the path)

    bank = AdapterBank(str(world["backbone"]), str(world["store"]))
    first = {name: bank.site(name) for name in ("a", "b")}
    held = HeldReads(monkeypatch, "-")  # records every read, holds none
    installed_on, check = [], bank.guard.check
    bank.guard.check = lambda source: (installed_on.append(threading.current_thread().name), check(source))
    cold, warm = benchmark.cold_loads(bank, ["a", "b"], world["images"][0])
    assert len(cold) == len(warm) == 2 and min(cold + warm) > 0
    assert [(n, t[:10]) for n, t in held.reads] == [("a", "tpp-loader"), ("b", "tpp-loader")]
    assert installed_on == ["tpp-inference"] * 2
    assert bank.loads == 4 and all(bank.resident[name] is not first[name] for name in ("a", "b"))


def test_the_cold_burst_benchmark_measures_each_loader_thread_count_through_the_worker(world, monkeypatch):
    """``benchmarks/serving_cold.py``: every burst loads every site cold, on loader threads, once per thread count and
    round; the simulated read latency is taken away again after."""
    import serving_cold

    held = HeldReads(monkeypatch, "-")  # records every read, holds none
    rows = serving_cold.measure(str(world["backbone"]), world["store"], ["a", "b"], world["images"][0], rounds=2,
                                latencies_ms=[0, 1], threads=[1, 2])
    assert list(rows) == ["0", "1"] and all(list(row["loader_threads"]) == ["1", "2"] for row in rows.values())
    by_thread = [name for name, thread in held.reads if thread.startswith("tpp-loader")]
    assert sorted(by_thread) == ["a"] * 8 + ["b"] * 8  # 2 latencies x 2 rounds x 2 thread counts: once a burst
    for row in rows.values():
        assert row["read_ms"] > 0 and row["install_ms"] > 0
        for result in row["loader_threads"].values():
            assert len(result["burst_walls_ms"]) == 2 and result["vs_first"] > 0
    assert rows["1"]["read_ms"] >= 1 and store.read_version_folder.__name__ == "read_version_folder"


@pytest.mark.parametrize("method, path, status", [("POST", "/v1/sites/s/predict", 200),
                                                  ("POST", "/v1/sites/nobody/reload", 404),
                                                  ("POST", "/v1/contexts/s/predict", 404)])
def test_the_pointer_of_each_request_is_read_off_the_event_loop(tmp_path, monkeypatch, method, path, status):
    """Every predict and reload reads the site's pointer first (so a version published or rolled back on disk is
    noticed at the next request): in a thread, not on the event loop."""
    app, _ = stub_app(tmp_path)
    (tmp_path / "store" / contexts.FOLDER).mkdir()  # context sets are looked for (none published)
    real, calls = store.current_version, []
    monkeypatch.setattr(store, "current_version", lambda *args: (calls.append(on_event_loop()), real(*args))[1])
    files = [("a.png", png_bytes(np.zeros((8, 8), np.uint8)))] if path.endswith("predict") else None
    assert call(app, method, path, files=files)[0] == status
    assert calls and not any(calls)


def test_a_context_set_is_read_off_the_inference_thread_and_once_however_many_wait(world, tmp_path, monkeypatch):
    """A stored context set's files are read and verified (hashed, every image decoded) in a thread: on the
    inference thread, every site's predictions waited meanwhile. Requests asking for it meanwhile share that read;
    only its examples' features are computed on the inference thread."""
    s = tmp_path / "store"
    store.publish(world["runs"]["a"], s, "a")
    worker = InferenceWorker(AdapterBank(str(world["backbone"]), str(s)), max_wait_ms=1)
    publish_context(tmp_path / "ctx", s, "c", worker.bank.info.hash)
    reads, reading, released = [], threading.Event(), threading.Event()
    real = contexts.open_context

    def held(*args, **kwargs):
        reads.append(threading.current_thread().name)
        reading.set()
        assert released.wait(HANG_S), "the read was never released"
        return real(*args, **kwargs)

    monkeypatch.setattr(contexts, "open_context", held)
    url_of, query = "{}/v1/contexts/c/predict", [("q.png", png_bytes(world["images"][0]))]
    with serving(world, store_path=s, worker=worker) as url, ThreadPoolExecutor(2) as pool:
        try:
            first = pool.submit(request, url_of.format(url), query)
            assert reading.wait(HANG_S)
            assert reads[0] != "tpp-inference"
            answer = worker.predict("a", world["images"][:2]).result(HANG_S)  # answered while the set is read
            assert close(answer.outputs, world["expected"]["a"][:2]) and not first.done()
            second = pool.submit(request, url_of.format(url), query)
        finally:
            released.set()
        (status, one), (again, other) = first.result(HANG_S), second.result(HANG_S)
        assert (status, again) == (200, 200) and one["predictions"] == other["predictions"]
        assert len(reads) == 1  # shared, then kept
