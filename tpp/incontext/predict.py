"""In-context prediction of images from a context set: the features of the context are computed once
(:func:`prepare`), then any number of query images are answered (:meth:`Prepared.predict`) with no gradient
step and no parameter change. Rows and JSON entries have the format of ``tpp predict`` and ``tpp serve``
with an adapter: ``label`` + ``prob_<class>`` (classification), ``mask`` + ``frac_<class>`` (segmentation)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from tpp.incontext import methods
from tpp.incontext.context import CLASSIFICATION, ContextSet
from tpp.incontext.features import SEG_SIZE, Extractor


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
            if self.ctx.task == CLASSIFICATION:
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
            image_size: int | None = None, version: str | None = None) -> Prepared:
    """Context features on ``extractor`` (``ctx`` already checked). ``image_size``: pixels fed to the encoder
    (default: the backbone's size for classification, 64 for segmentation); ``k``: kNN's neighbours
    (default about sqrt of the context size)."""
    from tpp.errors import TppError

    methods.check_method(method)
    if k is not None and k < 1:
        raise TppError(f"the number of neighbours k must be at least 1, got {k}.")
    if image_size is not None and image_size < 1:
        raise TppError(f"the image size fed to the encoder must be at least 1 pixel, got {image_size}.")
    if ctx.task == CLASSIFICATION:
        rule = extractor.rule(ctx.channels, image_size)
        return Prepared(ctx, extractor, method, k, rule, extractor.features(ctx.images, rule), None,
                        version or set_hash(ctx))
    rule = extractor.rule(ctx.channels, SEG_SIZE if image_size is None else image_size)
    size = rule["image_size"]
    masks = torch.stack([methods.F.interpolate(torch.as_tensor(m, dtype=torch.float32)[None, None], size=(size, size),
                                               mode="area")[0, 0] for m in ctx.masks])
    return Prepared(ctx, extractor, method, k, rule, extractor.tokens(ctx.images, rule), masks,
                    version or set_hash(ctx))
