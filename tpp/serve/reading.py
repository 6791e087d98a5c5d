"""How a site's inputs are decoded: the options the adapter was trained with (its card's ``data.reading``:
``data.slice`` / ``data.frame`` / ``data.window``) are the defaults of ``tpp predict``, ``tpp.load().predict``
and the service, so a volume is cut, and a CT windowed, as in training; an option given at predict time wins,
with a warning when it differs."""
from __future__ import annotations

from tpp.data.file_reading import CARD_KEYS, FLAGS, recorded_reading, same_option, shown

__all__ = ["CARD_KEYS", "FLAGS", "card_reading", "with_card_reading"]


def card_reading(card: dict, source: str) -> dict:
    """The decode keywords (frame, slice_spec, window) the card's ``data.reading`` records, checked: a forged
    value is refused naming the card, never handed to a decoder."""
    return recorded_reading(card.get("data") or {}, f"'{source}'")


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
    option given that differs from what the adapter was trained with (``2:MIDDLE`` and a window list [40, 400]
    are no difference). A card that records how files were read also had every option it leaves out unset (a
    ``--window`` for an adapter trained at min-max differs too); a card that records none (trained on PNGs, or
    older) says nothing of the options, so none is noted."""
    merged = dict(given)
    notes = []
    for key in ([k for k in FLAGS if k in card_options or given.get(k) is not None] if card_options else []):
        asked, trained = given.get(key), card_options.get(key)
        if asked is None:
            merged[key] = trained
        elif not same_option(key, asked, trained):
            was = shown(key, trained) if trained is not None else f"no {FLAGS[key]}"
            notes.append(f"{shown(key, asked)} differs from the adapter's training ({was}): its "
                         "inputs are read otherwise than its training images were")
    return merged, notes
