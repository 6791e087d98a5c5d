"""``tpp serve``: an HTTP service over one backbone and an adapter store (FastAPI + uvicorn).

Endpoints: ``GET /healthz``, ``GET /v1/sites``, ``POST /v1/sites/{site}/predict`` (multipart field
``images``, one or several files), ``POST /v1/sites/{site}/reload``; in-context prediction (:mod:`tpp.serve.context`):
``GET /v1/contexts``, ``POST /v1/contexts/{site}/predict``, ``POST /v1/incontext/predict``. Requests are answered by one
inference worker (:mod:`tpp.serve.worker`) that micro-batches across requests and sites. Learned in-context
models (``--incontext-model``, :mod:`tpp.serve.incontext_models`) are loaded and checked before it listens.

Safety: binds to 127.0.0.1 by default; any other address needs a bearer token (env
``TPP_SERVE_TOKEN`` or ``--token-file``; also guards ``/openapi.json``) or an explicit ``--insecure``.
Bodies above the upload limit get 413 before any parsing, bodies not complete within the body timeout
408; images over the pixel budget (per image, per request) 413 from their headers, before any is
decoded. A site that fails to load or predict gets 409 for its own requests only, as does a store that cannot be
read (a folder that cannot be listed, a file over its size cap); a site or context set that is not published, or
is withdrawn while a request reads it, 404. Logs hold site
names, counts, versions and timings: never image bytes, file names or DICOM header fields.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging

import torch
from fastapi import Depends, FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import JSONResponse

from tpp.devices import describe
from tpp.serve import contexts
from tpp.serve import store as adapter_store
from tpp.errors import TppError, UnsupportedRequest
from tpp.serve.images import DEFAULT_LIMITS, ImageError, ImageTooLarge, PixelLimits, check_request, decode, parse_window
from tpp.serve.bank import NonFiniteOutputs
from tpp.serve.reading import StoredReadings, with_card_reading
from tpp.serve.worker import InferenceWorker

log = logging.getLogger("tpp.serve")
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class BodyLimit:
    """ASGI middleware: read the whole request body before the app sees it, at most ``limit`` bytes within
    ``timeout_s`` seconds; else 413 / 408 and the connection is closed (nothing parsed)."""

    def __init__(self, app, limit: int, timeout_s: float = 30.0):
        self.app, self.limit, self.timeout_s = app, limit, timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await self._too_large(send)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        chunks, size, more = [], 0, True
        while more:
            try:  # a slow (or stalled) body cannot hold a connection open past the deadline
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.0))
            except asyncio.TimeoutError:
                return await refuse(send, 408, f"request body not complete within {self.timeout_s:g} s "
                                               "(the service's --body-timeout)")
            if message["type"] != "http.request":
                return  # client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return await self._too_large(send)
            more = message.get("more_body", False)
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)

    async def _too_large(self, send):
        await refuse(send, 413, f"request body larger than the upload limit of {self.limit} bytes")


async def refuse(send, status: int, detail: str) -> None:
    """Answer ``status`` with a JSON ``detail`` and close the connection (the rest of the body is not read)."""
    text = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(text)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": text})


class PixelsInFlight:
    """Decoded pixels that all requests together may hold at once (``capacity``, one largest request's
    worth): a request waits for its share, so memory stays bounded however many arrive together."""

    def __init__(self, capacity: int):
        self.capacity, self.used = capacity, 0
        self._changed: asyncio.Condition | None = None  # made on the server's event loop

    @contextlib.asynccontextmanager
    async def hold(self, pixels: int, timeout_s: float):
        """Hold ``pixels`` (at most ``capacity``) for the block; 503 if no share frees up within ``timeout_s``."""
        self._changed = self._changed or asyncio.Condition()
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: self.used + pixels <= self.capacity), timeout_s)
            except asyncio.TimeoutError:
                raise HTTPException(503, f"no capacity to decode the images within {timeout_s:g} s; the service is "
                                         "overloaded") from None
            self.used += pixels
        try:
            yield
        finally:
            async with self._changed:
                self.used -= pixels
                self._changed.notify_all()


def residency(bank) -> tuple[dict[str, str], dict[str, tuple[str, str]], dict[str, str]]:
    """({site: resident version}, {site: (refused version, reason)}, {site: the version that answers it: resident,
    or the one an unloaded site comes back at (:meth:`~tpp.serve.bank.AdapterBank.serving`)}) of a bank, on its
    inference thread (the Ray engine answers it for all replicas together: :mod:`tpp.serve.ray_engine`)."""
    return (*resident_and_refused(bank), bank.serving())


def resident_and_refused(bank) -> tuple[dict[str, str], dict[str, tuple[str, str]]]:
    """The first two parts of :func:`residency`, without asking the store which version each unloaded site comes back
    at: what a Ray replica reports with every answer, on its inference thread."""
    return {name: s.version for name, s in bank.resident.items()}, dict(bank.refused)


def http_error(exc: TppError) -> HTTPException:
    """The answer to a :class:`TppError` of a request: 404 for a site or context set that is not published (or went
    away while the request read it), 400 for a request the images or the method cannot answer, 422 for non-finite
    outputs of this input, else 409: a refusal of what the store holds (a card for another backbone, a damaged
    version, a folder that cannot be listed, a file over its size cap), never a 500."""
    if isinstance(exc, adapter_store.UnknownSite):
        return HTTPException(404, f"{exc} GET /v1/sites lists the served sites.")
    if isinstance(exc, contexts.UnknownContext):  # the sentence of the route's own 404
        return HTTPException(404, f"no context set is published as '{exc.site}'; GET /v1/contexts lists them.")
    if isinstance(exc, (ImageError, UnsupportedRequest)):  # incl. NoLearnedModel
        return HTTPException(400, str(exc))
    if isinstance(exc, NonFiniteOutputs):  # this request's input: the site stays served
        return HTTPException(422, str(exc))
    log.warning("refused: %s", exc)
    return HTTPException(409, str(exc))


def submit(worker, job: str, site: str, *args, version: str):
    """``worker.predict`` / ``worker.reload`` (``job``) of ``site``; a worker that routes by the pointer's version
    (``takes_version``: the Ray ingress) is handed ``version``, the one this request read, so that the pointer is read
    once per request."""
    call = getattr(worker, job)
    return call(site, *args, version=version) if getattr(worker, "takes_version", False) else call(site, *args)


def create_app(worker: InferenceWorker, store_path: str, token: str | None = None,
               max_upload_bytes: int = 10 * 2**20, request_timeout_s: float = 120.0, *,
               limits: PixelLimits = DEFAULT_LIMITS, body_timeout_s: float = 30.0, max_context: int = 256,
               learned_models: list[dict] = ()):
    """The ASGI application (FastAPI wrapped in the body size and time limits); ``limits``: the pixel
    budget per image and per request (413 from the headers, before anything is decoded); ``max_context``:
    the most examples of a context set (stored or inline) for in-context prediction; ``learned_models``: the
    description of the learned in-context models the bank holds (:func:`tpp.serve.incontext_models.attach`)."""
    bank = worker.bank
    in_flight = PixelsInFlight(limits.max_request_pixels)
    readings = StoredReadings(store_path)  # how each version's inputs are decoded: its card's data.reading
    app = FastAPI(title="tpp", summary="one backbone, many site adapters", docs_url=None, redoc_url=None,
                  openapi_url=None)  # served below, behind the token

    def authorised(request: Request) -> None:
        """The bearer token, when one is set: scheme case-insensitive (RFC 7235), token compared in constant time."""
        if token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        matches = hmac.compare_digest(given.strip().encode("latin-1"), token.encode())
        if scheme.lower() != "bearer" or not matches:
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    def site_name(site: str) -> str:
        try:
            return adapter_store.check_site(site)
        except TppError as exc:
            raise HTTPException(400, str(exc)) from None

    async def require_published(site: str) -> str:
        """The current version of ``site``; 404 unless it has a published adapter. The pointer is read at every
        request (a publish or a rollback on disk is noticed at once), in a thread: on the event loop a slow disk
        held up every request."""
        version = await asyncio.to_thread(adapter_store.current_version, store_path, site)
        if version is None:
            raise HTTPException(404, f"site '{site}' has no published adapter; GET /v1/sites lists the served sites.")
        return version

    async def trained_reading(site: str, version: str | None = None, published: str | None = None
                              ) -> tuple[str, dict]:
        """(version, decode keywords) of the version that will answer ``site`` (or of ``version``): a resident
        site's own verified card, else the card of the version it will load (the one it served before, else the
        store's current: ``published``, the pointer as this request read it), read in a thread. That version is
        checked whole when it loads (a changed or unreadable card, or a forged reading entry, is refused there,
        before any answer), so a card not read here reads the request with its own options alone; the worker's
        verdict on that version follows."""
        resident = getattr(bank, "resident", {}).get(site)  # a Ray ingress holds no bank: always from the store
        if resident is not None and version in (None, resident.version):
            return resident.version, resident.reading
        version = version or getattr(bank, "pinned", {}).get(site) or published or await require_published(site)
        try:
            return version, await asyncio.to_thread(readings.get, site, version)
        except TppError as exc:
            log.warning("site '%s' version %s: its card was not read for its input options (%s)", site, version, exc)
            return version, {}

    async def outcome(future):
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), request_timeout_s)
        except asyncio.TimeoutError:
            raise HTTPException(503, f"no answer within {request_timeout_s:g} s; the service is overloaded") from None
        except TppError as exc:  # e.g. a card for another backbone: refused, never served
            raise http_error(exc) from None

    @app.exception_handler(TppError)
    async def refused(request: Request, exc: TppError):
        """A TppError raised outside :func:`outcome` (e.g. listing a store whose folder cannot be listed)."""
        error = http_error(exc)
        return JSONResponse({"detail": error.detail}, status_code=error.status_code)

    @app.get("/healthz")
    def healthz():
        if not worker.alive:  # nothing would be answered: a load balancer should take this instance out
            return JSONResponse({"status": "the inference worker has stopped"}, status_code=503)
        return {"status": "ok"}

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(authorised)])
    def openapi():
        return app.openapi()

    @app.get("/v1/sites", dependencies=[Depends(authorised)])
    async def list_sites():
        # every site's card is read: in a thread, as the other endpoints do their file work, not on the event loop
        rows = await asyncio.to_thread(adapter_store.listing, store_path, bank.info.hash)
        resident, refused, serving = await outcome(worker.call(residency))
        for row in rows:
            # the version that answers it until reload: in memory, or the one it comes back at after an unload
            row["serving"] = serving.get(row["site"])  # None: not loaded yet, its next request loads `version`
            row["resident"] = resident.get(row["site"]) == row["version"]  # the published version is in memory
            failed = refused.get(row["site"])  # (version, reason): refused until another version is published
            row["healthy"] = not (failed and failed[0] == row["version"]) and row["backbone_match"] == "yes"
            row["refused_because"] = failed[1] if failed and failed[0] == row["version"] else None
        return {"backbone": {"id": bank.info.id, "hash": bank.info.hash}, "sites": rows,
                "incontext_models": list(learned_models)}

    @app.post("/v1/sites/{site}/predict", dependencies=[Depends(authorised)])
    async def predict(site: str, images: list[UploadFile] = File(...), frame: int | None = None,
                      slice_spec: str | None = Query(None, alias="slice"), window: str | None = None):
        site = site_name(site)
        published = await require_published(site)  # the pointer, read once for this request
        try:
            given = {"frame": frame, "slice_spec": slice_spec, "window": parse_window(window)}
            files = [(await upload.read(), upload.filename or "upload") for upload in images]
            # all headers first: over budget, nothing decoded
            pixels = await asyncio.to_thread(check_request, files, limits)
        except ImageTooLarge as exc:
            raise HTTPException(413, str(exc)) from None
        except ImageError as exc:
            raise HTTPException(400, str(exc)) from None
        async with in_flight.hold(pixels, request_timeout_s):  # decoded images of all requests stay bounded
            version, trained = await trained_reading(site, published=published)
            for _ in range(2):  # again if another version than expected answered and reads inputs otherwise
                options, notes = with_card_reading(trained, given)
                arrays = await decode_all(files, options)
                result = await outcome(submit(worker, "predict", site, arrays, version=version))
                del arrays
                if result.version == version:
                    break
                version, answered = await trained_reading(site, result.version)
                if answered == trained:
                    break
                trained = answered
            else:  # the site changed version again meanwhile (two reloads racing this request): say so
                notes.append(f"the site changed version while this request was read; version {result.version} "
                             "may read these images otherwise than it was trained to: send them again")
        # the task's entry per image: label + probabilities, a run-length mask + pixel counts ...
        predictions = [{"file": up.filename, **entry} for up, entry in zip(images, result.entries())]
        answer = {"site": site, "version": result.version, "adapter_id": f"{site}@{result.version}",
                  "backbone_hash": bank.info.hash, "predictions": predictions}
        return answer | ({"warnings": notes} if notes else {})

    async def decode_all(files: list[tuple[bytes, str]], options: dict) -> list:
        """Every upload decoded with ``options`` (frame, slice_spec, window), each in a thread: a large DICOM must
        not stall the loop. 413 / 400 for an image over budget / one that cannot be read."""
        arrays = []
        try:
            for data, name in files:
                arrays.append(await asyncio.to_thread(decode, data, name, limits=limits, **options))
        except ImageTooLarge as exc:
            raise HTTPException(413, str(exc)) from None
        except ImageError as exc:
            raise HTTPException(400, str(exc)) from None
        return arrays

    @app.post("/v1/sites/{site}/reload", dependencies=[Depends(authorised)])
    async def reload(site: str):
        site = site_name(site)
        published = await require_published(site)
        old, new = await outcome(submit(worker, "reload", site, version=published))
        log.info("site %s: version %s -> %s", site, old, new)
        return {"site": site, "old_version": old, "new_version": new}

    from tpp.serve.context import add_context_routes

    add_context_routes(app, worker, store_path, authorised, site_name, outcome, in_flight, limits, max_context,
                       request_timeout_s, learned_models)
    return BodyLimit(app, max_upload_bytes, body_timeout_s)


def check_binding(host: str, token: str | None, insecure: bool) -> None:
    """Refuse to listen beyond loopback without a token unless ``insecure`` says so."""
    if host not in LOOPBACK and token is None and not insecure:
        raise TppError(f"binding to {host} exposes the service beyond this machine: set a bearer token "
                       "(env TPP_SERVE_TOKEN or --token-file FILE), or pass --insecure to accept the risk.")


def serve(backbone: str, store_path: str, host: str = "127.0.0.1", port: int = 8000, *, token: str | None = None,
          insecure: bool = False, max_resident: int = 16, max_batch: int = 64, max_wait_ms: float = 5.0,
          max_upload_bytes: int = 10 * 2**20, limits: PixelLimits = DEFAULT_LIMITS,
          body_timeout_s: float = 30.0, device: str = "auto", precision: str = "fp32", max_context: int = 256,
          incontext_models: list[str] | None = None, loader_threads: int = 2) -> None:
    """Load the backbone on ``device`` (``precision``: fp32, or bf16 / fp16 under autocast) and the learned
    in-context models (``incontext_models``: folders, checked), check the store, serve until Ctrl-C / SIGTERM
    (uvicorn's handlers). ``loader_threads``: threads reading sites' files (:class:`InferenceWorker`)."""
    import uvicorn

    from tpp.serve.bank import AdapterBank
    from tpp.serve.incontext_models import attach

    check_binding(host, token, insecure)
    bank = AdapterBank(backbone, store_path, max_resident, device=device, precision=precision)
    learned_models = attach(bank, incontext_models)  # a refused folder: one error, before anything listens
    for problem in adapter_store.check(store_path, bank.info.hash):
        log.warning("will refuse %s", problem)
    worker = InferenceWorker(bank, max_batch, max_wait_ms, loader_threads)
    app = create_app(worker, store_path, token, max_upload_bytes, limits=limits, body_timeout_s=body_timeout_s,
                     max_context=max_context, learned_models=learned_models)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.info("backbone %s (hash %s), store %s, up to %d resident sites, %d loader threads, %d torch threads, "
             "device %s, precision %s", bank.info.id, bank.info.hash[:12], store_path, max_resident, loader_threads,
             torch.get_num_threads(), describe(bank.device), bank.precision)
    for model in learned_models:
        log.info("learned in-context model: %s (weights sha256 %s, held out: %s)", model["kind"],
                 model["weights_sha256"][:12], ", ".join(model["holdout"]) or "none recorded")
    try:
        uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="info")).run()
    finally:
        worker.stop()
