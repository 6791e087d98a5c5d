"""In-context prediction in ``tpp serve``: context sets served by name from the store, or sent inline.

- ``GET /v1/contexts``: the published context sets (``tpp context publish``).
- ``POST /v1/contexts/{site}/predict`` (multipart ``images``; query ``method`` = prototype | knn | learned, ``k``): the
  store's current set of ``site``, verified as :func:`tpp.serve.contexts.open_context` does (content hash,
  at most ``max_context`` examples, pixel budget per image, this backbone) before use, in a thread
  (:class:`VerifiedSets`); the verified set and its features are kept for the next request (a few sets, least
  recently used first out) until a new version is published.
- ``POST /v1/incontext/predict``: JSON ``{"context": [{"image": B64, "label": L} | {"image": B64, "mask": B64}],
  "images": [B64 | {"name": N, "data": B64}], "method": ..., "k": ...}``. The context images, masks and query
  images together obey the request's pixel budget (413 from their headers, before anything is decoded), the
  context at most ``max_context`` examples (413), and must define a task (two classes, some foreground: 400).

``method=learned`` answers with the learned in-context model of the set's kind that ``tpp serve --incontext-model``
loaded (:mod:`tpp.serve.incontext_models`; 400 naming the option when none of that kind is loaded); ``k`` does not
apply to it. ``GET /v1/contexts`` lists the methods and the loaded models (kind, sha256 of the weights, held-out
datasets); an answer of method learned names the model's weights hash.

The answers hold ``context``, ``version``, ``task``, ``k``, ``method``, ``backbone_hash`` (and ``model`` for a
learned one) and ``predictions`` entries as ``POST /v1/sites/{site}/predict`` gives them (no ``site`` or
``adapter_id``), with the numbers of ``tpp predict --context``.
Features and predictions run on the inference thread, on the bank's frozen backbone (nothing is written into it);
no file is read there.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
from collections import OrderedDict

from fastapi import Depends, File, HTTPException, Request, UploadFile

from tpp.errors import TppError
from tpp.serve import contexts, incontext_models
from tpp.incontext.context import CLASSIFICATION, SEGMENTATION, ContextSet, binary_mask, check
from tpp.serve.images import ImageError, ImageTooLarge, check_request, decode

CACHED_SETS = 8
METHODS = ("prototype", "knn", "learned")


def add_context_routes(app, worker, store_path: str, authorised, site_name, outcome, in_flight, limits,
                       max_context: int, request_timeout_s: float, learned_models: list[dict] = ()) -> None:
    """Add the three routes (module docstring) to the FastAPI ``app`` of :func:`tpp.serve.server.create_app`.
    ``learned_models``: the description of the in-context models the bank (or every Ray replica's bank) holds
    (:func:`tpp.serve.incontext_models.attach`)."""
    cache: OrderedDict = OrderedDict()  # (site, version, method, k, the learned models' hashes) -> Prepared
    refusals = contexts.Refusals()  # a refused version is not read again until the pointer moves
    sets = VerifiedSets(lambda site: refusals.open(store_path, site, max_context, limits, worker.bank.info.hash))
    loaded = {m["kind"]: m for m in learned_models}

    def stored(bank, cv: contexts.ContextVersion, method: str, k: int | None):
        """The verified set ``cv`` prepared (its examples' features computed when not cached yet); on the inference
        thread."""
        models = incontext_models.cache_key(bank) if method == "learned" else ()
        key = (cv.site, cv.version, method, k, models)
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        prepared = cache[key] = prepare_set(bank, cv.ctx, method, k, cv.version)
        while len(cache) > CACHED_SETS:
            cache.popitem(last=False)
        return prepared

    def answer(done: dict, names: list[str], site: str) -> dict:
        out = {"context": site, "version": done["version"], "task": done["task"], "k": done["k"],
               "method": done["method"], "backbone_hash": worker.bank.info.hash}
        if done["method"] == "learned" and done["task"] in loaded:
            out["model"] = {"kind": done["task"], "weights_sha256": loaded[done["task"]]["weights_sha256"]}
        return dict(out, predictions=[{"file": n, **entry} for n, entry in zip(names, done["entries"])])

    @app.get("/v1/contexts", dependencies=[Depends(authorised)])
    async def list_contexts():
        rows = await asyncio.to_thread(contexts.listing, store_path)  # every manifest read: off the event loop
        return {"backbone": {"id": worker.bank.info.id, "hash": worker.bank.info.hash},
                "methods": list(METHODS if loaded else METHODS[:2]), "learned_models": list(learned_models),
                "contexts": rows}

    @app.post("/v1/contexts/{site}/predict", dependencies=[Depends(authorised)])
    async def predict_stored(site: str, images: list[UploadFile] = File(...), method: str = "prototype",
                             k: int | None = None):
        site = site_name(site)
        method, k = _check_options(method, k)
        if method == "learned" and not loaded:  # 400 before the set is verified and decoded for nothing
            raise HTTPException(400, "method learned needs a learned in-context model, but none is loaded: start tpp "
                                     f"serve with {incontext_models.OPTION} DIR, or ask for method prototype or knn.")
        version = await asyncio.to_thread(contexts.current_version, store_path, site)  # off the event loop
        if version is None:
            raise HTTPException(404, f"no context set is published as '{site}'; GET /v1/contexts lists them.")
        files = [(await upload.read(), upload.filename or "upload") for upload in images]
        pixels = await _checked(files, limits)
        async with in_flight.hold(pixels, request_timeout_s):
            arrays = await _decoded(files, limits)
            if hasattr(worker, "predict_context"):  # the Ray engine: the set is multiplexed across its replicas
                done = await outcome(worker.predict_context(site, method, k, arrays, version))  # pointer read once
            else:  # the set's files read and verified in a thread, its features computed on the inference thread
                cv = await outcome(sets.get(site, version))
                done = await outcome(worker.call(lambda bank: answered(stored(bank, cv, method, k), arrays)))
        return answer(done, [name for _, name in files], site)

    @app.post("/v1/incontext/predict", dependencies=[Depends(authorised)])
    async def predict_inline(request: Request):
        try:
            body = await request.json()
        except ValueError:
            raise HTTPException(400, "the body is not JSON; see the tpp serve docs for the inline context format.")
        context, queries, method, k = _parse(body, max_context)
        method, k = _check_options(method, k)
        kind = SEGMENTATION if context and context[0][2] is not None else CLASSIFICATION
        if method == "learned" and kind not in loaded:
            raise HTTPException(400, str(incontext_models.no_model(kind, sorted(loaded))))
        masks = [(m, f"{n}.mask") for _, n, m, _ in context if m is not None]
        pixels = await _checked([(d, n) for d, n, _, _ in context] + masks + queries, limits)
        async with in_flight.hold(pixels, request_timeout_s):
            ctx = await _inline_set(context, limits, max_context)
            arrays = await _decoded(queries, limits)
            done = await outcome(worker.call(lambda bank: answered(prepare_set(bank, ctx, method, k), arrays)))
        return answer(done, [name for _, name in queries], "inline")


class VerifiedSets:
    """The service's stored context sets, read and verified in a thread: on the inference thread, every site's
    predictions waited while a set's files were read, hashed and decoded. The last ``size`` sets are kept by (site,
    version) (a version's files are its content hash: they never change), and a version is read once however many
    requests ask for it meanwhile. Used on the event loop only (``open_set`` runs in threads)."""

    def __init__(self, open_set, size: int = CACHED_SETS):
        self.open_set, self.size = open_set, size  # open_set(site): the store's current set of site, verified
        self.sets: OrderedDict = OrderedDict()  # (site, version) -> ContextVersion
        self.reading: dict = {}  # (site, version) -> the task reading the set

    def get(self, site: str, version: str) -> asyncio.Future:
        """The verified set of ``site`` whose pointer named ``version``: the one kept, or the store's current set
        read in a thread (a future that waiting requests share; one giving up cancels nobody's read)."""
        key = (site, version)
        if key in self.sets:
            self.sets.move_to_end(key)
            kept = asyncio.get_running_loop().create_future()
            kept.set_result(self.sets[key])
            return kept
        if key not in self.reading:
            self.reading[key] = asyncio.ensure_future(asyncio.to_thread(self.open_set, site))
            self.reading[key].add_done_callback(lambda task: self._keep(key, task))
        return asyncio.shield(self.reading[key])

    def _keep(self, key: tuple, task: asyncio.Future) -> None:
        """Keep what a read verified (under the version it read: the pointer may have moved since it was asked)."""
        del self.reading[key]
        if task.cancelled() or task.exception() is not None:  # the refusal is the Refusals memo's to keep
            return
        cv = task.result()
        self.sets[(cv.site, cv.version)] = cv
        self.sets.move_to_end((cv.site, cv.version))
        while len(self.sets) > self.size:
            self.sets.popitem(last=False)


def extractor(bank):
    """The :class:`~tpp.incontext.features.Extractor` of a bank's frozen backbone."""
    from tpp.incontext.features import Extractor

    return Extractor(bank.encoder, bank.info, bank.device, precision=bank.precision)


def prepare_set(bank, ctx: ContextSet, method: str, k: int | None, version: str | None = None):
    """``ctx`` prepared on a bank's frozen backbone; method learned with the bank's model of the set's kind
    (:class:`~tpp.serve.incontext_models.NoLearnedModel` if it has none). On the inference thread."""
    from tpp.incontext.predict import prepare

    model = None
    if method == "learned":
        chosen = incontext_models.model_for(bank, ctx.task)
        model = (chosen.net, chosen.card)
    return prepare(ctx, extractor(bank), method, k, version=version, model=model)


def answered(prepared, arrays: list) -> dict:
    """Predict uint8 ``arrays`` (H, W) or (H, W, 3) with a prepared set; what an answer says of it, as plain data
    (the Ray engine's replicas send it to the ingress): version, task, k, method and one JSON entry per image."""
    results = prepared.predict(arrays)
    return {"version": prepared.version, "task": prepared.ctx.task, "k": prepared.ctx.k, "method": prepared.method,
            "entries": [prepared.json_entry(r) for r in results]}


def _check_options(method: str, k: int | None) -> tuple[str, int | None]:
    """(method, k) of a request, k dropped for every method but knn (only knn has neighbours: a client may send
    one set of parameters whatever the method); 400 when invalid."""
    if method not in METHODS:
        raise HTTPException(400, f"method {method!r} is not one of {', '.join(METHODS)}.")
    if k is not None and k < 1:
        raise HTTPException(400, f"k must be at least 1, got {k}.")
    return method, k if method == "knn" else None


async def _checked(files: list[tuple[bytes, str]], limits) -> int:
    """Every header within the budget (413), nothing decoded; the request's pixel count."""
    try:
        return await asyncio.to_thread(check_request, files, limits)
    except ImageTooLarge as exc:
        raise HTTPException(413, str(exc)) from None
    except ImageError as exc:
        raise HTTPException(400, str(exc)) from None


async def _decoded(files: list[tuple[bytes, str]], limits) -> list:
    arrays = []
    try:
        for data, name in files:
            arrays.append(await asyncio.to_thread(decode, data, name, limits=limits))
    except ImageTooLarge as exc:
        raise HTTPException(413, str(exc)) from None
    except ImageError as exc:
        raise HTTPException(400, str(exc)) from None
    return arrays


def _b64(value, what: str) -> bytes:
    if not isinstance(value, str):
        raise HTTPException(400, f"{what} must be a base64 string.")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise HTTPException(400, f"{what} is not valid base64.") from None


def _parse(body, max_context: int):
    """(context [(image bytes, name, mask bytes | None, label)], queries [(bytes, name)], method, k) of an
    inline request; 400 for a malformed body, 413 for more than ``max_context`` examples (nothing decoded)."""
    k = body.get("k") if isinstance(body, dict) else None
    if not isinstance(body, dict) or not isinstance(body.get("context"), list) or \
            not isinstance(body.get("images"), list) or not body["images"] or \
            not isinstance(body.get("method", "prototype"), str) or not (k is None or type(k) is int):
        raise HTTPException(400, 'the body needs "context": [{"image": B64, "label": L} or {"image": B64, "mask": '
                                 'B64}, ...] and "images": [B64 or {"name": N, "data": B64}, ...]; optional "method" '
                                 '(prototype, knn or learned) and "k" (an integer).')
    if len(body["context"]) > max_context:
        raise HTTPException(413, f"the inline context holds {len(body['context'])} examples, more than the maximum "
                                 f"of {max_context} (--max-context).")
    context = []
    for i, entry in enumerate(body["context"]):
        if not isinstance(entry, dict) or ("label" in entry) == ("mask" in entry):
            raise HTTPException(400, f"context[{i}] needs an image and either a label or a mask.")
        mask = _b64(entry["mask"], f"context[{i}].mask") if "mask" in entry else None
        if mask is None and not isinstance(entry["label"], (str, int)):
            raise HTTPException(400, f"context[{i}].label must be a string.")
        context.append((_b64(entry.get("image"), f"context[{i}].image"), f"context[{i}]", mask, entry.get("label")))
    queries = []
    for i, item in enumerate(body["images"]):
        data, name = (item.get("data"), str(item.get("name") or f"images[{i}]")) if isinstance(item, dict) \
            else (item, f"images[{i}]")
        queries.append((_b64(data, f"images[{i}]"), name))
    return context, queries, body.get("method", "prototype"), body.get("k")


async def _inline_set(context, limits, max_context: int) -> ContextSet:
    """Decode and check an inline context set (400 when it cannot define a task)."""
    kinds = {m is None for _, _, m, _ in context}
    if len(kinds) > 1:
        raise HTTPException(400, "an inline context mixes labels and masks; give all examples one kind.")
    images = await _decoded([(d, n) for d, n, _, _ in context], limits)
    try:
        if context and context[0][2] is not None:
            masks = [binary_mask(a, f"context[{i}].mask")
                     for i, a in enumerate(await _decoded([(m, n) for _, n, m, _ in context], limits))]
            ctx = ContextSet(SEGMENTATION, images, masks=masks, names=[n for _, n, _, _ in context], source="inline")
        else:
            ctx = ContextSet(CLASSIFICATION, images, [str(lbl) for *_, lbl in context],
                             names=[n for _, n, _, _ in context], source="inline")
        return check(ctx, max_context)
    except TppError as exc:
        raise HTTPException(400, str(exc)) from None
