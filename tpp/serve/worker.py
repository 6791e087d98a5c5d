"""One inference thread fed by a queue: micro-batches concurrent requests, grouped by site.

Request threads decode images and call :meth:`InferenceWorker.predict`; the worker gathers queued
requests (up to ``max_batch`` images, waiting at most ``max_wait_ms`` for more), resolves each
request's site in the :class:`~tpp.serve.bank.AdapterBank`, applies that adapter's input pipeline and runs
one mixed-site batch.

A request for a site that is not resident waits aside while a loader thread reads and verifies the site's
files (:meth:`~tpp.serve.bank.AdapterBank.prepare`: disk, content hash, safetensors parsing), so the other
sites' requests are answered meanwhile; the inference thread then installs the prepared site between batches
(tensors into its modules, the backbone guard, one trial image, eviction) and runs the requests that waited.
Reloads are read by a loader thread too and swapped in on the inference thread between batches, so a request
is computed entirely with the old adapter version or entirely with the new one.

``loader_threads`` loader threads read different sites at once (reading and hashing release the GIL), so cold sites
requested together do not queue behind one another's reads; the model side of each load stays on the inference
thread, one site at a time. Reads of one site never overlap and reach the inference thread in the order they were
asked for (:class:`ReadQueue`): a reload asked for after a site's load is swapped in after it. Sites read but not yet
installed are at most twice ``loader_threads`` (their files and tensors are held in memory until then).
"""
from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from tpp.serve.bank import AdapterBank, NonFiniteOutputs, Prepared, SiteRefused
from tpp.errors import TppError
from tpp.serve.images import to_model_input
from tpp.tasks import Task

log = logging.getLogger("tpp.serve")


@dataclass
class Prediction:
    """Per-image results of one request, with the adapter version that computed them, as the site's task
    serves them (``task.per_image``): a (K,) probability list for classification, a uint8 (h, w) class-index
    mask at the uploaded image's size for segmentation ..."""
    site: str
    version: str
    label_names: list
    outputs: list  # one entry per image
    task: Task

    def entries(self) -> list[dict]:
        """The HTTP response entry of each image (without its file name)."""
        return [self.task.json_entry(out, self.label_names) for out in self.outputs]


class ReadQueue:
    """The loader threads' work: (job, version) reads taken in the order they were put, except that a read of a site
    is not taken while an earlier one of that site is still out (taken, not yet :meth:`done`), so a site's reads
    finish, and are handed on, in the order they were put; and at most ``ahead`` reads are out or finished but not
    yet :meth:`consumed` (what they read waits in memory meanwhile)."""

    def __init__(self, ahead: int):
        self._cond = threading.Condition()
        self._pending: collections.deque[tuple[_Job, str | None]] = collections.deque()
        self._out: set[str] = set()  # sites with a read taken and not done
        self._held = 0  # reads taken and not consumed
        self._ahead = ahead
        self._closed = False

    def put(self, job: _Job, version: str | None) -> None:
        with self._cond:
            self._pending.append((job, version))
            self._cond.notify_all()

    def take(self, block: bool = True) -> tuple[_Job, str | None] | None:
        """The first read whose site has none out, while fewer than ``ahead`` are held (waiting for one if
        ``block``); None once closed, or when none can be taken now and not ``block``."""
        with self._cond:
            while not self._closed:
                if self._held < self._ahead:
                    for i, (job, version) in enumerate(self._pending):
                        if job.site not in self._out:
                            del self._pending[i]
                            self._out.add(job.site)
                            self._held += 1
                            return job, version
                if not block:
                    return None
                self._cond.wait()
            return None

    def done(self, site: str) -> None:
        """The read of ``site`` that is out has finished (and was handed on): its next read may be taken."""
        with self._cond:
            self._out.discard(site)
            self._cond.notify_all()

    def consumed(self) -> None:
        """A finished read was used (its site installed, refused or reloaded): one more may be taken."""
        with self._cond:
            self._held -= 1
            self._cond.notify_all()

    def close(self) -> None:
        """Every :meth:`take` returns None from now on (reads not taken yet are dropped)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


@dataclass
class _Job:
    kind: str  # "predict" | "reload" | "call" | "install" | "stop"
    site: str = ""
    images: list = field(default_factory=list)  # uint8 arrays
    fn: Callable | None = None  # "call" jobs: fn(bank)
    future: Future = field(default_factory=Future)
    prepared: Prepared | None = None  # "reload" and "install" jobs: the site's files, read by the loader thread


class InferenceWorker:
    """``predict(site, images) -> Future[Prediction]``; ``reload(site) -> Future[(old, new)]``."""

    def __init__(self, bank: AdapterBank, max_batch: int = 64, max_wait_ms: float = 5.0, loader_threads: int = 2):
        """``loader_threads``: threads that read sites' files (at least 1; see the module docstring)."""
        if loader_threads < 1:
            raise TppError(f"loader_threads must be at least 1, got {loader_threads}.")
        self.bank = bank
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.queue: queue.Queue[_Job] = queue.Queue()
        self.batches = 0
        self._to_prepare = ReadQueue(ahead=2 * loader_threads)
        self._waiting: dict[str, list[_Job]] = {}  # site -> predict jobs waiting for its files (inference thread)
        self._thread = threading.Thread(target=self._loop, name="tpp-inference", daemon=True)
        self._loaders = [threading.Thread(target=self._prepare_loop, name=f"tpp-loader-{i}", daemon=True)
                         for i in range(loader_threads)]
        self._thread.start()
        for loader in self._loaders:
            loader.start()

    def predict(self, site: str, images: list[np.ndarray]) -> Future:
        return self._submit(_Job("predict", site, list(images)))

    def reload(self, site: str) -> Future:
        """The store's current version of ``site`` is read by the loader thread, then swapped in between batches."""
        return self._submit(_Job("reload", site), read_first=True)

    def call(self, fn) -> Future:
        """Run ``fn(bank)`` on the inference thread (between batches)."""
        return self._submit(_Job("call", fn=fn))

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the inference and loader threads and wait for them (a thread still inside a library when the process
        exits can abort it: "terminate called without an active exception")."""
        self._to_prepare.close()
        self.queue.put(_Job("stop"))
        for thread in (self._thread, *self._loaders):
            thread.join(timeout)

    def _submit(self, job: _Job, read_first: bool = False) -> Future:
        """Queue ``job`` for the inference thread; ``read_first``: for a loader thread first, which reads the
        store's current version of its site."""
        if not self._thread.is_alive():
            raise RuntimeError("the inference worker has stopped")
        if read_first:
            self._to_prepare.put(job, None)
        else:
            self.queue.put(job)
        return job.future

    def _prepare_loop(self) -> None:
        """A loader thread: read and verify a site's files (the part of a load that touches no model), then queue
        the job for the inference thread, which installs them between batches. The job is queued before the site's
        next read may be taken, so the inference thread gets a site's jobs in the order they were asked for."""
        while (taken := self._to_prepare.take()) is not None:
            job, version = taken
            try:
                job.prepared = self.bank.prepare(job.site, version)
            except Exception:  # prepare keeps load errors; others (a site name not allowed) the inference thread
                job.prepared = None  # meets itself, reading the files there
            finally:
                self.queue.put(job)
                self._to_prepare.done(job.site)

    def _loop(self) -> None:
        backlog: collections.deque[_Job] = collections.deque()  # jobs taken from the queue but not yet run
        while True:
            job = backlog.popleft() if backlog else self.queue.get()
            if job.kind == "stop":
                return
            if job.kind == "install":  # the jobs that waited for the site run next
                backlog.extendleft(reversed(self._install(job)))
                self._to_prepare.consumed()
                continue
            if job.kind != "predict":
                self._control(job)
                if job.kind == "reload":  # read by a loader thread first
                    self._to_prepare.consumed()
                continue
            batch = self._gather(job, backlog)
            try:
                self._run(batch)
            except Exception as exc:  # a defect, not a request's fault: its requests get the error, the thread lives
                log.exception("an inference batch failed unexpectedly")
                aside = {id(j) for jobs in self._waiting.values() for j in jobs}  # answered when their site loads
                for failed in batch:
                    if id(failed) not in aside and not failed.future.done():
                        failed.future.set_exception(exc)

    @property
    def alive(self) -> bool:
        """Whether the inference thread still runs (``/healthz`` says 503 when it does not)."""
        return self._thread.is_alive()

    def _next(self, backlog, deadline: float) -> _Job | None:
        if backlog:
            return backlog.popleft()
        try:
            return self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return None

    def _gather(self, first: _Job, backlog) -> list[_Job]:
        """Collect predict jobs until ``max_batch`` images or ``max_wait``; a control job ends the batch
        (it goes back to the front of the backlog and runs right after)."""
        batch, size = [first], len(first.images)
        deadline = time.monotonic() + self.max_wait
        while size < self.max_batch:
            job = self._next(backlog, deadline)
            if job is None:
                break
            if job.kind != "predict":
                backlog.appendleft(job)
                break
            batch.append(job)
            size += len(job.images)
        return batch

    def _control(self, job: _Job) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        try:
            result = self.bank.reload(job.site, job.prepared) if job.kind == "reload" else job.fn(self.bank)
            job.future.set_result(result)
        except BaseException as exc:  # the caller sees it; the worker lives on
            job.future.set_exception(exc)

    def _wait_for_site(self, job: _Job) -> None:
        """Set aside a predict job whose site is not resident until the loader thread has read the site's files
        (one read per site however many jobs wait); answer it at once if the site is refused."""
        if job.site in self._waiting:
            self._waiting[job.site].append(job)
            return
        try:
            version = self.bank.version_to_load(job.site)
        except BaseException as exc:  # refused, and its files unchanged since: nothing to read
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(exc)
            return
        self._waiting[job.site] = [job]
        self._to_prepare.put(_Job("install", job.site), version)

    def _install(self, job: _Job) -> list[_Job]:
        """Make a site resident from its prepared files (the cheap part of a load; the least recently used site
        may be evicted); returns the jobs that waited for it. If it is refused, they are answered with why."""
        waiting = self._waiting.pop(job.site, [])
        try:
            self.bank.site(job.site, job.prepared)
        except BaseException as exc:
            for waiter in waiting:
                if waiter.future.set_running_or_notify_cancel():
                    waiter.future.set_exception(exc)
            return []
        return waiting

    def _outputs(self, sites: list, tensors: list) -> list:
        """One output per row, ``max_batch`` rows per forward pass (one request of many small images must not
        run as one huge batch): see :meth:`_chunk_outputs`."""
        step = self.max_batch
        return [out for start in range(0, len(sites), step)
                for out in self._chunk_outputs(sites[start:start + step], tensors[start:start + step])]

    def _chunk_outputs(self, sites: list, tensors: list) -> list:
        """One output per row; when the mixed batch fails, each site's rows run alone and a failing site's
        rows get its error (the site is refused in the bank: ``GET /v1/sites`` shows why), the others
        their outputs."""
        try:
            return self.bank.predict(sites, tensors)
        except Exception:
            log.warning("a mixed batch of %d sites failed; running its sites one by one", len(set(map(id, sites))))
        outputs: list = [None] * len(sites)
        rows_of: dict[int, list[int]] = {}
        for i, site in enumerate(sites):
            rows_of.setdefault(id(site), []).append(i)
        for index in rows_of.values():
            site = sites[index[0]]
            try:
                try:
                    results = self.bank.predict([site] * len(index), [tensors[i] for i in index])
                except NonFiniteOutputs:  # some input, not the site: row by row, only those rows get the error
                    results = [self._one_row(site, tensors[i]) for i in index]
            except Exception as exc:
                results = [self._refuse(site, exc)] * len(index)
            for i, result in zip(index, results):
                outputs[i] = result
        return outputs

    def _refuse(self, site, exc: Exception) -> SiteRefused:
        """Refuse a site that fails to predict (the bank remembers why until a new version is published)."""
        cause = exc.__cause__ or exc  # the library's error behind the bank's one-paragraph one
        reason = f"site '{site.name}' version {site.version} fails to predict ({type(cause).__name__}: " \
                 f"{str(cause)[:200]}); refused until a new version is published."
        log.warning("refused: %s", reason)
        self.bank.refuse(site.name, site.version, reason)
        return SiteRefused(reason)

    def _one_row(self, site, tensor):
        """One row's output, or the :class:`NonFiniteOutputs` it gives."""
        try:
            return self.bank.predict([site], [tensor])[0]
        except NonFiniteOutputs as exc:
            return exc

    @staticmethod
    def _prediction(job: _Job, site, outputs: list) -> Prediction:
        task = site.task
        return Prediction(site.name, site.version, site.label_names,
                          [task.per_image(out, image) for out, image in zip(outputs, job.images)], task)

    def _run(self, batch: list[_Job]) -> None:
        """Run one mixed-site batch of the jobs whose site is resident; the others wait for their site's files
        (:meth:`_wait_for_site`). Nothing is loaded within a batch, so a batch never holds more distinct sites
        than the bank keeps resident and no site of it is evicted."""
        started = time.perf_counter()
        rows, sites, tensors, names = [], [], [], set()
        for job in batch:
            if job.site not in self.bank.resident:
                self._wait_for_site(job)
                continue
            if not job.future.set_running_or_notify_cancel():  # the caller gave up (timeout): skip it
                continue
            try:
                site = self.bank.site(job.site)  # resident: only marked recently used
                names.add(job.site)
                inputs = [to_model_input(im, site.input_rule) for im in job.images]
            except BaseException as exc:
                job.future.set_exception(exc)
                continue
            rows.append((job, site, len(inputs)))
            sites += [site] * len(inputs)
            tensors += inputs
        if not rows:
            return
        outputs = self._outputs(sites, tensors)
        start = 0
        for job, site, n in rows:
            mine, start = outputs[start:start + n], start + n
            failed = next((o for o in mine if isinstance(o, BaseException)), None)
            try:
                if failed is not None:
                    raise failed
                job.future.set_result(self._prediction(job, site, mine))
            except BaseException as exc:
                job.future.set_exception(exc)
        self.batches += 1
        log.info("batch of %d images, %d requests, %d sites in %.1f ms", len(sites), len(rows),
                 len(names), 1000 * (time.perf_counter() - started))
