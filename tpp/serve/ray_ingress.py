"""The ingress side of ``tpp serve --engine ray`` (:mod:`tpp.serve.ray_engine`): :class:`RayWorker` stands in
for the inference worker under :func:`tpp.serve.server.create_app` and sends each request to a ``TppSites``
replica with the multiplexed model id ``site@version``; a stored context set's requests
carry ``context:site@version`` (:mod:`tpp.serve.context`); replicas answer plain data (rows, or an error's kind
and message), never a pickled exception."""
from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Future
from dataclasses import dataclass
from types import SimpleNamespace

import ray
from fastapi import HTTPException

from tpp.errors import TppError, UnsupportedRequest
from tpp.serve import contexts
from tpp.serve import store as adapter_store
from tpp.serve.bank import SiteRefused
from tpp.serve.images import ImageError, ImageTooLarge
from tpp.serve.incontext_models import NoLearnedModel
from tpp.serve.server import residency

log = logging.getLogger("tpp.serve")
# errors a replica answers with, rebuilt at the ingress so that create_app maps them to the same status codes
ERRORS = {"UnknownSite": TppError, "UnknownContext": TppError, "SiteRefused": SiteRefused,
          "ImageTooLarge": ImageTooLarge, "ImageError": ImageError, "NoLearnedModel": NoLearnedModel,
          "UnsupportedRequest": UnsupportedRequest, "TppError": TppError}


CONTEXT = "context:"  # the id prefix of a stored context set (":" is never part of a site name)


def model_id(site: str, version: str) -> str:
    return f"{site}@{version}"


def context_id(site: str, version: str) -> str:
    return f"{CONTEXT}{site}@{version}"


def split_model_id(mid: str) -> tuple[str, str]:
    """``site@version`` or ``context:site@version`` -> (site, version)."""
    site, _, version = mid.removeprefix(CONTEXT).rpartition("@")
    return site, version


def error_of(exc: BaseException) -> dict:
    """A replica's error as plain data (never a pickled exception, never a traceback in an answer)."""
    kind = next((k for k in ERRORS if type(exc).__name__ == k), None)
    if kind is None:
        kind = "TppError" if isinstance(exc, TppError) else "Internal"
    return {"error": kind, "message": str(exc) if kind != "Internal" else f"{type(exc).__name__}: {str(exc)[:200]}"}


def raise_error(out: dict, site: str | None = None) -> None:
    """A replica's error (:func:`error_of`) raised again at the ingress; ``site``: the one asked for, so that a site or
    context set gone meanwhile is the same 404 as one never published."""
    if out["error"] == "UnknownSite" and site is not None:
        raise adapter_store.UnknownSite(site)
    if out["error"] == "UnknownContext" and site is not None:
        raise contexts.UnknownContext(site)
    if out["error"] == "Internal":
        raise HTTPException(500, f"a replica failed: {out['message']}")
    raise ERRORS[out["error"]](out["message"])


@dataclass
class Answer:
    """A replica's prediction as :func:`create_app` reads it (``version``, ``entries()``)."""
    version: str
    rows: list

    def entries(self) -> list[dict]:
        return self.rows


class RayWorker:
    """Stands in for :class:`~tpp.serve.worker.InferenceWorker` at the ingress: ``predict``, ``reload`` and
    ``call`` go to a ``TppSites`` replica; their futures are asyncio tasks on the ingress's event loop."""

    def __init__(self, handle, store_path: str, info: dict):
        self.handle, self.store = handle, store_path
        self.bank = SimpleNamespace(info=SimpleNamespace(**info))
        self.replicas: dict[str, dict] = {}  # replica id -> its state as of its last answer
        self.answered: dict[str, str] = {}  # site -> version of the last answer
        self.failures = 0  # requests whose replica died or could not be reached

    alive = True  # /healthz: Ray Serve restarts a replica that dies; the ingress itself answers or is gone
    takes_version = True  # create_app hands predict / reload the pointer's version it read (tpp.serve.server.submit)

    def predict(self, site: str, arrays: list, version: str | None = None) -> asyncio.Task:
        """``version``: the site's pointer as the request read it (None: read it here); it names the multiplexed id."""
        return asyncio.ensure_future(self._predict(site, arrays, version))

    def reload(self, site: str, version: str | None = None) -> asyncio.Task:
        return asyncio.ensure_future(self._reload(site, version))

    def predict_context(self, site: str, method: str, k: int | None, arrays: list,
                        version: str | None = None) -> asyncio.Task:
        """The stored context set of ``site`` (``POST /v1/contexts/{site}/predict``) on a replica that holds it
        prepared: the answer's plain data (:func:`tpp.serve.context.answered`). ``version``: the set's pointer as the
        request read it (None: read it here)."""
        return asyncio.ensure_future(self._predict_context(site, method, k, arrays, version))

    def call(self, fn) -> Future | asyncio.Task:
        if fn is residency:  # GET /v1/sites: every replica's bank as of its last answer
            done: Future = Future()
            done.set_result(self.residency())
            return done
        return asyncio.ensure_future(self._call(fn))

    def residency(self) -> tuple[dict, dict, dict]:
        """As :func:`tpp.serve.server.residency`; a site no replica holds follows the store's pointer at its next
        request (nothing is pinned on this engine), so the versions serving are the resident ones."""
        resident, refused = {}, {}
        for state in self.replicas.values():
            resident.update(state["resident"])
            refused.update(state["refused"])
        return resident, refused, dict(resident)

    def stats(self) -> dict:
        return {"replicas": dict(self.replicas), "failures": self.failures}

    async def _remote(self, method: str, mid: str | None, *args) -> dict:
        handle = self.handle if mid is None else self.handle.options(multiplexed_model_id=mid)
        try:
            out = await getattr(handle, method).remote(*args)
        except ray.exceptions.RayError as exc:  # e.g. the replica died: this request fails, nothing else
            self.failures += 1
            log.warning("replica call failed: %s", type(exc).__name__)
            raise HTTPException(503, f"the replica serving this request failed ({type(exc).__name__}); "
                                     "retry: Ray replaces it") from None
        self.replicas[out["replica"]["id"]] = out["replica"]
        return out

    async def _current(self, site: str) -> str:
        """The version the store's pointer names, read in a thread (per request: a publish or rollback is noticed at
        the next one), not on the ingress's event loop."""
        version = await asyncio.to_thread(adapter_store.current_version, self.store, site)
        if version is None:
            raise adapter_store.UnknownSite(site)
        return version

    async def _predict(self, site: str, arrays: list, version: str | None = None) -> Answer:
        out = await self._remote("predict", model_id(site, version or await self._current(site)), site, arrays)
        if "error" in out:
            raise_error(out, site)
        self.answered[site] = out["version"]
        return Answer(out["version"], out["rows"])

    async def _reload(self, site: str, version: str | None = None) -> tuple[str | None, str]:
        out = await self._remote("reload", model_id(site, version or await self._current(site)), site)
        if "error" in out:
            raise_error(out, site)
        old, self.answered[site] = self.answered.get(site), out["new"]
        return old, out["new"]

    async def _predict_context(self, site: str, method: str, k: int | None, arrays: list,
                               version: str | None = None) -> dict:
        if version is None:
            version = await asyncio.to_thread(contexts.current_version, self.store, site)  # off the event loop
        if version is None:
            raise contexts.UnknownContext(site)
        out = await self._remote("predict_context", context_id(site, version), site, method, k, arrays)
        if "error" in out:
            raise_error(out, site)
        return out["result"]

    async def _call(self, fn):
        out = await self._remote("call", None, fn)
        if "error" in out:
            raise_error(out)
        return out["result"]
