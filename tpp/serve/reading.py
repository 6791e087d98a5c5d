"""How a site's inputs are decoded: the options the adapter was trained with (its card's ``data.reading``:
``data.slice`` / ``data.frame`` / ``data.window``) are the defaults of ``tpp predict``, ``tpp.load().predict``
and the service, so a volume is cut, and a CT windowed, as in training; an option given at predict time wins,
with a warning when it differs."""
from __future__ import annotations

import math

from tpp.errors import TppError

CARD_KEYS = {"frame": "frame", "slice": "slice_spec", "window": "window"}  # card key -> decode keyword
FLAGS = {"frame": "--frame", "slice_spec": "--slice", "window": "--window"}


def card_reading(card: dict, source: str) -> dict:
    """The decode keywords (frame, slice_spec, window) the card's ``data.reading`` records, checked: a forged
    value is refused naming the card, never handed to a decoder."""
    from tpp.data.images import ImageError, parse_slice

    reading = (card.get("data") or {}).get("reading")
    if reading is None:
        return {}
    where = f"'{source}': data.reading"
    if not isinstance(reading, dict) or set(reading) - set(CARD_KEYS):
        raise TppError(f"{where} must be an object with keys among {', '.join(CARD_KEYS)}.")
    out = {}
    frame, spec, window = (reading.get(k) for k in CARD_KEYS)
    if frame is not None:
        if isinstance(frame, bool) or not isinstance(frame, int) or frame < 0:
            raise TppError(f"{where}.frame must be a frame number from 0, got {frame!r}.")
        out["frame"] = frame
    if spec is not None:
        try:
            parse_slice(spec if isinstance(spec, str) else "")
        except ImageError:
            raise TppError(f"{where}.slice must be AXIS:INDEX or AXIS:middle, got {str(spec)[:40]!r}.") from None
        out["slice_spec"] = spec
    if window is not None:
        if not (isinstance(window, list) and len(window) == 2 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in window)
                and window[1] > 0):
            raise TppError(f"{where}.window must be [center, width] with a positive width, got {str(window)[:40]}.")
        out["window"] = (float(window[0]), float(window[1]))
    return out


class StoredReadings:
    """The decode keywords of store versions (``(site, version)`` -> :func:`card_reading`), each card read once:
    a version's files never change under its content-hash name (a changed card is refused when it loads)."""

    def __init__(self, store, keep: int = 256):
        import threading

        self.store, self.keep, self._known, self._lock = store, keep, {}, threading.Lock()

    def get(self, site: str, version: str) -> dict:
        """Called from several threads at once (the service reads cards in a thread per request)."""
        from tpp.serve import store as adapter_store

        key = (site, version)
        with self._lock:
            if key in self._known:
                return self._known[key]
        card = adapter_store.card_of(self.store, site, version)
        reading = card_reading(card, f"{self.store}/{site}/{version}")
        with self._lock:
            if len(self._known) >= self.keep:
                self._known.pop(next(iter(self._known)))
            self._known[key] = reading
        return reading


def with_card_reading(card_options: dict, given: dict) -> tuple[dict, list[str]]:
    """``given`` (decode keywords; None: not given) over the card's defaults -> (keywords, notes): one note per
    option given that differs from what the adapter was trained with."""
    merged = dict(given)
    notes = []
    for key, trained in card_options.items():
        asked = given.get(key)
        if asked is None:
            merged[key] = trained
        elif asked != trained:
            shown = ",".join(f"{v:g}" for v in trained) if key == "window" else trained
            notes.append(f"{FLAGS[key]} {asked if key != 'window' else ','.join(f'{v:g}' for v in asked)} differs "
                         f"from the adapter's training ({FLAGS[key]} {shown}): its inputs are read otherwise than "
                         "its training images were")
    return merged, notes
