"""``train.log_with``: the experiment trackers Accelerate supports, checked before a run starts (Accelerate
itself drops a tracker whose package is missing without a word)."""
from __future__ import annotations

# pip package of each Accelerate tracker whose module name differs from it
TRACKER_PACKAGES = {"comet_ml": "comet-ml"}


def trackers() -> list[str]:
    """The tracker names Accelerate supports (``train.log_with``): its ``LoggerType`` values but ``all``."""
    from accelerate.utils import LoggerType

    return [t.value for t in LoggerType if t.value != "all"]


def tracker_problem(name: str | None) -> str | None:
    """Why ``train.log_with=name`` cannot log here (unknown, or its package is not installed), or None.
    Accelerate itself would drop a tracker whose package is missing without a word."""
    import accelerate.utils

    if name is None:
        return None
    if name not in trackers():
        return f"train.log_with={name!r} is not a tracker Accelerate supports; use one of {', '.join(trackers())}."
    if not getattr(accelerate.utils, f"is_{name}_available", lambda: True)():
        return (f"train.log_with={name} needs its package, which is not installed: pip install "
                f"{TRACKER_PACKAGES.get(name, name)} (or drop train.log_with).")
    return None
