"""In-context prediction of images from a context set: the features of the context are computed once
(:func:`prepare`), then any number of query images are answered (:meth:`Prepared.predict`) with no gradient
step and no parameter change. ``method="learned"`` answers with a trained in-context model
(:mod:`tpp.incontext.learned`, from ``tpp run incontext``) instead of a training-free method. Rows and JSON
entries have the format of ``tpp predict`` and ``tpp serve`` with an adapter: ``label`` + ``prob_<class>``
(classification), ``mask`` + ``frac_<class>`` (segmentation)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from tpp.incontext import methods
from tpp.incontext.context import CLASSIFICATION, ContextSet
from tpp.incontext.features import SEG_SIZE, Extractor

METHODS = (*methods.METHODS, "learned")  # what prepare takes: the training-free methods and a learned model


def check_method(method) -> str:
    """``method`` when :func:`prepare` takes it, else a TppError listing every method (and a close one)."""
    import difflib

    from tpp.errors import TppError

    if method not in METHODS:
        close = difflib.get_close_matches(str(method), METHODS, n=1)
        hint = f"; did you mean {close[0]}?" if close else "."
        raise TppError(f"in-context method {method!r} is not one of {', '.join(METHODS)}{hint}")
    return method


@dataclass
class Prepared:
    """A checked context set with its features on one extractor, ready to answer queries."""
    ctx: ContextSet
    extractor: Extractor
    method: str
    k: int | None
    rule: dict
    features: torch.Tensor  # classification: (K, D); segmentation: patch tokens (K, N, D)
    masks: torch.Tensor | None  # segmentation: (K, S, S) foreground fractions at the model-input size (area)
    version: str  # content hash of the set (a store's version when it came from one)
    temperature: float | None = None  # calibrated on the context by the first call, then reused
    model: object | None = None  # method "learned": the in-context model (eval mode, parameters frozen)
    images: torch.Tensor | None = None  # learned segmentation: context images (K, S, S) in [0, 1]

    @property
    def classes(self) -> list[str]:
        return self.ctx.classes

    @torch.no_grad()
    def predict(self, arrays: list[np.ndarray], batch_size: int = 64) -> list[np.ndarray]:
        """uint8 images (H, W) or (H, W, 3) -> per image (C,) float probabilities (classification) or a uint8
        (H, W) class-index mask at the image's own size (segmentation)."""
        out = []
        for start in range(0, len(arrays), batch_size):
            chunk = arrays[start:start + batch_size]
            if self.model is not None:
                out += self._predict_learned(chunk)
            elif self.ctx.task == CLASSIFICATION:
                queries = self.extractor.features(chunk, self.rule)
                probs, self.temperature = methods.classify(
                    self.features, torch.as_tensor(self.ctx.label_indices()), len(self.classes), queries, self.method,
                    self.k, self.temperature)
                out += [p.numpy().astype(np.float64) for p in probs]
            else:
                grid = self.extractor.grid(self.rule)
                tokens = self.extractor.tokens(chunk, self.rule)
                fg, self.temperature = methods.segment(self.features, self.masks, tokens, grid, self.method, self.k,
                                                       self.temperature)
                out += [(methods.upsample(p, a.shape[:2]) >= 0.5).numpy().astype(np.uint8) for p, a in zip(fg, chunk)]
        return out

    def _predict_learned(self, chunk: list[np.ndarray]) -> list[np.ndarray]:
        from tpp.incontext import learned

        if self.ctx.task == CLASSIFICATION:
            probs = learned.classify(self.model, self.features, torch.as_tensor(self.ctx.label_indices()),
                                     len(self.classes), self.extractor.features(chunk, self.rule))
            return [p.numpy().astype(np.float64) for p in probs]
        fg = learned.segment(self.model, self.images, self.masks >= 0.5, gray(chunk, self.rule["image_size"]))
        return [(methods.upsample(p, a.shape[:2]) >= 0.5).numpy().astype(np.uint8) for p, a in zip(fg, chunk)]

    def csv_entry(self, result: np.ndarray, stem: str) -> tuple[dict, dict]:
        """(CSV columns of one image, {mask file name: uint8 mask}) as ``tpp predict`` writes them."""
        if self.ctx.task == CLASSIFICATION:
            row = {"label": self.classes[int(np.argmax(result))]}
            row.update({f"prob_{c}": f"{p:.6f}" for c, p in zip(self.classes, result)})
            return row, {}
        name = f"{stem}.png"
        row = {"mask": name}
        row.update({f"frac_{c}": f"{float((result == i).mean()):.6f}" for i, c in enumerate(self.classes)})
        return row, {name: result}

    def json_entry(self, result: np.ndarray) -> dict:
        """The service's entry of one image (next to ``file``)."""
        from tpp.segmentation import rle_encode

        if self.ctx.task == CLASSIFICATION:
            return {"label": self.classes[int(np.argmax(result))],
                    "probabilities": {c: float(p) for c, p in zip(self.classes, result)}}
        return {"mask": dict(rle_encode(result), classes=self.classes),
                "pixels": {c: int((result == i).sum()) for i, c in enumerate(self.classes)}}


def set_hash(ctx: ContextSet) -> str:
    """16 hex digits over the examples' content hashes in canonical order."""
    digest = hashlib.sha256()
    for i in range(ctx.k):
        digest.update(ctx.digest(i).encode())
    return digest.hexdigest()[:16]


@torch.no_grad()
def prepare(ctx: ContextSet, extractor: Extractor, method: str = "prototype", k: int | None = None,
            image_size: int | None = None, version: str | None = None, model=None) -> Prepared:
    """Context features on ``extractor`` (``ctx`` already checked). ``image_size``: pixels fed to the encoder
    (default: the backbone's size for classification, 64 for segmentation); ``k``: kNN's neighbours
    (default about sqrt of the context size). ``method="learned"``: ``model`` is the in-context model's
    folder (or a ``(model, card)`` pair from :func:`tpp.incontext.learned.load`); ``k`` and ``image_size``
    do not apply (the model's own input size is used)."""
    from tpp.errors import TppError

    check_method(method)
    if k is not None and method != "knn":
        raise TppError(f"the number of neighbours (k, --neighbours) is used by method knn only, not by {method}.")
    if method == "learned":
        if image_size is not None:  # it was silently ignored
            raise TppError(f"the image size (--image-size, image_size=; {image_size} px given) is used by methods "
                           f"{' and '.join(methods.METHODS)} only: method learned feeds its model the input size it "
                           "was trained at (classification: the backbone's size; segmentation: the size on the "
                           "model's card).")
        return _prepare_learned(ctx, extractor, model, version)
    if model is not None:
        raise TppError(f"an in-context model is used by --method learned only, not by {method}.")
    if k is not None and k < 1:
        raise TppError(f"the number of neighbours k must be at least 1, got {k}.")
    if image_size is not None and image_size < 1:
        raise TppError(f"the image size fed to the encoder must be at least 1 pixel, got {image_size}.")
    if ctx.task == CLASSIFICATION:
        if k is not None and k > len(ctx.images):
            import warnings

            warnings.warn(f"k={k} neighbours but the context set holds {len(ctx.images)} examples: every example "
                          f"votes (k={len(ctx.images)} in effect).", stacklevel=2)
        rule = extractor.rule(ctx.channels, image_size)
        return Prepared(ctx, extractor, method, k, rule, extractor.features(ctx.images, rule), None,
                        version or set_hash(ctx))
    rule = extractor.rule(ctx.channels, SEG_SIZE if image_size is None else image_size)
    size = rule["image_size"]
    masks = torch.stack([methods.F.interpolate(torch.as_tensor(m, dtype=torch.float32)[None, None], size=(size, size),
                                               mode="area")[0, 0] for m in ctx.masks])
    return Prepared(ctx, extractor, method, k, rule, extractor.tokens(ctx.images, rule), masks,
                    version or set_hash(ctx))


def gray(arrays: list[np.ndarray], size: int) -> torch.Tensor:
    """uint8 images (H, W) or (H, W, 3) of any sizes -> (B, size, size) float in [0, 1], as the learned
    segmenter was trained (channel mean, bilinear; :func:`tpp.incontext.episodes.to_gray`)."""
    from tpp.incontext.episodes import to_gray

    return torch.as_tensor(np.concatenate([to_gray(a[None], size) for a in arrays]))


@torch.no_grad()
def _prepare_learned(ctx: ContextSet, extractor: Extractor, model, version: str | None) -> Prepared:
    """The context on a learned in-context model: frozen features (classification) or 64 px images and masks."""
    from tpp.errors import TppError, UnsupportedRequest
    from tpp.incontext import learned, learned_card

    adapter = getattr(extractor, "adapter", None)
    if adapter:  # no card records an adapter: every learned model was trained on the backbone's own features
        raise TppError(f"--method learned takes no adapter (--adapter / adapter= '{adapter}'): an in-context model "
                       "is trained on the features of the backbone alone and accepts only those; drop the adapter, "
                       "or use method prototype or knn with it.")
    if model is None:
        raise TppError("--method learned needs the in-context model: --model DIR (the model/ folder of a "
                       "`tpp run incontext` run).")
    path = "(in memory)" if isinstance(model, tuple) else str(model)
    net, card = model if isinstance(model, tuple) else learned.load(model, extractor.device)
    learned.check_kind(card, ctx.task, path, extractor.info.hash)
    if ctx.task == CLASSIFICATION:
        if len(ctx.classes) > net.max_classes:
            raise UnsupportedRequest(f"the context set has {len(ctx.classes)} classes; in-context model '{path}' "
                                     f"handles at most {net.max_classes}: use method prototype or knn.")
        rule = extractor.rule(ctx.channels)
        features = extractor.features(ctx.images, rule)  # (K, D)
        if features.shape[-1] != net.config["feature_dim"]:
            raise TppError(f"in-context model '{path}' reads {net.config['feature_dim']}-dim features but the backbone "
                           f"in use gives {features.shape[-1]}; use --backbone with the model's backbone.")
        return Prepared(ctx, extractor, "learned", None, rule, features, None, version or set_hash(ctx), model=net)
    try:  # checked by load already; a (model, card) pair from the API is checked here
        size = learned_card.check_image_size(card.get("task_distribution", {}).get("image_size", SEG_SIZE),
                                             len(net.config["channels"]))
    except ValueError as exc:
        raise TppError(f"in-context model '{path}': {exc}.") from None
    masks = torch.stack([methods.F.interpolate(torch.as_tensor(m, dtype=torch.float32)[None, None], size=(size, size),
                                               mode="area")[0, 0] for m in ctx.masks])
    return Prepared(ctx, extractor, "learned", None, {"image_size": size}, torch.empty(0), masks,
                    version or set_hash(ctx), model=net, images=gray(ctx.images, size))
