"""``tpp serve --engine ray``: the same HTTP service on Ray Serve, site adapters multiplexed across replicas.

Two deployments in one Ray Serve application (``tpp``):

- ``TppIngress`` (one replica, no model): the very app of :func:`tpp.serve.server.create_app` (same routes,
  validation, token, body and pixel limits, logging), built over :class:`~tpp.serve.ray_ingress.RayWorker`
  instead of the in-process inference worker. Per request it reads the store's current pointer of the site and
  sends the decoded images (uint8 arrays) to ``TppSites`` with the multiplexed model id ``site@version``.
- ``TppSites`` (``--replicas N``): each replica holds one backbone in an :class:`~tpp.serve.bank.AdapterBank`
  behind its own :class:`~tpp.serve.worker.InferenceWorker` (mixed-site micro-batches where the method allows
  it). A site is loaded through ``@serve.multiplexed(max_num_models_per_replica=--max-resident)``, so Ray routes a
  site's requests to a replica that holds it already. ``serve.batch`` is not used: it never mixes ids.
  A stored context set (``POST /v1/contexts/{site}/predict``) is multiplexed the same way under the id
  ``context:site@version`` (:class:`LoadedContext`: verified once, its examples' features prepared once per
  method and k); inline context sets travel with their request and run on any replica, holding nothing.
  Learned in-context models (``--incontext-model``) are checked once by the driver (:func:`application`, before
  Ray starts) and loaded by every replica, which refuses weights whose sha256 differs from the driver's.

A request is computed by one batch of one replica's inference thread, so never with two versions. A newly
published version is served by every replica from the first request whose pointer read at the ingress comes
after the publish: its id ``site@new`` is not loaded anywhere, and loading it replaces the replica's old version
(the answer's ``version`` always names the version that computed it). ``POST .../reload`` loads it on one replica
at once and reports (version last answered, new version).
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections import OrderedDict

import ray
from ray import serve

from tpp.errors import TppError
from tpp.serve import store as adapter_store
from tpp.serve.images import DEFAULT_LIMITS, PixelLimits
from tpp.serve.ray_ingress import CONTEXT, RayWorker, error_of, split_model_id
from tpp.serve.server import check_binding, create_app, resident_and_refused

log = logging.getLogger("tpp.serve")
APP = "tpp"


class Loaded:
    """What ``serve.multiplexed`` holds per id: a site at a version, resident in the replica's bank. Unloading
    it (Ray's LRU) evicts the site from the bank unless a newer version of it replaced this one there."""

    def __init__(self, worker, site: str, version: str):
        self.worker, self.site, self.version, self.live = worker, site, version, True

    def __del__(self):
        if not self.live:  # Ray calls it once on unload; the garbage collector again later
            return
        self.live = False
        site, version = self.site, self.version

        def evict(bank):
            if site in bank.resident and bank.resident[site].version == version:
                bank.evict(site)
        try:
            self.worker.call(evict)
        except RuntimeError:  # the worker has stopped (replica shutting down)
            pass


class LoadedContext:
    """What ``serve.multiplexed`` holds per ``context:site@version``: the verified set and its prepared features
    (:class:`~tpp.incontext.predict.Prepared`, K examples' features) per (method, k), a few at most."""

    PREPARED = 4

    def __init__(self, cv):
        self.cv, self.prepared = cv, OrderedDict()

    @property
    def version(self) -> str:
        return self.cv.version

    def predict(self, bank, method: str, k: int | None, arrays: list) -> dict:
        """On the replica's inference thread: the answer's plain data (:func:`tpp.serve.context.answered`)."""
        from tpp.serve.context import answered, prepare_set
        from tpp.serve.incontext_models import cache_key

        key = (method, k, cache_key(bank) if method == "learned" else ())
        if key not in self.prepared:
            self.prepared[key] = prepare_set(bank, self.cv.ctx, method, k, self.cv.version)
            while len(self.prepared) > self.PREPARED:
                self.prepared.popitem(last=False)
        self.prepared.move_to_end(key)
        return answered(self.prepared[key], arrays)


def site_deployment(max_resident: int):
    """The ``TppSites`` deployment class, its multiplexed LRU as large as the bank's."""

    @serve.deployment(name="TppSites", ray_actor_options={"num_cpus": 0})
    class TppSites:
        def __init__(self, backbone: str, store_path: str, max_batch: int, max_wait_ms: float, device: str,
                     precision: str, threads: int | None, max_context: int = 256, limits: PixelLimits = DEFAULT_LIMITS,
                     incontext_models: dict[str, str] | None = None):
            """``incontext_models``: {model folder: sha256 of its weights as the driver checked them}."""
            import torch

            from tpp.serve import contexts
            from tpp.serve.bank import AdapterBank
            from tpp.serve.incontext_models import load_models
            from tpp.serve.worker import InferenceWorker

            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
            if threads:
                torch.set_num_threads(threads)
            self.bank = AdapterBank(backbone, store_path, max_resident, device=device, precision=precision)
            self.bank.incontext_models = load_models(list(incontext_models or {}), self.bank.info.hash,
                                                     self.bank.info.hidden_size, self.bank.device, incontext_models)
            self.worker = InferenceWorker(self.bank, max_batch, max_wait_ms)
            self.replica = serve.get_replica_context().replica_id.unique_id
            self.hits = self.misses = 0
            self.store, self.max_context, self.limits = store_path, max_context, limits
            self.context_loads = self.context_hits = 0
            self.refusals = contexts.Refusals()  # refused context-set versions, not read again

        def info(self) -> dict:
            return {"id": self.bank.info.id, "hash": self.bank.info.hash}

        @serve.multiplexed(max_num_models_per_replica=max_resident)
        async def site(self, mid: str) -> Loaded | LoadedContext:
            """Load ``site@version``: the bank's reload serves the store's current version (between batches); or
            ``context:site@version``: the store's current context set of ``site``, verified."""
            name, version = split_model_id(mid)
            if mid.startswith(CONTEXT):
                return await self._context(name, version)
            _, loaded = await asyncio.wrap_future(self.worker.reload(name))
            if loaded != version:
                log.info("site %s: asked for %s, the store's current version is %s", name, version, loaded)
            return Loaded(self.worker, name, loaded)

        async def _context(self, name: str, version: str) -> LoadedContext:
            cv = await asyncio.to_thread(self.refusals.open, self.store, name, self.max_context, self.limits,
                                         self.bank.info.hash)  # files read and checked off the event loop
            self.context_loads += 1
            if cv.version != version:
                log.info("context %s: asked for %s, the store's current version is %s", name, version, cv.version)
            return LoadedContext(cv)

        async def _state(self) -> dict:
            resident, refused = await asyncio.wrap_future(self.worker.call(resident_and_refused))
            return {"id": self.replica, "pid": os.getpid(), "resident": resident, "refused": refused,
                    "loads": self.bank.loads, "hits": self.hits, "misses": self.misses,
                    "context_loads": self.context_loads, "context_hits": self.context_hits}

        async def predict(self, site: str, arrays: list) -> dict:
            """``arrays``: uint8 images (H, W) or (H, W, 3) of one request; its answer rows, or its error."""
            loads, mid = self.bank.loads, serve.get_multiplexed_model_id()
            try:
                await self.site(mid)
                hit = self.bank.loads == loads
                self.hits, self.misses = self.hits + hit, self.misses + (not hit)
                result = await asyncio.wrap_future(self.worker.predict(site, arrays))
                if result.version != split_model_id(mid)[1]:
                    # Ray's cache still held this id while the bank moved on (a rollback to an earlier version
                    # re-uses its id): load the store's current version and answer with it
                    await asyncio.wrap_future(self.worker.reload(site))
                    result = await asyncio.wrap_future(self.worker.predict(site, arrays))
                out = {"version": result.version, "rows": result.entries(), "hit": hit}
            except Exception as exc:
                out = error_of(exc)
            return dict(out, replica=await self._state())

        async def predict_context(self, site: str, method: str, k: int | None, arrays: list) -> dict:
            """A stored context set (id ``context:site@version``) for uint8 ``arrays`` (H, W) or (H, W, 3): the
            answer's plain data, or its error."""
            loads = self.context_loads
            try:
                loaded = await self.site(serve.get_multiplexed_model_id())
                self.context_hits += self.context_loads == loads
                out = {"result": await asyncio.wrap_future(
                    self.worker.call(lambda bank: loaded.predict(bank, method, k, arrays)))}
            except Exception as exc:
                out = error_of(exc)
            return dict(out, replica=await self._state())

        async def reload(self, site: str) -> dict:
            try:
                loaded = await self.site(serve.get_multiplexed_model_id())
                out = {"new": loaded.version}
            except Exception as exc:
                out = error_of(exc)
            return dict(out, replica=await self._state())

        async def call(self, fn) -> dict:
            """``fn(bank)`` on the inference thread (an inline context set: any replica, nothing kept); its result, or
            its error."""
            try:
                out = {"result": await asyncio.wrap_future(self.worker.call(fn))}
            except Exception as exc:
                out = error_of(exc)
            return dict(out, replica=await self._state())

        def __del__(self):
            self.worker.stop()

    return TppSites


@serve.deployment(name="TppIngress", ray_actor_options={"num_cpus": 0})
@serve.ingress()
class TppIngress:
    async def __init__(self, sites, store_path: str, token: str | None, max_upload_bytes: int,
                       limits: PixelLimits, body_timeout_s: float, max_context: int, learned_models: list = ()):
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.worker = RayWorker(sites, store_path, await sites.info.remote())
        self.asgi = create_app(self.worker, store_path, token, max_upload_bytes, limits=limits,
                              body_timeout_s=body_timeout_s, max_context=max_context, learned_models=learned_models)

    def __serve_build_asgi_app__(self):
        return self.asgi

    def stats(self) -> dict:
        """Per replica: resident sites, loads, hits and misses as of its last answer (tests, benchmarks)."""
        return self.worker.stats()


def application(backbone: str, store_path: str, *, replicas: int = 1, token: str | None = None,
                max_resident: int = 16, max_batch: int = 64, max_wait_ms: float = 5.0,
                max_upload_bytes: int = 10 * 2**20, limits: PixelLimits = DEFAULT_LIMITS, body_timeout_s: float = 30.0,
                device: str = "cpu", precision: str = "fp32", max_context: int = 256, threads: int | None = None,
                incontext_models: list[str] | None = None):
    """The bound Ray Serve application (ingress over ``replicas`` site replicas). ``incontext_models``: learned
    in-context model folders, checked here against the backbone before Ray starts anything."""
    if replicas < 1 or max_resident < 1:
        raise TppError(f"--replicas and --max-resident must be at least 1, got {replicas} and {max_resident}.")
    adapter_store.sites(store_path)  # a missing store: one clear error before Ray starts anything
    checked, described = checked_models(backbone, incontext_models)
    sites = site_deployment(max_resident).options(num_replicas=replicas).bind(
        backbone, str(store_path), max_batch, max_wait_ms, device, precision, threads, max_context, limits, checked)
    return TppIngress.bind(sites, str(store_path), token, max_upload_bytes, limits, body_timeout_s, max_context,
                           described)


def checked_models(backbone: str, paths: list[str] | None) -> tuple[dict[str, str], list[dict]]:
    """({absolute folder: weights sha256}, description) of the ``--incontext-model`` folders, each loaded on the CPU
    and checked against ``backbone`` as the default engine checks them (a refusal: one TppError, Ray not started)."""
    if not paths:
        return {}, []
    from pathlib import Path

    from tpp.backbones import load_backbone
    from tpp.serve.incontext_models import describe, load_models

    info = load_backbone(backbone)[1]
    folders = [str(Path(p).resolve()) for p in paths]  # replicas may run in another working directory
    models = load_models(folders, info.hash, info.hidden_size)
    return {m.path: m.weights_hash for m in models.values()}, describe(models)


def start(host: str = "127.0.0.1", port: int = 8000, address: str | None = None) -> None:
    """Start (``address`` None: a local Ray on 127.0.0.1, no dashboard, no usage stats) or join Ray, and Serve's
    HTTP proxy on ``host:port``."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # read by ray.init and inherited by every Ray process it starts
    if address:
        try:
            ray.init(address=address, logging_level=logging.WARNING)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise TppError(f"cannot join the Ray cluster at --address {address} ({type(exc).__name__}: "
                           f"{str(exc)[:200]}); check that it runs and is reachable, or leave --address out for a "
                           "local Ray.") from None
    else:  # Ray replaces 127.0.0.1 by the machine's address unless told that this is no cluster: this process
        # read the flag when it imported ray, the processes ray.init starts read it from the environment
        from ray._private import ray_constants

        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        ray_constants.ENABLE_RAY_CLUSTER = False
        ray.init(include_dashboard=False, _node_ip_address="127.0.0.1", logging_level=logging.WARNING)
    serve.start(http_options={"host": host, "port": port, "location": "HeadOnly"})


def stop(own_cluster: bool = True) -> None:
    """Tear the application down: with ``own_cluster`` (a local Ray started by :func:`start`) Serve and Ray too;
    on a cluster given by ``--address`` only the ``tpp`` application, then disconnect."""
    try:
        serve.shutdown() if own_cluster else serve.delete(APP)
    finally:
        ray.shutdown()


def interrupt(*_) -> None:
    raise KeyboardInterrupt


def serve_ray(backbone: str, store_path: str, host: str = "127.0.0.1", port: int = 8000, *, replicas: int = 1,
              address: str | None = None, token: str | None = None, insecure: bool = False, **options) -> None:
    """``tpp serve --engine ray``: run the application until Ctrl-C / SIGTERM, then stop Ray."""
    check_binding(host, token, insecure)
    if address and token is None and not insecure:  # a running cluster's Serve keeps its own proxy settings
        raise TppError("--address joins a Ray cluster whose HTTP proxies may already listen beyond this machine "
                       "(tpp cannot choose their host there): set a bearer token (env TPP_SERVE_TOKEN or "
                       "--token-file FILE), or pass --insecure to accept the risk.")
    app = application(backbone, store_path, replicas=replicas, token=token, **options)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    start(host, port, address)
    if address and APP in serve.status().applications:  # never replace (and on exit delete) another's
        ray.shutdown()
        raise TppError(f"the Ray cluster at --address {address} already runs a '{APP}' application (another "
                       "tpp serve); stop it first, or serve this store from a separate cluster.")
    try:  # after ray.init, which installs its own handlers: Ctrl-C and SIGTERM shut Serve and Ray down
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, interrupt)
        serve.run(app, name=APP, route_prefix="/")
        log.info("ray engine: %d replicas of backbone %s, store %s, up to %d resident sites each, on http://%s:%d "
                 "(ready in %.0f s)", replicas, backbone, store_path, options.get("max_resident", 16), host, port,
                 time.perf_counter() - started)
        while True:
            time.sleep(3600)
    finally:
        stop(own_cluster=address is None)
