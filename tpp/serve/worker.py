"""One inference thread fed by a queue: micro-batches concurrent requests, grouped by site.

Request threads decode images and call :meth:`InferenceWorker.predict`; the worker gathers queued
requests (up to ``max_batch`` images, waiting at most ``max_wait_ms`` for more), resolves each
request's site in the :class:`~tpp.serve.bank.AdapterBank`, applies that adapter's input pipeline and runs
one mixed-site batch.

A request for a site that is not resident waits aside while a loader thread reads and verifies the site's
files (:meth:`~tpp.serve.bank.AdapterBank.prepare`: disk, content hash, safetensors parsing), so the other
sites' requests are answered meanwhile; the inference thread then installs the prepared site between batches
(tensors into its modules, the backbone guard, one trial image, eviction) and runs the requests that waited.
Reloads are read by the loader thread too and swapped in on the inference thread between batches, so a request
is computed entirely with the old adapter version or entirely with the new one.
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

    def __init__(self, bank: AdapterBank, max_batch: int = 64, max_wait_ms: float = 5.0):
        self.bank = bank
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.queue: queue.Queue[_Job] = queue.Queue()
        self.batches = 0
        self._to_prepare: queue.Queue[tuple[_Job | None, str | None]] = queue.Queue()  # (job, version) to read
        self._waiting: dict[str, list[_Job]] = {}  # site -> predict jobs waiting for its files (inference thread)
        self._thread = threading.Thread(target=self._loop, name="tpp-inference", daemon=True)
        self._loader = threading.Thread(target=self._prepare_loop, name="tpp-loader", daemon=True)
        self._thread.start()
        self._loader.start()

    def predict(self, site: str, images: list[np.ndarray]) -> Future:
        return self._submit(_Job("predict", site, list(images)))

    def reload(self, site: str) -> Future:
        """The store's current version of ``site`` is read by the loader thread, then swapped in between batches."""
        return self._submit(_Job("reload", site), read_first=True)

    def call(self, fn) -> Future:
        """Run ``fn(bank)`` on the inference thread (between batches)."""
        return self._submit(_Job("call", fn=fn))

    def stop(self, timeout: float = 10.0) -> None:
        """Stop both threads and wait for them (a thread still inside a library when the process exits can abort
        it: "terminate called without an active exception")."""
        self._to_prepare.put((None, None))
        self.queue.put(_Job("stop"))
        self._thread.join(timeout)
        self._loader.join(timeout)

    def _submit(self, job: _Job, read_first: bool = False) -> Future:
        """Queue ``job`` for the inference thread; ``read_first``: for the loader thread first, which reads the
        store's current version of its site."""
        if not self._thread.is_alive():
            raise RuntimeError("the inference worker has stopped")
        if read_first:
            self._to_prepare.put((job, None))
        else:
            self.queue.put(job)
        return job.future

    def _prepare_loop(self) -> None:
        """The loader thread: read and verify a site's files (the slow part of a load, which touches no model),
        then queue the job for the inference thread, which installs them between batches."""
        while True:
            job, version = self._to_prepare.get()
            if job is None:
                return
            try:
                job.prepared = self.bank.prepare(job.site, version)
            except Exception:  # prepare keeps load errors; others (a site name not allowed) the inference thread
                job.prepared = None  # meets itself, reading the files there
            self.queue.put(job)

    def _loop(self) -> None:
        backlog: collections.deque[_Job] = collections.deque()  # jobs taken from the queue but not yet run
        while True:
            job = backlog.popleft() if backlog else self.queue.get()
            if job.kind == "stop":
                return
            if job.kind == "install":  # the jobs that waited for the site run next
                backlog.extendleft(reversed(self._install(job)))
                continue
            if job.kind != "predict":
                self._control(job)
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
        self._to_prepare.put((_Job("install", job.site), version))

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
