"""The one place that counts a model's cost: parameters, FLOPs per image, latency per image, peak memory.

FLOPs are 2 x multiply-accumulates, as ``torch.utils.flop_counter.FlopCounterMode`` counts them (a matmul of
(m, k) by (k, n) is 2 m k n FLOPs; a convolution likewise per output element); only the operations it knows
(matmuls, convolutions, attention kernels) count, not norms, activations or softmax, as in published tables.
Attention is counted through PyTorch's math SDPA backend: the fused CPU kernel that transformers' ``sdpa``
attention otherwise dispatches to is not one FlopCounterMode knows, so it would count zero for QK^T and AV.
Published numbers given in MACs ("FLOPs" in many CNN papers) are half of ours.

Latency and training time are measured at ``THREADS`` (1) torch thread: with the machine's cores shared, a
multi-threaded forward pass waits on busy cores (OpenMP spin-waits) and its time says more about the other jobs than
about the model (the suite's first costs, at 2 threads beside other jobs, were 60-150x the 1-thread times). Every
measurement records the threads and the 1-minute load average it ran under.

Peak memory is measured in a fresh subprocess (``python benchmarks/cost.py --worker SPEC``: CPU peak-RSS counters
never reset), as ``benchmarks/tpp_cost.py`` does: the resident set after building the model is the baseline, the
peak over a forward pass of a batch of 32 minus it is the inference memory.
"""
from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
THREADS = 1
KEY = {"threads": THREADS}  # part of every cached cost's key: costs measured otherwise are never reused


@contextlib.contextmanager
def fixed_threads(n: int = THREADS):
    """Run the body with ``n`` torch threads, then restore the caller's count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def conditions() -> dict:
    """What a timing ran under: torch threads and the machine's 1-minute load average."""
    return {"threads": torch.get_num_threads(), "load_average_1min": round(os.getloadavg()[0], 2)}


def parameters(model: torch.nn.Module) -> dict:
    """``{"total", "trainable"}`` parameter counts (shared tensors once)."""
    seen, total, trainable = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return {"total": total, "trainable": trainable}


def flops_per_image(model: torch.nn.Module, example: torch.Tensor) -> int:
    """Forward FLOPs (2 x MACs) per image of ``model(example)`` for ``example`` (B, C, H, W), in eval mode
    without gradients; B images are counted and divided by B."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        model(example)
    model.train(was_training)
    return int(round(counter.get_total_flops() / example.shape[0]))


def latency_per_image_ms(model: torch.nn.Module, example: torch.Tensor, batch: int, repeats: int = 3,
                         warmup: int = 1) -> float:
    """Median wall time of a forward pass of ``batch`` copies of ``example[:1]`` divided by ``batch``, in ms."""
    x = example[:1].expand(batch, *example.shape[1:]).contiguous()
    model.eval()
    times = []
    with torch.no_grad():
        for i in range(warmup + repeats):
            t0 = time.perf_counter()
            model(x)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times) / batch


def train_s_per_image(model: torch.nn.Module, example: torch.Tensor, classes: int, batch: int = 16,
                      repeats: int = 2) -> float:
    """Median seconds per image of one training step (forward, cross-entropy, backward, Adam) at ``batch``: the
    basis of a from-scratch cell's time estimate (steps x images). The model's weights change; measure on a copy."""
    import copy

    model = copy.deepcopy(model).train()
    x = example[:1].expand(batch, *example.shape[1:]).contiguous()
    y = torch.arange(batch) % classes
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    times = []
    with fixed_threads():
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if i:
                times.append(time.perf_counter() - t0)
    return statistics.median(times) / batch


def measure(model: torch.nn.Module, example: torch.Tensor, repeats: int = 3) -> dict:
    """Parameters, FLOPs per image and latency per image at batch 1 and 32 (at ``THREADS`` threads) of one model in
    this process, with the conditions of the timing."""
    with fixed_threads():
        return {**{f"{k}_parameters": v for k, v in parameters(model).items()},
                "flops_per_image": flops_per_image(model, example[:1]),
                "latency_ms_b1": latency_per_image_ms(model, example, 1, repeats),
                "latency_ms_b32": latency_per_image_ms(model, example, 32, repeats), **conditions()}


def peak_memory_mib(spec: dict, timeout_s: float | None = None) -> dict:
    """Build the model that ``spec`` names (see :func:`suite_models.build`) in a fresh subprocess, run a forward
    pass of a batch of 32 and return ``{"peak_rss_mib", "baseline_rss_mib", "inference_mib"}``."""
    import report

    return report.run_worker(__file__, ["--worker", json.dumps(spec)])


def _worker(spec: dict) -> dict:
    import report
    from suite_models import build

    torch.set_num_threads(THREADS)
    model, example = build(spec)
    model.eval()
    baseline = report.current_rss_mib()
    with torch.no_grad():
        model(example[:1].expand(32, *example.shape[1:]).contiguous())
    peak = report.peak_rss_mib()
    return {"peak_rss_mib": round(peak, 1), "baseline_rss_mib": round(baseline, 1),
            "inference_mib": round(peak - baseline, 1), "threads": torch.get_num_threads()}


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        print(json.dumps(_worker(json.loads(sys.argv[2]))))
        sys.exit(0)
    sys.exit("usage: python benchmarks/cost.py --worker SPEC (called by benchmarks/suite.py)")
