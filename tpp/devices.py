"""Where tpp computes: the ``device`` config key and the ``--device`` / ``--precision`` flags of predict and serve.

``auto`` takes a CUDA GPU when there is one, else Apple's MPS, else the CPU; ``cpu``, ``cuda``, ``cuda:N`` and
``mps`` are taken as asked or refused with a sentence that says what this machine has.
Reduced-precision inference (``bf16``, ``fp16``) is opt-in and runs under ``torch.autocast``: the weights stay
fp32 and the shared backbone is never cast, so fp32 (the default) gives offline and served predictions that agree.
"""
from __future__ import annotations

import contextlib
import re

import torch

from tpp.errors import TppError

VALID = "auto, cpu, cuda, cuda:N (N = GPU index), mps"
PRECISIONS = ("fp32", "bf16", "fp16")
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d{1,3})?)$")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _available() -> str:
    """This machine's devices, in words (for error messages)."""
    found = [f"cuda:0..{torch.cuda.device_count() - 1}"] if torch.cuda.is_available() else []
    if mps_available():
        found.append("mps")
    return ", ".join(found + ["cpu"])


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available() and backend.is_built())


def device_problem(text, key: str = "device") -> str | None:
    """Why ``text`` is not a usable device on this machine (a sentence naming the fix), or None."""
    if not isinstance(text, str) or not _DEVICE_RE.match(text.strip().lower()):
        return f"{key}={text!r} is not a device; use one of {VALID}."
    name = text.strip().lower()
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            return (f"{key}={name} asks for a CUDA GPU, but torch sees none here (torch {torch.__version__}, "
                    f"CUDA build: {torch.version.cuda or 'no'}); use {key}=cpu or {key}=auto, or run on a machine "
                    "with a GPU.")
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            return (f"{key}={name}: this machine has {torch.cuda.device_count()} CUDA GPU(s) "
                    f"(cuda:0..cuda:{torch.cuda.device_count() - 1}); choose one of them.")
    if name == "mps" and not mps_available():
        return f"{key}=mps asks for Apple's MPS, which this machine lacks (it has: {_available()}); use {key}=auto."
    return None


def resolve(text: str = "auto", key: str = "device") -> torch.device:
    """The torch device for ``text`` (``auto``: cuda, else mps, else cpu); a TppError when unusable."""
    problem = device_problem(text, key)
    if problem:
        raise TppError(problem)
    name = text.strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu"
    if name in ("cuda", "mps"):  # with its index, as tensors report their device
        name = f"{name}:{torch.cuda.current_device() if name == 'cuda' else 0}"
    return torch.device(name)


def describe(device: torch.device) -> str:
    """``device`` in words for logs: ``cuda:0 (NVIDIA H200)``, ``cpu (16 threads)`` ..."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return str(device)


def check_precision(precision: str, device: torch.device) -> str:
    """``--precision`` checked against the device: fp16 needs a GPU (CPU fp16 matmuls are slow and
    inexact); bf16 runs anywhere torch has it."""
    if precision not in PRECISIONS:
        raise TppError(f"--precision {precision!r} is not one of {', '.join(PRECISIONS)}.")
    if precision == "fp16" and device.type == "cpu":
        raise TppError("--precision fp16 needs a GPU; on the CPU use --precision bf16, or fp32 (the default).")
    return precision


def autocast(device: torch.device, precision: str):
    """The context a forward runs in: nothing for fp32, else ``torch.autocast`` to bf16 / fp16 (weights
    stay fp32; only matmuls and convolutions run in the reduced type)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])
